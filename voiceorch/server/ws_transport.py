"""A trio-websocket connection as a session's :class:`~voiceorch.session.transport.MessageTransport`.

The one place where trio-websocket's errors become the transport vocabulary: the client's close
(``ConnectionClosed``) ends ``receive`` with ``trio.EndOfChannel``; a send on a connection that is
closed, or that the peer is closing (wsproto's ``LocalProtocolError`` inside trio-websocket, its
issue #175), raises ``trio.BrokenResourceError``. ``/v1/voice`` uses it as it is; ``/v1/realtime``
wraps it with its translator.
"""

from __future__ import annotations

import logging

import trio
import trio_websocket
import wsproto.utilities

from ..logs import log_event
from ..session.transport import Message, TransportReply

log = logging.getLogger(__name__)


class WebSocketTransport:
    """Adapts a trio-websocket connection to the session's transport vocabulary."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws

    async def receive(self) -> Message:
        """The client's next message. Raises ``trio.EndOfChannel`` once the client has closed
        (the close is logged). Cancellable: a cancelled call loses no message."""
        try:
            return await self._ws.get_message()
        except trio_websocket.ConnectionClosed as closed:
            log_event(log, "session.connection_closed", code=closed.reason.code, reason=closed.reason.reason)
            raise trio.EndOfChannel from None

    def receive_ready(self) -> Message | None:
        """A message the connection has already read (trio-websocket's reader task runs up to its
        ``message_queue_size`` ahead), or None: none is waiting, or the connection is ending
        (``receive`` then tells). Not a checkpoint. Reads trio-websocket's private queue (pinned)."""
        try:
            return self._ws._recv_channel.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return None

    async def send(self, message: Message | TransportReply) -> None:
        """Send one message (or each frame of a reply, in order). Raises
        ``trio.BrokenResourceError`` when the client connection is closed or closing. Not
        bounded in time (trio-websocket has no send timeout): the caller bounds it."""
        for frame in message.frames if isinstance(message, TransportReply) else (message,):
            try:
                await self._ws.send_message(frame)
            except (trio_websocket.ConnectionClosed, wsproto.utilities.LocalProtocolError) as exc:
                raise trio.BrokenResourceError("the client connection is closed") from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.aclose(code, reason)
