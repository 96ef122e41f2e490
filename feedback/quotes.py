"""Whether raw JSON holds each key once: counting its quote characters against the decoded value.

A JSON object may repeat a key; msgspec and pydantic keep the last occurrence, DuckDB's JSON
reader the first. Bytes can therefore be stored as they came only when no key repeats. With every
key present (the fast decoder requires them all), the raw text has at least as many ``"``
characters as the canonical JSON of what was decoded: two per key, two per string value, nested
alike. Any extra occurrence of a key adds at least two more, so an exact match proves there is
none. A match also needs no ``"`` inside strings (escaped as ``\\"``); such text, like any
mismatch, is simply re-encoded.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from datetime import datetime
from operator import attrgetter
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec

Counter = Callable[[Any], int]


def _any(value: object) -> int:
    """Quotes of an arbitrary decoded JSON value (``Any`` fields: audit details)."""
    if isinstance(value, str):
        return 2
    if isinstance(value, dict):
        return sum(2 + _any(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_any(v) for v in value)
    return 0


def _optional_string(value: object) -> int:
    return 0 if value is None else 2


def _stringly(kind: Any) -> bool:
    origin = get_origin(kind)
    if origin is Annotated:
        return _stringly(get_args(kind)[0])
    if origin is Literal:
        return all(isinstance(arg, str) for arg in get_args(kind))
    return kind in (str, datetime)


def _plan(kind: Any) -> tuple[int, Counter | None]:
    """Quotes a value of this msgspec type always adds, and a counter for the part that varies."""
    origin = get_origin(kind)
    if origin is Annotated:
        return _plan(get_args(kind)[0])
    if _stringly(kind):
        return 2, None
    if origin in (Union, types.UnionType):
        members = [arg for arg in get_args(kind) if arg is not type(None)]
        if all(_stringly(m) for m in members):
            return 0, _optional_string
        if any(_plan(m) != (0, None) for m in members):
            raise TypeError(f"no quote count for the mixed type {kind!r}")
        return 0, None
    if kind in (int, float, bool) or origin is Literal:
        return 0, None
    if kind is Any or origin is dict:
        return 0, _any
    if origin is tuple:
        fixed, counter = _plan(get_args(kind)[0])
        if counter is None:
            return 0, lambda value: fixed * len(value)
        element = counter
        return 0, lambda value: sum(fixed + element(v) for v in value)
    if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        return struct_counter(kind)
    raise TypeError(f"no quote count for the type {kind!r}")


def _reader(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """Read several attributes as a tuple in one C call (attrgetter returns a bare value for one)."""
    if len(names) == 1:
        name = names[0]
        return lambda value: (getattr(value, name),)
    if not names:
        return lambda value: ()
    return attrgetter(*names)


def struct_counter(struct: type[msgspec.Struct]) -> tuple[int, Counter | None]:
    """The fixed quotes of a struct's canonical JSON (tag included) and a counter for the rest."""
    config = struct.__struct_config__
    fixed = 4 if isinstance(config.tag, str) else 0  # "type": "interaction"
    varying: list[tuple[str, Counter]] = []
    hints = struct.__annotations__
    for name in struct.__struct_fields__:
        value_fixed, counter = _plan(hints[name])
        fixed += 2 + value_fixed  # the key, then the value's fixed part
        if counter is not None:
            varying.append((name, counter))
    if not varying:
        return fixed, None
    # the usual varying part, strings that may be null, is read in one C call and counted by
    # tuple.count: this runs once per event on the sink's path
    optional = tuple(name for name, counter in varying if counter is _optional_string)
    others = [(name, counter) for name, counter in varying if counter is not _optional_string]
    read = _reader(optional)

    def count(value: Any) -> int:
        values = read(value)
        n = 2 * (len(values) - values.count(None))
        for name, counter in others:
            n += counter(getattr(value, name))
        return n

    return fixed, count
