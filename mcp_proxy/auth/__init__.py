"""Zero-trust JWT checks: every request on a protected route carries a token verified on it.

How this works, per request (pipeline.py calls these in order):

    token = bearer_token(authorization)            # None: no token -> 401 `Bearer`
    identity = verifier.cached(token)              # fast path: one dict lookup
    if identity is None:
        identity = await verifier.verify(token)    # full check; AuthError -> 401 invalid_token
    authorize(identity, route_scopes)              # Forbidden -> 403

- `verify.py`: `Verifier` (one per config snapshot), `Identity`, `authorize`, `bearer_token`.
- `keys.py`: where keys come from (`jwks_file`, `secret_env`, `jwks_url`), each behind
  `await key_for(kid, alg)`; the URL source's fetch timing is decided by `RefetchPolicy`.
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
