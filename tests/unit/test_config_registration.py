"""Config keys of registration, splits, mirroring and admin_auth, and their check rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_proxy.config import ConfigError, parse

BASE = """
auth:
  default: none
  issuers:
    - issuer: https://idp.example.com
      audiences: [mcp-proxy]
      algorithms: [HS256]
      secret_env: ADMIN_SECRET
pools:
  a: {kind: on-prem, backends: [{url: "http://127.0.0.1:9001"}]}
  b: {kind: public, labels: {site: dr}, backends: [{url: "http://127.0.0.1:9002"}]}
  reg: {kind: public, registration: true}
"""


def config(text: str) -> object:
    return parse(BASE + text, Path("/nonexistent"))


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(BASE + text, Path("/nonexistent"))
    return info.value.problems


def test_split_mirror_and_registration_load() -> None:
    loaded = config(
        """admin_auth: {scope: "mcp-proxy:admin"}
routes:
  - name: r
    to: {split: [{pools: [a, reg], weight: 90}, {selector: {site: dr}, weight: 10}]}
    mirror: {pools: [b], percent: 12.5}
"""
    )
    route = loaded.routes[0]  # type: ignore[attr-defined]
    assert [side.weight for side in route.to.split] == [90, 10]
    assert route.mirror.percent == 12.5
    assert loaded.pools["reg"].registration and loaded.pools["reg"].backends == ()  # type: ignore[attr-defined]
    assert loaded.admin_auth.scope == "mcp-proxy:admin"  # type: ignore[attr-defined]


def test_a_pool_without_backends_needs_registration() -> None:
    text = BASE.replace("reg: {kind: public, registration: true}", "reg: {kind: public}")
    with pytest.raises(ConfigError) as info:
        parse(text + "routes: [{name: r, to: {pools: [a]}}]\n", Path("/nonexistent"))
    assert any("registration: true" in p for p in info.value.problems)


@pytest.mark.parametrize(
    ("route", "says"),
    [
        ("to: {split: [{pools: [a], weight: 1}]}", "at least 2"),
        (
            "to: {pools: [a], split: [{pools: [a], weight: 1}, {pools: [b], weight: 1}]}",
            "exactly one of",
        ),
        (
            "to: {split: [{pools: [a], weight: 0}, {pools: [b], weight: 1}]}",
            "must be at least 1",
        ),
        (
            "to: {split: [{pools: [a], weight: 1}, {pools: [nope], weight: 1}]}",
            "to.split[1].pools[0]: unknown pool 'nope'",
        ),
        (
            "to: {split: [{pools: [a], weight: 1}, {selector: {x: y}, weight: 1}]}",
            "to.split[1].selector",
        ),
        (
            "to: {pools: [a]}\n    mirror: {pools: [nope], percent: 5}",
            "mirror.pools[0]: unknown pool",
        ),
        ("to: {pools: [a]}\n    mirror: {pools: [b], percent: 0}", "greater than 0"),
        ("to: {pools: [a]}\n    mirror: {pools: [b], percent: 101}", "must be at most 100"),
        ("to: {pools: [a]}\n    mirror: {pools: [b]}", "percent"),
    ],
)
def test_bad_split_and_mirror(route: str, says: str) -> None:
    found = problems(f"routes:\n  - name: r\n    {route}\n")
    assert any(says in problem for problem in found), found


def test_admin_beyond_loopback_needs_admin_auth() -> None:
    found = problems('admin: "0.0.0.0:9901"\nroutes: [{name: r, to: {pools: [a]}}]\n')
    assert len(found) == 1 and "beyond loopback: set admin_auth" in found[0]
    assert config(
        'admin: "0.0.0.0:9901"\nadmin_auth: {scope: adm}\nroutes: [{name: r, to: {pools: [a]}}]\n'
    )
    assert config('admin: "[::1]:9901"\nroutes: [{name: r, to: {pools: [a]}}]\n')


def test_admin_auth_needs_an_issuer_and_a_scope_token() -> None:
    text = BASE.split("  issuers:", maxsplit=1)[0] + BASE.split("secret_env: ADMIN_SECRET\n")[1]
    with pytest.raises(ConfigError) as info:
        parse(
            text + "admin_auth: {scope: adm}\nroutes: [{name: r, to: {pools: [a]}}]\n", Path("/x")
        )
    assert any("admin_auth needs a token" in p for p in info.value.problems)
    assert any(
        "scope" in p
        for p in problems(
            'admin_auth: {scope: "two words"}\nroutes: [{name: r, to: {pools: [a]}}]\n'
        )
    )


def test_mcp_proxy_check_refuses_an_admin_beyond_loopback_without_admin_auth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp_proxy.cli import check

    monkeypatch.setenv("ADMIN_SECRET", "x" * 40)
    path = tmp_path / "proxy.yaml"
    path.write_text(BASE + 'admin: "0.0.0.0:9901"\nroutes: [{name: r, to: {pools: [a]}}]\n')
    assert check(str(path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "admin: 0.0.0.0 is beyond loopback: set admin_auth" in err[0]
    path.write_text(path.read_text() + "admin_auth: {scope: mcp-proxy:admin}\n")
    assert check(str(path)) == 0
