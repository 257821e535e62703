"""Parse and serialize Realtime API frames: pure functions, no I/O, no awaits.

``parse_client_event`` turns a client text frame into an event of :mod:`.events` or raises
:class:`RealtimeProtocolError`, whose fields become the ``error`` event the server sends back;
``encode`` serializes a server event to its JSON text. Types are checked strictly (``"text": 42``
is an error, an integer is accepted where a number is expected); unknown fields are ignored.
"""

from __future__ import annotations

import json
import typing

from ..protocol.strict_json import FrameError, load_event_object, strict_converter, validation_details
from . import events as ev


class RealtimeProtocolError(Exception):
    """A client frame cannot be served. The fields are those of the ``error`` event's ``error``."""

    def __init__(self, code: str, message: str, *, param: str | None = None, event_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.event_id = event_id


def _null_turns_detection_off(cls: type, data: dict) -> dict:
    if cls is ev.AudioInputIn and "turn_detection" in data and data["turn_detection"] is None:
        return {**data, "turn_detection": {"type": "none"}}  # null turns detection off
    return data


_converter = strict_converter((ev.ClientEvent, ev.ServerEvent), prepare=_null_turns_detection_off)
_CLIENT_TYPES = {cls.TYPE for cls in typing.get_args(ev.ClientEvent)}


def encode(event: ev.ServerEvent) -> str:
    """Serialize a server event to the JSON text of its frame, ``type`` first."""
    data = _converter.unstructure(event, unstructure_as=ev.ServerEvent)
    return json.dumps({"type": data.pop("type"), **data}, separators=(",", ":"))


def parse_client_event(text: str | bytes) -> ev.ClientEvent:
    """Parse one client text frame. Raises :class:`RealtimeProtocolError`."""
    try:
        data, kind = load_event_object(text)
    except FrameError as exc:
        frame_id = exc.frame.get("event_id") if exc.frame is not None else None
        param = "type" if exc.frame is not None else None  # an object, but no string 'type'
        raise RealtimeProtocolError(
            exc.code, exc.message, param=param, event_id=frame_id if isinstance(frame_id, str) else None
        ) from None
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    if kind in ev.UNSUPPORTED_CLIENT_TYPES:
        raise RealtimeProtocolError(
            "unsupported_event", f"{kind!r} is not supported by voiceorch", param="type", event_id=event_id
        )
    if kind not in _CLIENT_TYPES:
        raise RealtimeProtocolError(
            "unknown_event_type", f"unknown event type {kind!r}", param="type", event_id=event_id
        )
    try:
        return _converter.structure(data, ev.ClientEvent)
    except Exception as exc:
        details = validation_details(exc)
        param = details[0].split(" @ $.", 1)[1] if details and " @ $." in details[0] else None
        message = "; ".join(details)
        raise RealtimeProtocolError(
            "invalid_event", f"invalid {kind!r} event: {message}", param=param, event_id=event_id
        ) from None
