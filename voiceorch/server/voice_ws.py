"""The voice WebSocket endpoint ``/v1/voice``, served with trio-websocket.

Each accepted connection runs one :class:`~voiceorch.session.Session`. Whatever goes wrong in
one session is logged and ends that connection only (close code 1011); it never reaches the
server's nursery, so the server and every other session go on.
"""

from __future__ import annotations

import logging
from functools import partial

import trio
import trio_websocket
import wsproto.utilities

from ..engines.base import Engines
from ..logs import log_event
from ..session import Session, SessionSettings
from ..session.transport import Message
from .access import CLOSE_TRY_AGAIN_LATER, AccessPolicy, Admission

log = logging.getLogger(__name__)

VOICE_PATH = "/v1/voice"


class WebSocketTransport:
    """Adapts a trio-websocket connection to the session's transport vocabulary."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws

    async def receive(self) -> Message:
        try:
            return await self._ws.get_message()
        except trio_websocket.ConnectionClosed:
            raise trio.EndOfChannel from None

    async def send(self, message: Message) -> None:
        try:
            await self._ws.send_message(message)
        except (trio_websocket.ConnectionClosed, wsproto.utilities.LocalProtocolError) as exc:
            # LocalProtocolError: the peer is closing (trio-websocket issue #175).
            raise trio.BrokenResourceError("the client connection is closed") from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.aclose(code, reason)


async def _handle(
    request: trio_websocket.WebSocketRequest,
    *,
    engines: Engines,
    settings: SessionSettings,
    policy: AccessPolicy,
    admission: Admission,
) -> None:
    if request.path.split("?", 1)[0] != VOICE_PATH:
        await request.reject(404, body=f"no such endpoint; the voice endpoint is {VOICE_PATH}\n".encode())
        return
    headers = [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in request.headers]
    refusal = policy.refusal(request.path, headers)
    if refusal is not None:
        status, reason = refusal
        log_event(log, "voice.refused", status=status, reason=reason)
        await request.reject(status, body=f"{reason}\n".encode())
        return
    try:
        ws = await request.accept()
    except trio_websocket.ConnectionClosed:
        return  # the client went away during the handshake: nothing to serve
    if not admission.try_enter():
        log_event(log, "voice.busy", max_sessions=admission.max_sessions)
        await ws.aclose(CLOSE_TRY_AGAIN_LATER, f"server busy: at most {admission.max_sessions} sessions")
        return
    try:
        session = Session(WebSocketTransport(ws), engines, settings)
        try:
            await session.run()  # closes the connection itself: 1011 after a crash
        except* Exception as group:
            log.error("session.crashed", exc_info=group, extra={"fields": {"session_id": session.session_id}})
    finally:
        admission.leave()


async def serve_voice(
    engines: Engines,
    settings: SessionSettings,
    *,
    host: str,
    port: int,
    policy: AccessPolicy = AccessPolicy(),
    task_status: trio.TaskStatus[trio_websocket.WebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/v1/voice`` on ``host:port`` (0 picks a free port) until cancelled, admitting
    connections by ``policy``.

    ``task_status.started`` receives the ``WebSocketServer`` (its ``port`` is the bound one).
    Cancellation stops accepting and cancels every session.
    """
    log_event(log, "voice.listen", host=host, port=port, max_sessions=policy.max_sessions, auth=policy.token is not None)
    admission = Admission(policy.max_sessions)
    await trio_websocket.serve_websocket(
        partial(_handle, engines=engines, settings=settings, policy=policy, admission=admission),
        host,
        port,
        ssl_context=None,
        max_message_size=1 << 20,
        task_status=task_status,
    )
