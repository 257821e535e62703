"""Strict cattrs (un)structuring of JSON frames into attrs event classes: pure functions.

Shared by the v1 codec (:mod:`.codec`) and the Realtime dialect's (``voiceorch.realtime``):
JSON primitives are checked, not coerced (``"text": 42`` is an error; an integer is accepted
where a number is expected), an attrs class is structured only from a JSON object, unknown
fields are ignored, and each union of events is tagged by its ``type`` field. A field whose
metadata has :data:`OMIT_IF_DEFAULT` is left out of its object while it has its default value.
"""

from __future__ import annotations

import typing
from typing import Any, Callable

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.strategies import configure_tagged_union
from cattrs.v import format_exception

#: Field metadata key: the field is left out of its frame while it has its default value (for a
#: field added to an event later, so that the frames without it stay exactly as they were).
OMIT_IF_DEFAULT = "voiceorch.omit_if_default"


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
