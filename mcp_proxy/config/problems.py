"""Pydantic's validation errors as the config's problems: one readable line per problem, at the
key path the user wrote (`routes[0].match.methods[1]: ...`), with the allowed keys or the
closest one for an unknown key, plain words for type and bound errors, and a quoting hint
where YAML read a value as another type. load.py calls `validation_problems`; pure.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from mcp_proxy.config.check import KeyPath, Problem
from mcp_proxy.config.model import Config

_PATTERN_HINTS = {
    r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$": "must be an HTTP token (letters, digits, !#$%&'*+.^_`|~-)",
    r"^/[^\s]*$": "must start with / and hold no spaces",
    r"^/": "must start with /",
    r"^[A-Za-z_][A-Za-z0-9_]*$": "must be an environment variable name (letters, digits, _)",
}
_TYPE_MESSAGES = {
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "must be a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "dict_type": "expected a mapping (key: value)",
    "model_type": "expected a mapping (key: value)",
    "model_attributes_type": "expected a mapping (key: value)",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "iterable_type": "expected a list",
    "missing": "required",
}


@dataclass(frozen=True, slots=True)
class _Located:
    """One pydantic error placed in the YAML data: its key path without pydantic's union tags."""

    error: ErrorDetails
    path: KeyPath
    union_path: KeyPath | None  # where a union was tried (e.g. a route's auth), if any
    union_branch: str | None  # which member this error came from ("ScopesConfig", "literal[...]")
    union_input: object
    is_key: bool  # the error is about a mapping key, not its value


def validation_problems(exc: ValidationError, data: object) -> list[Problem]:
    located = [_locate(error, data) for error in exc.errors(include_url=False)]
    relevant = [item for item in located if _is_relevant(item)]
    mapping_hints = _mapping_hints(located)
    return [_problem(item, mapping_hints) for item in relevant]


def _locate(error: ErrorDetails, data: object) -> _Located:
    """Follow `error['loc']` through the data; a step that is not there is a union tag."""
    path: list[object] = []
    union_path: KeyPath | None = None
    branch: str | None = None
    union_input: object = None
    current = data
    loc = error["loc"]
    for position, part in enumerate(loc):
        last = position == len(loc) - 1
        if _holds(current, part):
            path.append(part)
            current = current[part]  # type: ignore[index]
        elif last and error["type"] == "missing":
            path.append(part)
        elif part == "[key]":
            return _Located(error, tuple(path), union_path, branch, union_input, is_key=True)
        elif union_path is None and isinstance(part, str):
            union_path, branch, union_input = tuple(path), part, current
    return _Located(error, tuple(path), union_path, branch, union_input, is_key=False)


def _holds(data: object, part: object) -> bool:
    """Is `part` a key of the mapping `data`, or an index of the list `data`?"""
    if isinstance(data, list):
        return isinstance(part, int) and 0 <= part < len(data)
    if isinstance(data, dict):
        try:
            return part in data
        except TypeError:  # unhashable
            return False
    return False


def _is_model_branch(branch: str) -> bool:
    return branch.isidentifier() and branch[:1].isupper()


def _is_relevant(item: _Located) -> bool:
    """Drop the noise: union members that were never meant, follow-on length errors."""
    error = item.error
    if error["type"] == "too_short" and isinstance(error["input"], list | tuple | dict):
        # Pydantic counts the items left *after* validation: bad items make a list "too short".
        return len(error["input"]) < int(error.get("ctx", {}).get("min_length", 0))
    if item.union_branch is None:
        return True
    # A mapping was meant for a model member of the union, anything else for the others.
    return _is_model_branch(item.union_branch) == isinstance(item.union_input, dict)


def _mapping_hints(located: list[_Located]) -> dict[KeyPath, str]:
    """For a union that also accepts a mapping: `a mapping with key(s) scopes`, by union path."""
    hints: dict[KeyPath, str] = {}
    for item in located:
        if item.union_path is not None and item.error["type"] == "model_type":
            keys = _allowed_keys(item.error["loc"])
            hints[item.union_path] = f"a mapping with key(s) {', '.join(keys)}"
    return hints


def _problem(item: _Located, mapping_hints: dict[KeyPath, str]) -> Problem:
    error = item.error
    kind = error["type"]
    value = error["input"]
    if kind == "extra_forbidden":
        return Problem(item.path, _unknown_key(item.path[-1], error["loc"][:-1]))
    message = _message(error)
    if kind == "literal_error" and item.union_path in mapping_hints:
        message += f", or {mapping_hints[item.union_path]}"
    if kind == "missing":
        return Problem(item.path, message)
    if item.is_key:
        return Problem(item.path, f"key {show(value)}: {message}")
    if _is_scalar(value) and not (isinstance(value, str) and repr(value) in message):
        message = f"{show(value)}: {message}"
    return Problem(item.path, message)


def _message(error: ErrorDetails) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "string_type":
        return "expected a string" + _quote_hint(error["input"])
    if kind == "literal_error":
        return f"must be {ctx['expected']}"
    if kind == "string_pattern_mismatch":
        return _PATTERN_HINTS.get(ctx["pattern"], f"must match {ctx['pattern']}")
    return _TYPE_MESSAGES.get(kind) or _bound_message(kind, ctx) or error["msg"]


def _bound_message(kind: str, ctx: dict[str, Any]) -> str | None:
    if kind in ("too_short", "string_too_short"):
        minimum = ctx["min_length"]
        return "must not be empty" if minimum == 1 else f"needs at least {minimum}"
    if kind in ("too_long", "string_too_long"):
        return f"allows at most {ctx['max_length']}"
    bounds = {
        "greater_than": ("gt", "must be greater than"),
        "greater_than_equal": ("ge", "must be at least"),
        "less_than": ("lt", "must be less than"),
        "less_than_equal": ("le", "must be at most"),
    }
    if kind in bounds:
        key, text = bounds[kind]
        return f"{text} {ctx[key]}"
    return None


def _quote_hint(value: object) -> str:
    if isinstance(value, bool):
        return " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote it)"
    if isinstance(value, int | float):
        return " (quote it)"
    return ""


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float)


def show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str) and len(value) > 60:
        return repr(value[:57] + "...")
    return repr(value)


def _unknown_key(key: object, model_loc: tuple[int | str, ...]) -> str:
    allowed = _allowed_keys(model_loc)
    close = difflib.get_close_matches(str(key), allowed, n=1)
    if close:
        return f"unknown key {key!r} (did you mean {close[0]!r}?)"
    return f"unknown key {key!r}" + (f" (allowed: {', '.join(allowed)})" if allowed else "")


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys of the model at pydantic location `loc`, found by walking Config's types."""
    annotations: list[object] = [Config]
    for part in loc:
        annotations = [step for ann in annotations for step in _step(ann, part)]
    for annotation in annotations:
        for member in _members(annotation):
            if isinstance(member, type) and issubclass(member, BaseModel):
                return list(member.model_fields)
    return []


def _step(annotation: object, part: int | str) -> Iterator[object]:
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            if part == member.__name__:  # a union tag naming this model
                yield member
            elif isinstance(part, str) and part in member.model_fields:
                yield member.model_fields[part].annotation
        elif get_origin(member) is tuple and isinstance(part, int):
            yield get_args(member)[0]
        elif get_origin(member) is dict:
            yield get_args(member)[1]


def _members(annotation: object) -> list[object]:
    """`Annotated[X, ...]` -> [X]; `A | B | None` -> [A, B, NoneType]."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [member for arg in get_args(annotation) for member in _members(arg)]
    return [annotation]
