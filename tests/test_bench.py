"""The bench runs end to end and writes a complete JSON file (``python -m bench``).

These tests prove that the bench works; they assert the structure and sanity of its results
(present, non-null, non-negative), never a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio_websocket

from bench import report
from bench.concurrency import fake_server_args, verdict
from bench.servers import ServerProcess
from voiceorch import protocol as p

ROOT = Path(__file__).resolve().parent.parent


def _run_bench(tmp_path: Path, *args: str, timeout: float) -> tuple[dict, str]:
    out = tmp_path / "run.json"
    process = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--quiet-wait", "0", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    return json.loads(out.read_text()), process.stdout


def _sane(stats: dict | None) -> None:
    assert stats is not None
    assert stats["n"] > 0
    for key in ("p50", "p95", "max"):
        assert stats[key] is not None


def test_concurrency_against_the_fake_engine_server(tmp_path):
    results, table = _run_bench(
        tmp_path, "--scenarios", "none", "--sessions", "1,2", "--workers", "1,2", "--turns", "1", timeout=200
    )

    assert results["machine"]["cpu_count"] == os.cpu_count()
    assert "samples" not in results  # no real-model scenario was asked for
    concurrency = results["concurrency"]
    assert concurrency["vad"] == "SileroVAD"  # the real detector, named (not "unknown": a probe that broke)
    # Each level once per worker count, side by side.
    assert [(level["sessions"], level["workers"]) for level in concurrency["levels"]] == [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
    ]
    for level in concurrency["levels"]:
        assert level["errors"] == []
        assert level["turns_completed"] == level["turns_expected"] == level["sessions"]
        assert level["server_exit_code"] == 0
        assert level["server_log_errors"] == []
        for key in ("send_lag_ms", "voice_to_voice_ms", "added_latency_ms", "after_vad_window_ms", "server_ttfb_ms"):
            _sane(level[key])
            assert level[key]["p99"] is not None
        assert level["send_lag_ms"]["p50"] >= 0
        assert level["voice_to_voice_ms"]["p50"] > 0
        assert level["after_vad_window_ms"]["p50"] >= 0
        assert isinstance(level["kept_real_time"], bool)
        assert level["rss_kb"]["idle"] > 0
        assert level["rss_kb"]["peak"] >= level["rss_kb"]["idle"]
        assert level["rss_kb"]["per_session"] >= 0
        assert level["server_cpu_percent"] >= 0 and level["client_cpu_percent"] >= 0
        if level["loop_lag"] is not None and level["loop_lag"]["lines"]:
            assert level["loop_lag"]["p99_ms_max"] >= 0
        for session in level["raw"]["sessions"]:
            assert session["frames_sent"] > 0
            for turn in session["turns"]:
                assert turn["status"] == "completed"
                assert turn["voice_to_voice_ms"] > 0
    assert set(results["summary"]["concurrency"]) == {"1", "1x2w", "2", "2x2w"}
    assert set(concurrency["by_workers"]) == {"1", "2"}
    assert "max_sessions_under_limit" in results["summary"]
    assert "Concurrency" in table and "Largest N tested" in table


async def test_the_concurrency_server_admits_every_session_of_a_level_above_the_default_cap(tmp_path):
    """The fake-engine server, started with the arguments the concurrency runner gives it for a
    level of 40 sessions, admits all 40 at once (with serve's default cap of 32 the last 8 were
    closed with 1013, and the level lost their turns)."""
    n = 40
    server = await trio.to_thread.run_sync(
        lambda: ServerProcess.start(*fake_server_args(n), log_path=tmp_path / "fake.log", ready_timeout=120)
    )
    created: list[str] = []
    all_in = trio.Event()
    try:

        async def connect() -> None:
            async with trio_websocket.open_websocket_url(server.url, connect_timeout=30) as ws:
                event = p.parse_server_event(await ws.get_message())
                assert isinstance(event, p.SessionCreated), event
                created.append(event.session_id)
                if len(created) == n:
                    all_in.set()
                await all_in.wait()  # every session is open at once

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(connect)
    finally:
        await trio.to_thread.run_sync(server.stop)
    assert len(set(created)) == n


async def test_the_phone_mode_measures_a_call_beside_the_voice_endpoint(tmp_path):
    """``python -m bench.phone``'s measurements against the fake-engine server (real Silero
    VAD): a Twilio call speaking μ-law in real time gets a reply, both paths have a figure, and
    the call's turn is found in the server's log by its callSid."""
    from bench import phone
    from bench.scenarios import DATA, Clip

    server = await trio.to_thread.run_sync(
        lambda: ServerProcess.start(*fake_server_args(2), log_path=tmp_path / "fake.log", ready_timeout=120)
    )
    try:
        with trio.fail_after(90):
            samples = await phone.run(
                server.url.removesuffix("/v1/voice"), [Clip.load(DATA / "hotwords_16k.wav")], 1, 60
            )
    finally:
        await trio.to_thread.run_sync(server.stop)
    phone.attach_server_metrics(samples, server.log_lines())
    (call,) = samples["phone_ulaw_8k"]
    assert "error" not in call and not call["earlier_reply"], call
    assert call["phone_voice_to_voice_ms"] > 0 and call["reply_media_messages"] > 0 and call["marks_echoed"] > 0
    assert call["metrics"]["ttfb_ms"] is not None  # the call's own turn, from the server's log
    summary = phone.summarize(samples)
    for path in ("voice_16k", "phone_ulaw_8k"):
        _sane(summary[path]["voice_to_voice_ms"])
        _sane(summary[path]["client_minus_server_ms"])
    assert "phone_minus_voice_p50_client_minus_server_ms" in summary and "phone_ulaw_8k" in phone.render(summary)


def _level(**changes) -> dict:
    added = {"n": 80, "p50": 25.0, "p95": 28.0, "p99": 30.0, "max": 31.0}
    level = {
        "sessions": 40, "turns_expected": 80, "turns_completed": 80, "turns_lost": 0, "sessions_lost": 0,
        "added_latency_ms": added, "send_lag_ms": None, "after_vad_window_ms": None, "kept_real_time": True,
        "loop_lag": None, "server_cpu_percent": 50.0, "client_cpu_percent": 40.0,
        "rss_kb": {"idle": 1, "peak": 2, "per_session": 1.0},
    }  # fmt: skip
    return {**level, **changes}


def test_a_level_that_lost_sessions_or_turns_fails_whatever_its_latency():
    assert verdict(_level()) == (True, "pass")
    # The old runner's 40-session level: 8 sessions refused, their 16 turns lost, the rest fast.
    passed, why = verdict(_level(turns_completed=64, turns_lost=16, sessions_lost=8))
    assert not passed
    assert why == "FAILED: 16/80 turns lost, 8/40 sessions"
    passed, why = verdict(_level(added_latency_ms={"n": 80, "p50": 40.0, "p95": 90.0, "p99": 183.0, "max": 200.0}))
    assert (passed, why) == (False, "FAILED: p99 183 ms >= 50")
    # Every turn done, but clients that fell behind real time or failed at the close do not pass.
    behind = {"n": 9000, "p50": 300.0, "p95": 5000.0, "p99": 7333.0, "max": 9000.0}
    passed, why = verdict(_level(sessions_failed=30, send_lag_ms=behind, kept_real_time=False))
    assert not passed
    assert why == "FAILED: 30/40 sessions failed in the client; behind real time (send lag p99 7333 ms)"
    # A file written before the runner recorded verdicts is judged the same in the table.
    old = _level(turns_completed=64)
    del old["sessions_lost"], old["turns_lost"]
    concurrency = {"levels": [old], "added_p99_limit_ms": 50.0, "max_sessions_under_limit": None}
    results = {"config": {"clips": []}, "concurrency": concurrency}
    assert report.summarize(results)["concurrency"]["40"]["verdict"].startswith("FAILED: 16/80 turns lost")


@pytest.mark.models
def test_a_quick_text_scenario_with_the_real_models(tmp_path):
    results, table = _run_bench(
        tmp_path, "--scenarios", "text", "--repeat", "1", "--sessions", "none", "--floor-repeat", "1", timeout=300
    )

    assert results["server"]["started_by_bench"] is True
    assert results["server"]["exit_code"] == 0
    assert results["warmup"]["status"] == "completed"
    clips = [clip["name"] for clip in results["config"]["clips"]]
    samples = results["samples"]["text"]
    assert [sample["clip"] for sample in samples] == clips
    for sample in samples:
        assert "error" not in sample, sample.get("error")
        assert sample["status"] == "completed"
        assert sample["errors"] == []
        assert sample["text_ms"] > 0
        assert sample["reply_text"] and sample["first_sentence"]
        metrics = sample["metrics"]
        assert metrics["stt_ms"] is None  # a typed turn
        for key in ("llm_ttft_ms", "tts_first_audio_ms", "ttfb_ms", "total_ms"):
            assert metrics[key] is not None and metrics[key] >= 0
        assert sample["llm_messages_source"] == "server log"
        floors = sample["floors"]
        assert floors["llm_ttft_floor_ms"] > 0 and floors["tts_floor_ms"] > 0
        assert floors["sum_ms"] == pytest.approx(floors["llm_ttft_floor_ms"] + floors["tts_floor_ms"], abs=0.05)
        assert floors["llm_first_sentence_floor_ms"] >= floors["llm_ttft_floor_ms"]
        assert floors["sum_sentence_ms"] >= floors["sum_ms"]
        assert sample["overhead_ms"] is not None and sample["overhead_sentence_ms"] is not None
        assert sample["ratio"] > 0 and sample["ratio_sentence"] > 0
    assert results["floors"]["llm_ttft"] and results["floors"]["tts_first"]
    assert all(entry["median_ms"] > 0 for entry in results["floors"]["llm_ttft"])
    summary = results["summary"]
    assert summary["latency"]["text_ms"]["all"]["n"] == len(clips)
    _sane(summary["overhead"]["text"]["overhead_ms"])
    _sane(summary["server_metrics"]["text"]["llm_ttft_ms"])
    assert "text_ms [all]" in table and "Floors" in table


@pytest.mark.models
def test_a_quick_text_scenario_with_remote_engines_measures_the_hops(tmp_path):
    """``--engines remote``: the bench starts the engine servers, ``serve`` uses them, and the
    floors give a hop for STT and TTS (the clips, the replies' first sentences) and the LLM's
    HTTP round trip; they are numbers (any sign: a hop may be smaller than the noise)."""
    results, table = _run_bench(
        tmp_path, "--engines", "remote", "--scenarios", "text", "--repeat", "1", "--sessions", "none",
        "--floor-repeat", "1", timeout=420,
    )  # fmt: skip

    assert results["config"]["engines"] == results["summary"]["engines"] == "remote"
    servers = results["engine_servers"]
    assert set(servers) == {"stt", "tts", "llm"}
    assert results["server"]["args"] == [
        "--stt-url", servers["stt"]["url"], "--tts-url", servers["tts"]["url"], "--llm-url", servers["llm"]["url"],
    ]  # fmt: skip
    assert results["server"]["exit_code"] == 0
    for sample in results["samples"]["text"]:
        assert "error" not in sample, sample.get("error")
        assert sample["status"] == "completed" and sample["errors"] == []
        floors = sample["floors"]
        assert floors["tts_floor_ms"] > 0 and floors["tts_in_process_floor_ms"] > 0
        assert isinstance(floors["tts_hop_ms"], float)
        assert floors["sum_ms"] == pytest.approx(floors["llm_ttft_floor_ms"] + floors["tts_floor_ms"], abs=0.05)
    # The remote engines really answered: whisper heard JFK, piper spoke.
    jfk = results["floors"]["stt"]["clip:jfk_16k"]
    assert "ask not what your country can do for you" in jfk["remote"]["text"].lower()
    assert all(entry["remote"]["audio_ms"] > 200 for entry in results["floors"]["tts_first"].values())
    hops = results["summary"]["hops"]
    for engine in ("stt", "tts"):
        assert hops[engine]["inputs"] >= 1
        for figure in ("hop_ms", "in_process_floor_ms", "remote_floor_ms", "connection_ms"):
            stats = hops[engine][figure]
            assert stats["n"] >= 1
            for key in ("p50", "p25", "p75", "min", "max"):
                assert isinstance(stats[key], float)
        assert hops[engine]["remote_floor_ms"]["p50"] > 0
        assert hops[engine]["connection_ms"]["min"] > 0
    assert set(hops["stt"]["per_input"]) == {"clip:jfk_16k", "clip:hotwords_16k"}
    assert hops["llm"]["http_round_trip_ms"]["min"] > 0
    assert "Engine hops" in table and "engines: remote" in table


def test_the_turn_bench_counts_cut_offs_over_the_pause_utterances_and_latency_of_uncut_turns():
    from bench.turn_bench import MODES, summary, table

    server, semantic = MODES

    def sample(cut: bool, commit: float | None, v2v: float | None) -> dict:
        return {"cut": cut, "commit_ms": commit, "voice_to_voice_ms": v2v, "answered": v2v is not None}

    items = [{"pause": True}, {"pause": True}, {"pause": False}]
    results = [
        {server: sample(True, 580, 9000), semantic: sample(False, 900, 1500)},
        {server: sample(True, 590, None), semantic: sample(True, 2000, 8000)},
        {server: sample(False, 560, 1200), semantic: sample(False, 300, 1000)},
    ]
    rows = {row["mode"]: row for row in summary(results, items)}
    assert rows[server]["cut_off"] == "2/2 (100 %)" and rows[semantic]["cut_off"] == "1/2 (50 %)"
    assert (rows[server]["v2v_p50_ms"], rows[server]["v2v_n"]) == (1200, 1)  # the cut turns do not count
    assert (rows[semantic]["commit_p50_ms"], rows[semantic]["v2v_n"]) == (300, 2)
    assert rows[server]["unanswered"] == 1
    # Compared on the utterances both modes answered whole: only the third.
    assert (rows[server]["v2v_both_p50_ms"], rows[semantic]["v2v_both_p50_ms"], rows[semantic]["both_n"]) == (
        1200,
        1000,
        1,
    )
    assert "| semantic_vad (auto) | 1/2 (50 %) |" in table(list(rows.values()), "# t")
