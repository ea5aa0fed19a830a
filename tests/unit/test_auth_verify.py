"""Verifier: accepted tokens, every rejection from the research battery (cases 22-30), the cache,
scopes, and the Authorization header parse. Keys are real; JWKS URLs are real local servers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from mcp_proxy.auth import (
    MAX_TOKEN_BYTES,
    Identity,
    KeySourceError,
    Verifier,
    authorize,
    bearer_token,
)
from mcp_proxy.errors import AuthError, Forbidden
from tests.auth_helpers import (
    AUDIENCE,
    HS_SECRET,
    ISSUER,
    FakeClock,
    JwksServer,
    auth_config,
    claims,
    ec_key,
    forge,
    forge_hs256,
    issuer_config,
    jwks,
    public_jwk,
    public_pem,
    rsa_key,
    sign,
    write_jwks,
)

SECRET_ENV = "MCP_PROXY_TEST_SECRET"
OTHER_ISSUER = "https://hmac.example.com"


@pytest.fixture
async def verifier(tmp_path) -> AsyncIterator[Verifier]:
    """One issuer: RS256 and ES256 keys from a JWKS file."""
    write_jwks(tmp_path, jwks(public_jwk(rsa_key(), "k-rsa"), public_jwk(ec_key(), "k-ec")))
    running = Verifier(auth_config(issuer_config(jwks_file="jwks.json")), tmp_path)
    await running.start()
    yield running
    await running.close()


@pytest.fixture
async def two_issuers(tmp_path, monkeypatch) -> AsyncIterator[Verifier]:
    """An RS/ES issuer from a file and an HS256 issuer from an environment variable."""
    monkeypatch.setenv(SECRET_ENV, HS_SECRET.decode())
    write_jwks(tmp_path, jwks(public_jwk(rsa_key(), "k-rsa")))
    config = auth_config(
        issuer_config(jwks_file="jwks.json"),
        issuer_config(issuer=OTHER_ISSUER, algorithms=["HS256"], secret_env=SECRET_ENV),
    )
    running = Verifier(config, tmp_path)
    await running.start()
    yield running
    await running.close()


def rs256(payload=None, kid="k-rsa", **headers):
    return sign(payload or claims(), rsa_key(), "RS256", kid, headers)


async def assert_rejected(verifier: Verifier, token: str, reason: str = "") -> None:
    with pytest.raises(AuthError) as info:
        await verifier.verify(token)
    error = info.value
    assert error.status == 401 and error.token_given
    assert error.headers == (("WWW-Authenticate", 'Bearer error="invalid_token"'),)
    assert reason in error.message
    assert verifier.cached(token) is None


# -- accepted ----------------------------------------------------------------------------------


async def test_rs256_accepted(verifier):
    token = rs256(claims(sub="alice", scope="read write", priority="high"))
    identity = await verifier.verify(token)
    assert identity.subject == "alice"
    assert identity.scopes == {"read", "write"}
    assert identity.scopes_header == "read write"
    assert identity.claims["priority"] == "high"
    assert identity.expires_at == identity.claims["exp"]


async def test_es256_accepted(verifier):
    identity = await verifier.verify(sign(claims(sub="bob"), ec_key(), "ES256", "k-ec"))
    assert identity.subject == "bob"
    assert identity.scopes == frozenset()
    assert identity.scopes_header == ""


async def test_hs256_accepted(two_issuers):
    token = sign(claims(iss=OTHER_ISSUER, sub="carol"), HS_SECRET, "HS256")
    assert (await two_issuers.verify(token)).subject == "carol"


async def test_each_issuer_is_chosen_by_exact_iss(two_issuers):
    assert (await two_issuers.verify(rs256())).subject == "alice"
    # The RS256 issuer's token re-labelled with the other issuer's name: wrong key family.
    await assert_rejected(two_issuers, rs256(claims(iss=OTHER_ISSUER)), "algorithm not allowed")


async def test_audience_list_needs_one_match(verifier):
    await verifier.verify(rs256(claims(aud=["other", AUDIENCE])))


async def test_token_without_kid_uses_the_only_key(verifier):
    assert (await verifier.verify(rs256(kid=None))).subject == "alice"


async def test_identity_is_frozen(verifier):
    identity = await verifier.verify(rs256())
    with pytest.raises(dataclasses.FrozenInstanceError):
        identity.subject = "mallory"  # type: ignore[misc, unused-ignore]


# -- rejected ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.x",
        "e30.e30 .x",
        "bm90IGpzb24.e30.x",  # header is not JSON
        "W10.e30.x",  # header is a list
    ],
)
async def test_malformed(verifier, token):
    await assert_rejected(verifier, token, "malformed")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
async def test_alg_none(verifier, alg):
    await assert_rejected(verifier, forge({"alg": alg, "typ": "JWT"}, claims()), "algorithm")


async def test_alg_missing_or_not_a_string(verifier):
    await assert_rejected(verifier, forge({"typ": "JWT"}, claims(), b"x"), "algorithm")
    await assert_rejected(verifier, forge({"alg": ["RS256"]}, claims(), b"x"), "algorithm")


@pytest.mark.parametrize(
    "secret",
    [
        public_pem(rsa_key()),
        json.dumps(public_jwk(rsa_key(), "k-rsa")).encode(),
        json.dumps(public_jwk(rsa_key(), "k-rsa"), indent=2).encode(),
    ],
    ids=["pem", "jwk", "jwk-pretty"],
)
async def test_hs256_signed_with_the_rsa_public_key(verifier, secret):
    for kid in ("k-rsa", None):
        header = {"alg": "HS256", "typ": "JWT"} | ({"kid": kid} if kid else {})
        await assert_rejected(verifier, forge_hs256(header, claims(), secret), "algorithm")


async def test_hs256_against_an_hmac_issuer_with_the_rsa_key_as_secret(two_issuers):
    token = forge_hs256({"alg": "HS256"}, claims(iss=OTHER_ISSUER), public_pem(rsa_key()))
    await assert_rejected(two_issuers, token, "signature")


async def test_algorithm_outside_the_allowlist(verifier):
    # A valid RS512 signature by the right key: still refused, RS512 is not allowed.
    await assert_rejected(verifier, sign(claims(), rsa_key(), "RS512", "k-rsa"), "algorithm")


async def test_key_of_the_wrong_type_for_the_alg_is_not_used(verifier):
    # ES256 header naming the RSA key: no ES256 key has that kid.
    await assert_rejected(verifier, sign(claims(), ec_key(), "ES256", "k-rsa"), "no key")


async def test_wrong_signing_key(verifier):
    token = sign(claims(), rsa_key(1), "RS256", "k-rsa")
    await assert_rejected(verifier, token, "signature does not verify")


async def test_tampered_payload(verifier):
    header, _, signature = rs256().split(".")
    forged_payload = rs256(claims(sub="mallory")).split(".")[1]
    await assert_rejected(verifier, f"{header}.{forged_payload}.{signature}", "signature")


async def test_expired_beyond_leeway_rejected_inside_accepted(verifier):
    now = time.time()
    await assert_rejected(verifier, rs256(claims(now=now - 400, ttl=360)), "expired")
    inside = rs256(claims(now=now - 400, ttl=390))  # expired 10 s ago; leeway 30 s
    assert (await verifier.verify(inside)).subject == "alice"
    assert verifier.cached(inside) is None  # never cached past its exp


async def test_nbf_in_the_future(verifier):
    now = int(time.time())
    await assert_rejected(verifier, rs256(claims(nbf=now + 120)), "not yet valid")
    await verifier.verify(rs256(claims(nbf=now + 10)))  # inside the leeway


async def test_iat_in_the_future(verifier):
    await assert_rejected(verifier, rs256(claims(now=time.time() + 120)), "not yet valid")


async def test_wrong_audience(verifier):
    await assert_rejected(verifier, rs256(claims(aud="other-api")), "audience")
    await assert_rejected(verifier, rs256(claims(aud=["a", "b"])), "audience")
    await assert_rejected(verifier, rs256(claims(aud=AUDIENCE[:-1])), "audience")


@pytest.mark.parametrize("iss", [ISSUER[:-4], ISSUER + "/", ISSUER + ".evil.test", "", "x"])
async def test_issuer_that_is_not_exactly_the_real_one(verifier, two_issuers, iss):
    await assert_rejected(verifier, rs256(claims(iss=iss)), "issuer")
    await assert_rejected(two_issuers, rs256(claims(iss=iss)), "issuer")


@pytest.mark.parametrize("claim", ["exp", "iss", "aud", "sub"])
async def test_missing_required_claim(verifier, claim):
    leave_out: dict[str, Any] = {claim: None}
    await assert_rejected(verifier, rs256(claims(**leave_out)), "")


async def test_no_exp(verifier):
    await assert_rejected(verifier, rs256(claims(exp=None)), "lacks the exp claim")


async def test_unknown_crit(verifier):
    token = rs256(crit=["x-custom"], **{"x-custom": 1})
    await assert_rejected(verifier, token, "critical")
    # pyjwt 2.15 itself refuses it too (defence in depth, not our only check).
    with pytest.raises(jwt.InvalidTokenError, match="Unsupported critical extension"):
        jwt.decode(token, rsa_key().public_key(), algorithms=["RS256"], audience=AUDIENCE)


async def test_jku_x5u_jwk_headers_are_never_fetched_nor_used(verifier):
    attacker = rsa_key(7)
    async with JwksServer(jwks(public_jwk(attacker, "evil"))) as evil:
        for headers in (
            {"jku": evil.url},
            {"x5u": evil.url},
            {"jwk": public_jwk(attacker, "evil")},
            {"x5c": ["MIIB"], "jku": evil.url},
        ):
            token = sign(claims(), attacker, "RS256", "evil", headers)
            await assert_rejected(verifier, token, "no key")
            token = sign(claims(), attacker, "RS256", "k-rsa", headers)
            await assert_rejected(verifier, token, "signature")
        assert evil.hits == 0


@pytest.mark.parametrize("kid", ["../../dev/null", "/etc/passwd", "' OR '1'='1", "file:///x"])
async def test_hostile_kid(verifier, kid):
    await assert_rejected(verifier, rs256(kid=kid), "no key")


async def test_kid_not_a_string(verifier):
    await assert_rejected(verifier, forge({"alg": "RS256", "kid": 5}, claims(), b"x"), "malformed")


async def test_oversized_token(verifier):
    token = rs256(claims(padding="x" * MAX_TOKEN_BYTES))
    await assert_rejected(verifier, token, "too large")


@pytest.mark.parametrize("subject", ["", "alice\r\nX-Auth-Admin: yes", "a\x00b", "tab\there"])
async def test_subject_unsafe_for_a_header(verifier, subject):
    await assert_rejected(verifier, rs256(claims(sub=subject)), "subject")


async def test_subject_not_a_string(verifier):
    await assert_rejected(verifier, rs256(claims(sub=42)))


# -- scopes --------------------------------------------------------------------------------------


async def test_scopes_from_scope_and_scp(verifier):
    identity = await verifier.verify(rs256(claims(scope="b  a", scp=["c", "a"])))
    assert identity.scopes == {"a", "b", "c"}
    assert identity.scopes_header == "a b c"
    identity = await verifier.verify(rs256(claims(sub="x", scp="d e")))
    assert identity.scopes == {"d", "e"}


@pytest.mark.parametrize(
    "bad",
    [{"scope": 5}, {"scp": [1]}, {"scope": "a\r\nb"}, {"scp": ["a b"]}, {"scope": 'a"b'}],
)
async def test_malformed_scopes(verifier, bad):
    await assert_rejected(verifier, rs256(claims(**bad)), "scope")


def identity_with(*scopes: str) -> Identity:
    return Identity("alice", frozenset(scopes), " ".join(sorted(scopes)), {}, time.time() + 60)


def test_authorize():
    authorize(identity_with("payments", "read"), frozenset({"payments"}))
    authorize(identity_with(), frozenset())
    with pytest.raises(Forbidden) as info:
        authorize(identity_with("read"), frozenset({"payments"}))
    assert info.value.status == 403
    with pytest.raises(Forbidden):
        authorize(identity_with("payments"), frozenset({"payments", "admin"}))


# -- the cache ----------------------------------------------------------------------------------


async def test_cache_hit_returns_the_same_identity(verifier):
    token = rs256()
    assert verifier.cached(token) is None
    identity = await verifier.verify(token)
    assert verifier.cached(token) is identity
    assert verifier.cached(token + "x") is None
    assert "cached=1" in repr(verifier)


async def test_cache_entry_ends_at_exp(tmp_path):
    write_jwks(tmp_path, jwks(public_jwk(rsa_key(), "k-rsa")))
    clock = FakeClock()
    running = Verifier(auth_config(issuer_config(jwks_file="jwks.json")), tmp_path, clock=clock)
    await running.start()
    token = rs256(claims(now=clock.now, ttl=300))
    identity = await running.verify(token)
    clock.now = identity.expires_at - 0.001
    assert running.cached(token) is identity
    clock.now = identity.expires_at
    assert running.cached(token) is None
    assert "cached=0" in repr(running)
    await running.close()


async def test_cache_is_bounded_oldest_first(tmp_path):
    write_jwks(tmp_path, jwks(public_jwk(rsa_key(), "k-rsa")))
    running = Verifier(auth_config(issuer_config(jwks_file="jwks.json")), tmp_path, cache_size=2)
    await running.start()
    tokens = [rs256(claims(sub=f"user{n}")) for n in range(3)]
    for token in tokens:
        await running.verify(token)
    assert running.cached(tokens[0]) is None
    assert running.cached(tokens[1]) is not None
    assert running.cached(tokens[2]) is not None
    await running.close()


# -- JWKS URL through the verifier --------------------------------------------------------------


@pytest.fixture
async def idp() -> AsyncIterator[JwksServer]:
    async with JwksServer(jwks(public_jwk(rsa_key(0), "k0"), public_jwk(ec_key(0), "e0"))) as s:
        yield s


async def url_verifier(idp: JwksServer, monotonic: FakeClock, **kwargs) -> Verifier:
    config = auth_config(issuer_config(jwks_url=idp.url))  # defaults: max age 10m, cooldown 30s
    running = Verifier(config, Path(), monotonic=monotonic, **kwargs)
    await running.start()
    assert await running.warm()
    return running


async def test_rotation_one_refetch_then_success_and_cache_cleared(idp):
    monotonic = FakeClock(1000.0)
    fetches = []
    running = await url_verifier(idp, monotonic, on_fetch=lambda iss, ok: fetches.append(ok))
    old = sign(claims(), rsa_key(0), "RS256", "k0")
    await running.verify(old)
    assert running.cached(old) is not None
    idp.document = jwks(public_jwk(rsa_key(1), "k1"))  # the provider rotates
    monotonic.advance(31)
    new = sign(claims(), rsa_key(1), "RS256", "k1")
    assert (await running.verify(new)).subject == "alice"
    assert idp.hits == 2
    assert fetches == [True, True]
    assert running.cached(old) is None  # the keys changed: the cache was emptied
    await assert_rejected(running, old, "no key")
    await running.close()


async def test_provider_down_cached_keys_still_work(idp):
    monotonic = FakeClock(1000.0)
    running = await url_verifier(idp, monotonic)
    idp.status = 503
    monotonic.advance(700)  # stale and past the cooldown: the refresh fails
    await running.verify(sign(claims(sub="a"), rsa_key(0), "RS256", "k0"))
    assert await running.warm() is True  # waits for the failed refresh; keys still there
    assert idp.hits == 2
    await running.verify(sign(claims(sub="b"), ec_key(0), "ES256", "e0"))
    await running.close()


async def test_thousand_random_kids_one_fetch_per_cooldown(idp):
    monotonic = FakeClock(1000.0)
    running = await url_verifier(idp, monotonic)
    assert idp.hits == 1
    attacker = ec_key(9)

    def burst() -> list[str]:
        return [
            sign(claims(), attacker, "ES256", f"kid-{random.getrandbits(64)}") for _ in range(1000)
        ]

    async def verify_all(tokens: list[str]) -> list[object]:
        return await asyncio.gather(*(running.verify(t) for t in tokens), return_exceptions=True)

    results = await verify_all(burst())  # inside the start fetch's cooldown: no fetch at all
    assert all(isinstance(result, AuthError) for result in results)
    assert idp.hits == 1
    monotonic.advance(30)
    results = await verify_all(burst())
    assert all(isinstance(result, AuthError) for result in results)
    assert idp.hits == 2  # one shared refetch for the whole burst
    monotonic.advance(29)
    await verify_all(burst())
    assert idp.hits == 2
    await running.close()


async def test_no_keys_yet_and_provider_down(idp):
    idp.status = 503
    config = auth_config(issuer_config(jwks_url=idp.url))
    running = Verifier(config, Path(), monotonic=FakeClock(1000.0))
    await running.start()
    assert await running.warm() is False
    await assert_rejected(running, sign(claims(), rsa_key(0), "RS256", "k0"), "no key")
    await running.close()


# -- start-up errors -----------------------------------------------------------------------------


async def test_start_reports_the_issuer_of_a_bad_key_source(tmp_path, monkeypatch):
    with pytest.raises(KeySourceError, match=r"auth.issuers\[0\] \(https://idp.example.com\)"):
        await Verifier(auth_config(issuer_config(jwks_file="missing.json")), tmp_path).start()
    monkeypatch.setenv(SECRET_ENV, "")
    config = auth_config(issuer_config(algorithms=["HS256"], secret_env=SECRET_ENV))
    with pytest.raises(KeySourceError, match="is empty"):
        await Verifier(config, tmp_path).start()


async def test_verifier_without_issuers_rejects_every_token(tmp_path):
    running = Verifier(auth_config(), tmp_path)
    await running.start()
    await assert_rejected(running, rs256(), "issuer")
    await running.close()


# -- Authorization header ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (b"Bearer abc.def.ghi", "abc.def.ghi"),
        (b"bearer abc.def.ghi", "abc.def.ghi"),
        (b"BEARER abc", "abc"),
        (b"Bearer   abc", "abc"),
        (b"Bearer a-b_c~d+e/f==", "a-b_c~d+e/f=="),
        (None, None),
        (b"", None),
        (b"Bearer", None),
        (b"Bearer ", None),
        (b"Bearer ==", "=="),
        (b"Bearer a b", "a b"),
        (b"Bearer a=b", "a=b"),
        (b"Bearer\tabc", None),
        (b"Bearerabc", None),
        (b"Basic dXNlcjpwYXNz", None),
        (b"Token abc", None),
        (b"Bearer abc\x00", "abc\x00"),
        (b"Bearer \xc3\xa9", "\xc3\xa9"),
        (b"Bearer abc,Bearer def", "abc,Bearer def"),
    ],
)
def test_bearer_token(header, token):
    assert bearer_token(header) == token
