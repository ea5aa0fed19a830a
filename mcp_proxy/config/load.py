"""Config text -> a validated, frozen Config, or every problem found, one readable line each.

How: PyYAML composes the node tree once; a walk over it records the line of every key path
and finds duplicate keys (PyYAML would silently keep the last). The same nodes are then
constructed into plain data, which pydantic validates (`Config.model_validate`), each of its
errors turned into `key.path[0].x: message (line N)` (problems.py). A config with the right
shape then goes through the checks of meaning (`config.check`) and the files it names are
read and parsed. Nothing is started or fetched here; `load` only adds reading the file and
its version.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mcp_proxy.config.check import KeyPath, Parts, Problem, find_problems
from mcp_proxy.config.keyfiles import key_file_problems, resolve_path
from mcp_proxy.config.model import Config
from mcp_proxy.config.problems import show, validation_problems
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
        problems.extend(validation_problems(exc, data))
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
    kind = "a list" if isinstance(data, list) else show(data)
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
