"""Who may change the proxy through the admin listener: every POST/PUT/DELETE on it.

Three checks, in this order, each with a short JSON answer:

1. Host (DNS rebinding): a write must be addressed to a loopback name, to the address the
   connection arrived on, or to one of `admin_auth.hosts`; else 421. A page on
   `evil.example` that rebinds its name to 127.0.0.1 sends `Host: evil.example`.
2. Origin (cross-site requests from a browser on the same host): a write that carries an
   `Origin` must come from the admin's own origin (which serves no pages, so in practice a
   browser's write is refused); `Origin: null` is refused too; else 403.
3. Token, with `admin_auth`: a Bearer token verified by `auth.issuers` (the verifier routes
   use, with its cache) carrying `admin_auth.scope`: 401 without one or with a bad one, 403
   without the scope. Without `admin_auth`, `check` allows the admin only on loopback, and
   writes stay open to local processes (as `POST /admin/reload` always was) but still pass
   checks 1 and 2: no web page can make a browser send them.

Reads (GET, HEAD) are never checked: metrics and health are for whoever reaches the port.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from mcp_proxy.admin_http import AdminRequest, Guard, Reply, error_reply
from mcp_proxy.auth import Identity, authorize, bearer_token
from mcp_proxy.config.model import is_loopback_host
from mcp_proxy.errors import AuthError, Forbidden
from mcp_proxy.routing import request_host, route_host

if TYPE_CHECKING:
    from mcp_proxy.admin import Served
    from mcp_proxy.config.model import Config


@functools.lru_cache(maxsize=256)
def allowed_host(host: str | None, local_address: str | None, extra: tuple[str, ...]) -> bool:
    """Is `Host` one the admin answers writes for? (See the module docstring, check 1.) Each
    of the few Host values an admin sees is judged once (a renewal a second per backend would
    otherwise parse the same one)."""
    return _judge_host(host, local_address, extra)


def _judge_host(host: str | None, local_address: str | None, extra: tuple[str, ...]) -> bool:
    if not host:
        return False
    name = request_host(host)
    bare = name.strip("[]")
    if is_loopback_host(bare):
        return True
    if local_address is not None and _same_address(bare, local_address):
        return True
    return name in {route_host(other) for other in extra}


def _same_address(host: str, local: str) -> bool:
    try:
        address = ipaddress.ip_address(local)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return ipaddress.ip_address(host) == address
    except ValueError:
        return False


def allowed_origin(origin: str | None, host: str) -> bool:
    """No Origin (not a browser, or a same-origin GET), or the admin's own origin."""
    if origin is None:
        return True
    return origin.lower() in (f"http://{host}".lower(), f"https://{host}".lower())


def refuse(status: int, message: str, challenge: str | None = None) -> Reply:
    return error_reply(status, message, (("WWW-Authenticate", challenge),) if challenge else ())


Check = Reply | Awaitable[Reply | None] | None


def check_write(request: AdminRequest, config: Config, server: Served) -> Check:
    """None when the write may go ahead, else the answer that refuses it (or an awaitable of
    either, when the token is not in the verifier's cache)."""
    extra = config.admin_auth.hosts if config.admin_auth is not None else ()
    host = request.host
    if not allowed_host(host, request.local_address(), extra):
        return refuse(421, "this admin does not answer writes for that Host")
    assert host is not None
    if not allowed_origin(request.origin, host):
        return refuse(403, "admin writes from a web page's origin are refused")
    if config.admin_auth is None:
        return None
    return _check_token(request, config.admin_auth.scope, server)


def _check_token(request: AdminRequest, scope: str, server: Served) -> Check:
    token = bearer_token(request.authorization)
    if token is None:
        return _refusal(AuthError("a bearer token is required", token_given=False), scope)
    verifier = server.runtime.verifier
    identity = verifier.cached(token)
    if identity is None:
        return _verified(verifier.verify(token), scope)
    return _authorized(identity, scope)


async def _verified(verifying: Awaitable[Identity], scope: str) -> Reply | None:
    try:
        identity = await verifying
    except (AuthError, Forbidden) as error:
        return _refusal(error, scope)
    return _authorized(identity, scope)


def _authorized(identity: Identity, scope: str) -> Reply | None:
    try:
        authorize(identity, frozenset({scope}))
    except (AuthError, Forbidden) as error:
        return _refusal(error, scope)
    return None


def _refusal(error: AuthError | Forbidden, scope: str) -> Reply:
    if isinstance(error, Forbidden):
        return refuse(403, f"the token lacks the admin scope {scope!r}")
    return refuse(401, error.message, dict(error.headers).get("WWW-Authenticate"))


def write_guard(server: Served) -> Guard:
    """The admin router's guard: every write through `check_write` first."""
    return lambda request: check_write(request, server.runtime.config, server)
