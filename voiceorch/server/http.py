"""The HTTP side of the server: the browser page, health checks and Prometheus metrics.

A plain ASGI application (no framework), served by hypercorn's Trio worker on its own port,
beside the voice WebSocket (which stays on trio-websocket):

- ``GET /``: the browser page (``page/index.html``); ``GET /page/<name>``: its static files.
- ``GET /config.json``: where the page finds the voice endpoint
  (``{"voice_path": "/v1/voice", "voice_port": N}``; it connects to
  ``ws(s)://<the page's host>:<voice_port><voice_path>``, or, when ``page_voice_url`` is set
  (behind a proxy that serves the page and the voice endpoint on one port), to
  ``"voice_url"``: a path on the page's own origin or a full ``ws(s)://`` URL).
- ``GET /healthz``: 200 while the process is alive.
- ``GET /readyz``: 200 when the engines are loaded and their backends answer, else 503 with
  ``{"ready": false, "reason": ...}``: also while the server shuts down or has
  ``--max-sessions`` sessions (so a load balancer sends new sessions elsewhere), while the
  embedded LLM process is down or restarting, and while an MCP tool server (``--mcp``,
  ``--mcp-url``) is not connected.
- ``GET /metrics``: Prometheus text format (:mod:`voiceorch.metrics`).

:func:`run_http_server` supervises hypercorn: if it fails it is logged and restarted after a
backoff on the same port; it never takes the voice server down.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..engines.base import Engines
from ..logs import log_event
from ..supervise import Backoff, run_with_restarts
from .readiness import engine_problem
from .voice_ws import VOICE_PATH

log = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).parent / "page"
DEFAULT_HTTP_PORT = 8766

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".json": "application/json",
}
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class HttpApp:
    """The ASGI application. ``voice_port`` is the bound port of the voice WebSocket."""

    def __init__(
        self,
        engines: Engines,
        *,
        voice_port: int,
        page_dir: Path = PAGE_DIR,
        refusal_reason: Callable[[], str | None] = lambda: None,
        instance_id: str | None = None,
        page_voice_url: str | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.page_voice_url = page_voice_url
        self.engines = engines
        self.voice_port = voice_port
        self.page_dir = page_dir
        #: Why the voice server would refuse a new session now (shutting down, full), or None.
        self.refusal_reason = refusal_reason

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, send)
        elif scope["type"] == "websocket":
            # No WebSocket here (the voice endpoint has its own port): closing before
            # accepting makes hypercorn answer the upgrade with 403.
            try:
                await send({"type": "websocket.close", "code": 1008})
            except Exception:  # hypercorn already answered a broken request (400)
                log_event(log, "http.websocket_refused", logging.DEBUG)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, scope: Scope, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        routes = {
            "/": self._index,
            "/config.json": self._config,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics,
        }
        handler = routes.get(path)
        if handler is None and path.startswith("/page/"):
            handler = self._static
        if handler is None:
            status, headers, body = _text(404, "not found\n")
        elif method not in ("GET", "HEAD"):
            status, headers, body = _text(405, "method not allowed\n")
            headers.append((b"allow", b"GET, HEAD"))
        else:
            status, headers, body = await handler(path)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    async def _index(self, path: str):
        return await self._file("index.html")

    async def _static(self, path: str):
        return await self._file(path[len("/page/") :])

    async def _file(self, name: str):
        if not _PLAIN_NAME.match(name) or ".." in name:
            return _text(404, "not found\n")
        file = self.page_dir / name
        try:
            body = await trio.Path(file).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return _text(404, f"{name} not found (the browser page is not installed)\n")
        content_type = _CONTENT_TYPES.get(file.suffix.lower(), "application/octet-stream")
        return 200, [(b"content-type", content_type.encode()), (b"cache-control", b"no-cache")], body

    async def _config(self, path: str):
        config = {"voice_path": VOICE_PATH, "voice_port": self.voice_port}
        if self.page_voice_url is not None:
            config["voice_url"] = self.page_voice_url
        return _json(200, config)

    async def _healthz(self, path: str):
        return _text(200, "ok\n")

    async def _readyz(self, path: str):
        reason = await self.not_ready_reason()
        instance = {} if self.instance_id is None else {"instance": self.instance_id}
        if reason is None:
            return _json(200, {"ready": True, **instance})
        return _json(503, {"ready": False, "reason": reason, **instance})

    async def not_ready_reason(self) -> str | None:
        """``None`` if ready: the voice server takes new sessions (it is neither shutting down
        nor full), the engines are loaded (they are, once this app exists) and every engine's
        ``check_ready`` says it can serve (the LLM client and remote STT/TTS ask their server;
        in-process models and the fakes always can; the MCP tool servers, if any, are all
        connected)."""
        refusal = self.refusal_reason()
        if refusal is not None:
            return refusal
        return await engine_problem(self.engines)

    async def _metrics(self, path: str):
        return 200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], generate_latest()


def _text(status: int, text: str):
    return status, [(b"content-type", b"text/plain; charset=utf-8")], text.encode()


def _json(status: int, value: object):
    return status, [(b"content-type", b"application/json")], json.dumps(value).encode()


def _hypercorn_config() -> Config:
    config = Config()
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # our JSON log lines
    return config


async def serve_http(
    app: HttpApp, *, host: str, port: int, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` with hypercorn's HTTP/1.1 protocol on ``host:port`` (0 picks a free port)
    until cancelled; ``task_status.started`` gets the bound port.

    Not ``hypercorn.trio.serve``: there, one connection's unexpected exception ends the whole
    server (hypercorn issue #225: a WebSocket upgrade request followed by more bytes crashes it,
    still so in 0.18). Here each connection runs hypercorn's ``TCPServer`` under its own guard,
    so a bad client costs only its own connection. (Our app has no lifespan work, so hypercorn's
    lifespan protocol is skipped.)
    """
    config = _hypercorn_config()
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def connection(stream: trio.SocketStream) -> None:
        try:
            await TCPServer(wrapped, config, context, ConnectionState({}), stream).run()
        except Exception as exc:
            log.warning("http.connection_failed", exc_info=exc)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()  # (aclose is idempotent)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, connection, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])


async def run_http_server(
    app: HttpApp,
    *,
    host: str,
    port: int,
    restart_backoff: float = 0.5,
    max_backoff: float = 10.0,
    task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` (0 picks a free port) until cancelled, restarting the
    server whenever it fails (logged; the backoff doubles up to ``max_backoff`` and resets
    after a minute of good service). A restart binds the same port as before.

    ``task_status.started`` gets the bound port, or ``None`` if the first attempt to listen
    failed (then it keeps trying in the background). Never raises except ``Cancelled``.
    """
    reported = False

    async def run_once() -> Exception | None:
        nonlocal port, reported
        try:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(
                    lambda task_status: serve_http(app, host=host, port=port, task_status=task_status)
                )
                log_event(log, "http.listen", host=host, port=port)
                if not reported:
                    reported = True
                    task_status.started(port)
            return None
        except Exception as exc:
            if not reported:
                reported = True
                task_status.started(None)
            return exc

    def exited(failure: Exception | None, delay: float) -> None:
        if failure is None:
            log_event(log, "http.stopped", logging.WARNING, port=port, retry_s=delay)
        else:
            log.error("http.failed", exc_info=failure, extra={"fields": {"host": host, "port": port, "retry_s": delay}})

    await run_with_restarts(run_once, backoff=Backoff(restart_backoff, max_backoff), on_exit=exited)
