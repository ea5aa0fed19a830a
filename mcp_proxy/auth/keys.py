"""Where an issuer's verification keys come from: a JWKS file, an HMAC secret, or a JWKS URL
(that one's fetching in jwks_url.py; sources.py picks the one a config names).

Every source answers one question, `await key_for(kid, alg)` -> `jwt.PyJWK | None`, with a key
bound to exactly that algorithm. A key is only offered for an algorithm its type fits (RSA for
RS*/PS*, the matching EC curve for ES*, OKP for EdDSA, a secret for HS*), so a token can never
make a public key serve as an HMAC secret. `kid` is only ever a dictionary key here: never a
path, never a URL; `jku`, `x5u`, `jwk` and `x5c` headers are not read at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
from jwt.utils import base64url_encode

from mcp_proxy.config.model import IssuerConfig

logger = logging.getLogger("mcp_proxy.auth")

FETCH_TIMEOUT = 5.0  # seconds for one whole JWKS fetch, body included
MAX_JWKS_BYTES = 1024 * 1024  # a JWKS larger than this is refused (file or URL)
JWKS_ACCEPT = {"Accept": "application/jwk-set+json, application/json"}

# Which key fits which algorithm: (kty, allowed curves or None when the type has none).
_KEY_SHAPE: dict[str, tuple[str, frozenset[str] | None]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    **{alg: ("oct", None) for alg in ("HS256", "HS384", "HS512")},
}
# RFC 7518 §3.2: an HMAC key at least as long as the hash output.
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
# Members that only a private JWK has; a JWKS must publish public keys only.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "k"})

OnChange = Callable[[], None]
OnFetch = Callable[[str, bool], None]  # (issuer, ok)


class KeySourceError(Exception):
    """A key source cannot give keys: one readable line, no traceback needed."""


class KeySource(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def key_for(self, kid: str | None, alg: str) -> jwt.PyJWK | None: ...


def key_fits(jwk: Mapping[str, Any], alg: str) -> bool:
    """May this JWK verify tokens signed with `alg`? Its type, curve, `alg`, `use` must agree."""
    shape = _KEY_SHAPE.get(alg)
    if shape is None:
        return False
    kty, curves = shape
    if jwk.get("kty") != kty or (curves is not None and jwk.get("crv") not in curves):
        return False
    declared_alg = jwk.get("alg")
    if declared_alg is not None and declared_alg != alg:
        return False
    use = jwk.get("use")
    if use is not None and use != "sig":
        return False
    key_ops = jwk.get("key_ops")
    return key_ops is None or (isinstance(key_ops, list) and "verify" in key_ops)


@dataclass(frozen=True, slots=True)
class KeySet:
    """An immutable set of keys, each bound to one algorithm, found by (kid, alg)."""

    by_kid: Mapping[tuple[str | None, str], jwt.PyJWK]
    sole_by_alg: Mapping[str, jwt.PyJWK]  # alg -> the only key fitting it (for a token with no kid)
    fingerprint: str  # changes exactly when the accepted keys change

    def find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        key = self.by_kid.get((kid, alg))
        if key is None and kid is None:
            return self.sole_by_alg.get(alg)
        return key

    def __len__(self) -> int:
        return len(self.by_kid)


def build_key_set(jwks: Sequence[Mapping[str, Any]], algorithms: Iterable[str]) -> KeySet:
    """Bind every usable JWK to every allowed algorithm it fits; skip the rest."""
    by_kid: dict[tuple[str | None, str], jwt.PyJWK] = {}
    per_alg: dict[str, list[jwt.PyJWK]] = {}
    accepted: list[Mapping[str, Any]] = []
    for jwk in jwks:
        bound = _bind(jwk, algorithms)
        if bound:
            accepted.append(jwk)
        for alg, key in bound.items():
            by_kid.setdefault((key.key_id, alg), key)
            per_alg.setdefault(alg, []).append(key)
    sole = {alg: keys[0] for alg, keys in per_alg.items() if len(keys) == 1}
    return KeySet(by_kid, sole, _fingerprint(accepted))


def _bind(jwk: Mapping[str, Any], algorithms: Iterable[str]) -> dict[str, jwt.PyJWK]:
    kid = jwk.get("kid")
    if (kid is not None and not isinstance(kid, str)) or _PRIVATE_MEMBERS & jwk.keys():
        return {}
    bound = {}
    for alg in algorithms:
        if not key_fits(jwk, alg):
            continue
        try:
            key = jwt.PyJWK(dict(jwk), algorithm=alg)
        except (jwt.PyJWTError, ValueError, TypeError):
            continue  # malformed numbers, unknown curve: this key is not usable
        if key.Algorithm.check_key_length(key.key) is None:  # e.g. RSA under 2048 bits
            bound[alg] = key
    return bound


def _fingerprint(jwks: Iterable[Mapping[str, Any]]) -> str:
    canonical = sorted(json.dumps(jwk, sort_keys=True, separators=(",", ":")) for jwk in jwks)
    return hashlib.sha256("\n".join(canonical).encode()).hexdigest()


def parse_jwks(data: bytes, algorithms: Iterable[str]) -> KeySet:
    """JWKS JSON -> KeySet; KeySourceError when it is not a JWKS or holds no usable key."""
    if len(data) > MAX_JWKS_BYTES:
        raise KeySourceError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise KeySourceError(f"the JWKS is not valid JSON ({exc})") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise KeySourceError('the JWKS must be a JSON object with a "keys" list')
    key_set = build_key_set([jwk for jwk in keys if isinstance(jwk, dict)], algorithms)
    if not key_set:
        raise KeySourceError(
            f"the JWKS has no usable public key for {', '.join(algorithms)} "
            "(a key's kty/crv/alg must fit, RSA keys need 2048 bits, private keys are refused)"
        )
    return key_set


class JwksFileSource:
    """Keys from a JWKS file, read once at start (a reload re-reads it)."""

    def __init__(self, config: IssuerConfig, base_dir: Path) -> None:
        assert config.jwks_file is not None
        self.path = base_dir / config.jwks_file
        self._algorithms = config.algorithms
        self._keys: KeySet | None = None

    async def start(self) -> None:
        try:
            data = await asyncio.to_thread(_read_capped, self.path)
        except OSError as exc:
            raise KeySourceError(f"cannot read jwks_file {self.path}: {exc.strerror}") from None
        try:
            self._keys = parse_jwks(data, self._algorithms)
        except KeySourceError as exc:
            raise KeySourceError(f"jwks_file {self.path}: {exc}") from None

    async def close(self) -> None:
        pass

    async def key_for(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        return None if self._keys is None else self._keys.find(kid, alg)

    def __repr__(self) -> str:
        count = 0 if self._keys is None else len(self._keys)
        return f"<JwksFileSource {self.path} keys={count}>"


def _read_capped(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(MAX_JWKS_BYTES + 1)


def read_secret(name: str, environ: Mapping[str, str] | None = None) -> bytes:
    """The raw bytes of an HMAC secret held in an environment variable."""
    value = (os.environ if environ is None else environ).get(name)
    if value is None:
        raise KeySourceError(f"environment variable {name} is not set")
    if not value:
        raise KeySourceError(f"environment variable {name} is empty")
    return os.fsencode(value)  # the bytes as given, even if they are not UTF-8


def hmac_key(secret: bytes, alg: str, name: str) -> jwt.PyJWK:
    """A PyJWK for an HMAC secret; KeySourceError when it is too short or looks asymmetric."""
    minimum = HMAC_MIN_BYTES[alg]
    if len(secret) < minimum:
        raise KeySourceError(f"the secret in {name} is {len(secret)} bytes; {alg} needs {minimum}")
    key = jwt.PyJWK({"kty": "oct", "k": base64url_encode(secret).decode()}, algorithm=alg)
    try:
        key.Algorithm.prepare_key(key.key)
    except jwt.InvalidKeyError:
        raise KeySourceError(f"the secret in {name} looks like a PEM/SSH key") from None
    return key


class SecretEnvSource:
    """One HMAC secret from an environment variable; `kid` does not choose among secrets."""

    def __init__(self, config: IssuerConfig, environ: Mapping[str, str] | None = None) -> None:
        assert config.secret_env is not None
        self.name = config.secret_env
        self._algorithms = config.algorithms
        self._environ = environ
        self._keys: dict[str, jwt.PyJWK] = {}

    async def start(self) -> None:
        secret = read_secret(self.name, self._environ)
        self._keys = {alg: hmac_key(secret, alg, self.name) for alg in self._algorithms}

    async def close(self) -> None:
        pass

    async def key_for(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        return self._keys.get(alg)

    def __repr__(self) -> str:
        return f"<SecretEnvSource ${self.name} algorithms={sorted(self._keys)}>"
