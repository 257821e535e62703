"""Server-side tools from MCP servers (``serve --mcp`` / ``--mcp-url``), with the official ``mcp`` SDK.

:class:`McpTools` is a :class:`~voiceorch.engines.tools.ServerTools` over one or more Model
Context Protocol servers: a stdio server (a command we start, talking JSON-RPC on its stdin and
stdout) or a streamable HTTP one (a URL). The SDK runs on anyio, which runs on Trio as it is:
its client sessions are opened inside our nursery (:meth:`McpTools.run`), no asyncio loop.

- **Lifetimes.** :meth:`McpTools.run` keeps every server connected until cancelled, one
  supervisor task each: connect (spawning the stdio command), list the tools, then wait until the
  connection ends (the stdio server exited, or an HTTP server stopped answering: a call or a
  readiness check failed to reach it), and connect again after a backoff that doubles up to
  ``max_backoff`` (:func:`voiceorch.supervise.run_with_restarts`). Cancelling ``run`` closes every
  session; a stdio server gets its stdin closed, then SIGTERM, then SIGKILL (the SDK's shutdown).
- **Tools.** Listed at each connection; :meth:`McpTools.specs` offers the last listing of every
  server, also while one reconnects (its calls then fail with an error result). A name must suit
  the OpenAI API (``[A-Za-z0-9_-]{1,64}``) and be unique: when two servers offer the same name,
  the server given first on the command line keeps it and the other's tool is left out (logged
  as ``mcp.tool_skipped``), so a tool's meaning never depends on which server connected first.
- **Calls.** Each is bounded by ``call_timeout_s``. A tool that fails, times out, is unknown or
  whose server is down gives an error :class:`~voiceorch.engines.tools.ToolResult` (the LLM reads
  why), never an exception. Cancelling a call cancels its MCP request: the SDK sends the server
  ``notifications/cancelled`` (so does a time-out).
- **Observability.** Every call is logged (``tool.call``: tool, server, outcome, ms) and measured
  (``voiceorch_tool_call_seconds{tool,outcome}``); ``voiceorch_mcp_server_up{server}`` and
  ``voiceorch_mcp_server_restarts_total{server}`` follow the connections; :meth:`check_ready`
  names a server that is down (``/readyz``). A stdio server's stderr is logged at debug level
  (``mcp.server.stderr``) and its last lines are quoted when it exits.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
from collections.abc import Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import attrs
import httpx2
import trio
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp_types import CONNECTION_CLOSED, CallToolResult, Implementation

from .. import __version__, metrics
from ..logs import log_event
from ..supervise import Backoff, leaves, run_with_restarts
from .tools import ServerTools, ToolResult, ToolSpec

log = logging.getLogger(__name__)

#: The tool names the OpenAI chat-completions API accepts (others are left out, logged).
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: How much of a stdio server's stderr is kept, to quote when it exits.
_STDERR_TAIL_CHARS = 2000
#: The longest stderr line logged as it is.
_STDERR_LINE_CHARS = 500
#: What an error result quotes of a tool's text at most (a huge traceback is cut).
_ERROR_TEXT_CHARS = 2000


@attrs.frozen
class McpServerSpec:
    """One MCP server: ``command`` (a stdio server we start) or ``url`` (streamable HTTP)."""

    command: tuple[str, ...] | None = None
    url: str | None = None

    def __attrs_post_init__(self) -> None:
        if (self.command is None) == (self.url is None):
            raise ValueError("an MCP server is a command or a URL")
        if self.command is not None and not self.command:
            raise ValueError("empty MCP server command")

    @classmethod
    def stdio(cls, command_line: str) -> McpServerSpec:
        """From ``--mcp "COMMAND ARGS..."`` (split as a POSIX shell would; no shell runs)."""
        try:
            words = tuple(shlex.split(command_line))
        except ValueError as exc:
            raise ValueError(f"cannot split the MCP server command {command_line!r}: {exc}") from None
        if not words:
            raise ValueError("empty MCP server command")
        return cls(command=words)

    @classmethod
    def http(cls, url: str) -> McpServerSpec:
        """From ``--mcp-url URL`` (an ``http(s)://`` streamable HTTP endpoint, e.g. ``.../mcp``)."""
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"an MCP server URL is http(s)://HOST[:PORT]/PATH, not {url!r}")
        return cls(url=url)

    @property
    def label(self) -> str:
        """A name for logs and metrics: the command line (its program without its directory,
        at most 100 characters), or the URL without credentials or query."""
        if self.command is not None:
            return shlex.join((os.path.basename(self.command[0]), *self.command[1:]))[:100]
        return _public_url(str(self.url))

    def describe(self) -> str:
        if self.command is not None:
            return f"MCP server (stdio): {shlex.join(self.command)}"
        return f"MCP server (streamable HTTP): {_public_url(str(self.url))}"


def _public_url(url: str) -> str:
    """``url`` without what may hold a secret: its user:password@ and its ?query."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


@attrs.define(eq=False)
class _Connection:
    """One server's state, owned by its supervisor task."""

    spec: McpServerSpec
    #: The live session, or None while (re)connecting.
    client: Client | None = None
    #: The last listing (kept while reconnecting), in the server's order.
    tools: list[ToolSpec] = attrs.Factory(list)
    #: Why it cannot serve now, or None.
    down_reason: str | None = "not connected yet"
    #: Set to end the current connection (the transport ended, or a call could not reach it).
    broken: trio.Event = attrs.Factory(trio.Event)
    first_attempt: trio.Event = attrs.Factory(trio.Event)
    #: A stdio server's last stderr lines; set when its stderr reached its end.
    stderr_tail: str = ""
    stderr_done: trio.Event = attrs.Factory(trio.Event)

    def mark_broken(self, why: str) -> None:
        if self.client is not None and not self.broken.is_set():
            self.down_reason = why
            self.broken.set()


class McpTools(ServerTools):
    """The tools of one or more MCP servers (see the module's docstring). Run :meth:`run` in a
    nursery (``await nursery.start(tools.run)``) before offering them; shared by every session."""

    def __init__(
        self,
        servers: Sequence[McpServerSpec],
        *,
        call_timeout_s: float = 10.0,
        connect_timeout_s: float = 30.0,
        restart_backoff: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.servers = [_Connection(spec) for spec in servers]
        self.call_timeout_s = call_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._restart_backoff = restart_backoff
        self._max_backoff = max_backoff
        self._owner: dict[str, _Connection] = {}

    # -- the tools ---------------------------------------------------------------------------

    def specs(self) -> list[ToolSpec]:
        """The tools of every server that has been listed once, first server first. Not a checkpoint."""
        return [tool for server in self.servers for tool in server.tools if self._owner.get(tool.name) is server]

    async def call(self, name: str, arguments: str) -> ToolResult:
        """Call tool ``name``, bounded by ``call_timeout_s``: never raises but ``Cancelled``
        (which cancels the MCP request: the server is sent ``notifications/cancelled``)."""
        started = trio.current_time()
        server = self._owner.get(name)
        outcome = "error"
        result: ToolResult | None = None
        try:
            result, outcome = await self._call(server, name, arguments)
            return result
        except BaseException:
            outcome = "cancelled"
            raise
        finally:
            elapsed = trio.current_time() - started
            label = name if server is not None else "(unknown)"  # the LLM's made-up names are unbounded
            metrics.TOOL_CALL_SECONDS.labels(tool=label, outcome=outcome).observe(elapsed)
            fields: dict[str, Any] = {"tool": name, "outcome": outcome, "ms": round(elapsed * 1000, 1)}
            if server is not None:
                fields["server"] = server.spec.label
            if result is not None and result.is_error:
                fields["error"] = result.output[:300]
            level = logging.INFO if outcome in ("ok", "cancelled") else logging.WARNING
            log_event(log, "tool.call", level, **fields)

    async def _call(self, server: _Connection | None, name: str, arguments: str) -> tuple[ToolResult, str]:
        if server is None:
            return _error(f"there is no tool named {name!r}"), "unknown"
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            return _error(f"the arguments are not valid JSON ({exc})"), "bad_arguments"
        if not isinstance(parsed, dict):
            return _error("the arguments must be a JSON object"), "bad_arguments"
        client = server.client
        if client is None:
            return _error(f"the tool's server is unavailable ({server.down_reason})"), "unavailable"
        try:
            with trio.move_on_after(self.call_timeout_s) as deadline:
                answer = await client.call_tool(name, parsed)
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                server.mark_broken(f"the connection closed ({exc.error.message})")
                return _error(f"the tool's server is unavailable ({exc.error.message})"), "unavailable"
            return _error(f"the tool failed: {exc.error.message}"), "error"
        except Exception as exc:  # a transport failure, a malformed answer: the LLM is told
            if server.spec.url is not None and _unreachable(exc):
                server.mark_broken(f"unreachable ({exc!r})")
                return _error("the tool's server is unavailable"), "unavailable"
            log.warning("tool.call_failed", exc_info=exc, extra={"fields": {"tool": name}})
            return _error(f"the tool failed: {exc!r}"), "error"
        if deadline.cancelled_caught:
            return _error(f"the tool did not answer within {self.call_timeout_s:g} s"), "timeout"
        result = _result(answer)
        return result, "error" if result.is_error else "ok"

    # -- readiness ---------------------------------------------------------------------------

    async def check_ready(self) -> str | None:
        """``None`` when every server is connected; else which one is not, and why. An HTTP
        server is asked for its tools (one request); a stdio server's state is known already."""
        for server in self.servers:
            client = server.client
            if client is not None and server.spec.url is not None:
                try:
                    await client.list_tools(cache_mode="bypass")
                except MCPError as exc:
                    if exc.code == CONNECTION_CLOSED:
                        server.mark_broken(f"the connection closed ({exc.error.message})")
                except Exception as exc:
                    if _unreachable(exc):
                        server.mark_broken(f"unreachable ({exc!r})")
            if server.client is None or server.broken.is_set():
                return f"{server.spec.describe()} is down: {server.down_reason}"
        return None

    # -- lifetimes ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep every server connected until cancelled (see the module's docstring).

        ``task_status.started()`` once every server has been tried once (connected and listed,
        or failed: then it is retried in the background and :meth:`check_ready` says so).
        Cancellation closes every session and stops the stdio servers."""
        async with trio.open_nursery() as nursery:
            for server in self.servers:
                metrics.MCP_SERVER_UP.labels(server=server.spec.label).set(0)
                nursery.start_soon(self._supervise, server)
            for server in self.servers:
                await server.first_attempt.wait()
            task_status.started()

    async def _supervise(self, server: _Connection) -> None:
        label = server.spec.label

        async def run_once() -> str:
            try:
                reason = await self._connect_and_serve(server)
            except Exception as exc:
                reason = _describe_failure(exc)
            finally:
                server.client = None
                metrics.MCP_SERVER_UP.labels(server=label).set(0)
                server.first_attempt.set()
            server.down_reason = reason  # (kept through the backoff and the next attempt)
            return reason

        def exited(reason: str, delay: float) -> None:
            fields: dict[str, Any] = {"server": label, "reason": reason, "retry_s": delay}
            if server.stderr_tail:
                fields["stderr_tail"] = server.stderr_tail
            log_event(log, "mcp.server.down", logging.ERROR, **fields)
            metrics.MCP_SERVER_RESTARTS.labels(server=label).inc()

        await run_with_restarts(run_once, backoff=Backoff(self._restart_backoff, self._max_backoff), on_exit=exited)

    async def _connect_and_serve(self, server: _Connection) -> str:
        """One connection's life: returns why it ended; raises if it could not connect.
        Cancellation closes the session (a stdio server is stopped)."""
        server.broken = trio.Event()
        ended = trio.Event()
        async with trio.open_nursery() as nursery:
            client = Client(
                _transport(server, nursery, ended),  # entered and closed by the client
                client_info=Implementation(name="voiceorch", version=__version__),
                cache=None,  # listed once per connection; a readiness check asks afresh
            )
            try:
                # One scope around the whole session (scopes and the client's task group must
                # nest): its deadline bounds the handshake and the listing, then is lifted.
                with trio.CancelScope(deadline=trio.current_time() + self.connect_timeout_s) as connecting:
                    async with client:
                        tools = await _list_tools(client)
                        connecting.deadline = math.inf
                        server.tools = self._adopt(server, tools)
                        server.client, server.down_reason = client, None
                        metrics.MCP_SERVER_UP.labels(server=server.spec.label).set(1)
                        names = [t.name for t in server.tools]
                        log_event(log, "mcp.server.connected", server=server.spec.label, tools=names)
                        server.first_attempt.set()
                        try:
                            await _first_of(ended.wait, server.broken.wait)
                        finally:
                            server.client = None
                            server.down_reason = server.down_reason or "the connection is closing"
                if connecting.cancelled_caught:
                    return f"it did not answer the handshake and tools/list within {self.connect_timeout_s:g} s"
            finally:
                if server.spec.command is not None:
                    with trio.move_on_after(0.5):  # its last words
                        await server.stderr_done.wait()
                nursery.cancel_scope.cancel()
        if ended.is_set() and not server.broken.is_set():
            return "the server exited (its stdout closed)" if server.spec.command else "the connection ended"
        return server.down_reason or "the connection broke"

    def _adopt(self, server: _Connection, tools: list[ToolSpec]) -> list[ToolSpec]:
        """Take a fresh listing of ``server``: claim its names unless an earlier server has them."""
        rank = self.servers.index(server)
        kept = []
        for tool in tools:
            owner = self._owner.get(tool.name)
            if not TOOL_NAME.match(tool.name):
                why = "its name is not [A-Za-z0-9_-]{1,64}, which the OpenAI API requires"
            elif owner is not None and owner is not server and self.servers.index(owner) < rank:
                why = f"{owner.spec.label!r}, given first, has a tool of that name"
            else:
                if owner is not None and owner is not server:  # a later server had it until now
                    why = f"{server.spec.label!r}, given first, has a tool of that name"
                    log_event(
                        log, "mcp.tool_skipped", logging.WARNING, server=owner.spec.label, tool=tool.name, reason=why
                    )
                self._owner[tool.name] = server
                kept.append(tool)
                continue
            log_event(log, "mcp.tool_skipped", logging.WARNING, server=server.spec.label, tool=tool.name, reason=why)
        for name in [n for n, owner in self._owner.items() if owner is server and n not in {t.name for t in kept}]:
            del self._owner[name]  # gone from this server's listing
        return kept


def _error(text: str) -> ToolResult:
    return ToolResult(output=text, is_error=True)


def _result(answer: CallToolResult) -> ToolResult:
    """The tool's content as text for the LLM: its text blocks, else its structured result;
    other blocks (images, audio, resources) are named, not inlined."""
    parts = []
    for block in answer.content:
        text = getattr(block, "text", None)
        if isinstance(text, str):
            parts.append(text)
        else:
            parts.append(f"[{getattr(block, 'type', 'content')} omitted]")
    if not any(getattr(block, "type", None) == "text" for block in answer.content) and answer.structured_content:
        parts = [json.dumps(answer.structured_content)]
    output = "\n".join(parts)
    if answer.is_error:
        return _error(output[:_ERROR_TEXT_CHARS] or "the tool failed")
    return ToolResult(output=output)


async def _list_tools(client: Client) -> list[ToolSpec]:
    tools: list[ToolSpec] = []
    cursor: str | None = None
    for _ in range(100):  # a paginator that never ends cannot hang the start-up
        page = await client.list_tools(cursor=cursor)
        for tool in page.tools:
            tools.append(ToolSpec(name=tool.name, description=tool.description or "", parameters=tool.input_schema))
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _unreachable(exc: BaseException) -> bool:
    """An HTTP transport's failure to reach its server: the SDK's HTTP client (httpx2, its
    dependency) could not connect or lost the connection, or a stream closed under it."""
    return isinstance(exc, (httpx2.TransportError, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError))


def _describe_failure(exc: BaseException) -> str:
    first = next(leaves(exc), exc)
    if isinstance(first, MCPError):
        return f"it refused the connection: {first.error.message}"
    return f"{type(first).__name__}: {first}"


async def _first_of(*waits) -> None:
    """Return when the first of ``waits`` (async callables) returns; the others are cancelled."""
    async with trio.open_nursery() as nursery:
        for wait in waits:

            async def one(wait=wait) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(one)


@asynccontextmanager
async def _transport(server: _Connection, nursery: trio.Nursery, ended: trio.Event):
    """The SDK transport of ``server``, its read stream watched: ``ended`` is set when the
    stream ends (a stdio server exited). A stdio server's stderr comes to us through a pipe."""
    from mcp.client.streamable_http import streamable_http_client

    spec = server.spec
    if spec.url is not None:
        async with streamable_http_client(spec.url) as (read, write):
            yield _WatchedRead(read, ended), write
        return
    assert spec.command is not None
    # The SDK's default environment (HOME, PATH, ...: not our API keys); `env NAME=VALUE CMD` adds more.
    params = StdioServerParameters(command=spec.command[0], args=list(spec.command[1:]))
    read_fd, write_fd = os.pipe()
    errlog = os.fdopen(write_fd, "w")
    try:
        stderr = trio.lowlevel.FdStream(read_fd)
    except BaseException:
        os.close(read_fd)
        errlog.close()
        raise
    server.stderr_tail, server.stderr_done = "", trio.Event()
    nursery.start_soon(_log_stderr, server, stderr)
    try:
        async with stdio_client(params, errlog=errlog) as (read, write):
            errlog.close()  # the child holds its own copy
            yield _WatchedRead(read, ended), write
    finally:
        errlog.close()


async def _log_stderr(server: _Connection, stream: trio.lowlevel.FdStream) -> None:
    """Log a stdio server's stderr, line by line (debug level), keeping its tail. Ends at EOF
    or when cancelled."""
    buffer = b""
    async with stream:
        while data := await _receive_or_eof(stream):
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", errors="replace").rstrip()
                if line:
                    server.stderr_tail = (server.stderr_tail + line + "\n")[-_STDERR_TAIL_CHARS:]
                    log_event(
                        log,
                        "mcp.server.stderr",
                        logging.DEBUG,
                        server=server.spec.label,
                        line=line[:_STDERR_LINE_CHARS],
                    )
            buffer = buffer[-65536:]
    server.stderr_done.set()


async def _receive_or_eof(stream: trio.lowlevel.FdStream) -> bytes:
    try:
        return await stream.receive_some(65536)
    except trio.BrokenResourceError:
        return b""


class _WatchedRead:
    """A transport's read stream that sets ``ended`` when it ends (EOF or closed)."""

    def __init__(self, inner: Any, ended: trio.Event) -> None:
        self._inner = inner
        self._ended = ended

    async def receive(self):
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._ended.set()
            raise

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    def __getattr__(self, name: str) -> Any:  # last_context and the like
        return getattr(self._inner, name)
