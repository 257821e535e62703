"""``python -m bench``: one run of the benchmark, start to finish.

1. Real models: start ``voiceorch serve`` (or use ``--url``), hold one drained warm-up turn,
   then ``--repeat`` rounds of the scenarios, each measurement in a fresh session; stop the server.
   With ``--engines remote`` the bench first starts the engine servers (wyoming-faster-whisper,
   wyoming-piper, llama.cpp; bench/engine_servers.py) and the voice server uses them.
2. Floors: each embedded model alone on the same inputs, with nothing else running; with
   ``--engines remote`` also the same inputs through the remote engines, so each hop's cost is
   measured (remote floor - in-process floor).
3. Concurrency: a fresh fake-engine server per level of ``--sessions``.
4. Summary: the table on the terminal, everything in the JSON file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import attrs
import trio

from voiceorch import protocol as p
from voiceorch.session.history import DEFAULT_INSTRUCTIONS
from voiceorch.session.settings import SessionSettings

from . import floors as fl
from . import machine, report, scenarios
from .concurrency import loop_lag, run_concurrency
from .engine_servers import EngineServers
from .scenarios import Clip
from .servers import ServerProcess, read_log

SCENARIOS = ["commit", "voice_to_voice", "text", "barge_in"]
ENGINE_MODES = ["embedded", "remote"]
_ALIASES = {"v2v": "voice_to_voice", "barge": "barge_in", "barge-in": "barge_in"}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The server's speculative start of a turn inside the silence window (None: it has none).
SPECULATE_AFTER_MS = getattr(SessionSettings(), "speculate_after_ms", None)


def say(line: str) -> None:
    print(f"[bench] {line}", file=sys.stderr, flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Latency and concurrency benchmark of voiceorch (see bench/README.md).",
    )
    parser.add_argument("--quick", action="store_true", help="short run: --repeat 1 --sessions 1,4")
    parser.add_argument("--url", help="measure this running server (ws://.../v1/voice) instead of starting one")
    parser.add_argument(
        "--engines",
        choices=ENGINE_MODES,
        default="embedded",
        help="embedded: the server's in-process models (default); remote: the bench starts "
        "wyoming-faster-whisper, wyoming-piper and a llama.cpp server, the voice server uses them "
        "(--stt-url/--tts-url/--llm-url), and the floors measure each hop",
    )
    parser.add_argument(
        "--wav", action="append", default=[], type=Path, help="another speech clip (any audio format; repeatable)"
    )
    parser.add_argument(
        "--repeat", type=int, help="runs of each scenario per clip, each in a fresh session (default 3; --quick 1)"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated subset of %(default)s (also v2v, barge), or 'none'",
    )
    parser.add_argument(
        "--sessions", help="concurrency levels, e.g. 1,5,10 (default 1,5,10,20,40; --quick 1,4); 'none' skips"
    )
    parser.add_argument(
        "--turns", type=int, default=2, help="turns per session in the concurrency part (default %(default)s)"
    )
    parser.add_argument(
        "--workers",
        help="worker counts of the concurrency part's servers (serve --workers), each level run once per "
        f"count, side by side (default 1,{os.cpu_count() or 1}: one process, then one per core)",
    )
    parser.add_argument(
        "--server-tree",
        type=Path,
        help="run the concurrency part's fake-engine servers from this checkout's voiceorch (e.g. a "
        "`git worktree add /tmp/base COMMIT`); the clients stay this tree's",
    )
    parser.add_argument(
        "--tone-ms", type=int, default=1600, help="synthetic utterance length if the fake server uses FakeVAD"
    )
    parser.add_argument("--no-floors", action="store_true", help="skip the floors (no overhead figures)")
    parser.add_argument(
        "--floor-repeat",
        type=int,
        default=3,
        help="measurements of each floor input (median kept; default %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=240, help="seconds allowed for one measurement (default %(default)s)"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30,
        help="before each measurement, wait up to this many seconds for other processes to use "
        "< --quiet-threshold %% of a core (default %(default)s; 0: don't wait)",
    )
    parser.add_argument("--quiet-threshold", type=float, default=25, help="see --quiet-wait (default %(default)s)")
    parser.add_argument("--out", type=Path, help="JSON file (default bench/results/<UTC timestamp>.json)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"), help="compare two JSON files and exit")
    args = parser.parse_args(argv)
    if args.url and args.engines == "remote":
        parser.error("--engines remote starts its own voice server: it cannot be used with --url")
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.sessions = args.sessions or ("1,4" if args.quick else "1,5,10,20,40")
    args.levels = [] if args.sessions.strip() in ("", "none") else [int(n) for n in args.sessions.split(",")]
    args.worker_counts = [int(w) for w in (args.workers or f"1,{os.cpu_count() or 1}").split(",")]
    if args.scenarios.strip() in ("", "none"):
        args.scenario_list = []
    else:
        args.scenario_list = [_ALIASES.get(s.strip(), s.strip()) for s in args.scenarios.split(",")]
        unknown = set(args.scenario_list) - set(SCENARIOS)
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return args


# --- 1. the real-model scenarios -----------------------------------------------------------


@attrs.frozen
class Quiet:
    """Before each measurement wait up to ``max_wait_s`` for the other processes on the machine
    to use less than ``threshold`` % of one core (0: do not wait)."""

    max_wait_s: float = 30.0
    threshold: float = 25.0


async def _measure(name: str, clip: str, run: int, timeout: float, quiet: Quiet, fn, *args) -> dict:
    meta: dict = {"scenario": name, "clip": clip, "run": run}
    if quiet.max_wait_s > 0:
        meta["quiet_wait"] = await machine.wait_quiet(quiet.max_wait_s, quiet.threshold)
    meta["wall_start"] = time.time()
    before = machine.snapshot()
    try:
        with trio.fail_after(timeout):
            sample = await fn(*args)
    except Exception as exc:  # a failed measurement is recorded, and the run goes on
        say(f"  {name} [{clip}] run {run}: FAILED {exc!r}")
        return {**meta, "error": repr(exc)}
    meta["foreign_cpu_percent"] = machine.foreign_cpu_percent(before, machine.snapshot())
    value = next((sample.get(f) for f in (f"{name}_ms", "barge_in_ms") if f in sample), None)
    say(
        f"  {name} [{clip}] run {run}: {value} ms ({sample.get('status')}; "
        f"other processes: {meta['foreign_cpu_percent']}% of a core)"
    )
    return {**meta, **sample}


async def run_scenarios(
    url: str, clips: list[Clip], names: list[str], repeat: int, timeout: float, quiet: Quiet
) -> dict:
    samples: dict[str, list[dict]] = {name: [] for name in names}
    transcripts: dict[str, str] = {}
    say("warm-up: one typed turn (not counted)")
    warmup = await _measure("text", "warm-up", 0, timeout, quiet, scenarios.warm_up, url)
    speech_b = scenarios.barge_in_speech()
    for run in range(1, repeat + 1):
        # One scenario at a time over all clips: consecutive LLM requests always differ, as in a
        # real conversation (llama.cpp would otherwise reuse the whole previous prompt's cache).
        for name in names:
            for clip in clips:
                if name == "commit":
                    sample = await _measure(name, clip.name, run, timeout, quiet, scenarios.commit, url, clip)
                    if sample.get("transcript"):
                        transcripts.setdefault(clip.name, sample["transcript"])
                elif name == "voice_to_voice":
                    sample = await _measure(name, clip.name, run, timeout, quiet, scenarios.voice_to_voice, url, clip)
                elif name == "text":
                    prompt = transcripts.get(clip.name) or scenarios.FIXED_PROMPTS.get(
                        clip.name, scenarios.FALLBACK_PROMPT
                    )
                    sample = await _measure(name, clip.name, run, timeout, quiet, scenarios.text, url, prompt)
                else:
                    sample = await _measure(
                        name, clip.name, run, timeout, quiet, scenarios.barge_in, url, clip, speech_b
                    )
                samples[name].append(sample)
    return {"samples": samples, "warmup": warmup}


def _llm_requests(log_path: Path | None) -> dict[tuple[str, str], list[dict]]:
    """The messages of each LLM request, by (session_id, turn_id), from the server's debug log
    (the last request logged for a turn: a dropped speculative request may come first)."""
    requests: dict[tuple[str, str], list[dict]] = {}
    if log_path is None or not log_path.exists():
        return requests
    for line in read_log(log_path):
        if line.get("event") == "llm.request.messages" and isinstance(line.get("messages"), list):
            requests[(line.get("session_id"), line.get("turn_id"))] = line["messages"]
    return requests


def _attach_llm_messages(samples: dict[str, list[dict]], log_path: Path | None) -> None:
    logged = _llm_requests(log_path)
    for name in report.PATHS:
        for sample in samples.get(name, []):
            if "error" in sample or not sample.get("transcript"):
                continue
            messages = logged.get((sample.get("session_id"), sample.get("turn_id")))
            if messages is not None:
                sample["llm_messages"], sample["llm_messages_source"] = messages, "server log"
            else:
                sample["llm_messages"] = [
                    {"role": "system", "content": DEFAULT_INSTRUCTIONS},
                    {"role": "user", "content": sample["transcript"]},
                ]
                sample["llm_messages_source"] = "reconstructed (default system prompt + transcript)"


# --- 2. floors ---------------------------------------------------------------------------------


def _stream_slice(clip: Clip, start_pos_ms: float, window: list[float]) -> bytes:
    """Part of a VAD session's input stream: silence, the clip from ``start_pos_ms``, silence."""
    begin, end = (int(round(ms)) * p.BYTES_PER_MS for ms in window)
    lead = int(round(start_pos_ms)) * p.BYTES_PER_MS
    stream = bytes(lead) + clip.pcm + bytes(max(0, end - lead - len(clip.pcm)))
    return stream[begin:end]


async def run_floors(
    samples: dict[str, list[dict]],
    clips: list[Clip],
    repeat: int,
    log_dir: Path,
    quiet: Quiet,
    remote: dict[str, str] | None = None,
) -> dict:
    """The floors of every measured input; with ``remote`` (the URLs ``serve`` was given, by
    ``"stt"``/``"tts"``/``"llm"``) also the remote STT and TTS floors, interleaved with the
    in-process ones, and the LLM floors against that server."""
    remote = remote or {}
    rows = [s for name in report.PATHS for s in samples.get(name, []) if "error" not in s]
    by_name = {clip.name: clip for clip in clips}
    # STT: each clip whole (push-to-talk turns; and the STT hop in remote mode, whatever the
    # scenarios), and each measured VAD turn's stream span.
    stt_inputs: dict[str, bytes] = {}
    if samples.get("commit") or samples.get("voice_to_voice") or remote.get("stt"):
        stt_inputs.update({f"clip:{clip.name}": clip.pcm for clip in clips})
    for s in samples.get("voice_to_voice", []):
        if "error" not in s and s.get("stt_window_ms") and s["clip"] in by_name:
            key = f"v2v:{s['clip']}:{s['run']}"
            stt_inputs[key] = _stream_slice(by_name[s["clip"]], s["clip_start_pos_ms"] or 0.0, s["stt_window_ms"])
            s["stt_floor_input"] = key

    async def wait_quiet() -> None:
        if quiet.max_wait_s > 0:
            await machine.wait_quiet(quiet.max_wait_s, quiet.threshold, interval=0.5)

    stt = await fl.measure_stt(stt_inputs, repeat, say, wait_quiet, remote.get("stt")) if stt_inputs else {}
    sentences = sorted({s["first_sentence"] for s in rows if s.get("first_sentence")})
    tts = await fl.measure_tts(sentences, repeat, say, wait_quiet, remote.get("tts")) if sentences else {}
    prompts: dict[tuple, list[dict]] = {}
    for s in rows:
        if s.get("llm_messages"):
            prompts.setdefault(fl.messages_key(s["llm_messages"]), s["llm_messages"])
    llm, round_trip = (
        await fl.measure_llm(
            list(prompts.values()), repeat, say, log_dir / "floor-llama.log", wait_quiet, remote.get("llm")
        )
        if prompts
        else ([], None)
    )
    connections = await fl.measure_connections(remote, say, wait_quiet) if remote else {}
    return {
        "engines": "remote" if remote else "embedded",
        "connection": connections,
        "stt": stt,
        "tts_first": tts,
        "llm_ttft": llm,
        "llm_http_round_trip": round_trip,
    }


def _engine_floor(entry: dict | None, remote: bool) -> float | None:
    """The floor of the engine as the voice server reached it: remote in remote mode."""
    if not entry:
        return None
    return entry["remote"]["median_ms"] if remote and "remote" in entry else entry["median_ms"]


def _apply_floors(samples: dict[str, list[dict]], floors: dict) -> None:
    """Per sample: the floors of its own inputs, their sum on its path, overhead and ratio.

    Two sums: ``sum_ms`` with the LLM's time to first token, and ``sum_sentence_ms`` with its
    time to the end of the first sentence (TTS cannot start before): the first token's floor
    plus (deltas in the server's first sentence - 1) x the floor's median token interval.

    In remote mode the STT and TTS floors in the sums are the remote ones (the engines as the
    voice server used them), so the overhead is the orchestration's in both modes; the sample
    also carries the in-process floors and the hops (``stt_in_process_floor_ms``,
    ``stt_hop_ms``, ``tts_...``)."""
    remote = floors.get("engines") == "remote"
    llm = {fl.messages_key(entry["messages"]): entry for entry in floors["llm_ttft"]}
    for name, field in report.PATHS.items():
        for s in samples.get(name, []):
            if "error" in s or s.get(field) is None:
                continue
            entry = llm.get(fl.messages_key(s["llm_messages"])) if s.get("llm_messages") else None
            tts_entry = floors["tts_first"].get(s.get("first_sentence") or "")
            stt_entry = None
            parts = {
                "llm_ttft_floor_ms": entry and entry["median_ms"],
                "tts_floor_ms": _engine_floor(tts_entry, remote),
            }
            if name == "commit":
                stt_entry = floors["stt"].get(f"clip:{s['clip']}")
                parts["stt_floor_ms"] = _engine_floor(stt_entry, remote)
            elif name == "voice_to_voice":
                stt_entry = floors["stt"].get(s.get("stt_floor_input") or "")
                parts["stt_floor_ms"] = _engine_floor(stt_entry, remote)
                parts["silence_window_ms"] = scenarios.SILENCE_WINDOW_MS
            hops = {}
            if remote:
                for engine, hop_entry in (("stt", stt_entry), ("tts", tts_entry)):
                    if hop_entry and "remote" in hop_entry:
                        hops[f"{engine}_in_process_floor_ms"] = hop_entry["median_ms"]
                        hops[f"{engine}_hop_ms"] = hop_entry["hop_ms"]
            if any(v is None for v in parts.values()):
                s["floors"] = {**parts, **hops, "sum_ms": None}
                continue
            total = round(sum(parts.values()), 2)
            s["floors"] = {**parts, **hops, "sum_ms": total}
            s["overhead_ms"] = round(s[field] - total, 2)
            s["ratio"] = round(s[field] / total, 3) if total > 0 else None
            deltas, interval = s.get("first_sentence_deltas"), entry.get("token_interval_ms")
            if not deltas or interval is None:
                continue
            sentence = round(parts["llm_ttft_floor_ms"] + (deltas - 1) * interval, 2)
            total_sentence = round(total - parts["llm_ttft_floor_ms"] + sentence, 2)
            s["floors"].update(llm_first_sentence_floor_ms=sentence, sum_sentence_ms=total_sentence)
            s["overhead_sentence_ms"] = round(s[field] - total_sentence, 2)
            s["ratio_sentence"] = round(s[field] / total_sentence, 3) if total_sentence > 0 else None
            if name == "voice_to_voice" and SPECULATE_AFTER_MS is not None:
                # With speculation the server may run STT, LLM and TTS inside the silence window
                # (from SPECULATE_AFTER_MS into the pause on), so the sums above are no lower bound.
                engines = total_sentence - scenarios.SILENCE_WINDOW_MS
                bound = round(max(scenarios.SILENCE_WINDOW_MS, SPECULATE_AFTER_MS + engines), 2)
                s["floors"]["bound_with_speculation_ms"] = bound
                s["overhead_vs_bound_ms"] = round(s[field] - bound, 2)


# --- the whole run --------------------------------------------------------------------------------


def _real_models(
    args: argparse.Namespace, clips: list[Clip], results: dict, log_dir: Path, engines: EngineServers | None
) -> None:
    """Phases 1 and 2: the scenarios against a real-model voice server, then the floors."""
    server = None
    remote = {"stt": engines.stt_url, "tts": engines.tts_url, "llm": engines.llm_url} if engines else {}
    if args.url:
        url = args.url
        results["server"] = {"url": url, "started_by_bench": False}
    else:
        serve_args = [a for kind in ("stt", "tts", "llm") if kind in remote for a in (f"--{kind}-url", remote[kind])]
        what = "the remote engines" if remote else "the embedded models"
        say(f"starting voiceorch serve with {what} ...")
        server = ServerProcess.start(*serve_args, log_path=log_dir / "server.log")
        url = server.url
        results["server"] = {
            "url": url,
            "started_by_bench": True,
            "args": serve_args,
            "startup_s": round(server.startup_s, 1),
            "log": str(server.log_path),
            "rss_kb_ready": server.rss_kb(),
        }
        say(f"server ready in {server.startup_s:.1f} s at {url}")
    wall_start = time.time()
    try:
        measured = trio.run(
            run_scenarios,
            url,
            clips,
            args.scenario_list,
            args.repeat,
            args.timeout,
            Quiet(args.quiet_wait, args.quiet_threshold),
        )
    finally:
        if server is not None:
            results["server"]["rss_kb_end"] = server.rss_kb()
            results["server"]["exit_code"] = server.stop()
    results.update(measured)
    if server is not None:
        results["server"]["loop_lag"] = loop_lag(server.log_path, wall_start, time.time())
        results["server"]["log_errors"] = [
            line.get("event") for line in server.log_lines() if line.get("level") in ("error", "critical")
        ]
    _attach_llm_messages(results["samples"], server.log_path if server else None)
    if not args.no_floors:
        if remote:
            say("floors: each model alone, in process and through its server (the voice server is stopped)")
        else:
            say("floors: each model alone (the voice server is stopped)")
        before = machine.snapshot()
        results["floors"] = trio.run(
            run_floors,
            results["samples"],
            clips,
            args.floor_repeat,
            log_dir,
            Quiet(args.quiet_wait, args.quiet_threshold),
            remote,
        )
        results["floors"]["foreign_cpu_percent"] = machine.foreign_cpu_percent(before, machine.snapshot())
        _apply_floors(results["samples"], results["floors"])
    split = [s for s in results["samples"].get("voice_to_voice", []) if s.get("vad_turns", 1) > 1]
    if split:
        clips_split = sorted({s["clip"] for s in split})
        results["notes"].append(
            f"server VAD cut {', '.join(clips_split)} into several turns (pauses >= 500 ms); "
            "voice_to_voice is measured on the turn that ended after the clip"
        )


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.compare:
        print(report.compare(*args.compare))
        return 0
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS_DIR / f"{stamp}.json"
    log_dir = out.with_name(out.stem + "-logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    clips = [Clip.load(path) for path in (*scenarios.DEFAULT_WAVS, *args.wav)]
    results: dict = {
        "schema": 1,
        "started_utc": started.isoformat(timespec="seconds"),
        "command": [sys.executable, "-m", "bench", *(argv if argv is not None else sys.argv[1:])],
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "config": {
            "engines": args.engines,
            "repeat": args.repeat,
            "scenarios": args.scenario_list,
            "sessions": args.levels,
            "turns_per_session": args.turns,
            "worker_counts": args.worker_counts,
            "floor_repeat": args.floor_repeat,
            "clips": [
                {
                    "name": c.name,
                    "path": c.path,
                    "duration_ms": c.duration_ms,
                    "speech_start_ms": c.speech_start_ms,
                    "speech_end_ms": c.speech_end_ms,
                }
                for c in clips
            ],
            "barge_in_speech": f"first {scenarios.BARGE_IN_CLIP_MS} ms of jfk_16k.wav",
            "silence_window_ms": scenarios.SILENCE_WINDOW_MS,
            "speculate_after_ms": SPECULATE_AFTER_MS,
            "quiet_wait_s": args.quiet_wait,
            "quiet_threshold_percent": args.quiet_threshold,
        },
        "log_dir": str(log_dir),
        "notes": [],
    }
    say(f"results: {out}  logs: {log_dir}")

    if args.scenario_list:
        engines = None
        try:
            if args.engines == "remote":
                say("starting the engine servers: wyoming-faster-whisper, wyoming-piper, llama.cpp ...")
                engines = EngineServers(log_dir=log_dir / "engines")
                results["engine_servers"] = engines.describe()
                say(
                    "engine servers ready: "
                    + ", ".join(
                        f"{kind} {s['url']} in {s['startup_s']} s" for kind, s in results["engine_servers"].items()
                    )
                )
            _real_models(args, clips, results, log_dir, engines)
        finally:
            if engines is not None:
                for kind, code in engines.stop().items():
                    results["engine_servers"][kind]["exit_code"] = code
    elif args.engines == "remote":
        results["notes"].append("--engines remote with no scenarios: no engine server was started")

    if args.levels:
        results["concurrency"] = run_concurrency(
            args.levels,
            turns=args.turns,
            tone_ms=args.tone_ms,
            log_dir=log_dir,
            say=say,
            timeout_per_level=args.timeout,
            server_tree=args.server_tree,
            worker_counts=args.worker_counts,
        )
        if results["concurrency"]["vad"] == "FakeVAD":
            results["notes"].append(
                "the fake-engine server uses FakeVAD, not Silero: the concurrency part used a synthetic tone"
            )
        if not results["concurrency"]["loop_lag_logged"]:
            results["notes"].append("the server logged no loop.lag lines: no event-loop lag figures")

    results["finished_utc"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["summary"] = report.summarize(results)
    report.write_json(results, out)
    print(report.render(results))
    print(f"\nJSON: {out}")
    return 0
