"""A raw WebSocket client for attacks a well-behaved client library cannot make.

wsproto over a plain Trio socket: frames sent before the server's handshake answer arrives,
garbage in place of frames, half a frame then a TCP reset (SO_LINGER 0), a client that stops
reading with a small receive buffer. Loopback only.
"""

from __future__ import annotations

import json
import socket
import struct

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import FrameProtocol
from wsproto.utilities import LocalProtocolError

HOST = "127.0.0.1"

UPGRADE = (
    b"GET /v1/voice HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class Closed(Exception):
    """The server closed the connection: ``code`` as in its close frame (1006: no close frame)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


def raw_frame(first_byte: int, payload: bytes) -> bytes:
    """A client frame built by hand (any opcode, any payload), masked with a zero key."""
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return bytes([first_byte]) + length + b"\x00" * 4 + payload


def frame(message: str | bytes) -> bytes:
    """One masked client frame holding ``message`` (text for str, binary for bytes), usable
    before the handshake has completed."""
    return FrameProtocol(client=True, extensions=[]).send_data(message, fin=True)


async def open_socket(port: int, *, rcvbuf: int | None = None) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect, so the TCP window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect((HOST, port))
    return trio.SocketStream(sock)


def reset(stream: trio.SocketStream) -> None:
    """Make the coming close an abortive one: the peer sees a TCP RST."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@attrs.define(eq=False)
class RawClient:
    stream: trio.SocketStream
    ws: WSConnection | Connection
    _events: list = attrs.field(factory=list)
    _sending: trio.Lock = attrs.field(factory=trio.Lock)  # one sender at a time on the stream

    @classmethod
    async def connect(cls, port: int, *, early: bytes = b"", rcvbuf: int | None = None) -> RawClient:
        """Open ``/v1/voice``; ``early`` goes out in the same write as the upgrade request
        (before the server has answered it). Returns once the server accepted."""
        stream = await open_socket(port, rcvbuf=rcvbuf)
        ws = WSConnection(ConnectionType.CLIENT)
        client = cls(stream, ws)
        await stream.send_all(ws.send(Request(host=f"{HOST}:{port}", target="/v1/voice")) + early)
        while True:
            event = await client._next_event()
            if isinstance(event, AcceptConnection):
                return client
            if isinstance(event, RejectConnection):
                raise AssertionError(f"handshake refused: {event.status_code}")

    @classmethod
    async def upgrade_by_hand(cls, port: int, request: bytes = UPGRADE) -> RawClient:
        """Send a fixed upgrade request ourselves and read the 101 answer."""
        stream = await open_socket(port)
        await stream.send_all(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            assert chunk, f"closed during the handshake: {data!r}"
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        ws = Connection(ConnectionType.CLIENT)  # past the handshake: frames only
        client = cls(stream, ws)
        ws.receive_data(rest)
        client._events.extend(ws.events())
        return client

    async def _next_event(self):
        while not self._events:
            data = await self.stream.receive_some(65536)
            if not data:
                raise Closed(1006, "connection closed without a close frame")
            self.ws.receive_data(data)
            self._events.extend(self.ws.events())
        return self._events.pop(0)

    async def send(self, message: str | bytes | dict) -> None:
        if isinstance(message, dict):
            message = json.dumps(message)
        event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        await self._send_all(self.ws.send(event))

    async def _send_all(self, data: bytes) -> None:
        async with self._sending:
            await self.stream.send_all(data)

    async def receive(self) -> str | bytes:
        """The next whole message. Raises :class:`Closed` when the server closes."""
        parts: list = []
        while True:
            event = await self._next_event()
            if isinstance(event, (TextMessage, BytesMessage)):
                parts.append(event.data)
                if event.message_finished:
                    return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
            elif isinstance(event, CloseConnection):
                raise Closed(event.code, event.reason or "")
            elif isinstance(event, Ping):
                await self._send_all(self.ws.send(event.response()))

    async def event(self) -> dict:
        """The next control event (reply audio in between is skipped)."""
        while True:
            message = await self.receive()
            if isinstance(message, str):
                return json.loads(message)

    async def until(self, event_type: str) -> dict:
        while True:
            event = await self.event()
            if event["type"] == event_type:
                return event

    async def reset(self) -> None:
        """Abort the connection: a TCP RST, no close frame."""
        reset(self.stream)
        await self.stream.aclose()

    async def close(self, code: int = 1000) -> None:
        """Send a close frame and close the socket (without waiting for the server's answer)."""
        try:
            await self._send_all(self.ws.send(CloseConnection(code=code)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError):
            pass  # the server closed first
        await self.stream.aclose()

    async def aclose(self) -> None:
        await self.stream.aclose()
