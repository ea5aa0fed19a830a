"""Zero-trust JWT checks: every request on a protected route carries a token verified on it.

How this works, per request (pipeline.py calls these in order):

    token = bearer_token(authorization)            # None: no token -> 401 `Bearer`
    identity = verifier.cached(token)              # fast path: one dict lookup
    if identity is None:
        identity = await verifier.verify(token)    # full check; AuthError -> 401 invalid_token
    authorize(identity, route_scopes)              # Forbidden -> 403

- `verify.py`: `Verifier` (one per config snapshot), `Identity`, `authorize`, `bearer_token`.
- `keys.py`: what a key set may hold and which key fits which algorithm; the `jwks_file` and
  `secret_env` sources, each behind `await key_for(kid, alg)`.
- `jwks_url.py`: the `jwks_url` source (single-flight refetch, cooldown, last good set kept);
  its fetch timing is decided by `RefetchPolicy`.
- `sources.py`: `make_source`, the one source an issuer's config names.
- `mint.py`: `mint_token` and the `mcp-proxy token` command, for trying a config out.
"""

from __future__ import annotations

from mcp_proxy.auth.keys import KeySourceError
from mcp_proxy.auth.verify import (
    MAX_TOKEN_BYTES,
    Identity,
    Verifier,
    authorize,
    bearer_token,
)

__all__ = [
    "MAX_TOKEN_BYTES",
    "Identity",
    "KeySourceError",
    "Verifier",
    "authorize",
    "bearer_token",
]
