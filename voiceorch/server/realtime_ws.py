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
import trio_websocket

from .. import metrics
from ..logs import log_event
from ..realtime import RealtimeTranslator
from ..session import SessionSettings
from ..session.transport import Message, TransportReply
from .ws_transport import WebSocketTransport

log = logging.getLogger(__name__)

REALTIME_PATH = "/v1/realtime"


class RealtimeTransport:
    """A session transport that speaks the Realtime dialect to the client.

    ``receive`` reads client frames until one yields something for the session. What the
    translator answers at once (errors, the items a client created) is returned as a
    :class:`~voiceorch.session.transport.TransportReply`, ahead of that frame's own v1 frames,
    so the session's one writer sends it, in order with everything else and under its send
    timeout; ``receive`` itself never sends. Cancellable: a cancelled call loses nothing (what
    a frame gave is kept for the next call). ``send`` sends a reply's frames as they are, and
    translates any other (v1) frame of the writer and sends the result.
    """

    def __init__(self, ws: trio_websocket.WebSocketConnection, translator: RealtimeTranslator) -> None:
        self._ws = WebSocketTransport(ws)
        self.translator = translator
        self._inbox: collections.deque[Message | TransportReply] = collections.deque()

    async def receive(self) -> Message | TransportReply:
        while not self._inbox:
            translation = self.translator.from_client(await self._ws.receive())
            for error in translation.refused:
                log_event(log, "client.error", logging.INFO, code=error.code, message=error.message, dialect="realtime")
                metrics.ERRORS.labels(code=error.code).inc()
            if translation.to_client:
                self._inbox.append(TransportReply(tuple(translation.to_client)))
            self._inbox.extend(translation.to_session)
        return self._inbox.popleft()

    async def send(self, message: Message | TransportReply) -> None:
        if not isinstance(message, TransportReply):
            message = TransportReply(tuple(self.translator.from_session(message)))
        await self._ws.send(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code, reason)


def realtime_settings(settings: SessionSettings) -> SessionSettings:
    """The server's session settings as a Realtime session uses them: speech over a response
    interrupts it as soon as it counts as speech (upstream cancels on ``speech_started``), with
    no pause to judge it first (``interruption`` ``immediate``: the dialect has no pause or resume)."""
    vad = attrs.evolve(settings.turn_detection, interrupt_min_speech_ms=0, interruption="immediate")
    return attrs.evolve(settings, turn_detection=vad)


def realtime_transport(
    ws: trio_websocket.WebSocketConnection, path: str, settings: SessionSettings
) -> tuple[RealtimeTransport, SessionSettings]:
    """The transport and settings of a session accepted on ``path`` (``/v1/realtime?model=...``);
    the ``model`` of the URL is echoed in the session, it chooses nothing."""
    model = parse_qs(urlsplit(path).query).get("model", ["voiceorch"])[0]
    transport = RealtimeTransport(ws, RealtimeTranslator(model=model))
    return transport, realtime_settings(settings)
