"""The OpenAI Realtime-compatible endpoint ``/v1/realtime``: the same session core, another dialect.

:class:`RealtimeTransport` wraps a trio-websocket connection as the session's
:class:`~voiceorch.session.transport.MessageTransport`: what the client sends is translated to
wire protocol v1 on the way in, and what the session sends is translated back on the way out,
by one :class:`~voiceorch.realtime.RealtimeTranslator` per connection. The session itself is
the ordinary :class:`~voiceorch.session.Session`, unchanged. See docs/realtime.md.
"""

from __future__ import annotations

import collections
import logging
from urllib.parse import parse_qs, urlsplit

import attrs
import trio
import trio_websocket
import wsproto.utilities

from .. import metrics
from ..logs import log_event
from ..protocol import CLOSE_POLICY
from ..realtime import RealtimeTranslator
from ..session import SessionSettings
from ..session.transport import Message

log = logging.getLogger(__name__)

REALTIME_PATH = "/v1/realtime"


class RealtimeTransport:
    """A session transport that speaks the Realtime dialect to the client.

    ``receive`` reads client frames until one yields something for the session; frames the
    translator answers at once (errors, the items a client created) are sent from there,
    shielded and bounded by ``send_timeout_s`` so a cancelled read never cuts a frame in half.
    ``send`` translates one v1 frame of the session's writer and sends the result.
    """

    def __init__(
        self, ws: trio_websocket.WebSocketConnection, translator: RealtimeTranslator, *, send_timeout_s: float
    ) -> None:
        self._ws = ws
        self.translator = translator
        self._send_timeout_s = send_timeout_s
        self._inbox: collections.deque[Message] = collections.deque()

    async def receive(self) -> Message:
        while not self._inbox:
            try:
                frame = await self._ws.get_message()
            except trio_websocket.ConnectionClosed as closed:
                log_event(log, "session.connection_closed", code=closed.reason.code, reason=closed.reason.reason)
                raise trio.EndOfChannel from None
            translation = self.translator.from_client(frame)
            for error in translation.refused:
                log_event(log, "client.error", logging.INFO, code=error.code, message=error.message, dialect="realtime")
                metrics.ERRORS.labels(code=error.code).inc()
            self._inbox.extend(translation.to_session)
            if translation.to_client:
                await self._answer(translation.to_client)
        return self._inbox.popleft()

    async def _answer(self, frames: list[str]) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self._send_timeout_s) as timeout:
                try:
                    for frame in frames:
                        await self._send(frame)
                except trio.BrokenResourceError:
                    raise trio.EndOfChannel from None
            if timeout.cancelled_caught:
                log_event(log, "session.send_timeout", logging.WARNING, timeout_s=self._send_timeout_s)
                with trio.move_on_after(2):
                    await self._ws.aclose(CLOSE_POLICY, "send timeout: the client stopped reading")
                raise trio.EndOfChannel

    async def send(self, message: Message) -> None:
        for frame in self.translator.from_session(message):
            await self._send(frame)

    async def _send(self, frame: str) -> None:
        try:
            await self._ws.send_message(frame)
        except (trio_websocket.ConnectionClosed, wsproto.utilities.LocalProtocolError) as exc:
            # LocalProtocolError: the peer is closing (trio-websocket issue #175).
            raise trio.BrokenResourceError("the client connection is closed") from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.aclose(code, reason)


def realtime_settings(settings: SessionSettings) -> SessionSettings:
    """The server's session settings as a Realtime session uses them: speech over a response
    interrupts it as soon as it counts as speech (upstream cancels on ``speech_started``)."""
    return attrs.evolve(settings, turn_detection=attrs.evolve(settings.turn_detection, interrupt_min_speech_ms=0))


def realtime_transport(
    ws: trio_websocket.WebSocketConnection, path: str, settings: SessionSettings
) -> tuple[RealtimeTransport, SessionSettings]:
    """The transport and settings of a session accepted on ``path`` (``/v1/realtime?model=...``);
    the ``model`` of the URL is echoed in the session, it chooses nothing."""
    model = parse_qs(urlsplit(path).query).get("model", ["voiceorch"])[0]
    transport = RealtimeTransport(ws, RealtimeTranslator(model=model), send_timeout_s=settings.send_timeout_s)
    return transport, realtime_settings(settings)
