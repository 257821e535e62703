"""Parse and serialize protocol v1 frames: pure functions, no I/O, no awaits.

``parse_client_event`` turns a text frame into a client event or raises :class:`ProtocolError`
with a code the server sends back in an ``error`` event; ``check_audio_frame`` validates a
binary frame; ``encode`` serializes any event to a JSON text frame. ``parse_server_event`` is
the client side's counterpart (used by the ``talk`` client, the tests and the bench).
"""

from __future__ import annotations

import json
import typing
from typing import Any

from . import events as ev
from .strict_json import MAX_JSON_DEPTH as MAX_JSON_DEPTH  # frames nested deeper: invalid_json
from .strict_json import FrameError, load_event_object, strict_converter, validation_details

#: Text frames longer than this are refused with ``message_too_large``.
MAX_TEXT_FRAME_BYTES = 64 * 1024
#: Binary (audio) frames longer than this (1 s of audio) are refused with ``audio_frame_too_large``:
#: a microphone sends 20-100 ms at a time, and one huge frame could hold several utterances
#: (speech detection would see them all at once) and take the session long to process.
MAX_AUDIO_FRAME_BYTES = 32_000


class ProtocolError(Exception):
    """A frame broke the protocol. ``code`` is the ``error`` event's code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_converter = strict_converter((ev.ClientEvent, ev.ServerEvent))
_CLIENT_TYPES = {cls.TYPE for cls in typing.get_args(ev.ClientEvent)}
_SERVER_TYPES = {cls.TYPE for cls in typing.get_args(ev.ServerEvent)}


def encode(event: ev.ClientEvent | ev.ServerEvent) -> str:
    """Serialize ``event`` to the JSON text of its frame, ``type`` first."""
    union = ev.ClientEvent if type(event).TYPE in _CLIENT_TYPES else ev.ServerEvent
    data = _converter.unstructure(event, unstructure_as=union)
    return json.dumps({"type": data.pop("type"), **data}, separators=(",", ":"))


def _parse(text: str | bytes, union: Any, known: set[str], limit: int | None) -> Any:
    size = len(text.encode()) if isinstance(text, str) and limit is not None and len(text) * 4 > limit else len(text)
    if limit is not None and size > limit:
        raise ProtocolError("message_too_large", f"text frames are limited to {MAX_TEXT_FRAME_BYTES} bytes")
    try:
        data, kind = load_event_object(text)
    except FrameError as exc:
        raise ProtocolError(exc.code, exc.message) from None
    if kind not in known:
        raise ProtocolError("unknown_event_type", f"unknown event type {kind!r}")
    try:
        return _converter.structure(data, union)
    except Exception as exc:
        details = "; ".join(validation_details(exc))
        raise ProtocolError("invalid_event", f"invalid {kind!r} event: {details}") from None


def parse_client_event(text: str | bytes) -> ev.ClientEvent:
    """Parse one client text frame. Raises :class:`ProtocolError`."""
    return _parse(text, ev.ClientEvent, _CLIENT_TYPES, MAX_TEXT_FRAME_BYTES)


def parse_server_event(text: str | bytes) -> ev.ServerEvent:
    """Parse one server text frame (client side). Raises :class:`ProtocolError`.

    No size limit: a server frame may be larger than any client frame (it can carry a client's
    text with each non-ASCII character written as a 6-byte ``\\uXXXX`` escape)."""
    return _parse(text, ev.ServerEvent, _SERVER_TYPES, None)


def check_audio_frame(data: bytes) -> None:
    """Validate a binary frame of wire-format PCM. Raises :class:`ProtocolError`."""
    if len(data) > MAX_AUDIO_FRAME_BYTES:
        raise ProtocolError(
            "audio_frame_too_large",
            f"audio frames are limited to {MAX_AUDIO_FRAME_BYTES} bytes (1 s); got {len(data)} bytes: "
            "send audio in smaller frames (20-100 ms)",
        )
    if len(data) % 2:
        raise ProtocolError(
            "invalid_audio_frame",
            f"audio frames carry whole 16-bit samples; got an odd length of {len(data)} bytes",
        )
