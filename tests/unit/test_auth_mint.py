"""`mint_token` and `mcp-proxy token`: tokens that round-trip through the Verifier."""

from __future__ import annotations

import argparse
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mcp_proxy.auth import Verifier
from mcp_proxy.auth.mint import add_token_arguments, mint_token, run_token_command
from tests.auth_helpers import (
    AUDIENCE,
    HS_SECRET,
    ISSUER,
    auth_config,
    ec_key,
    issuer_config,
    jwks,
    private_pem,
    public_jwk,
    rsa_key,
    write_jwks,
)

SECRET_ENV = "MCP_PROXY_TEST_SECRET"


def mint(**overrides: Any) -> str:
    fields: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "scope": "payments read",
        "priority": "high",
        "ttl": 600.0,
        "kid": None,
    }
    return mint_token(**(fields | overrides))


@pytest.fixture
async def verifier(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, HS_SECRET.decode())
    write_jwks(tmp_path, jwks(public_jwk(rsa_key(), "r1"), public_jwk(ec_key(), "e1")))
    config = auth_config(
        issuer_config(jwks_file="jwks.json"),
        issuer_config(
            issuer="https://hmac.example.com", algorithms=["HS256"], secret_env=SECRET_ENV
        ),
    )
    running = Verifier(config, tmp_path)
    await running.start()
    yield running
    await running.close()


@pytest.mark.parametrize(
    ("key", "alg", "kid"), [(rsa_key(), "RS256", "r1"), (ec_key(), "ES256", "e1")]
)
async def test_pem_key_round_trip(verifier, key, alg, kid):
    token = mint(private_key_pem=private_pem(key), kid=kid)
    assert jwt.get_unverified_header(token) == {"alg": alg, "kid": kid, "typ": "JWT"}
    identity = await verifier.verify(token)
    assert identity.subject == "alice"
    assert identity.scopes == {"payments", "read"}
    assert identity.claims["priority"] == "high"


async def test_secret_round_trip(verifier):
    token = mint(iss="https://hmac.example.com", secret=HS_SECRET, scope=None, priority=None)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    identity = await verifier.verify(token)
    assert identity.scopes == frozenset()
    assert "priority" not in identity.claims


def test_claims_and_lifetime():
    token = mint(secret=HS_SECRET, aud=["a", "b"], ttl=90, now=1_000_000.7)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload == {
        "iss": ISSUER,
        "aud": ["a", "b"],
        "sub": "alice",
        "scope": "payments read",
        "priority": "high",
        "iat": 1_000_000,
        "exp": 1_000_090,
    }


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({}, "exactly one"),
        ({"secret": HS_SECRET, "private_key_pem": private_pem(rsa_key())}, "exactly one"),
        ({"secret": b"short"}, "HS256 needs at least 32"),
        ({"secret": HS_SECRET, "ttl": 0}, "ttl"),
        ({"private_key_pem": b"not a key"}, "not a PEM private key"),
        ({"private_key_pem": private_pem(ec_key(0, "P-384"))}, "unsupported key type"),
        ({"private_key_pem": private_pem(rsa_key(0, bits=1024))}, "1024 bits"),
    ],
)
def test_mint_refuses(overrides, problem):
    with pytest.raises(ValueError, match=problem):
        mint(**overrides)


def test_ed25519_and_encrypted_keys_are_refused():
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_pem = ed.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="unsupported key type"):
        mint(private_key_pem=ed_pem)
    encrypted = rsa_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(ValueError, match="encrypted"):
        mint(private_key_pem=encrypted)


# -- the command ---------------------------------------------------------------------------------


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="mcp-proxy token")
    add_token_arguments(parser)
    code = run_token_command(parser.parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_command_with_key_file(tmp_path, capsys, verifier):
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(private_pem(ec_key()))
    argv = ["--key", str(key_file), "--iss", ISSUER, "--aud", AUDIENCE, "--sub", "dave"]
    code, out, err = run([*argv, "--scope", "a b", "--ttl", "10m", "--kid", "e1"], capsys)
    assert (code, err) == (0, "")
    token = out.strip()
    assert out == token + "\n"  # the token alone
    identity = await verifier.verify(token)
    assert identity.subject == "dave"
    assert identity.scopes == {"a", "b"}
    assert identity.expires_at == pytest.approx(time.time() + 600, abs=5)


async def test_command_with_secret_env(capsys, verifier):
    argv = ["--secret-env", SECRET_ENV, "--iss", "https://hmac.example.com", "--aud", AUDIENCE]
    code, out, _ = run([*argv, "--priority", "low"], capsys)
    assert code == 0
    identity = await verifier.verify(out.strip())
    assert identity.subject == "demo-user"
    assert identity.claims["priority"] == "low"


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--secret-env", "MCP_PROXY_UNSET_VAR"], "MCP_PROXY_UNSET_VAR is not set"),
        (["--secret-env", SECRET_ENV, "--ttl", "soon"], "--ttl 'soon'"),
        (["--secret-env", SECRET_ENV, "--ttl", "0s"], "ttl must be greater than 0"),
        (["--secret-env", SECRET_ENV, "--ttl", "1h-5m"], "--ttl '1h-5m': expected a duration"),
        (["--secret-env", SECRET_ENV, "--ttl", "-1"], "--ttl '-1': a duration must be"),
        (["--key", "/nonexistent/key.pem"], "cannot read --key"),
    ],
)
def test_command_user_mistakes(monkeypatch, capsys, argv, problem):
    monkeypatch.setenv(SECRET_ENV, HS_SECRET.decode())
    monkeypatch.delenv("MCP_PROXY_UNSET_VAR", raising=False)
    code, out, err = run([*argv, "--iss", ISSUER, "--aud", AUDIENCE], capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("mcp-proxy token: ")
    assert problem in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("ttl", "seconds"), [("120", 120), ("1h30m", 5400), ("2m30s", 150)])
async def test_command_ttl_plain_seconds_and_compound(capsys, verifier, ttl, seconds):
    argv = ["--secret-env", SECRET_ENV, "--iss", "https://hmac.example.com", "--aud", AUDIENCE]
    code, out, err = run([*argv, "--ttl", ttl], capsys)
    assert (code, err) == (0, "")
    identity = await verifier.verify(out.strip())
    assert identity.expires_at == pytest.approx(time.time() + seconds, abs=5)


def test_command_unsupported_key_file(tmp_path, capsys):
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(private_pem(ec_key(0, "P-521")))
    code, _, err = run(["--key", str(key_file), "--iss", ISSUER, "--aud", AUDIENCE], capsys)
    assert code == 2
    assert "unsupported key type" in err


def test_command_needs_one_key_source(capsys):
    with pytest.raises(SystemExit) as info:
        run(["--iss", ISSUER, "--aud", AUDIENCE], capsys)
    assert info.value.code == 2
