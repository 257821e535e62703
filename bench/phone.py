"""``python -m bench.phone``: voice-to-voice latency of a phone call (8 kHz μ-law in and out,
``/v1/twilio``) beside the same clip over ``/v1/voice`` (16 kHz PCM), interleaved.

It starts ``voiceorch serve`` with the embedded models (or uses ``--url``), holds one typed
warm-up turn, then ``--repeat`` rounds of: each clip over ``/v1/voice`` (bench.scenarios's
``voice_to_voice``), then the same clip over ``/v1/twilio``, each in a fresh session. The phone
client speaks Twilio Media Streams as Twilio does: ``connected``, ``start`` (numbers as
strings), then 20 ms ``media`` frames of base64 μ-law on a fixed schedule (frame *k* sent at
``t0 + k * 20 ms``): the clip as a phone would send it (soxr 16 -> 8 kHz, G.711 μ-law, the
server's own :class:`~voiceorch.telephony.CallAudio`), then μ-law silence; it echoes every
``mark`` at once (the reply "played" as it arrived).

``phone_voice_to_voice_ms``: the frame carrying the clip's last speech sample (per Silero,
bench.scenarios.speech_span) sent -> the first reply ``media`` received. A call has no server
events, so the turn cannot be told apart on the wire: use clips the server VAD hears as one
turn (the default, hotwords_16k; JFK pauses and is answered mid-clip). A sample whose call
received reply audio while the clip was still playing is flagged (``earlier_reply``). Each
call is drained (no reply ``media`` for 3 s) before ``stop``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import trio
import trio_websocket

from voiceorch.telephony import CallAudio
from voiceorch.telephony.audio import MULAW_8K

from . import machine, report, scenarios
from .scenarios import Clip
from .servers import ServerProcess

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FRAME_S = 0.02
FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
SILENCE = bytes([0xFF]) * FRAME_BYTES  # μ-law zero
STREAM_SID = "MZ0000000000000000000000000000bench"
#: A reply has ended when no media came for this long (a call has no response.done; under load
#: the next sentence's synthesis can take seconds).
DRAIN_QUIET_S = 3.0


def say(line: str) -> None:
    print(f"[bench.phone] {line}", file=sys.stderr, flush=True)


def _frame(event: str, seq: int, **fields) -> str:
    return json.dumps({"event": event, "sequenceNumber": str(seq), "streamSid": STREAM_SID, **fields})


def _start(seq: int, call_sid: str) -> str:
    start = {
        "accountSid": "AC0",
        "streamSid": STREAM_SID,
        "callSid": call_sid,
        "tracks": ["inbound"],
        "customParameters": {},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    return _frame("start", seq, start=start)


def phone_audio(clip: Clip) -> bytes:
    """The clip as a phone sends it: μ-law 8 kHz, padded with silence to whole 20 ms frames."""
    phone = CallAudio(MULAW_8K)
    ulaw = phone.from_v1(clip.pcm) + phone.flush_out()
    return ulaw + SILENCE[: (-len(ulaw)) % FRAME_BYTES]


_calls = 0


async def phone_voice_to_voice(base_url: str, clip: Clip) -> dict:
    """One call over ``/v1/twilio``: the clip at real time, then silence until the reply ended."""
    global _calls
    _calls += 1
    call_sid = f"CAbench{_calls:04d}"
    ulaw = phone_audio(clip)
    frames = [ulaw[i : i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)]
    last_speech_frame = max(0, min(len(frames) - 1, int(clip.speech_end_ms // (FRAME_S * 1000) - 0.001)))
    media_at: list[float] = []
    marks = 0
    sent_at: list[float] = []
    lags: list[float] = []
    seq = 0

    def next_seq() -> int:
        nonlocal seq
        seq += 1
        return seq

    async with trio_websocket.open_websocket_url(f"{base_url}/v1/twilio", disconnect_timeout=5) as ws:
        send_lock = trio.Lock()

        async def send(message: str) -> None:
            async with send_lock:
                await ws.send_message(message)

        async def receive() -> None:
            nonlocal marks
            while True:
                data = json.loads(await ws.get_message())
                if data.get("event") == "media":
                    media_at.append(trio.current_time())
                elif data.get("event") == "mark":
                    marks += 1
                    await send(_frame("mark", next_seq(), mark=data["mark"]))

        await send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await send(_start(next_seq(), call_sid))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            t0 = trio.current_time()
            k = 0
            while True:
                due = t0 + k * FRAME_S
                await trio.sleep_until(due)
                lags.append(trio.current_time() - due)
                payload = frames[k] if k < len(frames) else SILENCE
                media = {"track": "inbound", "chunk": str(k + 1), "timestamp": str(k * 20)}
                media["payload"] = base64.b64encode(payload).decode("ascii")
                await send(_frame("media", next_seq(), media=media))
                sent_at.append(trio.current_time())
                k += 1
                replied = [at for at in media_at if at >= sent_at[min(last_speech_frame, len(sent_at) - 1)]]
                if k > len(frames) and replied and trio.current_time() - media_at[-1] >= DRAIN_QUIET_S:
                    break
            await send(_frame("stop", next_seq(), stop={"accountSid": "AC0", "callSid": call_sid}))
            nursery.cancel_scope.cancel()
    speech_end_at = sent_at[last_speech_frame]
    clip_end_at = sent_at[len(frames) - 1]
    first = next(at for at in media_at if at >= speech_end_at)
    ordered = sorted(lags)
    return {
        "call_sid": call_sid,
        "phone_voice_to_voice_ms": round((first - speech_end_at) * 1000, 2),
        "phone_voice_to_voice_from_clip_end_ms": round((first - clip_end_at) * 1000, 2),
        "earlier_reply": any(at < speech_end_at for at in media_at),
        "reply_media_messages": sum(1 for at in media_at if at >= speech_end_at),
        "marks_echoed": marks,
        "send_lag_p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 2),
    }


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def _measure(name: str, clip: Clip, run: int, timeout: float, fn, *args) -> dict:
    meta = {"path": name, "clip": clip.name, "run": run, "load_average_before": _load()}
    before = machine.snapshot()
    try:
        with trio.fail_after(timeout):
            sample = await fn(*args)
    except Exception as exc:  # a failed measurement is recorded, and the run goes on
        say(f"  {name} [{clip.name}] run {run}: FAILED {exc!r}")
        return {**meta, "error": repr(exc)}
    meta["foreign_cpu_percent"] = machine.foreign_cpu_percent(before, machine.snapshot())
    meta["load_average_after"] = _load()
    value = sample.get("phone_voice_to_voice_ms", sample.get("voice_to_voice_ms"))
    say(f"  {name} [{clip.name}] run {run}: {value} ms (load {meta['load_average_after']})")
    return {**meta, **sample}


async def run(base_url: str, clips: list[Clip], repeat: int, timeout: float) -> dict:
    say("warm-up: one typed turn (not counted)")
    await scenarios.warm_up(f"{base_url}/v1/voice")
    samples: dict[str, list[dict]] = {"voice_16k": [], "phone_ulaw_8k": []}
    for run_index in range(1, repeat + 1):
        for clip in clips:  # interleaved: the two paths see the same machine
            samples["voice_16k"].append(
                await _measure(
                    "voice_16k", clip, run_index, timeout, scenarios.voice_to_voice, f"{base_url}/v1/voice", clip
                )
            )
            samples["phone_ulaw_8k"].append(
                await _measure("phone_ulaw_8k", clip, run_index, timeout, phone_voice_to_voice, base_url, clip)
            )
    return samples


def attach_server_metrics(samples: dict[str, list[dict]], log: list[dict]) -> None:
    """Each call's ``turn.done`` metrics from the server's log (a call has no server events on
    the wire): the call's session is the one whose ``call.start`` has its ``callSid``."""
    sessions = {line.get("call_id"): line.get("session_id") for line in log if line.get("event") == "call.start"}
    done: dict[str, dict] = {}
    for line in log:  # the call's first turn (the clip is one turn)
        if line.get("event") == "turn.done":
            done.setdefault(line.get("session_id"), line)
    names = ("stt_ms", "llm_ttft_ms", "tts_first_audio_ms", "ttfb_ms", "total_ms", "audio_ms")
    for sample in samples["phone_ulaw_8k"]:
        line = done.get(sessions.get(sample.get("call_sid")))
        if line is not None:
            sample["metrics"] = {name: line.get(name) for name in names}
            sample["status"] = line.get("status")


def _client_minus_server(sample: dict, field: str) -> float | None:
    """Voice-to-voice less the server's own ttfb (turn end -> first reply frame handed to the
    writer): the silence window, the transport and, on a call, the phone path's resampling and
    framing; not the models, so it compares across loads better than voice-to-voice itself."""
    ttfb = (sample.get("metrics") or {}).get("ttfb_ms")
    value = sample.get(field)
    return None if ttfb is None or value is None else round(value - ttfb, 2)


def summarize(samples: dict[str, list[dict]]) -> dict:
    field = {"voice_16k": "voice_to_voice_ms", "phone_ulaw_8k": "phone_voice_to_voice_ms"}
    summary: dict = {}
    for path, rows in samples.items():
        ok = [s for s in rows if "error" not in s and not s.get("earlier_reply")]
        summary[path] = {
            "voice_to_voice_ms": report.stats([s.get(field[path]) for s in ok]),
            "server_ttfb_ms": report.stats([(s.get("metrics") or {}).get("ttfb_ms") for s in ok]),
            "client_minus_server_ms": report.stats([_client_minus_server(s, field[path]) for s in ok]),
            "failed": sum(1 for s in rows if "error" in s),
            "earlier_reply": sum(1 for s in rows if s.get("earlier_reply")),
        }
    for figure in ("voice_to_voice_ms", "client_minus_server_ms"):
        v1, phone = (summary[k][figure] for k in ("voice_16k", "phone_ulaw_8k"))
        if v1 and phone:
            summary[f"phone_minus_voice_p50_{figure}"] = round(phone["p50"] - v1["p50"], 2)
    return summary


def render(summary: dict) -> str:
    headers = ["path", "n", "v2v p50", "v2v p95", "v2v max", "server ttfb p50", "v2v - ttfb p50", "failed", "flagged"]
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    for path in ("voice_16k", "phone_ulaw_8k"):
        entry = summary[path]
        v2v, ttfb, rest = (entry[k] or {} for k in ("voice_to_voice_ms", "server_ttfb_ms", "client_minus_server_ms"))
        cells = [
            path,
            v2v.get("n", 0),
            v2v.get("p50"),
            v2v.get("p95"),
            v2v.get("max"),
            ttfb.get("p50"),
            rest.get("p50"),
        ]
        cells += [entry["failed"], entry["earlier_reply"]]
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    for figure in ("voice_to_voice_ms", "client_minus_server_ms"):
        key = f"phone_minus_voice_p50_{figure}"
        if key in summary:
            lines.append(f"phone - voice, p50 of {figure}: {summary[key]} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.phone", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server's base URL (ws://HOST:PORT) instead of starting one")
    parser.add_argument(
        "--wav", action="append", type=Path, help="speech clip(s) (default: tests/data/hotwords_16k.wav)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds of both paths per clip (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per measurement (default %(default)s)")
    parser.add_argument("--out", type=Path, help="JSON file (default bench/results/phone-<UTC timestamp>.json)")
    args = parser.parse_args(argv)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS_DIR / f"phone-{stamp}.json"
    clips = [Clip.load(path) for path in (args.wav or [scenarios.DATA / "hotwords_16k.wav"])]
    server = None
    load_before = _load()
    if args.url:
        base_url = args.url.rstrip("/")
    else:
        say("starting voiceorch serve (embedded models) ...")
        server = ServerProcess.start("--http-port", "-1", log_path=out.with_suffix("") / "server.log")
        base_url = server.url.removesuffix("/v1/voice")
        say(f"ready in {server.startup_s:.1f} s: {base_url}")
    try:
        samples = trio.run(run, base_url, clips, args.repeat, args.timeout)
    finally:
        if server is not None:
            server.stop()
    if server is not None:
        attach_server_metrics(samples, server.log_lines())
    summary = summarize(samples)
    results = {
        "kind": "phone",
        "started": stamp,
        "machine": {"cpu_count": os.cpu_count(), "load_average_before": load_before, "load_average_after": _load()},
        "clips": [{"name": c.name, "path": c.path, "speech_end_ms": c.speech_end_ms} for c in clips],
        "samples": samples,
        "summary": summary,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(render(summary))
    print(f"load average before {load_before}, after {_load()}; {out}")
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    say(f"done in {time.monotonic() - started:.0f} s")
    sys.exit(code)
