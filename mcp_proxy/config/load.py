"""Config text -> a validated, frozen Config, or every problem found, one readable line each.

How: PyYAML composes the node tree once; a walk over it records the line of every key path
and finds duplicate keys (PyYAML would silently keep the last). The same nodes are then
constructed into plain data, which pydantic validates (`Config.model_validate`), each of its
errors turned into `key.path[0].x: message (line N)`. A config with the right shape then goes
through the checks of meaning (`config.check`) and the files it names are read and parsed.
Nothing is started or fetched here; `load` only adds reading the file and its version.
"""

from __future__ import annotations

import difflib
import os
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mcp_proxy.config.check import KeyPath, Parts, Problem, find_problems
from mcp_proxy.config.keyfiles import key_file_problems, resolve_path
from mcp_proxy.config.model import Config
from mcp_proxy.config.tlsfiles import version
from mcp_proxy.tls.certs import listener_problems as listener_tls_problems
from mcp_proxy.tls.certs import resolved as listener_tls_resolved

__all__ = ["ConfigError", "LoadedConfig", "load", "parse", "resolve_path"]

LineMap = dict[KeyPath, int]  # key path -> 1-based line where that key (or list item) is written


class ConfigError(Exception):
    """A config refused whole; `problems` holds one line per problem, ready for stderr."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: Config
    source: str  # the path as given
    version: str  # "sha256:" + hex digest of the file's bytes (and its pool TLS files')
    text: str


def load(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read and parse the config file at `path`; relative file paths inside resolve from its folder.

    The folder is the one of the path as given, symlinks not followed: in a Kubernetes ConfigMap
    mount the file is a symlink into a hidden timestamped folder, the neighbours are not.
    """
    source = os.fspath(path)
    try:
        raw = Path(source).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: not UTF-8 text (byte {exc.start})"]) from None
    base_dir = Path(source).absolute().parent
    config = parse(text, base_dir)
    return LoadedConfig(config, source, version(raw, config, base_dir), text)


def parse(text: str, base_dir: Path) -> Config:
    """Validate config text; raise ConfigError listing every problem found.

    The returned Config has `jwks_file` paths made absolute (resolved from `base_dir`), so the
    components that read them need no base folder of their own.
    """
    data, lines, problems = _read_yaml(text)
    if not isinstance(data, dict):
        if data is not None or not problems:  # else: the YAML itself is broken, said already
            problems.append(_top_level_problem(data))
        raise ConfigError(_render(problems, lines))
    base_dir = base_dir.absolute()
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        # Still check the meaning of the parts that validated: one run lists both kinds.
        parts = Parts.salvage(data)
        problems.extend(_validation_problems(exc, data))
        problems.extend(find_problems(parts))
        problems.extend(key_file_problems(parts, base_dir))
        raise ConfigError(_render(problems, lines)) from None
    parts = Parts.of(config)
    problems.extend(find_problems(parts))
    problems.extend(key_file_problems(parts, base_dir))
    config = _with_absolute_paths(config, base_dir)
    problems.extend(listener_tls_problems(config))  # its files, read from absolute paths
    if problems:
        raise ConfigError(_render(problems, lines))
    return config


def render_for(problems: list[Problem], text: str) -> list[str]:
    """Problems found after loading (see `config.environ`), with lines from the config text."""
    return _render(problems, _read_yaml(text)[1])


def _render(problems: list[Problem], lines: LineMap) -> list[str]:
    """Problems in the order of the file, each with its line where one is known."""
    placed = [(problem.line or _line_of(problem.path, lines), problem) for problem in problems]
    placed.sort(key=lambda item: (item[0] is None, item[0] or 0))
    return [problem.render(line) for line, problem in placed]


def _line_of(path: KeyPath, lines: LineMap) -> int | None:
    """The line of `path`, or of its nearest ancestor written in the file (a missing key)."""
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None


def _top_level_problem(data: object) -> Problem:
    if data is None:
        return Problem((), "the file is empty: a config needs at least pools and routes")
    kind = "a list" if isinstance(data, list) else _show(data)
    return Problem((), f"the top level must be a mapping (key: value), not {kind}")


# --- YAML -------------------------------------------------------------------------------


def _read_yaml(text: str) -> tuple[object, LineMap, list[Problem]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, []
        lines, problems = _index_nodes(node, loader)
        return loader.construct_document(node), lines, problems
    except yaml.MarkedYAMLError as exc:
        return None, {}, [_yaml_problem(exc)]
    except yaml.YAMLError as exc:
        return None, {}, [Problem((), f"invalid YAML: {exc}")]
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    what = ": ".join(part for part in (exc.context, exc.problem) if part) or "cannot be read"
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return Problem((), f"invalid YAML: {what}{where}")


def _index_nodes(root: Node, loader: yaml.SafeLoader) -> tuple[LineMap, list[Problem]]:
    """Walk the composed tree: the line of every key path, and every key given twice."""
    lines: LineMap = {}
    problems: list[Problem] = []
    seen: set[int] = set()  # an anchored node reused by an alias is walked once
    stack: list[tuple[KeyPath, Node]] = [((), root)]
    while stack:
        path, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            for key, key_node, value_node in _mapping_items(node, loader):
                child = (*path, key)
                line = key_node.start_mark.line + 1
                if child in lines:
                    problems.append(_duplicate_key(child, lines[child], line))
                    continue
                lines[child] = line
                stack.append((child, value_node))
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                lines[(*path, index)] = item.start_mark.line + 1
                stack.append(((*path, index), item))
    return lines, problems


def _mapping_items(node: MappingNode, loader: yaml.SafeLoader) -> Iterator[tuple[Any, Node, Node]]:
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, ScalarNode):
            continue  # `<<: *base` may be overridden on purpose; complex keys are rejected later
        yield loader.construct_object(key_node), key_node, value_node


def _duplicate_key(path: KeyPath, first_line: int, line: int) -> Problem:
    return Problem(
        path, f"key {path[-1]!r} given twice (first on line {first_line}; YAML keeps one)", line
    )


# --- pydantic errors -> problems ---------------------------------------------------------


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


def _validation_problems(exc: ValidationError, data: object) -> list[Problem]:
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
        return Problem(item.path, f"key {_show(value)}: {message}")
    if _is_scalar(value) and not (isinstance(value, str) and repr(value) in message):
        message = f"{_show(value)}: {message}"
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


def _show(value: object) -> str:
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


def _with_absolute_paths(config: Config, base_dir: Path) -> Config:
    if config.tls is not None:
        config = config.model_copy(update={"tls": listener_tls_resolved(config.tls, base_dir)})
    issuers = tuple(
        issuer.model_copy(update={"jwks_file": str(resolve_path(base_dir, issuer.jwks_file))})
        if issuer.jwks_file is not None
        else issuer
        for issuer in config.auth.issuers
    )
    if issuers == config.auth.issuers:
        return config
    return config.model_copy(update={"auth": config.auth.model_copy(update={"issuers": issuers})})
