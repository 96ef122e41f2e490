"""Compiled decoding of events: msgspec structs generated from the pydantic models in ``events``.

The pydantic models stay the one schema definition. At import, every event model is translated
field by field into a msgspec ``Struct`` (same names, types, ``Literal`` choices, length and range
constraints, unknown fields forbidden), and one msgspec decoder, tagged on ``type``, validates raw
bytes straight into them, faster than pydantic (the sink benchmark prints both per event).

The fast path is stricter, never looser: it accepts only complete events (every field present,
``null`` where empty, as the gateway writes them). Anything it refuses goes through
``events.decode_event``, which either accepts the event (pydantic's lax rules, defaults filled in)
or raises the exact reason the dead-letter topic carries. What is stored is the raw JSON when it
holds each key once (``feedback.quotes``), else JSON encoded from the validated values. A schema
feature the translation does not know (a field validator, a constraint type) fails at import, so
the two definitions cannot drift apart.

One known difference: a timestamp with more than six fractional digits is rounded to the
microsecond here, where pydantic truncates (the gateway writes microseconds, so never on its events).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
import msgspec
from pydantic import BaseModel, JsonValue
from pydantic.types import Strict
from pydantic_core import PydanticSerializationError

from feedback.errors import InvalidEventError, UnknownSchemaError
from feedback.events import KNOWN_SCHEMA_VERSIONS, AuditEvent, FeedbackEvent, InteractionEvent, decode_event
from feedback.quotes import struct_counter

_CONSTRAINTS = {at.Ge: "ge", at.Gt: "gt", at.Le: "le", at.Lt: "lt", at.MinLen: "min_length", at.MaxLen: "max_length"}
_SCALARS = (str, int, float, bool, datetime)


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, Strict):
            continue  # msgspec never coerces: every type is strict already
        name = _CONSTRAINTS.get(type(item))
        if name is None:
            raise TypeError(f"no msgspec translation for the constraint {item!r}")
        out[name] = getattr(item, name)
    return out


def _translate(
    annotation: Any, constraints: dict[str, Any], structs: dict[type[BaseModel], type[msgspec.Struct]]
) -> Any:
    """The msgspec type for a pydantic field type; constraints apply to the non-None member."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [_translate(arg, constraints, structs) for arg in get_args(annotation) if arg is not type(None)]
        translated = members[0] if len(members) == 1 else Union[tuple(members)]  # noqa: UP007 - built at run time
        return Union[translated, None] if type(None) in get_args(annotation) else translated  # noqa: UP007
    if annotation is JsonValue:
        return Any
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _struct(annotation, structs)
    if origin is tuple and len(get_args(annotation)) == 2 and get_args(annotation)[1] is Ellipsis:
        return tuple[_translate(get_args(annotation)[0], {}, structs), ...]  # type: ignore[misc]
    if origin is dict:
        key, value = get_args(annotation)
        return dict[_translate(key, {}, structs), _translate(value, {}, structs)]  # type: ignore[misc]
    if origin is Literal or annotation in _SCALARS:
        return Annotated[annotation, msgspec.Meta(**constraints)] if constraints else annotation
    raise TypeError(f"no msgspec translation for the field type {annotation!r}")


def _struct(
    model: type[BaseModel], structs: dict[type[BaseModel], type[msgspec.Struct]], tag: str | None = None
) -> type[msgspec.Struct]:
    """A msgspec Struct with the model's fields, every one required (``None`` must be explicit)."""
    if model in structs:
        return structs[model]
    decorators = model.__pydantic_decorators__
    if decorators.field_validators or decorators.validators or decorators.root_validators:
        raise TypeError(f"{model.__name__} has field validators, which the fast decoder cannot mirror")
    if any(d.info.mode != "after" for d in decorators.model_validators.values()):
        raise TypeError(f"{model.__name__} has a before/wrap model validator, which the fast decoder cannot mirror")
    fields = [
        (name, _translate(info.annotation, _constraints(info.metadata), structs))
        for name, info in model.model_fields.items()
        if not (name == "type" and tag is not None)  # the union's tag
    ]
    struct = msgspec.defstruct(
        f"Fast{model.__name__}",
        fields,
        forbid_unknown_fields=True,  # pydantic's extra="forbid"
        tag_field="type" if tag else None,
        tag=tag,
        gc=False,  # no reference cycles: cheaper to allocate
    )
    structs[model] = struct
    return struct


_MODELS = (InteractionEvent, FeedbackEvent, AuditEvent)
_STRUCTS: dict[type[BaseModel], type[msgspec.Struct]] = {}
FAST_TYPES: dict[type[msgspec.Struct], str] = {
    _struct(m, _STRUCTS, tag=m.model_fields["type"].default): m.model_fields["type"].default for m in _MODELS
}
_AFTER_VALIDATORS: dict[type[msgspec.Struct], list[Callable[[Any], Any]]] = {
    _STRUCTS[m]: [d.func for d in m.__pydantic_decorators__.model_validators.values()] for m in _MODELS
}
_DECODER = msgspec.json.Decoder(Union[tuple(FAST_TYPES)])  # noqa: UP007 - a union built at run time
_ENCODER = msgspec.json.Encoder()
_QUOTES = {struct: struct_counter(struct) for struct in FAST_TYPES}


def decode_fast(raw: bytes) -> tuple[Any, bytes]:
    """Validate one event; return it as a struct and the JSON bytes to store for it.

    The bytes are ``raw`` when it provably holds every key once, else the struct encoded again: a
    key given twice counts once (the last, as for pydantic) in the struct, but DuckDB's JSON
    reader would take the first. Raises InvalidEventError / UnknownSchemaError with pydantic's
    exact reason.
    """
    try:
        event = _DECODER.decode(raw)
        for validator in _AFTER_VALIDATORS[type(event)]:
            validator(event)  # the model's own check, run on the struct's fields
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError):
        return _from_model(decode_event(raw))  # raises the exact reason, or accepts laxly
    if event.schema_version not in KNOWN_SCHEMA_VERSIONS:
        raise UnknownSchemaError(f"unknown schema_version {event.schema_version!r}")
    fixed, varying = _QUOTES[type(event)]
    if raw.count(b'"') == fixed + (varying(event) if varying else 0):
        return event, raw  # every key once, as validated (feedback.quotes): stored as it came
    return event, _ENCODER.encode(event)


def _from_model(model: BaseModel) -> tuple[Any, bytes]:
    try:
        canonical = model.model_dump_json().encode()
        return _DECODER.decode(canonical), canonical
    except (PydanticSerializationError, msgspec.DecodeError) as exc:  # e.g. a lone surrogate pydantic let through
        raise InvalidEventError(f"not representable: {exc}") from exc


def to_fast(model: InteractionEvent | FeedbackEvent | AuditEvent) -> tuple[Any, bytes]:
    """A validated pydantic event as the struct and canonical JSON that ``decode_fast`` returns."""
    return _from_model(model)
