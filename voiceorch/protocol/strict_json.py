"""Strict JSON frames: decoding a control frame, and cattrs (un)structuring into attrs event
classes. Pure functions.

Shared by the v1 codec (:mod:`.codec`) and the Realtime dialect's (``voiceorch.realtime``).
:func:`load_event_object` is the prelude of both parsers: the frame must be JSON nested at most
:data:`MAX_JSON_DEPTH` deep (checked before parsing, so the answer does not depend on the Python
version's recursion limits), a JSON object, with a string field ``type``. JSON primitives are
checked, not coerced (``"text": 42`` is an error; an integer is accepted where a number is
expected), an attrs class is structured only from a JSON object, unknown
fields are ignored, and each union of events is tagged by its ``type`` field. A field whose
metadata has :data:`OMIT_IF_DEFAULT` is left out of its object while it has its default value.
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Callable
from itertools import accumulate
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.strategies import configure_tagged_union
from cattrs.v import format_exception

#: Field metadata key: the field is left out of its frame while it has its default value (for a
#: field added to an event later, so that the frames without it stay exactly as they were).
OMIT_IF_DEFAULT = "voiceorch.omit_if_default"

#: A control frame may nest arrays and objects this deep (``{"a": [1]}`` is 2 deep); deeper ones
#: are refused with ``invalid_json`` before they are parsed, the same on every Python version.
#: The events of both dialects nest at most 6 deep (a Realtime ``response.create`` with input items).
MAX_JSON_DEPTH = 32


class FrameError(Exception):
    """A text frame is not a JSON object with a string ``type``. ``code`` is ``invalid_json``
    or ``invalid_event``; ``frame`` is the decoded object when there was one (so a dialect can
    still echo its ``event_id``)."""

    def __init__(self, code: str, message: str, *, frame: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame = frame


# A JSON string, escapes included (possessive, so nothing backtracks), and a run of anything but brackets.
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]++")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth(text: str) -> int:
    """How deep ``text`` nests arrays and objects (``{"a": [1]}``: 2), brackets inside strings
    not counted; for text that is not JSON, at least the depth its valid prefix reaches. Linear
    in the text, without recursion, and in C loops (a 64 KiB frame full of brackets: ~2 ms)."""
    brackets = _NOT_BRACKETS.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


def load_event_object(text: str | bytes) -> tuple[dict[str, Any], str]:
    """Decode one control frame into its JSON object and its ``type``. Raises
    :class:`FrameError`: ``invalid_json`` if it is not JSON (bytes that are not UTF-8/16/32
    included) or nests deeper than :data:`MAX_JSON_DEPTH`, ``invalid_event`` if it is not an
    object or has no string ``type``."""
    try:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode(json.detect_encoding(text), "surrogatepass")  # as json.loads does
        if text.count("[") + text.count("{") > MAX_JSON_DEPTH and json_depth(text) > MAX_JSON_DEPTH:
            raise FrameError("invalid_json", f"the frame nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")
        data = json.loads(text)
    except ValueError as exc:  # (UnicodeDecodeError is one)
        raise FrameError("invalid_json", f"the frame is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise FrameError("invalid_event", "a control frame must be a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise FrameError("invalid_event", "a control frame needs a string field 'type'", frame=data)
    return data, kind


def _strict(kind: type) -> Callable[[Any, type], Any]:
    """A structure hook that checks a JSON primitive's type instead of coercing it."""

    def check(value: Any, _: type) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return check


def strict_converter(
    unions: typing.Iterable[Any], *, prepare: Callable[[type, dict], dict] | None = None
) -> cattrs.Converter:
    """A converter for event ``unions`` (each tagged by its classes' ``TYPE``, in field
    ``type``). ``prepare(cls, data)``, if given, may rewrite an object before it becomes ``cls``."""
    converter = cattrs.Converter()
    for kind in (str, int, float, bool):
        converter.register_structure_hook(kind, _strict(kind))

    def arrays_only(cls: type) -> Callable[[Any, type], Any]:
        """``tuple[X, ...]`` from a JSON array only (cattrs would take a string's characters)."""
        item = typing.get_args(cls)[0]

        def check(value: Any, _: type) -> Any:
            if not isinstance(value, list):
                raise TypeError(f"expected a JSON array, got {type(value).__name__}")
            return tuple(converter.structure(v, item) for v in value)

        return check

    def is_array(cls: Any) -> bool:
        args = typing.get_args(cls)
        return typing.get_origin(cls) is tuple and len(args) == 2 and args[1] is Ellipsis

    converter.register_structure_hook_factory(is_array, arrays_only)

    def objects_only(cls: type) -> Callable[[Any, type], Any]:
        structure = make_dict_structure_fn(cls, converter)

        def check(value: Any, _: type) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected a JSON object, got {type(value).__name__}")
            return structure(prepare(cls, value) if prepare is not None else value, cls)

        return check

    converter.register_structure_hook_factory(attrs.has, objects_only)

    def omitting_defaults(cls: type) -> Callable[[Any], Any]:
        omit = {f.name: override(omit_if_default=True) for f in attrs.fields(cls) if f.metadata.get(OMIT_IF_DEFAULT)}
        return make_dict_unstructure_fn(cls, converter, **omit)

    converter.register_unstructure_hook_factory(attrs.has, omitting_defaults)
    for union in unions:
        configure_tagged_union(union, converter, tag_generator=lambda cls: cls.TYPE, tag_name="type")
    return converter


def _describe(exc: BaseException, kind: type | None) -> str:
    if isinstance(exc, ValueError) and str(exc):
        return f"invalid value ({exc})"
    return format_exception(exc, kind)


def validation_details(exc: Exception) -> list[str]:
    """What is wrong with a frame, one line per bad field (``... @ $.path``), from what
    ``converter.structure`` raised (cattrs raises exception groups with a path to each field)."""
    if isinstance(exc, cattrs.BaseValidationError):
        return cattrs.transform_error(exc, format_exception=_describe)
    return [str(exc)]
