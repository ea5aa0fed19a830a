"""Key sources: which keys fit which algorithm, files, secrets, and JWKS URLs (real server)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator

import aiohttp
import jwt
import pytest

from mcp_proxy.auth.jwks_url import JwksUrlSource, RefetchPolicy
from mcp_proxy.auth.keys import (
    JwksFileSource,
    KeySourceError,
    SecretEnvSource,
    build_key_set,
    key_fits,
    parse_jwks,
)
from tests.auth_helpers import (
    FakeClock,
    JwksServer,
    ec_key,
    issuer_config,
    jwks,
    poll_until,
    public_jwk,
    public_pem,
    rsa_key,
    write_jwks,
)


def algorithm_of(key: jwt.PyJWK | None) -> str | None:
    return None if key is None else key.algorithm_name


# -- which key fits which algorithm (pure) ---------------------------------------------------


@pytest.mark.parametrize(
    ("jwk", "alg", "fits"),
    [
        ({"kty": "RSA"}, "RS256", True),
        ({"kty": "RSA"}, "PS384", True),
        ({"kty": "RSA"}, "HS256", False),  # a public key is never an HMAC secret
        ({"kty": "RSA"}, "ES256", False),
        ({"kty": "EC", "crv": "P-256"}, "ES256", True),
        ({"kty": "EC", "crv": "P-256"}, "ES384", False),
        ({"kty": "EC", "crv": "P-256"}, "HS256", False),
        ({"kty": "EC", "crv": "P-384"}, "ES384", True),
        ({"kty": "OKP", "crv": "Ed25519"}, "EdDSA", True),
        ({"kty": "oct"}, "HS256", True),
        ({"kty": "oct"}, "RS256", False),
        ({"kty": "RSA", "alg": "RS256"}, "RS512", False),  # the key's own alg binds it
        ({"kty": "RSA", "alg": "RS256"}, "RS256", True),
        ({"kty": "RSA", "use": "enc"}, "RS256", False),
        ({"kty": "RSA", "use": "sig"}, "RS256", True),
        ({"kty": "RSA", "key_ops": ["encrypt"]}, "RS256", False),
        ({"kty": "RSA", "key_ops": ["verify"]}, "RS256", True),
        ({"kty": "RSA"}, "none", False),
    ],
)
def test_key_fits(jwk, alg, fits):
    assert key_fits(jwk, alg) is fits


def test_key_set_binds_each_key_to_fitting_algorithms_only():
    keys = build_key_set(
        [public_jwk(rsa_key(), "r1"), public_jwk(ec_key(), "e1")],
        ["RS256", "PS256", "ES256", "HS256"],
    )
    assert keys.find("r1", "RS256") is not None
    assert algorithm_of(keys.find("r1", "PS256")) == "PS256"
    assert keys.find("r1", "ES256") is None
    assert keys.find("r1", "HS256") is None
    assert algorithm_of(keys.find("e1", "ES256")) == "ES256"
    assert keys.find("e1", "RS256") is None


def test_key_set_without_kid_uses_the_only_fitting_key():
    keys = build_key_set([public_jwk(rsa_key(), "r1"), public_jwk(ec_key(), "e1")], ["RS256"])
    assert keys.find(None, "RS256") is keys.find("r1", "RS256")
    two = build_key_set([public_jwk(rsa_key(0), "a"), public_jwk(rsa_key(1), "b")], ["RS256"])
    assert two.find(None, "RS256") is None  # ambiguous: no guessing


def test_kid_is_only_a_dictionary_key():
    keys = build_key_set([public_jwk(rsa_key(), "r1")], ["RS256"])
    for kid in ("../../dev/null", "/etc/passwd", "' OR 1=1 --", "https://evil.test/k", ""):
        assert keys.find(kid, "RS256") is None


def test_parse_jwks_refuses_what_is_not_a_jwks():
    with pytest.raises(KeySourceError, match="not valid JSON"):
        parse_jwks(b"{", ["RS256"])
    with pytest.raises(KeySourceError, match='"keys" list'):
        parse_jwks(b"[]", ["RS256"])
    with pytest.raises(KeySourceError, match="no usable public key"):
        parse_jwks(json.dumps(jwks(public_jwk(ec_key(), "e"))).encode(), ["RS256"])


def test_parse_jwks_skips_private_and_weak_keys():
    private = public_jwk(rsa_key(), "p", d="AQAB")
    weak = public_jwk(rsa_key(0, bits=1024), "weak")
    good = public_jwk(rsa_key(), "good")
    keys = parse_jwks(json.dumps(jwks(private, weak, good)).encode(), ["RS256"])
    assert keys.find("good", "RS256") is not None
    assert keys.find("p", "RS256") is None
    assert keys.find("weak", "RS256") is None


def test_fingerprint_changes_with_the_keys_only():
    one = build_key_set([public_jwk(rsa_key(0), "a")], ["RS256"])
    same = build_key_set([public_jwk(rsa_key(0), "a")], ["RS256"])
    other = build_key_set([public_jwk(rsa_key(1), "a")], ["RS256"])
    assert one.fingerprint == same.fingerprint != other.fingerprint


# -- refetch timing (pure) ---------------------------------------------------------------------


def test_refetch_policy():
    policy = RefetchPolicy(max_age=600, cooldown=30)
    assert policy.allowed(0) and policy.stale(0)
    policy.attempted(100)
    assert not policy.allowed(129.9)
    assert policy.allowed(130)
    policy.succeeded(100)
    assert not policy.stale(699)
    assert policy.stale(700)


# -- file ----------------------------------------------------------------------------------------


async def test_file_source_loads_relative_to_base_dir(tmp_path):
    write_jwks(tmp_path, jwks(public_jwk(rsa_key(), "r1")))
    source = JwksFileSource(issuer_config(jwks_file="jwks.json"), tmp_path)
    await source.start()
    assert await source.key_for("r1", "RS256") is not None
    assert await source.key_for("r1", "HS256") is None
    assert await source.key_for("../../dev/null", "RS256") is None
    assert "keys=1" in repr(source)


async def test_file_source_missing_or_bad_file_is_an_error_at_start(tmp_path):
    with pytest.raises(KeySourceError, match="cannot read jwks_file"):
        await JwksFileSource(issuer_config(jwks_file="nope.json"), tmp_path).start()
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(KeySourceError, match="not valid JSON"):
        await JwksFileSource(issuer_config(jwks_file="bad.json"), tmp_path).start()


# -- secret --------------------------------------------------------------------------------------


def hs_config():
    return issuer_config(secret_env="TEST_JWT_SECRET", algorithms=["HS256", "HS384"])


async def test_secret_source(monkeypatch):
    monkeypatch.setenv("TEST_JWT_SECRET", "x" * 48)
    source = SecretEnvSource(hs_config())
    await source.start()
    assert algorithm_of(await source.key_for(None, "HS256")) == "HS256"
    assert algorithm_of(await source.key_for("any", "HS384")) == "HS384"
    assert await source.key_for(None, "RS256") is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "TEST_JWT_SECRET is not set"),
        ("", "TEST_JWT_SECRET is empty"),
        ("x" * 40, "40 bytes; HS384 needs 48"),
    ],
)
async def test_secret_source_errors_at_start(monkeypatch, value, problem):
    if value is None:
        monkeypatch.delenv("TEST_JWT_SECRET", raising=False)
    else:
        monkeypatch.setenv("TEST_JWT_SECRET", value)
    with pytest.raises(KeySourceError, match=problem):
        await SecretEnvSource(hs_config()).start()


async def test_secret_that_is_a_public_key_is_refused(monkeypatch):
    monkeypatch.setenv("TEST_JWT_SECRET", public_pem(rsa_key()).decode())
    with pytest.raises(KeySourceError, match="PEM/SSH"):
        await SecretEnvSource(hs_config()).start()


# -- URL (a real server on 127.0.0.1:0) ----------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[JwksServer]:
    async with JwksServer(jwks(public_jwk(rsa_key(0), "k0"))) as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def url_source(server, session, clock=None, **kwargs):
    config = issuer_config(jwks_url=server.url, jwks_cooldown="30s", jwks_max_age="10m")
    return JwksUrlSource(config, lambda: session, monotonic=clock or FakeClock(1000.0), **kwargs)


async def test_url_source_fetches_once_at_start(server, session):
    events = []
    source = url_source(server, session, on_fetch=lambda issuer, ok: events.append((issuer, ok)))
    await source.start()
    assert await source.key_for("k0", "RS256") is not None
    assert await source.key_for("k0", "RS256") is not None
    assert server.hits == 1
    assert events == [("https://idp.example.com", True)]
    assert source.fetches_ok == 1
    await source.close()


async def test_rotation_one_refetch_then_success(server, session):
    clock = FakeClock(1000.0)
    changes = []
    source = url_source(server, session, clock, on_change=lambda: changes.append(1))
    await source.start()
    assert await source.wait_loaded()
    server.document = jwks(public_jwk(rsa_key(1), "k1"))  # the provider rotates
    clock.advance(31)  # past the cooldown of the start fetch
    assert await source.key_for("k1", "RS256") is not None
    assert server.hits == 2
    assert changes == [1]
    assert await source.key_for("k0", "RS256") is None  # the old key is gone for good
    await source.close()


async def test_provider_down_keeps_the_cached_keys(server, session):
    clock = FakeClock(1000.0)
    events = []
    source = url_source(server, session, clock, on_fetch=lambda _, ok: events.append(ok))
    await source.start()
    assert await source.wait_loaded()
    server.status = 503
    clock.advance(31)
    assert await source.key_for("unknown", "RS256") is None  # the refetch fails ...
    assert await source.key_for("k0", "RS256") is not None  # ... the last good keys stay
    clock.advance(601)  # stale: a background refresh, which fails too
    assert await source.key_for("k0", "RS256") is not None
    await source.wait_loaded()
    assert events == [True, False, False]
    assert source.fetches_failed == 2
    assert await source.key_for("k0", "RS256") is not None
    await source.close()


async def test_stale_keys_refresh_in_the_background(server, session):
    clock = FakeClock(1000.0)
    source = url_source(server, session, clock)
    await source.start()
    assert await source.wait_loaded()
    server.gate = asyncio.Event()  # hold the refresh
    clock.advance(601)
    assert await source.key_for("k0", "RS256") is not None  # answered without waiting
    server.gate.set()
    await source.wait_loaded()
    assert server.hits == 2
    await source.close()


async def test_random_kids_share_one_fetch_per_cooldown(server, session):
    clock = FakeClock(1000.0)
    source = url_source(server, session, clock)
    await source.start()
    assert await source.wait_loaded()
    clock.advance(31)
    server.gate = asyncio.Event()  # keep the refetch in flight while all 1,000 ask
    asking = asyncio.gather(
        *(source.key_for(f"kid-{random.random()}", "RS256") for _ in range(1000))
    )
    await poll_until(lambda: server.hits >= 2)
    server.gate.set()
    assert await asking == [None] * 1000
    assert server.hits == 2  # the start fetch, then exactly one refetch
    results = [await source.key_for(f"later-{n}", "RS256") for n in range(100)]
    assert results == [None] * 100
    assert server.hits == 2  # still inside the cooldown: no fetch
    clock.advance(30)
    assert await source.key_for("after-cooldown", "RS256") is None
    assert server.hits == 3
    await source.close()


async def test_a_cancelled_waiter_does_not_cancel_the_shared_fetch(server, session):
    source = url_source(server, session)
    server.gate = asyncio.Event()
    await source.start()
    impatient = asyncio.ensure_future(source.key_for("k0", "RS256"))
    patient = asyncio.ensure_future(source.key_for("k0", "RS256"))
    await poll_until(lambda: server.hits >= 1)
    impatient.cancel()
    server.gate.set()
    assert await patient is not None
    assert impatient.cancelled()
    await source.close()


async def test_redirects_are_not_followed(server, session):
    async with JwksServer(jwks(public_jwk(rsa_key(1), "evil"))) as elsewhere:
        server.redirect_to = elsewhere.url
        source = url_source(server, session)
        await source.start()
        assert not await source.wait_loaded()
        assert elsewhere.hits == 0
        assert source.fetches_failed == 1
        await source.close()


async def test_oversized_jwks_is_refused(server, session):
    server.body = b'{"keys": [' + b" " * 5000 + b"]}"
    source = url_source(server, session, max_bytes=4096)
    await source.start()
    assert not await source.wait_loaded()
    assert source.fetches_failed == 1
    await source.close()


async def test_a_silent_provider_times_out(server, session):
    server.gate = asyncio.Event()  # never answers
    source = url_source(server, session, timeout=0.2)
    await source.start()
    assert not await source.wait_loaded()
    assert source.fetches_failed == 1
    await source.close()


async def test_close_cancels_a_fetch_in_flight(server, session):
    server.gate = asyncio.Event()
    source = url_source(server, session)
    await source.start()
    await poll_until(lambda: server.hits >= 1)
    await source.close()
    assert "inflight=False" in repr(source)
