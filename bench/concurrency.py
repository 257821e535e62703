"""Many sessions at once against ``voiceorch serve --fake-engines``: what the orchestration alone
costs (the fake STT, LLM and TTS take no time; the reply is always the same 2.88 s of tone).

Speech. If the fake-engine server detects speech with Silero (as ``voiceorch.server.app``
does today), each session speaks the hotwords clip (4.0 s of real speech, which Silero hears as
one utterance ending at the clip's end). If it used ``FakeVAD`` (a 32 ms chunk is speech when
the mean absolute value of every 16th sample is >= 500), real speech would be cut into several
turns (the JFK clip has quiet pauses of over 500 ms), so a synthetic utterance is used instead: a
1 kHz tone of amplitude 8000. It is a *cosine*: every 16th sample is exactly one period of
1 kHz at 16 kHz, so a sine starting at phase 0 would be sampled at its zero crossings and never
heard. Either way the utterance starts at a stream position that is a multiple of 160 ms and
lasts a multiple of 160 ms, so it ends on a 32 ms chunk boundary, every turn is judged the same,
and the detector can end the turn at the earliest possible frame: the one that completes 16
silent chunks (512 ms), sent 520 ms after the utterance's last frame. So the ideal
``added_latency_ms`` (voice-to-voice minus the 500 ms window) is 20 ms, and
``after_vad_window_ms`` (from that frame to the first reply frame) is the server's reaction.

For each N: a fresh fake-engine server (so its memory and its log are those of this level),
started with :func:`fake_server_args` (its session cap raised above N: at the default 32 every
session past the 32nd was refused with 1013 and the level silently lost its turns); N
sessions connect, then all start their microphones together (phases spread over one 20 ms
frame, as independent microphones would be) and hold ``turns`` turns each: speech, silence until
the reply has played (response.done), again.
"""

from __future__ import annotations

import gc
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import trio

from voiceorch import protocol as p
from voiceorch.audio_files import read_as_wire_pcm

from . import machine
from .client import BenchSession, open_session
from .scenarios import (
    DATA,
    SILENCE_WINDOW_MS,
    Clip,
    describe,
    drain,
    follow,
    turn_after,
    vad_details,
    voice_latencies,
)
from .servers import ServerProcess, child_environment, cpu_seconds, read_log, rss_kb, server_code

TONE_HZ = 1000
TONE_AMPLITUDE = 8000
ALIGN_MS = 160
#: p99 added latency under which a level counts as fine.
ADDED_P99_LIMIT_MS = 50.0
#: Sessions the fake-engine server admits beyond the level's N (its cap must never be what a level measures).
SESSION_CAP_MARGIN = 16


def fake_server_args(n: int) -> list[str]:
    """``voiceorch serve`` arguments for a level of ``n`` sessions: fake engines, no fixed HTTP
    port, and every limit that could end a session of the bench raised well past it: the session
    cap (``--max-sessions``, 32 by default) above ``n``. The others cannot bind here: the sessions
    send audio all the time (``--idle-timeout`` counts silence from the client), at real time
    (the input pace allows 4x), a level lasts less than ``--max-session``; the listen backlog is
    the kernel's somaxconn and each session takes one file descriptor (see ``limits`` in the JSON)."""
    return ["--fake-engines", "--http-port", "0", "--max-sessions", str(n + SESSION_CAP_MARGIN)]


def limits() -> dict:
    """The machine's limits that a level of many sessions could hit (recorded beside the figures)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        somaxconn = None
    return {"open_files_soft": soft, "open_files_hard": hard, "somaxconn": somaxconn}


_VAD_PROBE = "from voiceorch.server import app; print(type(app._fake_engines(app.ServerConfig()).vad).__name__)"


def fake_server_vad(tree: Path | None = None) -> str:
    """The class name of the speech detector that ``voiceorch serve --fake-engines`` uses (of
    the checkout ``tree`` if given: asked in a child process that imports it)."""
    try:
        if tree is not None:
            probe = subprocess.run(
                [sys.executable, "-c", _VAD_PROBE],
                capture_output=True,
                text=True,
                timeout=120,
                **child_environment(tree),
            )
            return probe.stdout.strip().splitlines()[-1] if probe.returncode == 0 else "unknown"
        from voiceorch.server import app

        return type(app._fake_engines(app.ServerConfig()).vad).__name__
    except Exception:  # noqa: BLE001 (the server's internals may change; then assume Silero)
        return "unknown"


def utterance(vad: str, tone_ms: int) -> tuple[Clip, str]:
    if vad == "FakeVAD":
        pcm = tone(tone_ms)
        clip = Clip(name="tone", path="", pcm=pcm, speech_start_ms=0.0, speech_end_ms=float(tone_ms))
        return clip, (
            f"{TONE_HZ} Hz cosine tone, amplitude {TONE_AMPLITUDE}, {tone_ms} ms "
            "(the fake server uses FakeVAD, which real speech does not drive reliably)"
        )
    pcm = read_as_wire_pcm(DATA / "hotwords_16k.wav")
    pcm = pcm[: len(pcm) - len(pcm) % (ALIGN_MS * p.BYTES_PER_MS)]
    clip = Clip.from_pcm("hotwords_16k", str(DATA / "hotwords_16k.wav"), pcm)
    return clip, (
        f"tests/data/hotwords_16k.wav ({clip.duration_ms:.0f} ms of real speech, "
        f"speech ends at {clip.speech_end_ms:.0f} ms)"
    )


def tone(ms: int) -> bytes:
    n = ms * 16
    samples = TONE_AMPLITUDE * np.cos(2 * np.pi * TONE_HZ * np.arange(n) / 16_000)
    return np.round(samples).astype("<i2").tobytes()


def percentiles(values: list[float]) -> dict | None:
    clean = [v for v in values if v is not None]
    if not clean:
        return None
    a = np.asarray(clean, dtype=float)
    return {
        "n": len(clean),
        "p50": round(float(np.percentile(a, 50)), 2),
        "p95": round(float(np.percentile(a, 95)), 2),
        "p99": round(float(np.percentile(a, 99)), 2),
        "max": round(float(a.max()), 2),
    }


async def _one_session(
    url: str,
    index: int,
    n: int,
    turns: int,
    speech: Clip,
    start: trio.Event,
    clock: dict,
    out: list[dict],
    timeout: float,
) -> None:
    record: dict = {"session": index, "turns": [], "errors": [], "send_lags_ms": []}
    out.append(record)
    try:
        with trio.fail_after(timeout):
            await _converse(url, index, n, turns, speech, start, clock, record)
    except Exception as exc:  # one broken session is a result, not a crash of the bench
        record["errors"].append({"code": "bench_client", "message": repr(exc)})
        record["failed"] = True


async def _converse(
    url: str, index: int, n: int, turns: int, speech: Clip, start: trio.Event, clock: dict, record: dict
) -> None:
    async with open_session(url, vad=True, silence=True, start_mic=False) as s:
        record["session_id"] = s.session_id
        await start.wait()
        # Independent users do not speak in lockstep: the microphones start spread evenly over
        # one clip's length, so turns end at different moments (as they would in production).
        s.start_microphone(clock["start"] + index * (len(speech.pcm) / 32_000) / n)
        try:
            for _ in range(turns):
                record["turns"].append(await _one_turn(s, speech))
            await drain(s)
        finally:
            record["errors"] += [
                {"code": item.event.code, "message": item.event.message} for _, item in s.events(p.Error)
            ]
            record["send_lags_ms"] = [round(lag * 1000, 3) for lag in s.mic.lags]


async def _one_turn(s: BenchSession, speech: Clip) -> dict:
    played = await s.mic.play(speech.pcm, align_ms=ALIGN_MS)
    committed, _after = await turn_after(s, played, speech)
    response = await follow(s, s.received[committed].event.turn_id, start=committed)
    described = describe(s, response)
    vad = vad_details(s, committed, played)
    latencies = voice_latencies(s, response, played, speech.speech_end_ms, vad["speech_stopped_ms"])
    v2v = latencies["voice_to_voice_ms"]
    return {
        "turn_id": response.turn_id,
        "status": described["status"],
        **latencies,
        "added_latency_ms": None if v2v is None else round(v2v - SILENCE_WINDOW_MS, 2),
        "vad_stop_minus_clip_end_ms": vad["vad_stop_minus_clip_end_ms"],
        "metrics": described["metrics"],
    }


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``serve --workers N``: the parent, its workers and their
    children), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time so far of ``pid`` and its descendants (a reaped child's is in its parent's
    cutime, which this does not count: the server's processes live through a level)."""
    values = [cpu_seconds(p) for p in process_tree(pid)]
    return sum(v for v in values if v is not None) if values[0] is not None else None


def tree_rss_kb(pid: int) -> int | None:
    """VmRSS of ``pid`` and its descendants, summed (pages shared between them count in each)."""
    values = [rss_kb(p) for p in process_tree(pid)]
    return sum(v for v in values if v is not None) if values[0] is not None else None


async def _run_level(url: str, n: int, turns: int, speech: Clip, pid: int, timeout: float) -> dict:
    sessions: list[dict] = []
    start = trio.Event()
    clock = {"start": 0.0}
    idle_kb = tree_rss_kb(pid)
    peak_kb = idle_kb or 0
    done = trio.Event()

    async def sample_rss() -> None:
        nonlocal peak_kb
        while not done.is_set():
            value = tree_rss_kb(pid)
            if value is not None:
                peak_kb = max(peak_kb, value)
            await trio.sleep(0.05)

    window: dict = {}
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample_rss)
            async with trio.open_nursery() as clients:
                for index in range(n):
                    clients.start_soon(_one_session, url, index, n, turns, speech, start, clock, sessions, timeout)
                # Wait until every session is connected (or failed), then start all microphones.
                while len(sessions) < n or any("session_id" not in r and not r.get("failed") for r in sessions):
                    await trio.sleep(0.01)
                # The client is the measuring instrument: a full collection of its own heap (50-70 ms
                # at 80 sessions, measured) would be counted as the server's latency and send lag.
                gc.collect()
                gc.freeze()
                gc.disable()
                clock["start"] = trio.current_time() + 0.1
                window.update(
                    wall_start=time.time(),
                    server_cpu_start=tree_cpu_seconds(pid),
                    client_cpu_start=_own_cpu(),
                    started=trio.current_time(),
                )
                start.set()
            window.update(
                wall_end=time.time(),
                server_cpu_end=tree_cpu_seconds(pid),
                client_cpu_end=_own_cpu(),
                ended=trio.current_time(),
            )
            done.set()
    finally:  # (disabled once the sessions are connected)
        gc.enable()
        gc.unfreeze()
    elapsed = window["ended"] - window["started"]
    turns_all = [turn for record in sessions for turn in record["turns"]]
    lags = [lag for record in sessions for lag in record["send_lags_ms"]]
    added = [turn["added_latency_ms"] for turn in turns_all]
    send_lag = percentiles(lags)
    cpu = None
    if window["server_cpu_start"] is not None and window["server_cpu_end"] is not None:
        cpu = round(100 * (window["server_cpu_end"] - window["server_cpu_start"]) / elapsed, 1)
    completed = sum(1 for turn in turns_all if turn["status"] == "completed")
    return {
        "sessions": n,
        "turns_expected": n * turns,
        "turns_completed": completed,
        "turns_lost": n * turns - completed,
        # A session that did not complete all its turns (refused, dropped, a turn interrupted or failed).
        "sessions_lost": sum(
            1 for record in sessions if sum(1 for t in record["turns"] if t["status"] == "completed") < turns
        ),
        # A session whose client saw an exception (e.g. its close handshake timed out), turns complete or not.
        "sessions_failed": sum(1 for record in sessions if record.get("failed")),
        "errors": [error for record in sessions for error in record["errors"]],
        "elapsed_s": round(elapsed, 2),
        "send_lag_ms": send_lag,
        "kept_real_time": send_lag is not None and send_lag["p99"] < 20.0,
        "voice_to_voice_ms": percentiles([turn["voice_to_voice_ms"] for turn in turns_all]),
        "added_latency_ms": percentiles(added),
        "after_vad_window_ms": percentiles([turn["after_vad_window_ms"] for turn in turns_all]),
        "vad_stop_minus_clip_end_ms": percentiles([turn["vad_stop_minus_clip_end_ms"] for turn in turns_all]),
        "server_ttfb_ms": percentiles([turn["metrics"]["ttfb_ms"] for turn in turns_all]),
        "server_cpu_percent": cpu,
        "client_cpu_percent": round(100 * (window["client_cpu_end"] - window["client_cpu_start"]) / elapsed, 1),
        "rss_kb": {
            "idle": idle_kb,
            "peak": peak_kb,
            "per_session": None if idle_kb is None else round((peak_kb - idle_kb) / n, 1),
        },
        "window_wall": [window["wall_start"], window["wall_end"]],
        "raw": {"added_latency_ms": added, "sessions": [_trim(record) for record in sessions]},
    }


def _trim(record: dict) -> dict:
    """A session's record for the JSON file: its turns, not every frame's lag."""
    lags = record.get("send_lags_ms", [])
    return {
        **{k: v for k, v in record.items() if k != "send_lags_ms"},
        "frames_sent": len(lags),
        "send_lag_max_ms": max(lags) if lags else None,
    }


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def loop_lag(log_path: Path, wall_start: float, wall_end: float) -> dict | None:
    """The server's own event-loop lag lines (``loop.lag``: p50_ms, p99_ms, max_ms), if it logs
    them, for the window. Each line sums up the period before it: a line counts when its period
    starts inside the window (so nothing from before the window, e.g. the models' warm-up) and
    ends no later than half a period after it."""
    lines = [line for line in read_log(log_path) if line.get("event") == "loop.lag" and "ts" in line]
    if not lines:
        return None
    stamps = [float(line["ts"]) for line in lines]
    period = float(np.median(np.diff(stamps))) if len(stamps) > 1 else 5.0
    lines = [
        line
        for line in lines
        if float(line["ts"]) - period >= wall_start - 0.2 and float(line["ts"]) - period / 2 <= wall_end
    ]
    if not lines:
        return {"lines": 0, "period_s": round(period, 2), "p50_ms_median": None, "p99_ms_max": None, "max_ms": None}

    def values(field: str) -> list[float]:
        return [float(line[field]) for line in lines if isinstance(line.get(field), (int, float))]

    p50, p99, worst = values("p50_ms"), values("p99_ms"), values("max_ms")
    return {
        "lines": len(lines),
        "period_s": round(period, 2),
        "p50_ms_median": round(float(np.median(p50)), 2) if p50 else None,
        "p99_ms_max": round(max(p99), 2) if p99 else None,
        "max_ms": round(max(worst), 2) if worst else None,
    }


def verdict(level: dict, limit_ms: float = ADDED_P99_LIMIT_MS) -> tuple[bool, str]:
    """Whether a level passed, and why not: a lost session or turn always fails it (whatever the
    latency of the turns that did complete), so does a session whose client failed (e.g. its close
    handshake timed out) and a level where the clients fell behind real time (their figures then
    measure the backlog); then p99 added latency >= ``limit_ms``."""
    reasons = []
    if level["turns_completed"] < level["turns_expected"] or level.get("sessions_lost"):
        reasons.append(
            f"{level['turns_expected'] - level['turns_completed']}/{level['turns_expected']} turns lost, "
            f"{level.get('sessions_lost', 0)}/{level['sessions']} sessions"
        )
    if level.get("sessions_failed"):
        reasons.append(f"{level['sessions_failed']}/{level['sessions']} sessions failed in the client")
    if level.get("send_lag_ms") is not None and not level.get("kept_real_time", True):
        reasons.append(f"behind real time (send lag p99 {level['send_lag_ms']['p99']:.0f} ms)")
    added = level["added_latency_ms"]
    if added is None:
        reasons.append("no turn measured")
    elif added["p99"] >= limit_ms:
        reasons.append(f"p99 {added['p99']:.0f} ms >= {limit_ms:.0f}")
    return not reasons, "pass" if not reasons else "FAILED: " + "; ".join(reasons)


def run_concurrency(
    levels: list[int],
    *,
    turns: int,
    tone_ms: int,
    log_dir: Path,
    say,
    timeout_per_level: float = 300,
    server_tree: Path | None = None,
    worker_counts: list[int] = [1],  # noqa: B006 (never mutated)
) -> dict:
    """Each level against its own fresh fake-engine server (so memory and logs are per level),
    once per worker count (``serve --workers W``), side by side; with ``server_tree`` the servers
    run that checkout's ``voiceorch`` (the clients stay ours)."""
    code = server_code(server_tree)
    vad = fake_server_vad(server_tree)
    speech, described = utterance(vad, tone_ms)
    say(f"concurrency: server code {code['voiceorch_file']} at {code['commit']}")
    say(f"concurrency: the fake-engine server detects speech with {vad}; speech: {described}")
    results = []
    for n, workers in [(n, w) for n in levels for w in worker_counts]:
        log_path = log_dir / (f"fake-server-{n}.log" if workers == 1 else f"fake-server-{n}-{workers}w.log")
        # --max-sessions is per worker; --workers only when asked (an older checkout has none).
        server_args = fake_server_args(n) + ([] if workers == 1 else ["--workers", str(workers)])
        server = ServerProcess.start(*server_args, log_path=log_path, ready_timeout=120, tree=server_tree)
        say(f"concurrency: {n} session(s) x {turns} turns against {server.url} ({' '.join(server_args)})")
        before = machine.snapshot()
        load_before = _load_average()
        try:
            level = trio.run(_run_level, server.url, n, turns, speech, server.pid, timeout_per_level)
        finally:
            after = machine.snapshot()
            exit_code = server.stop()
        level["workers"] = workers
        level["foreign_cpu_percent"] = machine.foreign_cpu_percent(before, after)
        level["load_average"] = {"before": load_before, "after": _load_average()}
        level["server_args"] = server_args
        level["server_exit_code"] = exit_code
        level["server_log"] = str(log_path)
        level["loop_lag"] = loop_lag(log_path, *level["window_wall"])
        level["server_log_errors"] = [
            line.get("event") for line in read_log(log_path) if line.get("level") in ("error", "critical")
        ]
        level["passed"], level["verdict"] = verdict(level)
        say(f"concurrency: {n} session(s), {workers} worker(s): {level['verdict']}")
        results.append(level)
    by_workers = {str(w): _largest([level for level in results if level["workers"] == w]) for w in worker_counts}
    fine, every = _largest([level for level in results if level["workers"] == worker_counts[0]]).values()
    return {
        "engines": "fake (voiceorch serve --fake-engines)",
        "server_code": code,
        "limits": limits(),
        "vad": vad,
        "speech": f"{described}, starting on a {ALIGN_MS} ms stream boundary",
        "turns_per_session": turns,
        "added_p99_limit_ms": ADDED_P99_LIMIT_MS,
        "levels": results,
        "worker_counts": worker_counts,
        # For the first worker count (1 unless told otherwise), then for each.
        "max_sessions_under_limit": fine,
        "max_sessions_all_levels_under_limit": every,
        "by_workers": by_workers,
        "loop_lag_logged": any(level["loop_lag"] is not None for level in results),
    }


def _largest(levels: list[dict]) -> dict:
    """The largest N that passed, and the largest N such that every level up to it passed."""
    fine = [level["sessions"] for level in levels if level["passed"]]
    every = None
    for level in sorted(levels, key=lambda level: level["sessions"]):
        if level["sessions"] not in fine:
            break
        every = level["sessions"]
    return {"max_sessions_under_limit": max(fine) if fine else None, "max_sessions_all_levels_under_limit": every}


def _load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (as ``uptime`` prints them)."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None
