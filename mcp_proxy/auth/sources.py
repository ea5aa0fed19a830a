"""Which key source an issuer's config names: a JWKS file, an HMAC secret or a JWKS URL
(`make_source`, the one place the three are told apart)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import aiohttp

from mcp_proxy.auth.jwks_url import JwksUrlSource
from mcp_proxy.auth.keys import JwksFileSource, OnChange, OnFetch, SecretEnvSource
from mcp_proxy.config.model import IssuerConfig


def make_source(
    config: IssuerConfig,
    base_dir: Path,
    session: Callable[[], aiohttp.ClientSession],
    *,
    monotonic: Callable[[], float] = time.monotonic,
    on_change: OnChange | None = None,
    on_fetch: OnFetch | None = None,
    environ: Mapping[str, str] | None = None,
) -> JwksFileSource | SecretEnvSource | JwksUrlSource:
    """The one key source an issuer's config names (the config guarantees exactly one)."""
    if config.jwks_file is not None:
        return JwksFileSource(config, base_dir)
    if config.secret_env is not None:
        return SecretEnvSource(config, environ)
    return JwksUrlSource(
        config, session, monotonic=monotonic, on_change=on_change, on_fetch=on_fetch
    )
