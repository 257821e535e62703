"""What a session needs of its client connection: whole messages in, whole messages out.

The server adapts a trio-websocket connection to this; tests use :class:`MemoryTransport`.
The vocabulary is Trio's: ``receive`` raises ``trio.EndOfChannel`` once the client has gone,
``send`` raises ``trio.BrokenResourceError`` when the message cannot be delivered.
"""

from __future__ import annotations

from typing import Protocol

import trio

Message = str | bytes


class MessageTransport(Protocol):
    async def receive(self) -> Message: ...

    async def send(self, message: Message) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class MemoryTransport:
    """A transport over two memory channels; :func:`memory_transport_pair` makes both ends."""

    def __init__(self, inbound: trio.MemoryReceiveChannel[Message], outbound: trio.MemorySendChannel[Message]):
        self._inbound = inbound
        self._outbound = outbound
        self.close_code: int | None = None
        self.close_reason: str | None = None

    async def receive(self) -> Message:
        try:
            return await self._inbound.receive()
        except trio.ClosedResourceError:
            raise trio.EndOfChannel from None

    async def send(self, message: Message) -> None:
        try:
            await self._outbound.send(message)
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
