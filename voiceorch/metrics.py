"""Prometheus metrics of the process, in prometheus-client's default registry.

A bottom layer like :mod:`voiceorch.logs`: it imports nothing else of ours, and the session
code updates these module-level objects directly (each update is cheap and not a checkpoint).
``GET /metrics`` on the HTTP server (:mod:`voiceorch.server.http`) exposes them.

Sessions

- ``voiceorch_sessions_active``: sessions (WebSocket connections) open now.
- ``voiceorch_sessions_total``: sessions started since the process began.
- ``voiceorch_audio_in_seconds_total``: user audio accepted (valid frames), in seconds.
- ``voiceorch_errors_total{code}``: ``error`` events sent to clients, by their ``code``
  (client mistakes such as ``invalid_json`` as well as failed turns such as ``llm_error``).

Turns (counted when ``response.done`` is sent; dropped speculations are not turns)

- ``voiceorch_turns_total{status}``: responses by final status (``completed``,
  ``interrupted``, ``cancelled``, ``failed``).
- ``voiceorch_barge_ins_total``: responses interrupted by the user speaking over them.
- ``voiceorch_ttfb_seconds``: from the end of the user's turn to the first reply audio frame
  handed to the client (the latency the user hears).
- ``voiceorch_stage_seconds{stage}``: ``stt`` (transcribing the turn), ``llm_ttft`` (LLM
  request to its first text delta), ``tts_first_audio`` (synthesis of the first sentence).
- ``voiceorch_turn_total_seconds``: from the end of the user's turn to ``response.done``
  (includes the reply's playback time, which is paced to real time).
- ``voiceorch_audio_out_seconds_total``: reply audio sent to clients, in seconds.
- ``voiceorch_llm_deltas_total``: text deltas streamed by the LLM (one per streamed chunk;
  with llama.cpp usually one token, but that is not guaranteed, hence not called tokens).

Engines

- ``voiceorch_limiter_waiting{engine}``: tasks waiting for an engine's thread limiter (its
  queue depth), read at scrape time from the limiters registered with :func:`watch_limiter`.

Server-side tools (MCP servers, ``serve --mcp`` / ``--mcp-url``)

- ``voiceorch_tool_call_seconds{tool,outcome}``: each call the server made, by tool and
  outcome (``ok``, ``error`` (the tool failed), ``timeout``, ``unavailable`` (its server is
  down), ``unknown`` (no such tool; ``tool="(unknown)"``), ``bad_arguments``, ``cancelled``);
  its ``_count`` counts the calls.
- ``voiceorch_mcp_server_up{server}``: 1 while the MCP server is connected and listed, else 0.
- ``voiceorch_mcp_server_restarts_total{server}``: connections that ended (or failed) and were
  tried again (a stdio server that exited is started anew).
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

#: Histogram buckets for voice latencies, in seconds (50 ms … 5 s).
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
#: A whole turn includes the spoken reply, so it runs longer.
TURN_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0)

SESSIONS_ACTIVE = Gauge("voiceorch_sessions_active", "Sessions (WebSocket connections) open now.")
SESSIONS_TOTAL = Counter("voiceorch_sessions", "Sessions started.")
TURNS = Counter("voiceorch_turns", "Responses finished, by final status.", ["status"])
BARGE_INS = Counter("voiceorch_barge_ins", "Responses interrupted by the user speaking over them.")
ERRORS = Counter("voiceorch_errors", "Error events sent to clients, by code.", ["code"])
AUDIO_IN_SECONDS = Counter("voiceorch_audio_in_seconds", "User audio accepted, in seconds.")
AUDIO_OUT_SECONDS = Counter("voiceorch_audio_out_seconds", "Reply audio sent to clients, in seconds.")
LLM_DELTAS = Counter("voiceorch_llm_deltas", "Text deltas streamed by the LLM.")
TTFB_SECONDS = Histogram(
    "voiceorch_ttfb_seconds",
    "End of the user's turn to the first reply audio frame sent.",
    buckets=LATENCY_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "voiceorch_stage_seconds",
    "Per-stage latency: stt, llm_ttft (time to first delta), tts_first_audio.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
TURN_TOTAL_SECONDS = Histogram(
    "voiceorch_turn_total_seconds",
    "End of the user's turn to response.done (includes reply playback).",
    buckets=TURN_BUCKETS,
)

#: Tool calls run from well under a second to the call time limit (10 s by default).
TOOL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
TOOL_CALL_SECONDS = Histogram(
    "voiceorch_tool_call_seconds",
    "Server-side tool calls (MCP), by tool and outcome.",
    ["tool", "outcome"],
    buckets=TOOL_BUCKETS,
)
MCP_SERVER_UP = Gauge("voiceorch_mcp_server_up", "1 while the MCP server is connected, else 0.", ["server"])
MCP_SERVER_RESTARTS = Counter(
    "voiceorch_mcp_server_restarts", "MCP server connections that ended or failed and were tried again.", ["server"]
)


class _Metrics(Protocol):  # the fields of protocol.ResponseMetrics used here (all in ms)
    stt_ms: float | None
    llm_ttft_ms: float | None
    tts_first_audio_ms: float | None
    ttfb_ms: float | None
    total_ms: float | None
    audio_ms: float | None


def observe_response(status: str, metrics: _Metrics) -> None:
    """Count one finished response (``response.done``) and record its timings (None skipped)."""
    TURNS.labels(status=status).inc()
    if status == "interrupted":
        BARGE_INS.inc()
    for histogram, ms in (
        (STAGE_SECONDS.labels(stage="stt"), metrics.stt_ms),
        (STAGE_SECONDS.labels(stage="llm_ttft"), metrics.llm_ttft_ms),
        (STAGE_SECONDS.labels(stage="tts_first_audio"), metrics.tts_first_audio_ms),
        (TTFB_SECONDS, metrics.ttfb_ms),
        (TURN_TOTAL_SECONDS, metrics.total_ms),
    ):
        if ms is not None:
            histogram.observe(ms / 1000)
    if metrics.audio_ms:
        AUDIO_OUT_SECONDS.inc(metrics.audio_ms / 1000)


class _Limiter(Protocol):
    def statistics(self): ...  # trio.CapacityLimiter: .tasks_waiting


_limiters: dict[str, _Limiter] = {}


def watch_limiter(engine_name: str, limiter: _Limiter) -> None:
    """Expose ``limiter.statistics().tasks_waiting`` as ``voiceorch_limiter_waiting{engine}``.

    Registering a name again replaces the earlier limiter (a server started anew in the same
    process). The value is read at scrape time."""
    _limiters[engine_name] = limiter


def unwatch_limiter(engine_name: str) -> None:
    _limiters.pop(engine_name, None)


class _LimiterCollector:
    def collect(self):
        family = GaugeMetricFamily(
            "voiceorch_limiter_waiting", "Tasks waiting for an engine's thread limiter.", labels=["engine"]
        )
        for name, limiter in list(_limiters.items()):
            try:
                family.add_metric([name], limiter.statistics().tasks_waiting)
            except Exception:  # a scrape must never fail because of one limiter
                continue
        yield family

    def describe(self):
        return []


REGISTRY.register(_LimiterCollector())
