"""The files a config names: every `jwks_file` must exist, parse, and fit its issuer (and each
pool's TLS files load: config/tlsfiles.py).

A config `check` passes is one whose key files the proxy will accept at start: the last step
asks the auth module's own JWKS parser.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jwt

from mcp_proxy.config.check import Parts, Problem
from mcp_proxy.config.model import IssuerConfig
from mcp_proxy.config.tlsfiles import pool_tls_problems

# Members only a private (or symmetric) JWK has.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "k"})


def resolve_path(base_dir: Path, value: str) -> Path:
    """A file path from the config: absolute as is, relative from the config file's folder."""
    path = Path(value)
    return path if path.is_absolute() else base_dir / path


def key_file_problems(parts: Parts, base_dir: Path) -> Iterator[Problem]:
    yield from pool_tls_problems(parts, base_dir)
    for index, issuer in parts.issuers:
        if issuer.jwks_file is not None:
            path = ("auth", "issuers", index, "jwks_file")
            for message in jwks_file_problems(resolve_path(base_dir, issuer.jwks_file), issuer):
                yield Problem(path, f"{issuer.jwks_file!r}: {message}")


def jwks_file_problems(path: Path, issuer: IssuerConfig) -> list[str]:
    """What keeps `path` from serving as `issuer`'s key set: unreadable, not a JWKS, no fit.

    Every key must load; then the auth module's own parser must find a key for the issuer's
    algorithms, so a config `check` passes is one whose keys the proxy will accept at start.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [f"no such file ({path})"]
    except OSError as exc:
        return [f"cannot read {path}: {exc.strerror or exc}"]
    try:
        document = json.loads(data)
    except UnicodeDecodeError:
        return ["not UTF-8 text"]
    except json.JSONDecodeError as exc:
        return [f"not JSON: {exc.msg} at {exc.lineno}:{exc.colno}"]
    except RecursionError:
        return ["not JSON: nested too deeply"]
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        return ['not a JWKS: expected a JSON object with a non-empty "keys" list']
    problems = [
        f"keys[{position}]: {problem}"
        for position, key in enumerate(keys)
        if (problem := _jwk_problem(key)) is not None
    ]
    return problems or _key_set_problems(data, issuer)


def _jwk_problem(key: object) -> str | None:
    if not isinstance(key, dict):
        return "not a JSON object"
    if _PRIVATE_MEMBERS & key.keys():
        return "holds private or secret key material: a JWKS file publishes public keys only"
    try:
        jwt.PyJWK(key)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        return f"not a usable key: {exc}"
    return None


def _key_set_problems(data: bytes, issuer: IssuerConfig) -> list[str]:
    # Imported here: config is imported by auth, and must not need auth to be imported.
    from mcp_proxy.auth.keys import KeySourceError, parse_jwks

    try:
        parse_jwks(data, issuer.algorithms)
    except KeySourceError as exc:
        return [str(exc)]
    return []
