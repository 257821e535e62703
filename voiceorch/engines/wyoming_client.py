"""The Wyoming protocol (Home Assistant's engine protocol) over Trio streams.

A Wyoming message is one JSON header line, then ``data_length`` bytes of JSON merged into the
header's ``data``, then ``payload_length`` bytes of payload (audio). The ``wyoming`` package
does its I/O with asyncio, so only its event classes and its encoder are used here
(:func:`wyoming.event.write_event` into a buffer); :class:`WyomingDecoder` is a sans-I/O
decoder that takes bytes and gives :class:`wyoming.event.Event` objects, and
:class:`WyomingConnection` moves them over one Trio stream.

Failures are raised as :class:`WyomingError` subclasses; the engines turn them into
``EngineError`` codes.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio
from wyoming.error import Error as WyomingErrorEvent
from wyoming.event import Event, write_event
from wyoming.info import Describe, Info

#: Longest header line accepted (Wyoming < 1.0 put ``data`` inline, so allow room).
MAX_HEADER_BYTES = 1 << 20
#: Longest ``data`` or ``payload`` block accepted (an ``info`` listing every Piper voice
#: is a few hundred kB; an audio chunk a few kB).
MAX_BLOCK_BYTES = 16 << 20
_RECEIVE_BYTES = 65536


class WyomingError(Exception):
    """Talking to a Wyoming server failed."""


class WyomingUnreachable(WyomingError):
    """The server could not be connected to (refused, unknown host, connect timeout)."""


class WyomingProtocolError(WyomingError):
    """The server sent something that is not Wyoming framing."""


class WyomingClosed(WyomingError):
    """The server closed the connection (or reset it) before the exchange was over."""


class WyomingServerError(WyomingError):
    """The server answered with an ``error`` event."""

    def __init__(self, text: str, code: str | None) -> None:
        super().__init__(f"{text} ({code})" if code else text)
        self.text = text
        self.code = code


def encode_event(event: Event) -> bytes:
    """The wire bytes of ``event`` (the ``wyoming`` package's own encoder)."""
    buffer = io.BytesIO()
    write_event(event, buffer)
    return buffer.getvalue()


@attrs.define
class WyomingDecoder:
    """Sans-I/O: :meth:`receive_data` takes bytes, :meth:`next_event` gives whole events."""

    _buffer: bytearray = attrs.field(factory=bytearray)
    #: The parsed header of the event being read, with its block lengths.
    _pending: tuple[dict, int, int] | None = None

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    @property
    def has_partial_event(self) -> bool:
        return bool(self._buffer) or self._pending is not None

    def next_event(self) -> Event | None:
        """The next complete event, or ``None`` until more data arrives.

        Raises :class:`WyomingProtocolError` on a header that is not a JSON object with a
        string ``type``, bad lengths, or blocks over the limits.
        """
        if self._pending is None:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    raise WyomingProtocolError("header line too long")
                return None
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._pending = _parse_header(line)
        header, data_length, payload_length = self._pending
        if len(self._buffer) < data_length + payload_length:
            return None
        self._pending = None
        data = header.get("data") or {}
        if not isinstance(data, dict):
            raise WyomingProtocolError("event data is not a JSON object")
        if data_length:
            extra = _json_object(bytes(self._buffer[:data_length]), "event data")
            data = {**data, **extra}
        payload = bytes(self._buffer[data_length : data_length + payload_length]) or None
        del self._buffer[: data_length + payload_length]
        return Event(type=header["type"], data=data, payload=payload)


def _parse_header(line: bytes) -> tuple[dict, int, int]:
    header = _json_object(line, "event header")
    if not isinstance(header.get("type"), str):
        raise WyomingProtocolError("event header has no string 'type'")
    lengths = []
    for name in ("data_length", "payload_length"):
        value = header.get(name) or 0
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_BLOCK_BYTES:
            raise WyomingProtocolError(f"bad {name} {value!r}")
        lengths.append(value)
    return header, lengths[0], lengths[1]


def _json_object(raw: bytes, what: str) -> dict:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise WyomingProtocolError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise WyomingProtocolError(f"{what} is not a JSON object")
    return value


@attrs.frozen
class WyomingAddress:
    """Where a Wyoming server listens: TCP ``host``/``port``, or a Unix socket ``path``."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"wyoming+unix://{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"wyoming://{host}:{self.port}"

    async def connect(self) -> trio.abc.Stream:
        if self.path is not None:
            return await trio.open_unix_socket(self.path)
        assert self.host is not None and self.port is not None
        return await trio.open_tcp_stream(self.host, self.port)


@attrs.define
class WyomingConnection:
    """One connection to a Wyoming server. Not safe for two tasks to use at once."""

    stream: trio.abc.Stream
    decoder: WyomingDecoder = attrs.field(factory=WyomingDecoder)

    async def send(self, *events: Event) -> None:
        """Send ``events`` in one write. Raises :class:`WyomingClosed` if the server is gone."""
        try:
            await self.stream.send_all(b"".join(encode_event(event) for event in events))
        except trio.BrokenResourceError as exc:
            raise WyomingClosed(f"connection lost while sending ({exc})") from exc

    async def receive(self) -> Event:
        """The next event. An ``error`` event is raised as :class:`WyomingServerError`;
        the end of the stream as :class:`WyomingClosed`."""
        while True:
            event = self.decoder.next_event()
            if event is not None:
                if WyomingErrorEvent.is_type(event.type):
                    data = event.data
                    raise WyomingServerError(str(data.get("text", "")), data.get("code"))
                return event
            try:
                data = await self.stream.receive_some(_RECEIVE_BYTES)
            except trio.BrokenResourceError as exc:
                raise WyomingClosed(f"connection lost ({exc})") from exc
            if not data:
                partly = " in the middle of an event" if self.decoder.has_partial_event else ""
                raise WyomingClosed(f"the server closed the connection{partly}")
            self.decoder.receive_data(data)


@asynccontextmanager
async def open_wyoming(address: WyomingAddress, *, connect_timeout: float) -> AsyncIterator[WyomingConnection]:
    """Connect to ``address`` (bounded by ``connect_timeout``; :class:`WyomingUnreachable`
    if it fails) and close the connection on exit, whether by return, error or cancellation:
    the server sees the connection drop at once."""
    try:
        with trio.fail_after(connect_timeout):
            stream = await address.connect()
    except trio.TooSlowError:
        raise WyomingUnreachable(f"cannot connect to {address} within {connect_timeout:g} s") from None
    except OSError as exc:
        raise WyomingUnreachable(f"cannot connect to {address} ({exc.strerror or exc})") from exc
    connection = WyomingConnection(stream)
    try:
        yield connection
    finally:
        await trio.aclose_forcefully(stream)


async def describe(conn: WyomingConnection) -> Info:
    """Send ``describe`` and return the server's ``info`` (other events before it are skipped)."""
    await conn.send(Describe().event())
    while True:
        event = await conn.receive()
        if Info.is_type(event.type):
            try:
                return Info.from_event(event)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise WyomingProtocolError(f"unreadable info event ({exc!r})") from exc
