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
    results, table = _run_bench(tmp_path, "--scenarios", "none", "--sessions", "1,2", "--turns", "1", timeout=150)

    assert results["machine"]["cpu_count"] == os.cpu_count()
    assert "samples" not in results  # no real-model scenario was asked for
    concurrency = results["concurrency"]
    assert concurrency["vad"]
    assert [level["sessions"] for level in concurrency["levels"]] == [1, 2]
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
    assert set(results["summary"]["concurrency"]) == {"1", "2"}
    assert "max_sessions_under_limit" in results["summary"]
    assert "Concurrency" in table and "Largest N tested" in table


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
