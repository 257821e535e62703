"""End of turn against a real ``serve``: cut-offs and voice-to-voice latency, server VAD vs semantic_vad, one run.

    .venv/bin/python -m bench.turn_bench [--limit N] [--transcribe-pieces] [--out bench/baselines/turn_bench.md]

Starts ``python -m voiceorch serve --workers 1`` with the embedded models (Whisper tiny.en, the
llama.cpp child, Piper, Silero, Smart Turn v3.2), then, for every utterance of the pause corpus
(``bench.corpus.make_corpus``: 24 sentences with a 0.6-1.5 s pause where they are plainly
unfinished, 12 complete ones; espeak-ng variants and Piper joe) and the two real clips of
tests/data, one fresh session per mode, the modes back to back for each utterance (so both see
the same load; each goes first on every other utterance): ``server_vad`` (500 ms, the default)
and ``semantic_vad`` (eagerness auto). Each
session streams the utterance like a microphone (20 ms frames at real time, then silence) and
waits for the first reply audio after the utterance's speech has ended.

- cut-off: the server committed a turn before the utterance's last speech was sent (it
  answered half-heard); counted over the utterances with a mid-sentence pause;
- commit latency: the frame carrying the utterance's last speech sample sent ->
  ``input_audio.committed`` of the turn that holds it received;
- voice-to-voice: the same frame sent -> the first reply audio frame received (of the turn not cut).

The load average is recorded beside the figures: on a shared machine, compare the modes with
each other (they ran interleaved), not with figures from another run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import trio

from bench.client import open_session
from bench.corpus.make_corpus import ensure
from bench.scenarios import speech_span
from bench.servers import ServerProcess
from voiceorch import protocol as p
from voiceorch.audio_files import read_as_wire_pcm

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
MODES = {
    "server_vad 500 ms": p.TurnDetectionPatch(type="server_vad"),
    "semantic_vad (auto)": p.TurnDetectionPatch(type="semantic_vad", eagerness="auto"),
}
#: After the speech, how long to wait for the turn's reply before counting it as never answered.
ANSWER_TIMEOUT_S = 20.0


def utterances(limit: int | None) -> list[dict]:
    folder, manifest = ensure()
    items = [
        {"name": f"{e['file']} {e['voice']}", "path": folder / e["file"], "pause": not e["complete"]}
        for e in manifest["pause"]
    ]
    items += [
        {"name": "jfk_16k (real)", "path": DATA / "jfk_16k.wav", "pause": True},  # pauses of 0.6-1.1 s
        {"name": "hotwords_16k (real)", "path": DATA / "hotwords_16k.wav", "pause": False},
    ]
    if limit is not None:  # keep the mix: pause and complete ones alike
        pause = [u for u in items if u["pause"]][:limit]
        items = pause + [u for u in items if not u["pause"]][: max(1, limit // 2)]
    return items


async def measure(url: str, pcm: bytes, speech_end_ms: float, patch: p.TurnDetectionPatch) -> dict:
    """One session: set the mode, stream ``pcm`` then silence, follow the turns until the reply
    to the speech's end starts (or the timeout)."""
    async with open_session(url, vad=True, silence=True, start_mic=False) as s:
        await s.send(p.SessionUpdate(session=p.SessionPatch(turn_detection=patch)))
        await s.wait_event(p.SessionUpdated)
        s.start_microphone()
        played = s.mic.queue(pcm)
        await played.started.wait()
        start_pos = played.start_pos_ms
        end_sent_at = None
        with trio.move_on_after(len(pcm) / p.BYTES_PER_MS / 1000 + ANSWER_TIMEOUT_S):
            await played.finished.wait()
            end_sent_at = s.mic.sent_at(start_pos + speech_end_ms)
            # The turn that holds the end of the speech: the first committed after it was sent.
            committed = await s.wait_event(p.InputAudioCommitted, after=end_sent_at)
            await s.wait_for(lambda item: item.is_audio, start=committed)
        commits = [item for _, item in s.events(p.InputAudioCommitted)]
        early = [item for item in commits if end_sent_at is None or item.at < end_sent_at]
        final = [item for item in commits if end_sent_at is not None and item.at >= end_sent_at]
        audio_after = [
            item
            for item in s.received
            if item.is_audio and final and end_sent_at is not None and item.at >= final[0].at
        ]
        return {
            "turns": len(commits),
            "cut": bool(early),
            "commit_ms": round((final[0].at - end_sent_at) * 1000, 1) if final else None,
            "voice_to_voice_ms": round((audio_after[0].at - end_sent_at) * 1000, 1) if audio_after else None,
            "answered": bool(audio_after),
            "load1": os.getloadavg()[0],
        }


def _p(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def summary(results: list[dict], items: list[dict]) -> list[dict]:
    rows = []
    with_pause = [i for i, u in enumerate(items) if u["pause"]]
    # The utterances every mode answered whole: the voice-to-voice figures to compare.
    whole = [
        i
        for i, r in enumerate(results)
        if all(r[m]["voice_to_voice_ms"] is not None and not r[m]["cut"] for m in MODES)
    ]
    for mode in MODES:
        samples = [r[mode] for r in results]
        both = [samples[i]["voice_to_voice_ms"] for i in whole]
        cut = sum(samples[i]["cut"] for i in with_pause)
        commits = [s["commit_ms"] for s in samples if s["commit_ms"] is not None and not s["cut"]]
        v2v = [s["voice_to_voice_ms"] for s in samples if s["voice_to_voice_ms"] is not None and not s["cut"]]
        rows.append(
            {
                "mode": mode,
                "cut_off": f"{cut}/{len(with_pause)} ({100 * cut / max(1, len(with_pause)):.0f} %)",
                "commit_p50_ms": _p(commits, 0.5),
                "v2v_p50_ms": _p(v2v, 0.5),
                "v2v_p90_ms": _p(v2v, 0.9),
                "v2v_n": len(v2v),
                "v2v_both_p50_ms": _p(both, 0.5),
                "both_n": len(both),
                "unanswered": sum(not s["answered"] for s in samples),
            }
        )
    return rows


def table(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| mode | cut-off rate (pause utterances) | commit latency p50 ms | voice-to-voice p50 ms | p90 ms | n "
        "| v2v p50 ms, utterances both modes answered whole (n) | unanswered |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['cut_off']} | {r['commit_p50_ms']} | {r['v2v_p50_ms']} | {r['v2v_p90_ms']} "
            f"| {r['v2v_n']} | {r['v2v_both_p50_ms']} ({r['both_n']}) | {r['unanswered']} |"
        )
    return "\n".join(lines) + "\n"


async def run(url: str, items: list[dict]) -> list[dict]:
    results = []
    for k, item in enumerate(items):
        pcm = read_as_wire_pcm(item["path"])
        _, speech_end = speech_span(pcm)
        row = {}
        # Each mode goes first on every other utterance: the one that follows another session
        # may meet the end of its cancelled work.
        order = list(MODES.items()) if k % 2 == 0 else list(MODES.items())[::-1]
        for mode, patch in order:
            row[mode] = await measure(url, pcm, speech_end, patch)
            await trio.sleep(1.0)  # the cancelled reply's work winds down
        results.append(row)
        print(
            f"[{k + 1}/{len(items)}] {item['name']}: "
            + "; ".join(
                f"{m}: {'CUT ' if row[m]['cut'] else ''}commit {row[m]['commit_ms']} v2v {row[m]['voice_to_voice_ms']}"
                for m in MODES
            ),
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "baselines" / "turn_bench.md")
    parser.add_argument("--limit", type=int, help="only this many pause utterances (and half as many complete)")
    parser.add_argument("--transcribe-pieces", action="store_true", help="serve --transcribe-pieces")
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra argument of the started serve, repeatable (e.g. --serve-arg=--speculate-after-ms=64)",
    )
    parser.add_argument("--url", help="a server you run (ws://.../v1/voice) instead of starting one")
    parser.add_argument("--report", type=Path, help="print the table of an earlier run's JSON and stop")
    args = parser.parse_args()
    if args.report is not None:
        raw = json.loads(args.report.read_text())
        pause = raw.get("pause") or [n.startswith(("pause_", "jfk")) for n in raw["items"]]
        print(table(summary(raw["results"], [{"pause": flag} for flag in pause]), f"# {args.report.name}"))
        return
    items = utterances(args.limit)
    results_dir = Path(__file__).parent / "results"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    server = None
    if args.url is None:
        extra = ["--workers", "1"] + (["--transcribe-pieces"] if args.transcribe_pieces else []) + args.serve_arg
        server = ServerProcess.start(*extra, log_path=results_dir / f"turn_bench-{stamp}-logs" / "server.log")
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        results = trio.run(run, args.url or server.url, items)
    finally:
        if server is not None:
            server.stop()
    load_after = os.getloadavg()
    rows = summary(results, items)
    loads = [r[m]["load1"] for r in results for m in MODES]
    header = (
        f"# End of turn against a real serve: server_vad vs semantic_vad "
        f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)\n\n"
        f"{len(items)} utterances ({sum(u['pause'] for u in items)} with a mid-sentence pause), one session per "
        f"utterance and mode, modes interleaved; embedded models, `serve --workers 1"
        f"{' --transcribe-pieces' if args.transcribe_pieces else ''}{''.join(' ' + a for a in args.serve_arg)}`; "
        f"{os.cpu_count()} cores; "
        f"load average (1 min) {load_before[0]:.1f} before, {min(loads):.1f}-{max(loads):.1f} during, "
        f"{load_after[0]:.1f} after; {time.monotonic() - started:.0f} s. Latencies of turns not cut off, from the "
        f"frame carrying the utterance's last speech sample."
    )
    text = table(rows, header)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    results_dir.mkdir(parents=True, exist_ok=True)
    raw = {
        "items": [u["name"] for u in items],
        "pause": [u["pause"] for u in items],
        "results": results,
        "summary": rows,
        "load": [load_before, load_after],
    }
    (results_dir / f"turn_bench-{stamp}.json").write_text(json.dumps(raw, indent=1, default=str))


if __name__ == "__main__":
    main()
