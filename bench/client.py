"""The client side of one measured session: a WebSocket, a microphone and a receiver.

All times are ``trio.current_time()`` on the client (Trio's clock is ``time.perf_counter``
plus an offset), taken at the moment a ``send_message`` call returned (the frame was handed to
the kernel) or a ``get_message`` call returned (the message was read from the socket).

- :class:`Microphone` streams 20 ms frames on a fixed schedule (frame *k* is due at
  ``t0 + k * 20 ms``, waited for with ``trio.sleep_until``; never accumulated sleeps). Clips
  queued with :meth:`Microphone.play` go out in order; between them it sends zeros (real
  silence) or, for push-to-talk, nothing. It records how late each frame was sent.
- :class:`BenchSession` reads every message as soon as it arrives (its own task), time-stamps
  it, parses text frames with :func:`voiceorch.protocol.parse_server_event` and keeps them all in
  ``received``; scenario code waits on that list with :meth:`BenchSession.wait_for`.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator, Callable

import attrs
import trio
import trio_websocket

from voiceorch import protocol as p
from voiceorch.talk import configure

FRAME_MS = 20
FRAME_BYTES = FRAME_MS * p.BYTES_PER_MS  # 640


class SessionLost(Exception):
    """The server closed the connection while the scenario was still waiting."""


@attrs.frozen
class Received:
    at: float  # trio.current_time() when get_message returned
    event: p.ServerEvent | None  # None: a binary frame (reply audio)
    audio_bytes: int = 0

    @property
    def is_audio(self) -> bool:
        return self.event is None


@attrs.define(eq=False)
class Played:
    """One clip going out through the microphone. Stream positions are ms of audio sent in
    this session before the clip's first / after its last sample (the server's VAD dates its
    events on the same axis, as long as the detector was not reset)."""

    pcm: bytes
    align_ms: int | None = None
    first_sent_at: float | None = None
    last_sent_at: float | None = None
    start_pos_ms: float | None = None
    end_pos_ms: float | None = None
    started: trio.Event = attrs.field(factory=trio.Event)
    finished: trio.Event = attrs.field(factory=trio.Event)


class Microphone:
    """Streams frames at real time from ``t0`` on, until cancelled (see the module docstring)."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, *, silence: bool, t0: float | None = None) -> None:
        self._ws = ws
        self._silence = silence
        self.t0 = t0
        self._queue: deque[Played] = deque()
        self._current: Played | None = None
        self._offset = 0
        self.sent_bytes = 0
        #: Per frame sent: how late (s) the send began after the frame's scheduled moment.
        self.lags: list[float] = []
        #: Per frame sent: when its send returned. Frame i carries stream ms [20 i, 20 i + 20).
        self.frame_times: list[float] = []

    @property
    def position_ms(self) -> float:
        return self.sent_bytes / p.BYTES_PER_MS

    def sent_at(self, position_ms: float, *, first: bool = False) -> float | None:
        """When the frame was sent that carried the sample just before stream position
        ``position_ms`` (an end of audio) or, with ``first``, the sample at it (a start)."""
        if first:
            index = math.floor(position_ms / FRAME_MS)
        else:
            index = max(0, math.ceil(position_ms / FRAME_MS) - 1)
        return self.frame_times[index] if index < len(self.frame_times) else None

    def queue(self, pcm: bytes, *, align_ms: int | None = None) -> Played:
        """Queue ``pcm`` (padded with zeros to whole 20 ms frames); returns its handle at once.

        With ``align_ms`` the clip starts only at a stream position that is a multiple of it
        (silence is sent until then), e.g. 160 ms to start on a 32 ms VAD chunk boundary.
        """
        pad = (-len(pcm)) % FRAME_BYTES
        played = Played(pcm=pcm + bytes(pad), align_ms=align_ms)
        self._queue.append(played)
        return played

    async def play(self, pcm: bytes, *, align_ms: int | None = None) -> Played:
        """Queue ``pcm`` and wait until its last frame has been sent."""
        played = self.queue(pcm, align_ms=align_ms)
        await played.finished.wait()
        return played

    def _next_frame(self) -> tuple[bytes | None, Played | None]:
        if self._current is None and self._queue:
            head = self._queue[0]
            aligned = head.align_ms is None or self.sent_bytes % (head.align_ms * p.BYTES_PER_MS) == 0
            if aligned:
                self._current, self._offset = self._queue.popleft(), 0
        clip = self._current
        if clip is None:
            return (bytes(FRAME_BYTES) if self._silence else None), None
        frame = clip.pcm[self._offset : self._offset + FRAME_BYTES]
        self._offset += FRAME_BYTES
        return frame, clip

    async def run(self) -> None:
        t0 = self.t0 if self.t0 is not None else trio.current_time()
        self.t0 = t0
        k = 0
        while True:
            due = t0 + k * FRAME_MS / 1000
            k += 1
            await trio.sleep_until(due)
            frame, clip = self._next_frame()
            if frame is None:
                continue
            self.lags.append(trio.current_time() - due)
            position = self.position_ms
            await self._ws.send_message(frame)
            sent_at = trio.current_time()
            self.sent_bytes += len(frame)
            self.frame_times.append(sent_at)
            if clip is not None:
                if clip.first_sent_at is None:
                    clip.first_sent_at, clip.start_pos_ms = sent_at, position
                    clip.started.set()
                if self._offset >= len(clip.pcm):
                    clip.last_sent_at, clip.end_pos_ms = sent_at, self.position_ms
                    self._current = None
                    clip.finished.set()


class BenchSession:
    """One WebSocket session of the bench; use :func:`open_session`."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, created: p.SessionCreated, mic: Microphone) -> None:
        self.ws = ws
        self.created = created
        self.mic = mic
        self.received: list[Received] = []
        self.closed = False
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    def start_microphone(self, t0: float | None = None) -> None:
        """Start the microphone's schedule at ``t0`` (default: now)."""
        assert self._nursery is not None
        self.mic.t0 = t0
        self._nursery.start_soon(self.mic.run)

    @property
    def session_id(self) -> str:
        return self.created.session_id

    async def send(self, event: p.ClientEvent) -> float:
        """Send a control event; returns the moment the send returned."""
        await self.ws.send_message(p.encode(event))
        return trio.current_time()

    async def receive_loop(self) -> None:
        try:
            while True:
                message = await self.ws.get_message()
                at = trio.current_time()
                if isinstance(message, bytes):
                    item = Received(at, None, len(message))
                else:
                    item = Received(at, p.parse_server_event(message))
                self.received.append(item)
                self._notify()
        except trio_websocket.ConnectionClosed:
            self.closed = True
            self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait_for(self, predicate: Callable[[Received], bool], *, start: int = 0) -> int:
        """The index of the first message at or after ``start`` that satisfies ``predicate``,
        waiting for it if need be. Raises :class:`SessionLost` if the connection closes first."""
        index = start
        while True:
            while index < len(self.received):
                if predicate(self.received[index]):
                    return index
                index += 1
            if self.closed:
                raise SessionLost("the server closed the connection")
            await self._changed.wait()

    async def wait_event(self, kind: type, *, start: int = 0, after: float | None = None, **fields) -> int:
        """Wait for a server event of class ``kind`` with these field values (and, if given,
        received at or after the moment ``after``)."""

        def match(item: Received) -> bool:
            return (
                isinstance(item.event, kind)
                and (after is None or item.at >= after)
                and all(getattr(item.event, name) == value for name, value in fields.items())
            )

        return await self.wait_for(match, start=start)

    def events(self, kind: type, *, start: int = 0, stop: int | None = None) -> list[tuple[int, Received]]:
        return [
            (i, item) for i, item in enumerate(self.received[start:stop], start=start) if isinstance(item.event, kind)
        ]


@contextlib.asynccontextmanager
async def open_session(
    url: str,
    *,
    vad: bool = True,
    silence: bool = True,
    start_mic: bool = True,
    instructions: str | None = None,
    connect_timeout: float = 30,
) -> AsyncIterator[BenchSession]:
    """Connect, read ``session.created``, switch to push-to-talk unless ``vad`` (and set the
    session's ``instructions`` if given), then run the receiver and (unless ``start_mic`` is
    false: then call ``start_microphone``) the microphone until the block exits; then the
    connection is closed."""
    async with trio_websocket.open_websocket_url(url, connect_timeout=connect_timeout, disconnect_timeout=5) as ws:
        created = p.parse_server_event(await ws.get_message())
        if not isinstance(created, p.SessionCreated):
            raise RuntimeError(f"expected session.created, got {created!r}")
        if not vad or instructions is not None:
            await configure(ws, instructions=instructions, vad=vad)  # waits for session.updated
        session = BenchSession(ws, created, Microphone(ws, silence=silence))
        async with trio.open_nursery() as nursery:
            session._nursery = nursery
            nursery.start_soon(session.receive_loop)
            if start_mic:
                session.start_microphone()
            try:
                yield session
            finally:
                nursery.cancel_scope.cancel()
