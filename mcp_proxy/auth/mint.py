"""`mcp-proxy token`: mint a signed JWT for trying a config out.

HS256 with a secret taken from an environment variable (read exactly as the proxy reads
`secret_env`), or RS256/ES256 with a PEM private key, the algorithm following the key type.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mcp_proxy.auth.keys import HMAC_MIN_BYTES, KeySourceError, read_secret
from mcp_proxy.config.units import parse_duration

# Refuse short keys instead of warning: a token minted here should verify at the proxy.
_STRICT_JWT = jwt.PyJWT(options={"enforce_minimum_key_length": True})
MAX_KEY_FILE_BYTES = 64 * 1024


def mint_token(
    *,
    iss: str,
    aud: str | Sequence[str],
    sub: str,
    scope: str | None,
    priority: str | None,
    ttl: float,
    kid: str | None,
    secret: bytes | None = None,
    private_key_pem: bytes | None = None,
    now: float | None = None,
) -> str:
    """A signed JWT; ValueError for a bad key, a short secret or a ttl that is not positive."""
    if (secret is None) == (private_key_pem is None):
        raise ValueError("give exactly one of secret or private_key_pem")
    if not ttl > 0:
        raise ValueError("ttl must be greater than 0")
    issued_at = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": iss,
        "aud": aud if isinstance(aud, str) else list(aud),
        "sub": sub,
        "iat": issued_at,
        "exp": issued_at + max(1, round(ttl)),
    }
    if scope is not None:
        claims["scope"] = scope
    if priority is not None:
        claims["priority"] = priority
    headers = {"kid": kid} if kid is not None else None
    key, alg = _signing_key(secret, private_key_pem)
    try:
        return _STRICT_JWT.encode(claims, key, algorithm=alg, headers=headers)
    except jwt.InvalidKeyError as exc:
        raise ValueError(str(exc)) from None


def _signing_key(secret: bytes | None, pem: bytes | None) -> tuple[Any, str]:
    if secret is not None:
        if len(secret) < HMAC_MIN_BYTES["HS256"]:
            raise ValueError(f"the secret is {len(secret)} bytes; HS256 needs at least 32")
        return secret, "HS256"
    assert pem is not None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ValueError("the key is encrypted; give an unencrypted PEM private key") from None
    except ValueError:
        raise ValueError("not a PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    raise ValueError("unsupported key type: use an RSA key (RS256) or an EC P-256 key (ES256)")


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--secret-env", metavar="NAME", help="HS256 with the raw secret held in this variable"
    )
    source.add_argument(
        "--key", metavar="FILE", type=Path, help="PEM private key: RSA -> RS256, EC P-256 -> ES256"
    )
    parser.add_argument("--iss", required=True, help="issuer, exactly as in auth.issuers")
    parser.add_argument(
        "--aud", required=True, action="append", help="audience (repeat for several)"
    )
    parser.add_argument("--sub", default="demo-user", help="subject (default: demo-user)")
    parser.add_argument("--scope", help='space-separated scopes, e.g. "payments read"')
    parser.add_argument("--priority", help="the admission class claim, e.g. high")
    parser.add_argument("--ttl", default="1h", help="lifetime, e.g. 10m or 1h (default: 1h)")
    parser.add_argument("--kid", help="key id to put in the header")


def run_token_command(args: argparse.Namespace) -> int:
    """Print the token alone; a user's mistake is one line on stderr and exit 2."""
    try:
        token = _token_from_args(args)
    except (ValueError, KeySourceError) as exc:
        print(f"mcp-proxy token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _token_from_args(args: argparse.Namespace) -> str:
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        raise ValueError(f"--ttl {args.ttl!r}: {exc}") from None
    secret = read_secret(args.secret_env) if args.secret_env else None
    pem = _read_key_file(args.key) if args.key else None
    audiences: list[str] = args.aud
    return mint_token(
        iss=args.iss,
        aud=audiences[0] if len(audiences) == 1 else audiences,
        sub=args.sub,
        scope=args.scope,
        priority=args.priority,
        ttl=ttl,
        kid=args.kid,
        secret=secret,
        private_key_pem=pem,
    )


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read --key {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"--key {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    return data
