"""The voice WebSocket endpoint ``/v1/voice``, served with trio-websocket.

Each accepted connection runs one :class:`~voiceorch.session.Session`. A connection's whole
life is guarded, from the first byte of its upgrade request (accept, every refusal, the set-up
after admission) to its close: whatever goes wrong for one connection — a client that resets
mid-handshake, a session that crashes (close code 1011) — is logged and ends that connection
only; it never reaches the server's nursery, so the server and every other session go on, and
the session's admission slot is always given back.

:meth:`VoiceServer.drain` is the graceful half of a shutdown: it stops accepting connections
and lets the responses in progress finish, up to a grace period; cancelling
:func:`serve_voice` afterwards closes every session with 1001.
"""

from __future__ import annotations

import logging
from functools import partial

import attrs
import trio
import trio_websocket
import wsproto.utilities

from ..engines.base import Engines
from ..logs import log_event
from ..protocol import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_TRY_AGAIN_LATER
from ..session import Session, SessionSettings
from .access import AccessPolicy, Admission
from .realtime_ws import REALTIME_PATH, realtime_transport
from .shared_listener import NOT_ACCEPTING, SharedSocketListener, WorkerTable
from .telephony_ws import TELEPHONY_PATHS, telephony_transport
from .ws_transport import WebSocketTransport as WebSocketTransport

log = logging.getLogger(__name__)

VOICE_PATH = "/v1/voice"
#: A connection that has not completed a WebSocket handshake after this long is closed (a
#: garbage or half-sent request holds its task until then; trio-websocket's default is 60 s).
HANDSHAKE_TIMEOUT_S = 10.0
#: Messages trio-websocket's reader may hold for a session beyond the one it is taking (default 1):
#: a session that fell behind takes the audio frames waiting in one go. At most this many more
#: messages of up to 1 MiB each are held per connection.
READ_AHEAD_MESSAGES = 4


class StoppableListener(trio.abc.Listener[trio.SocketStream]):
    """A TCP listener that can stop accepting without ending the server.

    After :meth:`stop_accepting` its socket is closed (the kernel refuses new connections) and
    :meth:`accept` waits forever, so ``trio.serve_listeners`` keeps running the handlers of the
    connections already accepted (closing a listener it uses would end them all).
    """

    def __init__(self, inner: trio.SocketListener | SharedSocketListener) -> None:
        self.inner = inner
        self._stopped = False
        self._waiting: trio.CancelScope | None = None

    async def accept(self) -> trio.SocketStream:
        if not self._stopped:
            with trio.CancelScope() as self._waiting:
                return await self.inner.accept()  # (atomic with respect to cancellation)
        await self.inner.aclose()
        await trio.sleep_forever()

    def stop_accepting(self) -> None:
        """Accept no more connections. Not a checkpoint."""
        self._stopped = True
        if self._waiting is not None:
            self._waiting.cancel()

    async def aclose(self) -> None:
        await self.inner.aclose()


@attrs.define(eq=False)
class VoiceServer:
    """The running voice server: its bound port, its sessions, and its graceful shutdown."""

    port: int
    listeners: list[StoppableListener]
    admission: Admission
    sessions: set[Session] = attrs.field(factory=set)
    draining: bool = False
    #: Why the engines cannot serve now (a worker's :func:`~.readiness.watch_engines`), or None.
    #: A worker with a problem takes no connection from the shared socket while another can.
    engines_problem: str | None = None
    #: Set when the last session has gone (replaced when one starts).
    _no_sessions: trio.Event = attrs.field(factory=trio.Event)

    def refusal_reason(self) -> str | None:
        """Why a new session would be refused now (shutting down, or full), else None: for
        ``/readyz``, so a load balancer sends new sessions elsewhere. Not a checkpoint."""
        if self.draining:
            return "shutting down: no new sessions"
        if self.admission.active >= self.admission.max_sessions:
            return f"full: {self.admission.active} of {self.admission.max_sessions} sessions"
        return None

    def engines_status(self, problem: str | None) -> None:
        """The engines' problem now (None: they can serve); a change is published to the other
        workers at once. Not a checkpoint."""
        if problem != self.engines_problem:
            self.engines_problem = problem
            self.admission.on_change()

    def add(self, session: Session) -> None:
        self.sessions.add(session)
        self._no_sessions = trio.Event()

    def discard(self, session: Session) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._no_sessions.set()

    async def drain(self, grace_s: float) -> None:
        """Stop accepting connections, let no session start a new response, wait until the
        responses in progress have finished (played to the end) or ``grace_s`` seconds have
        passed, then close every session with 1001 and wait (a few seconds at most) for the
        closing handshakes. Cancel :func:`serve_voice` after it."""
        self.draining = True
        self.admission.on_change()
        for listener in self.listeners:
            listener.stop_accepting()
        for session in self.sessions:
            session.stop_new_turns()
        log_event(log, "voice.draining", sessions=len(self.sessions), grace_s=grace_s)
        with trio.move_on_after(grace_s) as grace:
            for session in list(self.sessions):
                await session.wait_responses_done()
        log_event(log, "voice.drained", responses_cut_off=grace.cancelled_caught)
        for session in self.sessions:
            session.end(CLOSE_GOING_AWAY, "server shutting down")
        with trio.move_on_after(5):
            if self.sessions:
                await self._no_sessions.wait()


#: What a client that goes away at any byte of a connection makes trio-websocket raise (a
#: wsproto ``LocalProtocolError`` when the peer is closing: trio-websocket issue #175).
_CONNECTION_LOST = (
    trio_websocket.ConnectionClosed,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    wsproto.utilities.LocalProtocolError,
)


async def _handle(request: trio_websocket.WebSocketRequest, **context) -> None:
    """One connection's whole life, from its upgrade request to its close, guarded: whatever
    happens to it (a reset or close at any byte of the handshake or of a refusal, a failure
    while setting up its session) ends this connection only and never reaches
    ``serve_listeners``. Cancellation (the server stopping) propagates."""
    try:
        await _serve_connection(request, **context)
    except* _CONNECTION_LOST:
        log_event(log, "voice.connection_lost", logging.DEBUG)  # the client went away mid-handshake
    except* Exception as group:
        log.error("voice.connection_failed", exc_info=group)


async def _serve_connection(
    request: trio_websocket.WebSocketRequest,
    *,
    engines: Engines,
    settings: SessionSettings,
    policy: AccessPolicy,
    admission: Admission,
    server: VoiceServer,
) -> None:
    path = request.path.split("?", 1)[0]
    if path not in (VOICE_PATH, REALTIME_PATH, *TELEPHONY_PATHS):
        endpoints = ", ".join((VOICE_PATH, REALTIME_PATH, *TELEPHONY_PATHS))
        body = f"no such endpoint; the voice endpoints are {endpoints}\n"
        await request.reject(404, body=body.encode())
        return
    headers = [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in request.headers]
    refusal = policy.refusal(request.path, headers)
    if refusal is not None:
        status, reason = refusal
        log_event(log, "voice.refused", status=status, reason=reason)
        await request.reject(status, body=f"{reason}\n".encode())
        return
    ws = await request.accept()
    if server.draining:  # accepted just before the listener stopped
        await ws.aclose(CLOSE_GOING_AWAY, "server shutting down")
        return
    if not admission.try_enter():
        log_event(log, "voice.busy", max_sessions=admission.max_sessions)
        await ws.aclose(CLOSE_TRY_AGAIN_LATER, f"server busy: at most {admission.max_sessions} sessions")
        return
    try:  # from here on the slot is ours: it is given back whatever happens
        try:
            if path == REALTIME_PATH:  # the OpenAI Realtime dialect over the same session core
                transport, session_settings = realtime_transport(ws, request.path, settings)
            elif path in TELEPHONY_PATHS:  # a carrier's media stream (docs/telephony.md)
                transport, session_settings = telephony_transport(
                    ws, path, settings, instruction_params=policy.call_instruction_params
                )
            else:
                transport, session_settings = WebSocketTransport(ws), settings
            session = Session(transport, engines, session_settings)
        except Exception:
            log.error("session.setup_failed", exc_info=True)
            with trio.move_on_after(2):
                await ws.aclose(CLOSE_INTERNAL_ERROR, "internal error")
            return
        server.add(session)
        try:
            await session.run()  # closes the connection itself: 1011 after a crash
        except* Exception as group:
            log.error("session.crashed", exc_info=group, extra={"fields": {"session_id": session.session_id}})
        finally:
            server.discard(session)
    finally:
        admission.leave()


async def serve_voice(
    engines: Engines,
    settings: SessionSettings,
    *,
    host: str,
    port: int,
    policy: AccessPolicy = AccessPolicy(),
    listen_fds: tuple[int, ...] = (),
    worker_table: WorkerTable | None = None,
    task_status: trio.TaskStatus[VoiceServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/v1/voice`` on ``host:port`` (0 picks a free port) until cancelled, admitting
    connections by ``policy``. With ``listen_fds`` (a worker of ``serve --workers N``) it
    accepts on those inherited listening sockets instead, shared with the other workers, and
    publishes its session count in ``worker_table``, by which the workers spread new sessions
    between them (:mod:`~voiceorch.server.shared_listener`).

    ``task_status.started`` receives the :class:`VoiceServer` (its ``port`` is the bound one).
    Cancellation stops accepting and cancels every session (each closes with 1001).
    """
    admission = Admission(policy.max_sessions)
    if listen_fds:

        def load() -> tuple[int, int]:
            if server.engines_problem is not None:  # as if full: another worker takes it if it can
                return admission.max_sessions, admission.max_sessions
            return admission.active, admission.max_sessions

        inner_listeners = [SharedSocketListener.from_fd(fd, load=load, table=worker_table) for fd in listen_fds]
    else:
        inner_listeners = await trio.open_tcp_listeners(port, host=host)
    listeners = [StoppableListener(inner) for inner in inner_listeners]
    server = VoiceServer(port=listeners[0].inner.socket.getsockname()[1], listeners=listeners, admission=admission)
    log_event(
        log,
        "voice.listen",
        host=host,
        port=server.port,
        max_sessions=policy.max_sessions,
        auth=policy.token is not None,
    )
    if worker_table is not None:

        def publish() -> None:
            taking = not server.draining and server.engines_problem is None
            worker_table.publish(admission.active if taking else NOT_ACCEPTING)

        admission.on_change = publish
        publish()
    handler = partial(_handle, engines=engines, settings=settings, policy=policy, admission=admission, server=server)
    websocket_server = trio_websocket.WebSocketServer(
        handler,
        listeners,
        max_message_size=1 << 20,
        message_queue_size=READ_AHEAD_MESSAGES,
        connect_timeout=HANDSHAKE_TIMEOUT_S,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(websocket_server.run)
        task_status.started(server)
