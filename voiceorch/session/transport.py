"""What a session needs of its client connection: whole messages in, whole messages out.

The server adapts a trio-websocket connection to this; tests use :class:`MemoryTransport`.
The vocabulary is Trio's: ``receive`` raises ``trio.EndOfChannel`` once the client has gone,
``send`` raises ``trio.BrokenResourceError`` when the message cannot be delivered.

A transport that translates another dialect may answer some client frames itself (errors of
its own, echoes): ``receive`` then returns a :class:`TransportReply`, which the session hands
to its one writer, in order with everything else it sends; the writer passes it back to
``send`` unchanged. The session never looks inside it.
"""

from __future__ import annotations

from typing import Protocol

import attrs
import trio

Message = str | bytes


@attrs.frozen
class TransportReply:
    """Frames a transport answers to its client itself, sent by the session's writer."""

    frames: tuple[Message, ...]


class MessageTransport(Protocol):
    async def receive(self) -> Message | TransportReply: ...

    async def send(self, message: Message | TransportReply) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class MemoryTransport:
    """A transport over two memory channels; :func:`memory_transport_pair` makes both ends."""

    def __init__(self, inbound: trio.MemoryReceiveChannel[Message], outbound: trio.MemorySendChannel[Message]):
        self._inbound = inbound
        self._outbound = outbound
        self.close_code: int | None = None
        self.close_reason: str | None = None

    async def receive(self) -> Message | TransportReply:
        try:
            return await self._inbound.receive()
        except trio.ClosedResourceError:
            raise trio.EndOfChannel from None

    async def send(self, message: Message | TransportReply) -> None:
        frames = message.frames if isinstance(message, TransportReply) else (message,)
        try:
            for frame in frames:
                await self._outbound.send(frame)
        except trio.ClosedResourceError:
            raise trio.BrokenResourceError("transport closed") from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._inbound.close()
        self._outbound.close()


def memory_transport_pair(buffer: int = 0) -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected transports: (server end, client end)."""
    to_server_send, to_server_recv = trio.open_memory_channel[Message](buffer)
    to_client_send, to_client_recv = trio.open_memory_channel[Message](buffer)
    return MemoryTransport(to_server_recv, to_client_send), MemoryTransport(to_client_recv, to_server_send)
