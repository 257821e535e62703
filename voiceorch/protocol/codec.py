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

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn
from cattrs.v import format_exception
from cattrs.strategies import configure_tagged_union

from . import events as ev

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


def _strict(kind: type) -> typing.Callable[[Any, type], Any]:
    """A structure hook that checks a JSON primitive's type instead of coercing it."""

    def check(value: Any, _: type) -> Any:
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return check


def _describe(exc: BaseException, kind: type | None) -> str:
    if isinstance(exc, ValueError) and str(exc):
        return f"invalid value ({exc})"
    return format_exception(exc, kind)


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter()
    for kind in (str, int, float, bool):
        converter.register_structure_hook(kind, _strict(kind))

    def objects_only(cls: type) -> typing.Callable[[Any, type], Any]:
        structure = make_dict_structure_fn(cls, converter)

        def check(value: Any, _: type) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected a JSON object, got {type(value).__name__}")
            return structure(value, cls)

        return check

    converter.register_structure_hook_factory(attrs.has, objects_only)
    for union in (ev.ClientEvent, ev.ServerEvent):
        configure_tagged_union(union, converter, tag_generator=lambda cls: cls.TYPE, tag_name="type")
    return converter


_converter = _make_converter()
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
        raise ProtocolError(
            "message_too_large", f"text frames are limited to {MAX_TEXT_FRAME_BYTES} bytes"
        )
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError("invalid_json", f"the frame is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_event", "a control frame must be a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("invalid_event", "a control frame needs a string field 'type'")
    if kind not in known:
        raise ProtocolError("unknown_event_type", f"unknown event type {kind!r}")
    try:
        return _converter.structure(data, union)
    except Exception as exc:  # cattrs raises exception groups with a path to each bad field
        if isinstance(exc, cattrs.BaseValidationError):
            details = "; ".join(cattrs.transform_error(exc, format_exception=_describe))
        else:
            details = str(exc)
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
