// Microphone capture: resamples the AudioContext's rate to 16 kHz and posts
// Int16 frames of 20 ms (320 samples) to the main thread.
//
// Downsampling is a windowed-sinc low-pass FIR (cut-off a little under the new
// Nyquist frequency, 8 kHz) followed by linear interpolation at the output instants.
// The filter removes what would alias; interpolation handles any rate ratio
// (48 000 → 16 000 is 3:1, 44 100 → 16 000 is not an integer).

const OUT_RATE = 16000;
const FRAME_SAMPLES = 320; // 20 ms at 16 kHz
const TAPS = 63;

function lowPassTaps(inRate, cutoffHz, count) {
  const fc = cutoffHz / inRate; // cycles per input sample
  const mid = (count - 1) / 2;
  const taps = new Float32Array(count);
  let sum = 0;
  for (let i = 0; i < count; i++) {
    const x = i - mid;
    const sinc = x === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * x) / (Math.PI * x);
    const blackman = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (count - 1)) + 0.08 * Math.cos((4 * Math.PI * i) / (count - 1));
    taps[i] = sinc * blackman;
    sum += taps[i];
  }
  for (let i = 0; i < count; i++) taps[i] /= sum; // unity gain at DC
  return taps;
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    // Only filter when actually downsampling.
    this.taps = this.step > 1 ? lowPassTaps(sampleRate, 7200, TAPS) : null;
    this.history = new Float32Array(TAPS * 2); // doubled ring: a contiguous window without wrap checks
    this.historyPos = 0;
    // Position of the next output sample relative to the current input sample (in input samples).
    this.next = 0;
    this.prev = 0; // previous filtered input sample
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.frameFill = 0;
  }

  filter(x) {
    if (!this.taps) return x;
    const pos = this.historyPos;
    this.history[pos] = x;
    this.history[pos + TAPS] = x;
    this.historyPos = (pos + 1) % TAPS;
    // The window history[pos+1 .. pos+TAPS] holds the last TAPS samples, oldest first.
    let acc = 0;
    for (let i = 0; i < TAPS; i++) acc += this.taps[i] * this.history[pos + 1 + i];
    return acc;
  }

  emit(sample) {
    const clamped = Math.max(-1, Math.min(1, sample));
    this.frame[this.frameFill++] = clamped < 0 ? clamped * 0x8000 : clamped * 0x7fff;
    if (this.frameFill === FRAME_SAMPLES) {
      this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
      this.frame = new Int16Array(FRAME_SAMPLES);
      this.frameFill = 0;
    }
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true; // no input connected yet
    for (let i = 0; i < channel.length; i++) {
      const y = this.filter(channel[i]);
      // Emit every output instant that falls between the previous sample and this one.
      while (this.next <= 0) {
        const frac = 1 + this.next; // 0..1 between prev and y
        this.emit(this.prev + (y - this.prev) * frac);
        this.next += this.step;
      }
      this.next -= 1;
      this.prev = y;
    }
    return true;
  }
}

registerProcessor("voiceorch-capture", CaptureProcessor);
