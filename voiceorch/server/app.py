"""``voiceorch serve``: load the engines once, start the embedded LLM server, serve sessions.

Everything runs in one nursery: the supervised llama.cpp child process (unless an external
``llm_url`` is given; restarted with a backoff if it dies), the MCP tool servers' sessions
(``mcp_servers``; a stdio server that dies is started again), the voice WebSocket server and the
HTTP server (browser page, health checks, Prometheus metrics; supervised, so it never takes the
voice server down). Cancelling :func:`run_server` closes every session, stops the servers and
terminates the child. :func:`run_until_signalled` adds the graceful part of a shutdown: on
SIGINT/SIGTERM it stops accepting, lets the responses in progress finish (up to
``shutdown_grace_s``), then cancels the rest.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import trio

from .. import metrics
from ..engines import embedded
from ..engines.base import EngineError, Engines
from ..engines.remote import RemoteEngineSpec
from ..logs import log_event
from ..session import SessionSettings
from .access import AccessPolicy
from .http import DEFAULT_HTTP_PORT, HttpApp, run_http_server
from .loop_lag import watch_loop_lag
from .readiness import watch_engines
from .shared_listener import WorkerTable
from .voice_ws import VOICE_PATH, VoiceServer, serve_voice

if TYPE_CHECKING:
    from ..engines.mcp_tools import McpServerSpec

log = logging.getLogger(__name__)


#: The embedded llama.cpp child answers one request at a time (a second one would cut off or
#: stall the first), so requests queue on our side.
EMBEDDED_LLM_CONCURRENCY = 1
#: vLLM, Ollama, llama-server --parallel and OpenAI batch concurrent requests; 8 streams at once
#: keep a batching server busy without letting one instance flood a server shared by many.
REMOTE_LLM_CONCURRENCY = 8


@attrs.frozen(kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    #: The HTTP server (page, /healthz, /readyz, /metrics): None means the same host as
    #: ``host``; port 0 picks a free one; ``http_port=None`` disables it.
    http_host: str | None = None
    http_port: int | None = DEFAULT_HTTP_PORT
    #: An OpenAI-compatible base URL ending in /v1; None starts the embedded llama.cpp server.
    llm_url: str | None = None
    #: Further servers of the same model, for failover (with ``llm_url`` only).
    llm_fallback_urls: tuple[str, ...] = ()
    llm_api_key: str | None = attrs.field(default=None, repr=False)
    llm_model: str = "default"
    llm_max_tokens: int = 120
    llm_gguf: Path | None = None
    llm_log: Path | None = None
    stt_model: Path | None = None
    #: Load the text end-of-turn model of ``semantic_vad`` (the embedded SmolLM2, in this process).
    text_end_of_turn: bool = True
    tts_voice: Path | None = None
    #: Remote STT/TTS servers (``--stt-url``/``--tts-url``); None keeps the embedded model.
    remote_stt: RemoteEngineSpec | None = None
    remote_tts: RemoteEngineSpec | None = None
    stt_api_key: str | None = attrs.field(default=None, repr=False)
    tts_api_key: str | None = attrs.field(default=None, repr=False)
    #: The LLM's time limit for the first text of a reply, the wait for a request slot
    #: included (``llm_timeout`` after it).
    llm_timeout_s: float = 15.0
    #: LLM requests at a time from this process (more wait for a slot, within ``llm_timeout_s``);
    #: None: :data:`EMBEDDED_LLM_CONCURRENCY` for the embedded child (one thread, one request at
    #: a time), :data:`REMOTE_LLM_CONCURRENCY` for ``llm_url``.
    llm_concurrency: int | None = None
    warm_up: bool = True
    fake_engines: bool = False
    #: On SIGINT/SIGTERM, responses in progress get this long to finish before being cut off.
    shutdown_grace_s: float = 10.0
    #: This process's name among several behind a load balancer (``/readyz`` answers it).
    instance_id: str | None = None
    #: Where the browser page connects for voice, if not to ``port`` on the page's host: a path
    #: on the page's origin (a proxy serving both on one port) or a ``ws(s)://`` URL.
    page_voice_url: str | None = None
    #: MCP servers whose tools the server calls itself (``--mcp``, ``--mcp-url``), in the order
    #: given (the first keeps a tool name that two offer).
    mcp_servers: tuple[McpServerSpec, ...] = ()
    #: The time limit of one MCP tool call; past it the LLM gets an error result.
    mcp_timeout_s: float = 10.0
    #: Listening sockets inherited from ``serve --workers N`` (file descriptors): the voice
    #: server accepts on them, shared with the other workers, instead of binding host:port.
    listen_fds: tuple[int, ...] = ()
    #: With ``listen_fds``: the workers' shared table (a file descriptor) and this worker's slot.
    worker_table_fd: int | None = None
    worker_index: int | None = None
    session: SessionSettings = SessionSettings()
    access: AccessPolicy = AccessPolicy()
    #: Once ready, move what start-up made (modules, models, engines) out of every later garbage
    #: collection (``gc.freeze``) until the server stops, so that a full one walks only what the
    #: sessions made: it stopped the loop for 32-46 ms at 80 sessions before, 13-32 ms after
    #: (bench/README.md).
    freeze_heap_when_ready: bool = True


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _say(line: str) -> None:
    try:
        print(f"[voiceorch] {line}", file=sys.stdout, flush=True)
    except BrokenPipeError:  # a worker whose parent (serve --workers) is gone: the log still says it
        pass


async def _timed(what: str, fn: Callable, *args) -> object:
    started = time.monotonic()
    _say(f"{what} ...")
    result = await fn(*args)
    _say(f"{what}: done in {time.monotonic() - started:.1f} s")
    return result


async def _load_in_thread(load: Callable, *args) -> object:
    return await trio.to_thread.run_sync(load, *args)


async def _real_engines(config: ServerConfig, nursery: trio.Nursery) -> tuple[Engines, Callable]:
    """Load STT and TTS in threads while the LLM server starts; returns engines and a closer."""
    from ..engines.llama_server import LlamaServerConfig, supervise_llama_server
    from ..engines.openai_llm import OpenAICompatibleLLM
    from ..engines.piper_tts import PiperTTS
    from ..engines.silero_vad import SileroVAD
    from ..engines.whisper_windowed import WindowedWhisperSTT

    loaded: dict[str, object] = _remote_engines(config)

    async def load(key: str, what: str, fn: Callable, *args) -> None:
        loaded[key] = await _timed(what, _load_in_thread, fn, *args)

    llm_url = config.llm_url
    async with trio.open_nursery() as loading:
        if "stt" not in loaded:
            stt_dir = config.stt_model or embedded.whisper_model_dir()
            # The encoder window sized to the utterance: bench/baselines/stt_eval.md (same WER, ~6x faster).
            loading.start_soon(
                load, "stt", f"loading speech-to-text (faster-whisper, {stt_dir})", WindowedWhisperSTT.load, stt_dir
            )
        if "tts" not in loaded:
            voice = config.tts_voice or embedded.piper_voice_path()
            loading.start_soon(load, "tts", f"loading text-to-speech (Piper, {voice})", PiperTTS.load, voice)
        loading.start_soon(load, "vad", "loading speech detection (Silero VAD v6)", SileroVAD.load)
        loading.start_soon(load, "end_of_turn", "loading the end-of-turn model (Smart Turn v3.2)", _load_smart_turn)
        if config.text_end_of_turn:
            loading.start_soon(
                load, "text_end_of_turn", "loading the text end-of-turn model (SmolLM2-135M)", _load_text_turn_model
            )
        if llm_url is None:
            gguf = config.llm_gguf or embedded.smollm2_gguf_path()
            llama = LlamaServerConfig(model_path=gguf, log_path=config.llm_log)

            def moved(base_url: str) -> None:  # a restarted child listens on a fresh port
                if "llm" in loaded:
                    loaded["llm"].base_url = base_url

            llm_url = await _timed(
                f"starting the embedded LLM server (llama.cpp, {gguf.name})",
                nursery.start,
                partial(supervise_llama_server, llama, on_restart=moved),
            )
    llm = OpenAICompatibleLLM(
        base_url=llm_url,
        fallback_urls=config.llm_fallback_urls,
        api_key=config.llm_api_key,
        model=config.llm_model,
        max_tokens=config.llm_max_tokens,
        max_concurrent_requests=config.llm_concurrency
        or (EMBEDDED_LLM_CONCURRENCY if config.llm_url is None else REMOTE_LLM_CONCURRENCY),
        first_token_timeout=config.llm_timeout_s,
        read_timeout=config.llm_timeout_s,  # a long prompt may hold back even the headers
    )
    loaded["llm"] = llm
    engines = Engines(
        stt=loaded["stt"],
        llm=llm,
        tts=loaded["tts"],
        vad=loaded["vad"],
        end_of_turn=loaded["end_of_turn"],
        text_end_of_turn=loaded.get("text_end_of_turn"),
    )
    if config.warm_up:
        await _timed("warming up the models", _warm_up, engines)

    async def close() -> None:
        for engine in (engines.stt, engines.tts, llm):
            await engine.aclose()  # the HTTP clients' pools (a no-op for in-process models)

    return engines, close


def _load_smart_turn() -> object | None:
    """The end-of-turn model of ``semantic_vad`` (blocking), or None with a warning if its file
    is missing (then ``semantic_vad`` judges by the transcript alone)."""
    from ..engines.end_of_turn import SmartTurn

    try:
        return SmartTurn.load()
    except FileNotFoundError as exc:
        _say(f"warning: {exc}; semantic_vad will judge the end of turn by the transcript alone")
        return None


def _load_text_turn_model() -> object | None:
    """The text end-of-turn model of ``semantic_vad`` (blocking; the embedded SmolLM2 GGUF, in
    this process), or None with a warning if it cannot load (then the transcript rule alone
    judges the words)."""
    from ..engines.text_end_of_turn import TextTurnModel

    try:
        return TextTurnModel.load()
    except (FileNotFoundError, ImportError, ValueError) as exc:
        _say(f"warning: the text end-of-turn model did not load ({exc}); semantic_vad will not score the words")
        return None


def _remote_engines(config: ServerConfig) -> dict[str, object]:
    """The remote STT/TTS engines the config names (each call bounded by the session's
    ``stt_timeout_s``/``tts_timeout_s``), by ``"stt"``/``"tts"``."""
    from ..engines.remote import build_stt, build_tts

    engines: dict[str, object] = {}
    if config.remote_stt is not None:
        timeout = config.session.stt_timeout_s
        engines["stt"] = build_stt(config.remote_stt, timeout=timeout, api_key=config.stt_api_key)
        _say(config.remote_stt.describe())
    if config.remote_tts is not None:
        timeout = config.session.tts_timeout_s
        engines["tts"] = build_tts(config.remote_tts, timeout=timeout, api_key=config.tts_api_key)
        _say(config.remote_tts.describe())
    return engines


async def _warm_up(engines: Engines) -> None:
    """Run each model once. An LLM server that cannot answer yet (an external ``--llm-url``
    that is down or still starting) is a warning, not a failure: ``serve`` comes up, ``/readyz``
    answers 503 and turns fail with ``llm_unavailable`` until it answers, so the LLM server and
    the orchestrators may start in any order."""
    await engines.stt.warm_up()
    await engines.tts.warm_up()
    if engines.end_of_turn is not None:
        await engines.end_of_turn.warm_up()
    if engines.text_end_of_turn is not None:
        await engines.text_end_of_turn.warm_up()
    try:
        await engines.llm.warm_up()
    except EngineError as exc:
        log_event(log, "llm.warm_up_failed", logging.WARNING, code=exc.code, reason=exc.message)
        _say(f"warning: the LLM did not answer the warm-up ({exc.message}); /readyz answers 503 until it does")


def _fake_engines(config: ServerConfig) -> Engines:
    """Zero-cost fake STT, LLM and TTS; speech detection stays real (Silero, 0.1 ms a chunk),
    so real speech drives the turns. With ``--llm-url``, the LLM is that server's."""
    from ..engines.fakes import FakeLLM, FakeSTT, FakeTTS
    from ..engines.openai_llm import OpenAICompatibleLLM
    from ..engines.silero_vad import SileroVAD

    llm = FakeLLM(first_delay=0, delta_delay=0)
    if config.llm_url is not None:
        llm = OpenAICompatibleLLM(
            base_url=config.llm_url,
            fallback_urls=config.llm_fallback_urls,
            api_key=config.llm_api_key,
            model=config.llm_model,
            max_tokens=config.llm_max_tokens,
            max_concurrent_requests=config.llm_concurrency or REMOTE_LLM_CONCURRENCY,
            first_token_timeout=config.llm_timeout_s,
            read_timeout=config.llm_timeout_s,
        )
    return Engines(stt=FakeSTT(delay=0), llm=llm, tts=FakeTTS(delay=0), vad=SileroVAD.load())


def _mcp_tools(config: ServerConfig):
    from ..engines.mcp_tools import McpTools

    for spec in config.mcp_servers:
        _say(spec.describe())
    return McpTools(config.mcp_servers, call_timeout_s=config.mcp_timeout_s)


async def _start_tools(tools, nursery: trio.Nursery) -> None:
    """Connect the MCP servers; their lifetimes run in ``nursery`` (the server's), so a
    shutdown closes their sessions and stops the stdio servers."""
    await _timed("connecting the MCP tool servers", nursery.start, tools.run)
    names = ", ".join(spec.name for spec in tools.specs()) or "none"
    _say(f"MCP tools: {names}")
    reason = await tools.check_ready()
    if reason is not None:
        _say(f"warning: {reason}; retrying (/readyz answers 503 until it connects)")


def watch_engine_limiters(engines: Engines) -> None:
    """Export the queue depth of each engine's limiter (STT, TTS, and the LLM's request slots)
    as ``voiceorch_limiter_waiting{engine}``."""
    for name in ("stt", "tts", "llm"):
        limiter = getattr(engines, name).limiter
        if limiter is not None:  # the fakes have none
            metrics.watch_limiter(name, limiter)


@attrs.frozen(kw_only=True)
class RunningServer:
    """What :func:`run_server` reports once it serves: the ports it bound (``http_port`` is
    None if HTTP is off or failed) and the voice server, for a graceful shutdown."""

    voice_port: int
    http_port: int | None
    voice: VoiceServer

    async def drain(self, grace_s: float) -> None:
        """Stop accepting sessions (``/readyz`` says so), let the responses in progress finish,
        up to ``grace_s``. Then cancel :func:`run_server`."""
        await self.voice.drain(grace_s)


async def run_server(
    config: ServerConfig, *, task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until cancelled; ``task_status.started`` gets the :class:`RunningServer` once
    sessions are served (and, with ``config.freeze_heap_when_ready``, the start-up heap frozen
    until this returns)."""
    async with trio.open_nursery() as nursery:
        close, frozen = None, False
        try:
            tools = None
            async with trio.open_nursery() as loading:  # the tool servers start while models load
                if config.mcp_servers:
                    tools = _mcp_tools(config)
                    loading.start_soon(_start_tools, tools, nursery)
                if config.fake_engines:
                    _say("using FAKE engines (canned transcript, reply and tone; real speech detection)")
                    engines = _fake_engines(config)
                    close = engines.llm.aclose
                else:
                    engines, close = await _real_engines(config, nursery)
            if tools is not None:
                engines = attrs.evolve(engines, tools=tools)
            server = await nursery.start(
                lambda task_status: serve_voice(
                    engines,
                    config.session,
                    host=config.host,
                    port=config.port,
                    policy=config.access,
                    listen_fds=config.listen_fds,
                    worker_table=(
                        None
                        if config.worker_table_fd is None
                        else WorkerTable(config.worker_table_fd, config.worker_index)
                    ),
                    task_status=task_status,
                )
            )
            port = server.port
            watch_engine_limiters(engines)
            if config.worker_table_fd is not None:  # a worker steps aside while its engines cannot serve
                nursery.start_soon(watch_engines, engines, server.engines_status)
            http_port = None
            if config.http_port is not None:
                http_host = config.http_host or config.host
                http_port = await nursery.start(
                    lambda task_status: run_http_server(
                        HttpApp(
                            engines,
                            voice_port=port,
                            refusal_reason=server.refusal_reason,
                            instance_id=config.instance_id,
                            page_voice_url=config.page_voice_url,
                        ),
                        host=http_host,
                        port=config.http_port,
                        task_status=task_status,
                    )
                )
                if http_port is None:
                    _say(f"page: unavailable (could not listen on {http_host}:{config.http_port}; retrying)")
                else:
                    _say(f"page: http://{_url_host(http_host)}:{http_port}/")
                    _say(f"metrics: http://{_url_host(http_host)}:{http_port}/metrics")
            if config.freeze_heap_when_ready:
                gc.collect()
                gc.freeze()
                frozen = True
            nursery.start_soon(watch_loop_lag)  # from now on: model loading would skew it
            log_event(log, "server.ready", port=port, http_port=http_port)
            _say(f"ready: ws://{config.host}:{port}{VOICE_PATH}")  # printed last: tests wait for it
            task_status.started(RunningServer(voice_port=port, http_port=http_port, voice=server))
            await trio.sleep_forever()
        finally:
            if frozen:  # the process's collector as it was (what start-up made can go now)
                gc.unfreeze()
            if close is not None:  # (it waits for a transcription that a cancelled turn left running)
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    await close()


async def run_until_signalled(
    config: ServerConfig, *, stop_request: Callable[[], Awaitable[object]] | None = None
) -> None:
    """Run the server until SIGINT or SIGTERM, then shut down gracefully and return: accept no
    more sessions, let the responses in progress finish (up to ``config.shutdown_grace_s``),
    then cancel everything: every session closes with 1001, the LLM child is terminated. A
    signal during start-up, or a second signal, stops at once. When ``await stop_request()``
    returns (a worker's parent asking it to stop), it counts as a first signal (``"parent"``);
    it never counts as a second one."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            running: list[RunningServer] = []
            draining = False

            async def serve() -> None:
                running.append(await nursery.start(run_server, config))

            async def drain_then_stop(server: RunningServer) -> None:
                await server.drain(config.shutdown_grace_s)
                nursery.cancel_scope.cancel()

            def stop(name: str) -> None:
                nonlocal draining
                log_event(log, "server.stop", signal=name, graceful=bool(running) and not draining)
                if not running or draining:
                    _say(f"{name}: stopping now")
                    nursery.cancel_scope.cancel()
                    return
                _say(f"{name}: stopping (responses in progress get {config.shutdown_grace_s:g} s to finish)")
                draining = True
                nursery.start_soon(drain_then_stop, running[0])

            async def stop_when_requested(request: Callable[[], Awaitable[object]]) -> None:
                await request()
                if not draining:
                    stop("parent")

            nursery.start_soon(serve)
            if stop_request is not None:
                nursery.start_soon(stop_when_requested, stop_request)
            async for signum in signals:
                stop(signal.Signals(signum).name)
