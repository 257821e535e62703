"""Parse and serialize Realtime API frames: pure functions, no I/O, no awaits.

``parse_client_event`` turns a client text frame into an event of :mod:`.events` or raises
:class:`RealtimeProtocolError`, whose fields become the ``error`` event the server sends back;
``encode`` serializes a server event to its JSON text. Types are checked strictly (``"text": 42``
is an error, an integer is accepted where a number is expected); unknown fields are ignored.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn
from cattrs.strategies import configure_tagged_union
from cattrs.v import format_exception

from . import events as ev


class RealtimeProtocolError(Exception):
    """A client frame cannot be served. The fields are those of the ``error`` event's ``error``."""

    def __init__(
        self, code: str, message: str, *, param: str | None = None, event_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.event_id = event_id


def _strict(kind: type) -> typing.Callable[[Any, type], Any]:
    """A structure hook that checks a JSON primitive's type instead of coercing it."""

    def check(value: Any, _: type) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return check


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter()
    for kind in (str, int, float, bool):
        converter.register_structure_hook(kind, _strict(kind))

    def objects_only(cls: type) -> typing.Callable[[Any, type], Any]:
        structure = make_dict_structure_fn(cls, converter)
        null_is_off = "turn_detection" if cls is ev.AudioInputIn else None

        def check(value: Any, _: type) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected a JSON object, got {type(value).__name__}")
            if null_is_off and null_is_off in value and value[null_is_off] is None:
                value = {**value, null_is_off: {"type": "none"}}  # null turns detection off
            return structure(value, cls)

        return check

    converter.register_structure_hook_factory(attrs.has, objects_only)
    for union in (ev.ClientEvent, ev.ServerEvent):
        configure_tagged_union(union, converter, tag_generator=lambda cls: cls.TYPE, tag_name="type")
    return converter


_converter = _make_converter()
_CLIENT_TYPES = {cls.TYPE for cls in typing.get_args(ev.ClientEvent)}


def encode(event: ev.ServerEvent) -> str:
    """Serialize a server event to the JSON text of its frame, ``type`` first."""
    data = _converter.unstructure(event, unstructure_as=ev.ServerEvent)
    return json.dumps({"type": data.pop("type"), **data}, separators=(",", ":"))


def _describe(exc: BaseException, kind: type | None) -> str:
    if isinstance(exc, ValueError) and str(exc):
        return f"invalid value ({exc})"
    return format_exception(exc, kind)


def parse_client_event(text: str | bytes) -> ev.ClientEvent:
    """Parse one client text frame. Raises :class:`RealtimeProtocolError`."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RealtimeProtocolError("invalid_json", f"the frame is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RealtimeProtocolError("invalid_event", "a client event must be a JSON object")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    kind = data.get("type")
    if not isinstance(kind, str):
        raise RealtimeProtocolError(
            "invalid_event", "a client event needs a string field 'type'", param="type", event_id=event_id
        )
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
    except Exception as exc:  # cattrs raises exception groups with a path to each bad field
        if isinstance(exc, cattrs.BaseValidationError):
            details = cattrs.transform_error(exc, format_exception=_describe)
            param = details[0].split(" @ $.", 1)[1] if details and " @ $." in details[0] else None
            message = "; ".join(details)
        else:
            param, message = None, str(exc)
        raise RealtimeProtocolError(
            "invalid_event", f"invalid {kind!r} event: {message}", param=param, event_id=event_id
        ) from None
