"""Keys a JSON request body repeats: found for the cost of one pass over its bytes.

JSON parsers, pydantic's among them, keep the last value of a repeated key without a word, so
`{"age": 30, ..., "age": 70}` was answered for a 70-year-old. A body has at least as many
colons as object keys, and a validated request holds each distinct key once: when the two
counts agree no key repeats. When they do not (a colon inside a string), the colons after a
quote or whitespace are counted, and only when those disagree too (a key the request type
ignores, or one repeated) is the body parsed again, keeping every key.
"""

from __future__ import annotations

import functools
import json
import types
import typing
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, RootModel

from modelcycle.serving.adapter import RequestError

#: Field annotations whose values hold no JSON object.
_SCALARS = (int, float, str, bool, bytes, type(None))
# numpy scalars: compared without converting
_COLON, _QUOTE, _SPACE = (np.uint8(ord(c)) for c in ':" ')


def refuse_repeated_keys(body: bytes, request: BaseModel) -> None:
    """Raise `RequestError` naming a key that an object of `body` gives twice.

    Args:
        body: The JSON body `request` was validated from.
        request: The validated request.
    """
    held = keys_held(request)
    codes = np.frombuffer(body, np.uint8)
    colons = codes == _COLON
    if np.count_nonzero(colons) == held or _key_colons(codes, colons) == held:
        return
    json.loads(body, object_pairs_hook=unique_pairs, parse_int=str, parse_float=str)


def _key_colons(codes: np.ndarray, colons: np.ndarray) -> int:
    """How many colons a quote or whitespace comes before: at least the body's keys.

    Sharper than all the colons when strings hold some (a data URL's `data:image/png`).
    """
    before = codes[np.flatnonzero(colons[1:])]  # the byte before each colon (none at 0)
    return int(np.count_nonzero((before == _QUOTE) | (before <= _SPACE)))


def unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict (`json.loads`'s `object_pairs_hook`); none repeated.

    Raises:
        RequestError: Naming the first key given twice.
    """
    held = dict(pairs)
    if len(held) < len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise RequestError(
            f"The key {key!r} is given twice in one object of the body, and only one value "
            "can count; send each key once."
        )
    return held


def keys_held(value: Any) -> int:
    """How many object keys the JSON that `value` was validated from had, repeats counted once.

    Counts the fields given (extra keys among them) of models and the keys of dicts, all the
    way down.
    """
    kind: type = type(value)
    holders = _holders(kind)
    if holders is None:
        return _keys_outside_models(value)
    given = value.__pydantic_fields_set__  # extra keys among them
    count = len(given)
    if extra := value.__pydantic_extra__:
        count += sum(map(keys_held, extra.values()))
    for name, flat in holders:
        if name in given:
            held = getattr(value, name)
            count += len(held) if flat and isinstance(held, dict) else keys_held(held)
    return count


def _keys_outside_models(value: Any) -> int:
    """`keys_held` of a root model, dict, list or scalar."""
    if isinstance(value, RootModel):
        return keys_held(value.root)
    if isinstance(value, dict):
        return len(value) + sum(map(keys_held, value.values()))
    if isinstance(value, list | tuple):
        return sum(map(keys_held, value))
    return 0


@functools.cache
def _holders(kind: type) -> tuple[tuple[str, bool], ...] | None:
    """A model's fields that may hold JSON objects, each with whether it is a dict of scalars.

    None for what is not a model of fields (a root model, a dict, a number). Looked up by
    type: two `isinstance` checks of pydantic models cost more. A dict of scalars' length is
    its keys: no walk over thousands of numbers.
    """
    if not issubclass(kind, BaseModel) or issubclass(kind, RootModel):
        return None
    holders = []
    for name, info in kind.model_fields.items():
        hint = info.annotation
        if not _scalar(hint):
            flat = typing.get_origin(hint) is dict and _scalar(typing.get_args(hint)[1])
            holders.append((name, flat))
    return tuple(holders)


def _scalar(hint: Any) -> bool:
    """Whether values of `hint` are never JSON objects or arrays."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _scalar(typing.get_args(hint)[0])
    if origin is typing.Union or origin is types.UnionType:
        return all(map(_scalar, typing.get_args(hint)))
    return origin is Literal or hint in _SCALARS
