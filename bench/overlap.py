"""Speech over a reply: barge-in figures for both ``interruption`` modes, and how often a noise or
a backchannel interrupts a reply (false interruptions), with the real models.

    .venv/bin/python -m bench.overlap                  # both modes, every clip, 1 round
    .venv/bin/python -m bench.overlap --repeat 3 --modes pause_and_decide --out /tmp/o.json
    .venv/bin/python -m bench.overlap --url ws://127.0.0.1:8765/v1/voice   # a server you run

Each measurement is a fresh session (server VAD, the bench's long-reply instructions): a typed
question, then, 0.5 s into its reply's audio, one clip from the live microphone (silence before
and after). The clips:

- **noise**: buzzes that Silero VAD takes for speech and Whisper for no words (:func:`hum`, at
  several pitches and rhythms), reversed speech (babble), white noise (VAD ignores it);
- **backchannel**: "Mm-hmm.", "Uh-huh.", "Yeah.", "Okay.", "Right.", "Sure.", "I see." spoken
  by eSpeak NG (when ``espeak-ng`` is installed; else only tests/data/mmhm_espeak_16k.wav);
- **words**: "Wait, stop. What time is it?" and "And so my fellow Americans" (real
  interruptions, which must interrupt).

Per measurement: the outcome (``interrupted``, ``resumed``, or ``ignored``: the reply was
neither paused nor interrupted), and, from the frame carrying the clip's first speech sample
(sent): ``audio_stop_ms`` until ``response.paused`` or ``response.interrupted`` arrived (the
server sends no reply audio after it), ``decision_ms`` until the verdict arrived
(``response.resumed`` / ``response.interrupted``; the same event under ``immediate``) and, for a
resume, ``repeat_ms`` (``played_ms - resume_ms``: the audio heard twice). After the verdict the
session ends (its reply, and any turn the clip made, are cancelled with it). The summary gives,
per mode, the false-interruption rate (noises and backchannels that interrupted), the real
interruptions missed, and the p50/max of the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import soxr
import trio

from voiceorch import protocol as p
from voiceorch.audio_files import read_as_wire_pcm

from .client import BenchSession, Received, open_session
from .scenarios import BARGE_IN_CLIP_MS, BARGE_IN_INSTRUCTIONS, DATA, Clip
from .servers import ServerProcess

QUESTION = "Tell me about the Moon."
MODES = ("immediate", "pause_and_decide")
BACKCHANNELS = ("Mm-hmm.", "Uh-huh.", "Yeah.", "Okay.", "Right.", "Sure.", "I see.")


def hum(ms: int = 1000, f0: float = 120.0, vibrato: float = 0.03, tremolo: float = 0.5, seed_phase: float = 0.0):
    """A voiced buzz (``f0`` and 10 harmonics at 1/k), with a 5 Hz vibrato and a 4 Hz tremolo
    (a syllable-like rhythm), 30 ms attack, 50 ms release, at about -12 dBFS: a hum, a mumble, a
    motor. Silero VAD takes it for speech; Whisper hears no words. Wire-format samples."""
    t = np.arange(16 * ms) / 16000
    freq = f0 * (1 + vibrato * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(freq) / 16000 + seed_phase
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * (1 + tremolo * np.sin(2 * np.pi * 4 * t))
    envelope = np.minimum(1, t / 0.03) * np.minimum(1, (t[-1] - t) / 0.05)
    return (x / np.abs(x).max() * 8000 * envelope).astype("<i2")


def _espeak(text: str) -> bytes | None:
    if shutil.which("espeak-ng") is None:
        return None
    raw = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "--stdout", text], check=True, capture_output=True)
    with wave.open(io.BytesIO(raw.stdout)) as w:
        rate, x = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    y = soxr.resample(x.astype(np.float32), rate, 16000).clip(-32768, 32767).astype("<i2")
    loud = np.nonzero(np.abs(y) > 330)[0]
    return y[max(0, loud[0] - 320) : loud[-1] + 320].tobytes()


def clips() -> list[tuple[str, Clip]]:
    """(kind, clip) for every overlap measured."""
    rng = np.random.default_rng(7)
    out: list[tuple[str, Clip]] = []

    def add(kind: str, name: str, pcm: bytes) -> None:
        out.append((kind, Clip.from_pcm(name, name, pcm)))

    add("noise", "hum 120 Hz", hum().tobytes())
    add("noise", "hum 200 Hz", hum(f0=200.0, tremolo=0.7).tobytes())
    add("noise", "hum 90 Hz, 0.6 s", hum(ms=600, f0=90.0, tremolo=0.3).tobytes())
    add("noise", "white noise 0.4 s", (rng.standard_normal(6400) * 6000).clip(-32767, 32767).astype("<i2").tobytes())
    jfk = read_as_wire_pcm(DATA / "jfk_16k.wav")
    add("noise", "reversed speech 1 s", np.frombuffer(jfk[:32_000], dtype="<i2")[::-1].tobytes())
    spoken = [(text, _espeak(text)) for text in BACKCHANNELS]
    if all(pcm is None for _, pcm in spoken):
        add("backchannel", "Mm-hmm. (tests/data)", read_as_wire_pcm(DATA / "mmhm_espeak_16k.wav"))
    for text, pcm in spoken:
        if pcm is not None:
            add("backchannel", text, pcm)
    add("words", "Wait, stop. What time is it?", read_as_wire_pcm(DATA / "wait_stop_espeak_16k.wav"))
    add("words", "And so my fellow Americans", jfk[: BARGE_IN_CLIP_MS * p.BYTES_PER_MS])
    return out


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def measure(url: str, mode: str, kind: str, clip: Clip) -> dict:
    """One session: the question, the clip over its reply, the outcome and the figures."""
    sample: dict = {"mode": mode, "kind": kind, "clip": clip.name, "outcome": None}
    async with open_session(url, vad=True, silence=True, instructions=BARGE_IN_INSTRUCTIONS) as s:
        patch = p.SessionPatch(turn_detection=p.TurnDetectionPatch(interruption=mode))
        sent = await s.send(p.SessionUpdate(session=patch))
        await s.wait_event(p.SessionUpdated, after=sent)
        await s.send(p.InputText(text=QUESTION))
        created = await s.wait_event(p.ResponseCreated)
        turn = s.received[created].event.turn_id

        def audio_or_done(item: Received) -> bool:
            return item.is_audio or (isinstance(item.event, p.ResponseDone) and item.event.turn_id == turn)

        first = await s.wait_for(audio_or_done, start=created)
        if not s.received[first].is_audio:
            sample["outcome"] = "no_audio"
            return sample
        await trio.sleep(0.5)
        played = s.mic.queue(clip.pcm)
        await played.started.wait()
        speech_at = s.mic.sent_at(played.start_pos_ms + clip.speech_start_ms, first=True) or played.first_sent_at
        sample["reply_audio_before_ms"] = (
            sum(i.audio_bytes for i in s.received[first:] if i.is_audio and i.at < speech_at) / p.BYTES_PER_MS
        )
        await _outcome(s, sample, turn, first, speech_at)
        await played.finished.wait()
        # (Closing the connection ends the session: whatever it still does is cancelled.)
    return sample


async def _outcome(s: BenchSession, sample: dict, turn: str, start: int, speech_at: float) -> None:
    stops = (p.ResponsePaused, p.ResponseInterrupted, p.ResponseDone)

    def stop(item: Received) -> bool:
        return isinstance(item.event, stops) and item.event.turn_id == turn

    with trio.move_on_after(15):
        at = await s.wait_for(stop, start=start)
        event = s.received[at].event
        if isinstance(event, p.ResponseDone):
            sample["outcome"] = "ignored"  # played to its end, or ended otherwise: not stopped
            return
        sample["audio_stop_ms"] = _ms(s.received[at].at - speech_at)
        if isinstance(event, p.ResponsePaused):

            def verdict(item: Received) -> bool:
                kinds = (p.ResponseResumed, p.ResponseInterrupted, p.ResponseDone)
                return isinstance(item.event, kinds) and item.event.turn_id == turn

            at = await s.wait_for(verdict, start=at)
            event = s.received[at].event
        sample["decision_ms"] = _ms(s.received[at].at - speech_at)
        if isinstance(event, p.ResponseResumed):
            sample.update(outcome="resumed", overlap=event.overlap, transcript=event.transcript)
            sample["repeat_ms"] = round(event.played_ms - event.resume_ms, 1)
        elif isinstance(event, p.ResponseInterrupted):
            sample["outcome"] = "interrupted"
        else:
            sample["outcome"] = "ended"
        return
    sample["outcome"] = "ignored"  # nothing stopped the reply in 15 s


def summarize(samples: list[dict]) -> dict:
    summary: dict = {}
    for mode in MODES:
        mine = [s for s in samples if s["mode"] == mode]
        if not mine:
            continue
        not_words = [s for s in mine if s["kind"] != "words"]
        words = [s for s in mine if s["kind"] == "words"]

        def figures(key: str, among: list[dict]) -> dict | None:
            values = [s[key] for s in among if s.get(key) is not None]
            return (
                {"p50": round(statistics.median(values), 1), "max": max(values), "n": len(values)} if values else None
            )

        summary[mode] = {
            "false_interruptions": sum(s["outcome"] == "interrupted" for s in not_words),
            "noises_and_backchannels": len(not_words),
            "false_interruption_rate": round(sum(s["outcome"] == "interrupted" for s in not_words) / len(not_words), 3)
            if not_words
            else None,
            "stopped_by_noise_or_backchannel": sum(s["outcome"] in ("interrupted", "resumed") for s in not_words),
            "real_interruptions_missed": sum(s["outcome"] != "interrupted" for s in words),
            "real_interruptions": len(words),
            "speech_to_audio_stop_ms": figures("audio_stop_ms", mine),
            "speech_to_decision_ms": figures("decision_ms", mine),
            "speech_to_decision_ms_real_words": figures("decision_ms", words),
            "repeat_ms": figures("repeat_ms", mine),
        }
    return summary


def print_table(samples: list[dict], summary: dict) -> None:
    print(f"{'mode':17} {'kind':12} {'clip':30} {'outcome':12} {'stop ms':>8} {'decide ms':>9}  transcript")
    for s in samples:
        print(
            f"{s['mode']:17} {s['kind']:12} {s['clip'][:30]:30} {str(s['outcome']):12} "
            f"{s.get('audio_stop_ms', ''):>8} {s.get('decision_ms', ''):>9}  {s.get('transcript', '')}"
        )
    print(json.dumps(summary, indent=2))


async def run(url: str, modes: list[str], repeat: int) -> list[dict]:
    samples = []
    todo = clips()
    for _ in range(repeat):
        for kind, clip in todo:
            for mode in modes:
                with trio.fail_after(120):
                    sample = await measure(url, mode, kind, clip)
                print(sample, file=sys.stderr, flush=True)
                samples.append(sample)
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overlap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server's /v1/voice URL (default: start one with the real models)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or Path(__file__).parent / "results" / f"overlap-{stamp}.json"
    server = None
    url = args.url
    if url is None:
        server = ServerProcess.start(log_path=out.with_suffix("").parent / f"{out.stem}-logs" / "server.log")
        url = server.url
    load_before = open("/proc/loadavg").read().split()[:3]
    try:
        samples = trio.run(run, url, args.modes.split(","), args.repeat)
    finally:
        if server is not None:
            server.stop()
    summary = summarize(samples)
    load_after = open("/proc/loadavg").read().split()[:3]
    print_table(samples, summary)
    print(f"load average before {' '.join(load_before)}, after {' '.join(load_after)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"samples": samples, "summary": summary, "loadavg": [load_before, load_after]}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
