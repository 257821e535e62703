// voiceorch browser client: microphone → 16 kHz PCM over a WebSocket, reply audio
// played gaplessly, transcript, reply text and latency per turn.
// The wire protocol is described in docs/protocol.md.
"use strict";

const MIC_CONSTRAINTS = { audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true } };
const HOLD_MS = 300; // a press longer than this is push-to-talk; shorter toggles

// Figures read by tests (and handy in the console).
window.voiceorchStats = {
  samplesPlayed: 0,
  framesSent: 0,
  turnsDone: 0,
  interrupted: 0,
  paused: 0,
  resumed: 0,
  lastEvent: null,
};
const stats = window.voiceorchStats;

const state = {
  ws: null,
  audio: null, // AudioContext
  capture: null, // AudioWorkletNode
  playback: null, // AudioWorkletNode
  starting: null, // promise of start(), so that it runs once
  mode: "idle", // "idle" | "handsfree" | "talk"
  turnDetection: "server_vad", // the session's current turn detection, as we last set it
  openTurn: null, // turn_id of the response whose audio is arriving now
  turns: new Map(), // turn_id → DOM elements of that turn
  closing: false,
  pendingPosition: null, // turn_id whose played_ms we report once the playback worklet has flushed
};

const $ = (id) => document.getElementById(id);

// --- small UI helpers ----------------------------------------------------------------------

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

function setPill(id, text, kind) {
  const pill = $(id);
  pill.textContent = text;
  pill.className = "pill" + (kind ? " " + kind : "");
}

function renderStats() {
  $("stats").textContent =
    `frames sent ${stats.framesSent} · reply audio played ${(stats.samplesPlayed / 16000).toFixed(1)} s · ` +
    `turns ${stats.turnsDone} · interrupted ${stats.interrupted} · paused ${stats.paused} · resumed ${stats.resumed}`;
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function bubble(who, className) {
  const el = element("div", "bubble " + className + " pending");
  el.append(element("span", "who", who), element("span", "text"));
  return el;
}

// The DOM of one turn: the user's words, the reply, then its figures.
function turnView(turnId) {
  let view = state.turns.get(turnId);
  if (!view) {
    const root = element("div", "turn");
    view = { root, you: bubble("You", "you"), bot: bubble("Assistant", "bot"), foot: element("div", "metrics") };
    root.append(view.you, view.bot, view.foot);
    $("conversation").append(root);
    state.turns.set(turnId, view);
  }
  return view;
}

function setText(bubbleEl, text, done) {
  bubbleEl.querySelector(".text").textContent = text;
  bubbleEl.classList.toggle("pending", !done);
}

function appendText(bubbleEl, delta) {
  const span = bubbleEl.querySelector(".text");
  span.textContent += delta;
}

function formatMs(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value)} ms`;
}

function metricsLine(m) {
  return (
    `first audio ${formatMs(m.ttfb_ms)} · speech-to-text ${formatMs(m.stt_ms)} · ` +
    `LLM first token ${formatMs(m.llm_ttft_ms)} · first synthesis ${formatMs(m.tts_first_audio_ms)}`
  );
}

// --- server events -------------------------------------------------------------------------

const handlers = {
  "session.created"(ev) {
    setPill("connection", "Connected", "ok");
    state.turnDetection = ev.session.turn_detection.type;
  },
  "session.updated"(ev) {
    state.turnDetection = ev.session.turn_detection.type;
  },
  "input_audio.speech_started"() {
    setPill("speech", "Hearing you…", "live");
  },
  "input_audio.speech_stopped"() {
    setPill("speech", "Listening", "ok");
  },
  "input_audio.committed"(ev) {
    turnView(ev.turn_id);
  },
  "response.created"(ev) {
    state.openTurn = ev.turn_id;
    turnView(ev.turn_id);
  },
  "transcript.final"(ev) {
    setText(turnView(ev.turn_id).you, ev.text || "(no words recognized)", true);
  },
  "response.text.delta"(ev) {
    appendText(turnView(ev.turn_id).bot, ev.delta);
  },
  "response.paused"(ev) {
    // Speech over the reply: stop it now (fading out), the server decides what it was.
    stats.paused += 1;
    pauseReplyAudio(ev.turn_id);
    setNote(ev.turn_id, "paused", "paused: listening to you…");
  },
  "response.resumed"(ev) {
    stats.resumed += 1;
    if (state.playback) {
      // The audio that follows starts at resume_ms of this response: count positions from there.
      state.playback.port.postMessage({ type: "seek", turnId: ev.turn_id, samples: Math.round(ev.resume_ms * 16) });
    }
    const what = { noise: "a noise", backchannel: "a backchannel", too_few_words: "too few words" }[ev.overlap];
    const said = ev.transcript ? ` “${ev.transcript}”` : "";
    setNote(ev.turn_id, "resumed", `resumed: that was ${what || ev.overlap}${said}`);
    renderStats();
  },
  "response.interrupted"(ev) {
    stats.interrupted += 1;
    setNote(ev.turn_id, null, null);
    dropReplyAudio(ev.turn_id);
  },
  "response.done"(ev) {
    onResponseDone(ev);
  },
  error(ev) {
    showError(describeServerError(ev));
  },
};

// The turn's pause/resume note (one at a time; text null removes it).
function setNote(turnId, kind, text) {
  const view = turnView(turnId);
  if (view.note) view.note.remove();
  view.note = null;
  if (text === null) return;
  view.note = element("div", "status " + kind, text);
  view.bot.after(view.note);
}

function onResponseDone(ev) {
  const view = turnView(ev.turn_id);
  if (state.openTurn === ev.turn_id) state.openTurn = null;
  // A response cut off in any other way (cancelled, failed) also drops its queued audio.
  if (ev.status !== "completed" && ev.status !== "interrupted") dropReplyAudio(null);
  view.you.classList.remove("pending");
  view.bot.classList.remove("pending");
  view.foot.textContent = metricsLine(ev.metrics || {});
  if (ev.status !== "completed") {
    const label = { interrupted: "interrupted: you spoke over the reply", cancelled: "cancelled", failed: "failed" };
    const note = element("div", "status " + ev.status, label[ev.status] || ev.status);
    if (ev.status === "interrupted") note.textContent += ` (heard: “${ev.text}”)`;
    view.foot.after(note);
  }
  stats.turnsDone += 1;
  renderStats();
}

function describeServerError(ev) {
  const friendly = {
    llm_unavailable: "The language model is not reachable.",
    busy: "The server is busy with earlier turns; wait for the replies.",
    input_audio_buffer_empty: "Nothing was recorded: hold Talk while you speak.",
    no_speech: "No words were recognized. Try again a little louder or closer to the microphone.",
  };
  const lead = friendly[ev.code] || "The server reported a problem.";
  return `${lead} (${ev.message})`;
}

function onServerMessage(event) {
  if (typeof event.data !== "string") {
    playReplyAudio(event.data);
    return;
  }
  const ev = JSON.parse(event.data);
  stats.lastEvent = ev.type;
  const handler = handlers[ev.type];
  if (handler) handler(ev);
}

// --- audio ---------------------------------------------------------------------------------

function playReplyAudio(buffer) {
  if (!state.playback || state.openTurn === null) return; // no response open: nothing to play
  state.playback.port.postMessage({ type: "audio", turnId: state.openTurn, pcm: buffer }, [buffer]);
}

// Stop the paused response `turnId` (fading out, dropping what is queued), keeping it open for
// the audio of a resume; tell the server where its playback really stopped.
function pauseReplyAudio(turnId) {
  if (!state.playback) return;
  state.pendingPosition = turnId;
  state.playback.port.postMessage({ type: "flush" });
}

// Drop all queued reply audio now. For a barge-in on `turnId`, tell the server how much of
// that response was really played, once the worklet has answered with its count.
function dropReplyAudio(turnId) {
  if (state.openTurn === turnId) state.openTurn = null;
  if (!state.playback) return;
  state.pendingPosition = turnId;
  state.playback.port.postMessage({ type: "flush" });
}

function onPlaybackMessage(msg) {
  if (msg.type === "stats") {
    stats.samplesPlayed = msg.samplesPlayed;
    renderStats();
  } else if (msg.type === "flushed" && state.pendingPosition) {
    const turnId = state.pendingPosition;
    state.pendingPosition = null;
    const playedMs = (msg.played[turnId] || 0) / 16;
    send({ type: "playback.position", turn_id: turnId, played_ms: playedMs });
  }
}

function onCaptureFrame(buffer) {
  // Hands-free streams all the time; push-to-talk only while Talk is held (or toggled on).
  if (state.mode === "idle") return;
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(buffer);
    stats.framesSent += 1;
  }
}

async function startAudio() {
  const audio = new AudioContext();
  await audio.audioWorklet.addModule("/page/capture-worklet.js");
  await audio.audioWorklet.addModule("/page/playback-worklet.js");

  state.playback = new AudioWorkletNode(audio, "voiceorch-playback", { numberOfInputs: 0, outputChannelCount: [1] });
  state.playback.port.onmessage = (e) => onPlaybackMessage(e.data);
  state.playback.connect(audio.destination);

  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
  } catch (err) {
    throw new Error(microphoneProblem(err));
  }
  const source = audio.createMediaStreamSource(stream);
  state.capture = new AudioWorkletNode(audio, "voiceorch-capture", { numberOfOutputs: 0 });
  state.capture.port.onmessage = (e) => onCaptureFrame(e.data);
  source.connect(state.capture);
  await audio.resume();
  state.audio = audio;
}

function microphoneProblem(err) {
  if (err.name === "NotAllowedError") return "Microphone access was refused. Allow the microphone for this page and reload.";
  if (err.name === "NotFoundError") return "No microphone was found. Plug one in and reload.";
  if (err.name === "NotReadableError") return "The microphone is in use by another program or could not be opened.";
  return `The microphone could not be started (${err.name}: ${err.message}).`;
}

// --- connection ----------------------------------------------------------------------------

async function voiceUrl() {
  let config;
  try {
    const response = await fetch("/config.json", { cache: "no-store" });
    config = await response.json();
  } catch (err) {
    throw new Error("The voiceorch server is unreachable: its configuration could not be loaded.");
  }
  // A server that requires a token gets it from this page's own URL: open /?token=...
  const token = new URLSearchParams(location.search).get("token");
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  const secure = location.protocol === "https:";
  if (config.voice_url) {
    // Behind a proxy: a path on this page's origin, or a full ws(s):// URL.
    const url = new URL(config.voice_url, location.href);
    if (url.protocol === "http:" || url.protocol === "https:") url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.search = query;
    return url.href;
  }
  return `${secure ? "wss" : "ws"}://${location.hostname}:${config.voice_port}${config.voice_path}${query}`;
}

// Open the WebSocket and resolve once the server's session.created has arrived.
function connect(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    let ready = false;
    ws.onmessage = (event) => {
      onServerMessage(event);
      if (!ready && stats.lastEvent === "session.created") {
        ready = true;
        resolve(ws);
      }
    };
    ws.onclose = (event) => {
      if (!ready) {
        reject(new Error(`The voice server at ${url} is unreachable.`));
        return;
      }
      onConnectionClosed(event);
    };
    state.ws = ws;
  });
}

function onConnectionClosed(event) {
  setPill("connection", "Disconnected", "bad");
  setPill("speech", "Microphone off");
  setMode("idle");
  state.ws = null;
  state.starting = null; // the next button press reconnects
  if (state.playback) state.playback.port.postMessage({ type: "flush" });
  if (!state.closing) {
    const why = event.reason ? `: ${event.reason}` : "";
    showError(`The connection to the voice server closed (code ${event.code}${why}). Press a button to reconnect.`);
  }
}

function send(obj) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(obj));
}

// Connect first, then open the microphone, so no captured audio is lost.
function start() {
  if (!state.starting) {
    state.starting = (async () => {
      showError("");
      setPill("connection", "Connecting…");
      await connect(await voiceUrl());
      if (!state.audio) await startAudio();
    })().catch((err) => {
      state.starting = null;
      setPill("connection", "Not connected", "bad");
      showError(err.message);
      if (state.ws) {
        state.closing = true;
        state.ws.close();
        state.closing = false;
      }
      throw err;
    });
  }
  return state.starting;
}

function setTurnDetection(type) {
  if (state.turnDetection === type) return;
  state.turnDetection = type;
  send({ type: "session.update", session: { turn_detection: { type } } });
}

// --- modes and buttons ---------------------------------------------------------------------

function setMode(mode) {
  state.mode = mode;
  $("handsfree").setAttribute("aria-pressed", String(mode === "handsfree"));
  $("talk").classList.toggle("active", mode === "talk");
  $("talk").textContent = mode === "talk" ? "Release to send" : "Talk";
  if (state.ws) setPill("speech", mode === "idle" ? "Microphone off" : mode === "talk" ? "Recording" : "Listening", mode === "idle" ? "" : "ok");
}

async function toggleHandsFree() {
  if (state.mode === "handsfree") {
    setMode("idle");
    return;
  }
  try {
    await start();
  } catch {
    return;
  }
  setTurnDetection("server_vad");
  setMode("handsfree");
}

async function beginTalking() {
  try {
    await start();
  } catch {
    return false;
  }
  setTurnDetection("none");
  send({ type: "input_audio.clear" }); // start the turn from silence, not from older audio
  setMode("talk");
  return true;
}

function endTalking() {
  if (state.mode !== "talk") return;
  setMode("idle");
  send({ type: "input_audio.commit" });
}

// Talk works both ways: hold it while speaking, or click once to start and once to send.
function wireTalkButton() {
  const talk = $("talk");
  let pressedAt = 0;
  let wasTalking = false;

  const press = async () => {
    wasTalking = state.mode === "talk";
    pressedAt = performance.now();
    if (!wasTalking) await beginTalking();
  };
  const release = () => {
    const held = performance.now() - pressedAt > HOLD_MS;
    if (wasTalking || held) endTalking(); // second click of a toggle, or end of a hold
  };

  talk.addEventListener("pointerdown", (e) => {
    talk.setPointerCapture(e.pointerId);
    press();
  });
  talk.addEventListener("pointerup", release);
  document.addEventListener("keydown", (e) => {
    if (e.code === "Space" && !e.repeat && e.target === document.body) {
      e.preventDefault();
      press();
    }
  });
  document.addEventListener("keyup", (e) => {
    if (e.code === "Space" && e.target === document.body) release();
  });
}

// For tests and the console: send any control event (e.g. a session.update).
window.voiceorchSend = send;

wireTalkButton();
$("handsfree").addEventListener("click", toggleHandsFree);
renderStats();
