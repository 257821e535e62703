// Reply playback: a queue of 16 kHz samples played gaplessly, resampled to the
// AudioContext's rate by linear interpolation.
//
// Messages in:  {type: "audio", turnId, pcm: ArrayBuffer of Int16}   queue audio
//               {type: "flush"}                     fade out over FADE_MS, then drop what was queued
//                                                   (a pause or an interruption: no click)
//               {type: "seek", turnId, samples}     the audio that comes next for turnId starts at
//                                                   `samples` into its response (a resume)
// Messages out: {type: "stats", samplesPlayed, queued}               about every 50 ms
//               {type: "flushed", played: {turnId: samples, ...}, dropped}
// Counts are in 16 kHz samples of reply audio that reached the output; `played` is the
// position in each response's audio (after a seek it goes on from there).
// Audio that follows a flush fades in over FADE_MS, so a resumed reply starts without a click.

const IN_RATE = 16000;
const CAPACITY = IN_RATE * 30; // ring size: 30 s, far more than the server's 200 ms lead
const FADE_MS = 5;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = IN_RATE / sampleRate; // input samples per output sample
    this.ring = new Float32Array(CAPACITY);
    this.written = 0; // absolute count of samples ever queued
    this.readPos = 0; // absolute, fractional read position
    this.segments = []; // [{turnId, end}] in queue order; `end` is an absolute sample count
    this.playedByTurn = {};
    this.samplesPlayed = 0;
    this.consumed = 0; // whole samples fully played (floor of readPos, counted once)
    this.blocks = 0;
    this.fadeSamples = Math.max(1, Math.round((FADE_MS / 1000) * sampleRate)); // output samples
    this.fadeOut = null; // {left, to}: fading out, then drop everything queued before `to`
    this.fadeIn = 0; // output samples of fade-in still to apply
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    if (msg.type === "audio") this.enqueue(msg.turnId, new Int16Array(msg.pcm));
    else if (msg.type === "flush") this.flush();
    else if (msg.type === "seek") this.playedByTurn[msg.turnId] = msg.samples;
  }

  enqueue(turnId, pcm) {
    if (this.written + pcm.length - this.consumed > CAPACITY) return; // never happens with a paced server
    for (let i = 0; i < pcm.length; i++) this.ring[(this.written + i) % CAPACITY] = pcm[i] / 32768;
    this.written += pcm.length;
    const last = this.segments[this.segments.length - 1];
    if (last && last.turnId === turnId) last.end = this.written;
    else this.segments.push({ turnId, end: this.written });
  }

  flush() {
    // Audio queued from now on (a resumed reply) is kept: only what is queued now is dropped.
    if (this.fadeOut) this.fadeOut.to = this.written;
    else this.fadeOut = { left: this.fadeSamples, to: this.written };
  }

  finishFlush() {
    const to = this.fadeOut.to;
    this.fadeOut = null;
    const dropped = Math.max(0, to - this.consumed);
    if (this.readPos < to) this.readPos = to;
    this.consumed = Math.max(this.consumed, Math.floor(this.readPos));
    while (this.segments.length && this.segments[0].end <= to) this.segments.shift();
    this.fadeIn = this.fadeSamples;
    this.port.postMessage({ type: "flushed", played: { ...this.playedByTurn }, dropped });
  }

  // Count sample `index` as played, for its response.
  countPlayed(index) {
    while (this.segments.length && this.segments[0].end <= index) this.segments.shift();
    const turnId = this.segments.length ? this.segments[0].turnId : null;
    if (turnId !== null) this.playedByTurn[turnId] = (this.playedByTurn[turnId] || 0) + 1;
    this.samplesPlayed += 1;
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    for (let i = 0; i < out.length; i++) {
      if (this.fadeOut && this.fadeOut.left <= 0) this.finishFlush();
      const base = Math.floor(this.readPos);
      // Interpolation needs the sample after `base`; if it has not arrived, output silence
      // and wait (an underrun between sentences), without moving the read position.
      if (base + 1 >= this.written) {
        if (this.fadeOut) this.finishFlush(); // nothing left to fade
        out[i] = 0;
        continue;
      }
      const frac = this.readPos - base;
      const a = this.ring[base % CAPACITY];
      const b = this.ring[(base + 1) % CAPACITY];
      let gain = 1;
      if (this.fadeOut) {
        gain = this.fadeOut.left / this.fadeSamples;
        this.fadeOut.left -= 1;
      } else if (this.fadeIn > 0) {
        gain = 1 - this.fadeIn / this.fadeSamples;
        this.fadeIn -= 1;
      }
      out[i] = (a + (b - a) * frac) * gain;
      this.readPos += this.step;
      while (this.consumed < Math.floor(this.readPos)) this.countPlayed(this.consumed++);
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (++this.blocks % 16 === 0) this.postStats();
    return true;
  }

  postStats() {
    this.port.postMessage({ type: "stats", samplesPlayed: this.samplesPlayed, queued: this.written - this.consumed });
  }
}

registerProcessor("voiceorch-playback", PlaybackProcessor);
