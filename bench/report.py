"""The summary of a run (p50 / p95 / max of every figure), the terminal table, the JSON file, and
the comparison of two JSON files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Client-side figures: (JSON summary name, scenario whose samples carry it, sample field).
FIGURES = [
    ("voice_to_voice_ms", "voice_to_voice", "voice_to_voice_ms"),
    ("voice_to_voice_from_clip_end_ms", "voice_to_voice", "voice_to_voice_from_clip_end_ms"),
    ("after_vad_window_ms", "voice_to_voice", "after_vad_window_ms"),
    ("commit_ms", "commit", "commit_ms"),
    ("text_ms", "text", "text_ms"),
    ("barge_in_ms", "barge_in", "barge_in_ms"),
    ("barge_in_from_speech_ms", "barge_in", "barge_in_from_speech_ms"),
    ("barge_in_audio_stop_ms", "barge_in", "barge_in_audio_stop_ms"),
    ("interrupt_after_vad_ms", "barge_in", "interrupt_after_vad_ms"),
    ("stop_after_vad_ms", "barge_in", "stop_after_vad_ms"),
]
#: Latency paths that have floors: scenario -> the sample field measured.
PATHS = {"voice_to_voice": "voice_to_voice_ms", "commit": "commit_ms", "text": "text_ms"}
SERVER_METRICS = ["stt_ms", "llm_ttft_ms", "tts_first_audio_ms", "ttfb_ms", "total_ms"]


def _summary(values, percentiles: tuple[int, ...], *, with_min: bool) -> dict | None:
    clean = [float(v) for v in values if v is not None]
    if not clean:
        return None
    a = np.asarray(clean)
    summary: dict = {"n": len(clean)}
    summary.update({f"p{q}": round(float(np.percentile(a, q)), 2) for q in percentiles})
    if with_min:
        summary["min"] = round(float(a.min()), 2)
    summary["max"] = round(float(a.max()), 2)
    return summary


def stats(values) -> dict | None:
    """n, p50, p95 (linear interpolation, as numpy.percentile) and max; None if no values."""
    return _summary(values, (50, 95), with_min=False)


def spread(values) -> dict | None:
    """n, p50, p25, p75 (linear interpolation), min and max; None if no values. For figures
    that may be negative or small beside their noise (the hops)."""
    return _summary(values, (50, 25, 75), with_min=True)


def hops(floors: dict) -> dict:
    """Per engine: the hop (remote floor - in-process floor, pair by pair, over all inputs), the
    per-input medians, and the two floors; ``llm``: the HTTP round trip to the LLM server (a hop
    in both modes). Empty without floors."""
    found: dict = {}
    for engine, key in (("stt", "stt"), ("tts", "tts_first")):
        entries = {name: e for name, e in (floors.get(key) or {}).items() if "remote" in e}
        if not entries:
            continue
        found[engine] = {
            "inputs": len(entries),
            "hop_ms": spread(v for e in entries.values() for v in e["hop_samples_ms"]),
            "hop_per_input_ms": spread(e["hop_ms"] for e in entries.values()),
            "in_process_floor_ms": spread(e["median_ms"] for e in entries.values()),
            "remote_floor_ms": spread(e["remote"]["median_ms"] for e in entries.values()),
        }
        if engine == "stt":
            found[engine]["per_input"] = {name: e["hop_ms"] for name, e in entries.items()}
        connection = (floors.get("connection") or {}).get(engine)
        if connection:
            found[engine]["connection_ms"] = spread(connection["samples_ms"])
    round_trip = floors.get("llm_http_round_trip")
    if round_trip:
        found["llm"] = {"http_round_trip_ms": spread(round_trip["samples_ms"])}
    return found


def _ok(samples: list[dict]) -> list[dict]:
    return [s for s in samples if "error" not in s]


def summarize(results: dict) -> dict:
    samples = results.get("samples", {})
    clips = [clip["name"] for clip in results["config"]["clips"]]
    latency = {}
    for name, scenario, field in FIGURES:
        rows = _ok(samples.get(scenario, []))
        if not rows:
            continue
        per_clip = {clip: stats(s.get(field) for s in rows if s.get("clip") == clip) for clip in clips}
        latency[name] = {"all": stats(s.get(field) for s in rows), "per_clip": per_clip}
    overhead = {}
    for scenario in PATHS:
        rows = [s for s in _ok(samples.get(scenario, [])) if s.get("overhead_ms") is not None]
        if rows:
            overhead[scenario] = {
                "floor_sum_ms": stats(s["floors"]["sum_ms"] for s in rows),
                "overhead_ms": stats(s["overhead_ms"] for s in rows),
                "ratio": stats(s["ratio"] for s in rows),
                "floor_sum_sentence_ms": stats(s["floors"].get("sum_sentence_ms") for s in rows),
                "overhead_sentence_ms": stats(s.get("overhead_sentence_ms") for s in rows),
                "ratio_sentence": stats(s.get("ratio_sentence") for s in rows),
            }
            bounded = [s for s in rows if s.get("overhead_vs_bound_ms") is not None]
            if bounded:
                overhead[scenario]["bound_with_speculation_ms"] = stats(
                    s["floors"]["bound_with_speculation_ms"] for s in bounded
                )
                overhead[scenario]["overhead_vs_bound_ms"] = stats(s["overhead_vs_bound_ms"] for s in bounded)
    server_metrics = {}
    for scenario in ("voice_to_voice", "commit", "text", "barge_in"):
        rows = _ok(samples.get(scenario, []))
        if rows:
            server_metrics[scenario] = {
                metric: stats(s.get("metrics", {}).get(metric) for s in rows) for metric in SERVER_METRICS
            }
    summary: dict = {
        "engines": results["config"].get("engines", "embedded"),
        "latency": latency,
        "overhead": overhead,
        "server_metrics": server_metrics,
    }
    floors = results.get("floors")
    if floors:
        summary["hops"] = hops(floors)
        summary["floors"] = {
            "stt_floor_ms": {
                name[len("clip:") :]: f["median_ms"] for name, f in floors["stt"].items() if name.startswith("clip:")
            },
            "stt_floor_vad_turn_ms": stats(
                f["median_ms"] for name, f in floors["stt"].items() if name.startswith("v2v:")
            ),
            "llm_ttft_floor_ms": stats(f["median_ms"] for f in floors["llm_ttft"]),
            "llm_token_interval_ms": stats(f.get("token_interval_ms") for f in floors["llm_ttft"]),
            "tts_floor_ms": stats(f["median_ms"] for f in floors["tts_first"].values()),
            "foreign_cpu_percent": stats(
                f.get("foreign_cpu_percent")
                for f in [*floors["stt"].values(), *floors["tts_first"].values(), *floors["llm_ttft"]]
            ),
        }
    measured = [s for rows in samples.values() for s in _ok(rows)]
    loads = [s.get("foreign_cpu_percent") for s in measured]
    if measured:
        threshold = results["config"].get("quiet_threshold_percent", 25)
        summary["foreign_cpu_percent"] = {
            **(stats(loads) or {}),
            "threshold": threshold,
            "samples_above": sum(1 for v in loads if v is not None and v >= threshold),
            "samples": len(measured),
        }
    barge = _ok(samples.get("barge_in", []))
    if barge:
        summary["barge_in_interrupted"] = f"{sum(1 for s in barge if s.get('interrupted'))}/{len(barge)}"
    concurrency = results.get("concurrency")
    if concurrency:
        summary["concurrency"] = {
            _level_key(level): {
                "send_lag_p99_ms": (level["send_lag_ms"] or {}).get("p99"),
                "added_latency_ms": level["added_latency_ms"],
                "after_vad_window_ms": level["after_vad_window_ms"],
                "loop_lag_p99_ms": (level["loop_lag"] or {}).get("p99_ms_max"),
                "rss_kb_per_session": level["rss_kb"]["per_session"],
                "server_cpu_percent": level.get("server_cpu_percent"),
                "turns": f"{level['turns_completed']}/{level['turns_expected']}",
                "verdict": _level_verdict(level, concurrency["added_p99_limit_ms"]),
            }
            for level in concurrency["levels"]
        }
        summary["max_sessions_under_limit"] = concurrency["max_sessions_under_limit"]
        summary["max_sessions_all_levels_under_limit"] = concurrency.get("max_sessions_all_levels_under_limit")
    return summary


# --- the terminal table ---------------------------------------------------------------------


def _f(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    out = [line, "-" * len(line)]
    for row in rows:
        out.append(
            "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        )
    return "\n".join(out)


def render(results: dict) -> str:
    summary = results["summary"]
    machine = results["machine"]
    parts = [
        f"voiceorch bench  {results['started_utc']}  cores: {machine['cpu_count']}  "
        f"python {machine['python']}  repeat: {results['config']['repeat']}",
    ]
    if results.get("server"):
        parts.append(
            f"server: {results['server'].get('url')}  ({results['server'].get('started_by_bench') and 'started by the bench' or 'given with --url'})"
        )
    engines = results["config"].get("engines", "embedded")
    if engines == "remote" and results.get("engine_servers"):
        parts.append(
            "engines: remote (started by the bench): "
            + ", ".join(f"{kind} {s['name']} {s['url']}" for kind, s in results["engine_servers"].items())
        )
    else:
        parts.append(f"engines: {engines}")
    latency = summary.get("latency", {})
    if latency:
        rows = []
        for name, figure in latency.items():
            for label, st in [("all", figure["all"]), *figure["per_clip"].items()]:
                if st is None or (label != "all" and len(figure["per_clip"]) < 2):
                    continue
                rows.append([f"{name} [{label}]", st["n"], _f(st["p50"]), _f(st["p95"]), _f(st["max"])])
        parts += ["", "Client-side latency (ms, over all runs)", _table(["figure", "n", "p50", "p95", "max"], rows)]
        if "barge_in_interrupted" in summary:
            parts.append(f"barge-in: {summary['barge_in_interrupted']} replies interrupted")
        load = summary.get("foreign_cpu_percent")
        if load and load.get("n"):
            parts.append(
                f"other processes on the machine during the measurements: p50 {_f(load['p50'])}%, max {_f(load['max'])}% of a core; "
                f"{load['samples_above']}/{load['samples']} measurements at >= {_f(load['threshold'])}%"
                + ("  <- those figures are disturbed" if load["samples_above"] else "")
            )
    overhead = summary.get("overhead", {})
    if overhead:
        rows = []
        for scenario, o in overhead.items():
            for label, floor, over, ratio in [
                ("first token", "floor_sum_ms", "overhead_ms", "ratio"),
                ("first sentence", "floor_sum_sentence_ms", "overhead_sentence_ms", "ratio_sentence"),
            ]:
                if o.get(over) is None:
                    continue
                rows.append(
                    [
                        scenario,
                        label,
                        o[over]["n"],
                        _f(o[floor]["p50"]),
                        _f(o[over]["p50"]),
                        _f(o[over]["p95"]),
                        _f(o[over]["max"]),
                        _f(o[ratio]["p50"], 2),
                        _f(o[ratio]["p95"], 2),
                    ]
                )
            if "overhead_vs_bound_ms" in o:
                b = o["overhead_vs_bound_ms"]
                rows.append(
                    [
                        scenario,
                        "bound*",
                        b["n"],
                        _f(o["bound_with_speculation_ms"]["p50"]),
                        _f(b["p50"]),
                        _f(b["p95"]),
                        _f(b["max"]),
                        "-",
                        "-",
                    ]
                )
        parts += [
            "",
            "Orchestration overhead = measured - sum of the floors on the path; ratio = measured / that sum",
            "  voice_to_voice: 500 ms window + stt + llm + tts_first; commit: stt + llm + tts_first; text: llm + tts_first",
            "  llm = 'first token': the LLM's time to first token (llm_ttft floor);",
            "        'first sentence': to the end of the reply's first sentence, which TTS must wait for",
            "        (ttft floor + (tokens of the server's first sentence - 1) x the floor's token interval)",
            _table(["path", "llm floor", "n", "floors p50", "overhead p50", "p95", "max", "ratio p50", "p95"], rows),
        ]
        if results["config"].get("engines") == "remote":
            parts.append(
                "  remote engines: the stt and tts floors in these sums are the remote ones (through the same servers),"
                " so the overhead is the orchestration's, as in the embedded mode; the hops are below"
            )
        if any("overhead_vs_bound_ms" in o for o in overhead.values()):
            parts.append(
                f"  * the server starts a turn speculatively {results['config'].get('speculate_after_ms')} ms into a pause, so STT, LLM"
                " and TTS can run inside the silence window: bound = max(500, speculate_after + stt + llm (first sentence) + tts_first)"
            )
    floors = summary.get("floors")
    if floors:
        rows = [[f"stt_floor [{clip}] (whole clip)", _f(v)] for clip, v in floors["stt_floor_ms"].items()]
        for label, key in [
            ("stt_floor (VAD turn audio), p50/max", "stt_floor_vad_turn_ms"),
            ("llm_ttft_floor, p50/max over prompts", "llm_ttft_floor_ms"),
            ("llm token interval, p50/max over prompts", "llm_token_interval_ms"),
            ("tts_floor (1st sentence), p50/max", "tts_floor_ms"),
        ]:
            st = floors.get(key)
            rows.append([label, "-" if st is None else f"{_f(st['p50'])} / {_f(st['max'])}"])
        parts += ["", "Floors (ms; each model alone, in process, median of its repeats)", _table(["floor", "ms"], rows)]
        load = floors.get("foreign_cpu_percent")
        if load:
            parts.append(
                f"other processes on the machine during the floors: p50 {_f(load['p50'])}%, max {_f(load['max'])}% of a core"
            )
    found = summary.get("hops")
    if found:
        parts += ["", *_render_hops(found, engines)]
    metrics = summary.get("server_metrics", {})
    if metrics:
        rows = []
        for scenario, m in metrics.items():
            rows.append(
                [scenario]
                + [_f((m.get(k) or {}).get("p50")) + "/" + _f((m.get(k) or {}).get("max")) for k in SERVER_METRICS]
            )
        parts += ["", "Server metrics from response.done (ms, p50/max)", _table(["path", *SERVER_METRICS], rows)]
    concurrency = results.get("concurrency")
    if concurrency:
        rows = []
        for level in concurrency["levels"]:
            added, after = level["added_latency_ms"] or {}, level["after_vad_window_ms"] or {}
            lag = level["loop_lag"]
            rows.append(
                [
                    level["sessions"],
                    level.get("workers", 1),
                    f"{level['turns_completed']}/{level['turns_expected']}",
                    _f((level["send_lag_ms"] or {}).get("p99"), 1),
                    "yes" if level["kept_real_time"] else "NO",
                    _f(added.get("p50"), 1),
                    _f(added.get("p95"), 1),
                    _f(added.get("p99"), 1),
                    _f(after.get("p99"), 1),
                    "-" if lag is None else f"{_f(lag['p99_ms_max'], 1)}/{_f(lag['max_ms'], 1)}",
                    _f(level["server_cpu_percent"]),
                    _f(level["client_cpu_percent"]),
                    _f(None if level["rss_kb"]["per_session"] is None else level["rss_kb"]["per_session"] / 1024, 2),
                    _f(level.get("foreign_cpu_percent")),
                    _f(((level.get("load_average") or {}).get("after") or [None])[0], 2),
                    _level_verdict(level, concurrency["added_p99_limit_ms"]),
                ]
            )
        parts += [
            "",
            f"Concurrency (fake engines, {concurrency['vad']}; speech: {concurrency['speech']})",
            _table(
                [
                    "sessions",
                    "workers",
                    "turns",
                    "send lag p99",
                    "real time",
                    "added p50",
                    "added p95",
                    "added p99",
                    "after-window p99",
                    "loop lag p99/max",
                    "server cpu%",
                    "client cpu%",
                    "MB/session",
                    "other cpu%",
                    "load 1m",
                    "verdict",
                ],
                rows,
            ),
            "  added = voice-to-voice - 500 ms (ideal 20: the frame that completes 16 silent 32-ms chunks is sent 520 ms after the last speech frame)",
        ]
        if not concurrency["loop_lag_logged"]:
            parts.append("  loop lag: the server logged no loop.lag lines")
        best = concurrency["max_sessions_under_limit"]
        every = concurrency.get("max_sessions_all_levels_under_limit")
        line = (
            f"Largest N tested with p99 added latency < {concurrency['added_p99_limit_ms']:.0f} ms "
            f"(and every turn completed): {best if best is not None else 'none'}"
        )
        if every != best:
            line += (
                f" (but a smaller level failed: every level passed only up to {every if every is not None else 'none'})"
            )
        parts.append(line)
        for workers, found in (concurrency.get("by_workers") or {}).items():
            parts.append(
                f"  {workers} worker(s): largest N passing {found['max_sessions_under_limit']}, every level up to "
                f"{found['max_sessions_all_levels_under_limit']}"
            )
    if results.get("notes"):
        parts += ["", "Notes:"] + [f"  - {note}" for note in results["notes"]]
    return "\n".join(parts)


def _level_key(level: dict) -> str:
    """A level's key in the summary: its N, with the worker count when not 1."""
    workers = level.get("workers", 1)
    return str(level["sessions"]) if workers == 1 else f"{level['sessions']}x{workers}w"


def _level_verdict(level: dict, limit_ms: float) -> str:
    """A level's verdict (computed for files written before the runner recorded it)."""
    if "verdict" in level:
        return level["verdict"]
    from .concurrency import verdict

    return verdict(level, limit_ms)[1]


def _render_hops(found: dict, engines: str) -> list[str]:
    lines = []
    rows = []
    for engine in ("stt", "tts"):
        h = found.get(engine)
        if not h:
            continue
        hop = h["hop_ms"]
        rows.append(
            [
                engine,
                h["inputs"],
                hop["n"],
                _f(h["in_process_floor_ms"]["p50"]),
                _f(h["remote_floor_ms"]["p50"]),
                _f(hop["p50"], 1),
                f"{_f(hop['p25'], 1)} .. {_f(hop['p75'], 1)}",
                f"{_f(hop['min'], 1)} .. {_f(hop['max'], 1)}",
            ]
        )
    if rows:
        lines += [
            "Engine hops (ms): remote floor - in-process floor on the same input, the two calls alternating",
            _table(
                ["engine", "inputs", "pairs", "in-process p50", "remote p50", "hop p50", "p25 .. p75", "min .. max"],
                rows,
            ),
        ]
        per_input = (found.get("stt") or {}).get("per_input") or {}
        if per_input:
            lines.append(
                "  stt hop per input (median): " + ", ".join(f"{name} {_f(v, 1)}" for name, v in per_input.items())
            )
        for engine in ("stt", "tts"):
            rt = (found.get(engine) or {}).get("connection_ms")
            if rt:
                lines.append(
                    f"  {engine} connection alone (TCP connect and close, as each call opens one): p50 {_f(rt['p50'], 2)} ms "
                    f"(p25 .. p75 {_f(rt['p25'], 2)} .. {_f(rt['p75'], 2)}, max {_f(rt['max'], 2)}; n {rt['n']})"
                )
    llm = found.get("llm")
    if llm and llm.get("http_round_trip_ms"):
        rt = llm["http_round_trip_ms"]
        where = (
            "the llama.cpp engine server"
            if engines == "remote"
            else "serve's own llama.cpp child, a local HTTP server too"
        )
        lines.append(
            f"llm: an HTTP hop in both modes ({where}); its cost is inside llm_ttft_floor. One HTTP round trip "
            f"(GET /v1/models, warm connection): p50 {_f(rt['p50'], 2)} ms (p25 .. p75 {_f(rt['p25'], 2)} .. {_f(rt['p75'], 2)}, max {_f(rt['max'], 2)})"
        )
    return lines


def write_json(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")


# --- comparing two runs -----------------------------------------------------------------------


def _flatten(node, prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        flat[prefix] = float(node)
    return flat


def compare(old_path: Path, new_path: Path) -> str:
    """Every number of the two summaries side by side (skipping counts), with the change."""
    old, new = (json.loads(Path(p).read_text()) for p in (old_path, new_path))
    a, b = _flatten(old.get("summary", {})), _flatten(new.get("summary", {}))
    rows = []
    for key in [k for k in a if k in b] + [k for k in b if k not in a]:
        if key.endswith(".n"):
            continue
        before, after = a.get(key), b.get(key)
        delta = "-" if before is None or after is None else f"{after - before:+.1f}"
        pct = "-" if not before or after is None else f"{100 * (after - before) / abs(before):+.0f}%"
        rows.append([key, _f(before, 1), _f(after, 1), delta, pct])
    modes = [run.get("config", {}).get("engines", "embedded") for run in (old, new)]
    head = (
        f"old: {old_path} ({old.get('started_utc')}, {old.get('machine', {}).get('cpu_count')} cores, engines {modes[0]})\n"
        f"new: {new_path} ({new.get('started_utc')}, {new.get('machine', {}).get('cpu_count')} cores, engines {modes[1]})"
    )
    if modes[0] != modes[1]:
        head += (
            "\nengines differ: latency changes include the STT/TTS hops (summary.hops, measured in the remote run); "
            "overhead uses the floors of the engines as each server reached them, so it is the orchestration's in both"
        )
    return head + "\n" + _table(["figure", "old", "new", "change", "%"], rows)
