"""The telephony endpoints ``/v1/twilio``, ``/v1/telnyx`` and ``/v1/vonage``: the same session
core, the carriers' media-stream dialects.

:class:`TelephonyTransport` wraps a trio-websocket connection as the session's
:class:`~voiceorch.session.transport.MessageTransport`: carrier frames are translated to wire
protocol v1 on the way in and the session's frames back on the way out, by one
:class:`~voiceorch.telephony.CallTranslator` per call. The session is the ordinary
:class:`~voiceorch.session.Session`, unchanged. See docs/telephony.md.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence

import attrs
import trio
import trio_websocket

from .. import metrics
from ..logs import log_event
from ..session import SessionSettings
from ..session.transport import Message, TransportReply
from ..telephony import TRANSLATORS, CallTranslator, Translation
from .ws_transport import WebSocketTransport

log = logging.getLogger(__name__)

TELEPHONY_PATHS = {f"/v1/{dialect}": dialect for dialect in TRANSLATORS}
#: Reply audio runs at most this far ahead of the call's playback: the carrier's jitter buffer
#: gets enough, and a ``clear`` that comes late leaves the caller little stale speech. The
#: resampler to 8 kHz lets audio out in ~104 ms blocks (soxr HQ), which eat into the lead: at
#: 120 ms a block could reach the carrier 5 ms before it had to play (an underrun, choppy audio,
#: at the least network jitter); at 200 ms every block arrives 85 ms or more ahead.
TELEPHONY_PLAYBACK_LEAD_MS = 200


class TelephonyTransport:
    """A session transport that speaks a carrier's media-stream dialect.

    ``receive`` reads carrier frames until one yields something for the session, and returns
    the carrier frames the translator answers with as a :class:`TransportReply` (the session's
    writer sends them, in order). v1 frames that ``send`` produces for the session (the
    ``playback.position`` after a clear) wake a ``receive`` that is waiting for the carrier:
    the wait is its own cancel scope, and ``get_message`` is atomic with respect to
    cancellation, so no carrier frame is lost. Once the carrier sends ``stop``, ``receive``
    delivers what is left and then raises ``trio.EndOfChannel``.
    """

    def __init__(self, ws: trio_websocket.WebSocketConnection, translator: CallTranslator) -> None:
        self._ws = WebSocketTransport(ws)
        self.translator = translator
        self._inbox: collections.deque[Message | TransportReply] = collections.deque()
        self._waiting: trio.CancelScope | None = None
        self._ended = False

    async def receive(self) -> Message | TransportReply:
        while not self._inbox:
            if self._ended:
                raise trio.EndOfChannel
            frame: Message | None = None
            with trio.CancelScope() as self._waiting:
                frame = await self._ws.receive()  # (trio.EndOfChannel once the carrier has gone)
            self._waiting = None
            if frame is not None:
                self._take(self.translator.from_carrier(frame, trio.current_time()))
        return self._inbox.popleft()

    def _take(self, translation: Translation) -> None:
        self._log(translation)
        if translation.to_carrier:
            self._inbox.append(TransportReply(tuple(translation.to_carrier)))
        self._inbox.extend(translation.to_session)
        self._ended = self._ended or translation.ended

    def _log(self, translation: Translation) -> None:
        dialect = self.translator.dialect
        for error in translation.errors:
            log_event(log, "call.bad_frame", logging.INFO, code=error.code, message=error.message, dialect=dialect)
            metrics.ERRORS.labels(code=error.code).inc()
        for event, fields in translation.notes:
            log_event(log, event, dialect=dialect, **fields)

    async def send(self, message: Message | TransportReply) -> None:
        if not isinstance(message, TransportReply):
            translation = self.translator.from_session(message)
            self._log(translation)
            if translation.to_session:
                self._inbox.extend(translation.to_session)
                if self._waiting is not None:
                    self._waiting.cancel()
            message = TransportReply(tuple(translation.to_carrier))
        await self._ws.send(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code, reason)


def telephony_settings(settings: SessionSettings) -> SessionSettings:
    """The server's session settings for a call: the playback lead of calls (see above), whatever
    ``--playback-lead-ms`` says (the carrier is a server near ours, not a client's network); and
    speech over a reply interrupts it at once (``interruption`` ``immediate``: the carrier
    translators do not pause and resume a reply)."""
    return attrs.evolve(
        settings,
        playback_lead_ms=TELEPHONY_PLAYBACK_LEAD_MS,
        turn_detection=attrs.evolve(settings.turn_detection, interruption="immediate"),
    )


def telephony_transport(
    ws: trio_websocket.WebSocketConnection,
    path: str,
    settings: SessionSettings,
    *,
    instruction_params: Sequence[str] = (),
) -> tuple[TelephonyTransport, SessionSettings]:
    """The transport and settings of a call accepted on ``path`` (one of :data:`TELEPHONY_PATHS`).
    ``instruction_params``: the call's ``start`` custom parameters (Vonage: headers) that may set
    the session's instructions (``serve --call-instructions-param``)."""
    translator = TRANSLATORS[TELEPHONY_PATHS[path.split("?", 1)[0]]](instruction_params=instruction_params)
    return TelephonyTransport(ws, translator), telephony_settings(settings)
