from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from mcp_proxy.config import Config, ConfigError, LoadedConfig, load, parse
from mcp_proxy.config.check import Problem, check, format_path
from mcp_proxy.config.environ import secret_env_findings
from mcp_proxy.config.load import resolve_path
from mcp_proxy.config.model import (
    AdmissionConfig,
    BalancerConfig,
    HealthConfig,
    Limits,
    OutlierConfig,
    UpstreamConfig,
    is_trusted,
)
from mcp_proxy.config.units import parse_duration

REPO = Path(__file__).parents[2]
CONFIG_DIR = REPO / "config"
SPEC = Path(__file__).parents[3] / "shared" / "SPEC.md"

POOLS = """\
pools:
  dc1:
    kind: on-prem
    labels: {env: prod}
    backends:
      - url: http://127.0.0.1:9001
"""
NO_AUTH = "auth: {default: none}\n"
ROUTES = """\
routes:
  - name: all
    to: {pools: [dc1]}
"""
MINIMAL = POOLS + NO_AUTH + ROUTES


def spec_example() -> str:
    if not SPEC.is_file():
        pytest.skip(f"{SPEC} is absent")
    blocks = re.findall(r"```yaml\n(.*?)```", SPEC.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1, "SPEC.md should hold exactly one yaml example"
    return str(blocks[0])


def beside_jwks(tmp_path: Path, name: str, text: str) -> Path:
    shutil.copy(CONFIG_DIR / "jwks.json", tmp_path / "jwks.json")
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(text: str, base_dir: Path = Path("/nonexistent")) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, base_dir)
    return info.value.problems


def only_problem(text: str, base_dir: Path = Path("/nonexistent")) -> str:
    found = problems(text, base_dir)
    assert len(found) == 1, found
    return found[0]


def line_of(text: str, marker: str) -> int:
    """1-based line of the first line holding `marker`."""
    for number, line in enumerate(text.splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(f"{marker!r} not in text")


# --- what must load -----------------------------------------------------------------------


def test_spec_example_loads_beside_jwks(tmp_path: Path) -> None:
    loaded = load(beside_jwks(tmp_path, "mcp-proxy.yaml", spec_example()))
    assert [route.name for route in loaded.config.routes] == [
        "public",
        "tenant-acme",
        "payments",
        "default",
    ]
    assert loaded.config.auth.issuers[0].jwks_file == str(tmp_path / "jwks.json")


def test_shipped_config_loads() -> None:
    loaded = load(CONFIG_DIR / "mcp-proxy.yaml")
    assert set(loaded.config.pools) == {"onprem-dc1", "private-cloud", "public-cloud"}
    assert loaded.config.auth.issuers[0].jwks_file == str(CONFIG_DIR / "jwks.json")


def test_shipped_config_is_the_spec_example_annotated(tmp_path: Path) -> None:
    spec = load(beside_jwks(tmp_path, "spec.yaml", spec_example())).config
    shipped_text = (CONFIG_DIR / "mcp-proxy.yaml").read_text()
    assert "demo-key.pem is the demo's private key: never use it for anything real" in shipped_text
    shipped = load(beside_jwks(tmp_path, "shipped.yaml", shipped_text)).config
    assert shipped == spec


def test_minimal_config_loads() -> None:
    config = parse(MINIMAL, Path("/nowhere"))
    assert isinstance(config, Config)
    assert config.routes[0].to.pools == ("dc1",)


def test_defaults_are_the_spec_example_values(tmp_path: Path) -> None:
    spec = load(beside_jwks(tmp_path, "spec.yaml", spec_example())).config
    defaults = parse(MINIMAL, tmp_path)
    assert spec.limits == defaults.limits == Limits()
    assert spec.balancer == defaults.balancer == BalancerConfig()
    assert spec.health == defaults.health == HealthConfig()
    assert spec.admission == defaults.admission == AdmissionConfig()
    assert spec.listen == defaults.listen == ("127.0.0.1", 8080)
    assert spec.admin == defaults.admin == ("127.0.0.1", 9901)
    route = defaults.routes[0]
    assert (route.retries, route.timeout, route.auth, route.priority) == (2, 30.0, None, None)
    assert spec.routes[-1].retries == 2 and spec.routes[-1].timeout == 30.0


def test_default_values_in_numbers() -> None:
    assert Limits() == Limits(
        header_timeout=10.0,
        idle_timeout=60.0,
        max_header_bytes=64 * 1024,
        max_headers=100,
        max_body_bytes=1024**3,
    )
    assert (BalancerConfig().policy, BalancerConfig().decay, BalancerConfig().cost_weight) == (
        "lowest_rtt",
        10.0,
        0.0,
    )
    health = HealthConfig()
    assert (health.path, health.interval, health.timeout) == ("/healthz", 3.0, 1.0)
    assert (health.unhealthy_threshold, health.healthy_threshold) == (3, 2)
    assert health.outlier == OutlierConfig(
        consecutive_failures=5, ejection_time=30.0, max_ejected_percent=50
    )
    admission = AdmissionConfig()
    assert admission.classes == ("critical", "high", "normal", "low")
    assert (admission.max_inflight, admission.max_queue, admission.queue_timeout) == (
        512,
        2048,
        2.0,
    )
    assert (admission.claim, admission.default) == ("priority", "normal")


# --- keys added for slow clients, forwarded headers and hostile backends (SPEC.md) -------


def test_added_keys_default_to_the_spec_values() -> None:
    config = parse(MINIMAL, Path("/"))
    limits, upstream = config.limits, config.upstream
    assert (limits.body_timeout, limits.send_timeout, limits.min_rate) == (30.0, 30.0, 256)
    assert (limits.lingering_time, limits.request_buffer) == (5.0, 64 * 1024)
    assert (upstream.max_response_header_bytes, upstream.read_timeout) == (64 * 1024, 300.0)
    assert config.trusted_proxies == ()
    assert config.headers_with_underscores == "drop"
    assert upstream == UpstreamConfig()


def test_added_keys_take_valid_values() -> None:
    text = MINIMAL + (
        "limits: {body_timeout: 5s, send_timeout: 1m, min_rate: 1KiB, lingering_time: 0,"
        " request_buffer: 1MiB}\n"
        "upstream: {max_response_header_bytes: 8KiB, read_timeout: 90s}\n"
        "trusted_proxies: [10.0.0.0/8, '192.168.1.7', 'fd00::/8']\n"
        "headers_with_underscores: reject\n"
    )
    config = parse(text, Path("/"))
    limits = config.limits
    assert (limits.body_timeout, limits.send_timeout, limits.min_rate) == (5.0, 60.0, 1024)
    assert (limits.lingering_time, limits.request_buffer) == (0.0, 1024**2)
    assert (config.upstream.max_response_header_bytes, config.upstream.read_timeout) == (
        8192,
        90.0,
    )
    assert [str(net) for net in config.trusted_proxies] == [
        "10.0.0.0/8",
        "192.168.1.7/32",
        "fd00::/8",
    ]
    assert config.headers_with_underscores == "reject"
    assert parse(MINIMAL + "limits: {min_rate: 0}\n", Path("/")).limits.min_rate == 0  # off


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("limits: {body_timeout: 0s}", "limits.body_timeout: '0s': must be greater than 0"),
        ("limits: {send_timeout: soon}", "limits.send_timeout: 'soon': expected a duration"),
        ("limits: {min_rate: -1}", "limits.min_rate: -1: a size must be >= 0"),
        ("limits: {lingering_time: -1}", "limits.lingering_time: -1: a duration must be"),
        ("limits: {request_buffer: lots}", "limits.request_buffer: 'lots': expected a size"),
        (
            "upstream: {max_response_header_bytes: 100}",
            "upstream.max_response_header_bytes: 100: must be at least 1024",
        ),
        ("upstream: {read_timeout: 0}", "upstream.read_timeout: 0: must be greater than 0"),
        (
            "trusted_proxies: [10.0.0.0/8, 10.0.0.300/8]",
            "trusted_proxies[1]: '10.0.0.300/8' is not an IP address or CIDR",
        ),
        ("trusted_proxies: [5]", "trusted_proxies[0]: 5: expected a CIDR string"),
        ("trusted_proxies: 10.0.0.0/8", "trusted_proxies: '10.0.0.0/8': expected a list"),
        (
            "headers_with_underscores: keep",
            "headers_with_underscores: 'keep': must be 'drop', 'reject' or 'allow'",
        ),
    ],
)
def test_added_keys_reject_bad_values(extra: str, message: str) -> None:
    problem = only_problem(MINIMAL + extra + "\n")
    assert problem.startswith(message), problem
    assert problem.endswith(f"(line {len(MINIMAL.splitlines()) + 1})")


def test_trusted_peers_v4_v6_and_mapped() -> None:
    config = parse(MINIMAL + "trusted_proxies: [10.0.0.0/8, '::1', 'fd00::/8']\n", Path("/"))
    assert config.is_trusted("10.20.30.40")
    assert config.is_trusted("::ffff:10.1.2.3")  # an IPv4 peer on a dual-stack socket
    assert config.is_trusted("::1") and config.is_trusted("fd00::17")
    assert not config.is_trusted("11.0.0.1")
    assert not config.is_trusted("127.0.0.1")
    assert not config.is_trusted("fe80::1")
    assert not config.is_trusted("")  # a peer without an address (a Unix socket)
    assert not config.is_trusted("not-an-ip")
    assert not is_trusted("10.0.0.1", ())  # nobody is trusted by default


# --- load(): the file, its folder, its version ------------------------------------------


def test_load_reports_version_source_and_text(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(MINIMAL)
    loaded = load(str(path))
    assert isinstance(loaded, LoadedConfig)
    assert loaded.version == "sha256:" + hashlib.sha256(MINIMAL.encode()).hexdigest()
    assert (loaded.source, loaded.text) == (str(path), MINIMAL)
    assert load(path).version == loaded.version  # same bytes, same version


def test_load_resolves_files_from_the_folder_as_given_not_the_symlink_target(
    tmp_path: Path,
) -> None:
    # A Kubernetes ConfigMap mount: the file is a symlink into a hidden folder.
    hidden, mount = tmp_path / "..2024_data", tmp_path / "mount"
    hidden.mkdir()
    mount.mkdir()
    text = spec_example()
    (hidden / "mcp-proxy.yaml").write_text(text)
    (mount / "mcp-proxy.yaml").symlink_to(hidden / "mcp-proxy.yaml")
    shutil.copy(CONFIG_DIR / "jwks.json", mount / "jwks.json")
    loaded = load(mount / "mcp-proxy.yaml")
    assert loaded.config.auth.issuers[0].jwks_file == str(mount / "jwks.json")


def test_unreadable_file_is_one_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "absent.yaml")
    assert info.value.problems == [
        f"{tmp_path / 'absent.yaml'}: cannot read: No such file or directory"
    ]


def test_config_error_reads_as_lines() -> None:
    error = ConfigError(["a: one", "b: two"])
    assert str(error) == "a: one\nb: two"
    assert error.problems == ["a: one", "b: two"]


def test_resolve_path(tmp_path: Path) -> None:
    assert resolve_path(tmp_path, "keys/jwks.json") == tmp_path / "keys" / "jwks.json"
    assert resolve_path(tmp_path, "/etc/jwks.json") == Path("/etc/jwks.json")


# --- YAML-level problems ------------------------------------------------------------------


def test_yaml_syntax_error_is_one_problem_with_line_and_column() -> None:
    text = MINIMAL + "limits:\n  header_timeout: [10s\n"
    problem = only_problem(text)
    assert problem.startswith("invalid YAML: ")
    assert re.search(r"\(line \d+, column \d+\)$", problem), problem


def test_duplicate_yaml_key_is_reported_with_path_and_line() -> None:
    text = MINIMAL + "limits:\n  max_headers: 10\n  max_headers: 20\n"
    second = text.splitlines().index("  max_headers: 20") + 1
    assert only_problem(text) == (
        f"limits.max_headers: key 'max_headers' given twice (first on line {second - 1}; "
        f"YAML keeps one) (line {second})"
    )


def test_duplicate_top_level_key() -> None:
    text = MINIMAL + ROUTES
    problem = only_problem(text)
    assert problem.startswith("routes: key 'routes' given twice")
    assert problem.endswith(f"(line {len(MINIMAL.splitlines()) + 1})")


def test_yaml_merge_keys_are_not_duplicates() -> None:
    text = (
        POOLS
        + NO_AUTH
        + (
            "routes:\n"
            "  - &base {name: a, match: {path_prefix: /a}, to: {pools: [dc1]}}\n"
            "  - <<: *base\n"
            "    name: b\n"
            "    match: {path_prefix: /b}\n"
        )
    )
    assert [route.name for route in parse(text, Path("/")).routes] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty: a config needs at least pools and routes"),
        ("- a\n- b\n", "the top level must be a mapping (key: value), not a list"),
        ("just words\n", "the top level must be a mapping (key: value), not 'just words'"),
    ],
)
def test_top_level_must_be_a_mapping(text: str, expected: str) -> None:
    assert only_problem(text) == expected


# --- shape problems (pydantic), each with its key path and line -------------------------


def test_unknown_top_level_key() -> None:
    text = MINIMAL + "listner: 127.0.0.1:80\n"
    assert only_problem(text) == (
        f"listner: unknown key 'listner' (did you mean 'listen'?) (line {line_of(text, 'listner')})"
    )


def test_unknown_key_without_a_close_match_lists_the_allowed_keys() -> None:
    text = MINIMAL + "zzz: 1\n"
    problem = only_problem(text)
    assert problem.startswith("zzz: unknown key 'zzz' (allowed: listen, admin, limits, pools,")


def test_unknown_nested_key() -> None:
    text = MINIMAL + "limits:\n  heder_timeout: 5s\n"
    assert only_problem(text) == (
        "limits.heder_timeout: unknown key 'heder_timeout' (did you mean 'header_timeout'?) "
        f"(line {line_of(text, 'heder_timeout')})"
    )


def test_unknown_key_inside_a_list_item_and_a_union() -> None:
    text = (
        POOLS + NO_AUTH + "routes:\n  - name: all\n    to: {pools: [dc1]}\n    auth: {scope: [x]}\n"
    )
    line = line_of(text, "scope:")
    assert problems(text) == [
        f"routes[0].auth.scopes: required (line {line})",
        f"routes[0].auth.scope: unknown key 'scope' (did you mean 'scopes'?) (line {line})",
    ]


def test_union_with_a_wrong_word_names_every_choice() -> None:
    text = POOLS + NO_AUTH + "routes:\n  - name: all\n    to: {pools: [dc1]}\n    auth: maybe\n"
    assert only_problem(text) == (
        "routes[0].auth: 'maybe': must be 'none' or 'required', or a mapping with key(s) scopes "
        f"(line {line_of(text, 'auth: maybe')})"
    )


def test_wrong_type() -> None:
    text = MINIMAL + "limits:\n  max_headers: lots\n"
    assert only_problem(text) == (
        f"limits.max_headers: 'lots': expected a whole number (line {line_of(text, 'lots')})"
    )


def test_string_given_as_yaml_boolean_gets_a_hint() -> None:
    text = MINIMAL.replace("{env: prod}", "{env: prod, tier: no}")
    problem = only_problem(text)
    assert problem.startswith("pools.dc1.labels.tier: false: expected a string (YAML reads")
    assert "quote it" in problem


def test_missing_key_points_at_its_parent() -> None:
    text = MINIMAL.replace("    kind: on-prem\n", "")
    assert only_problem(text) == f"pools.dc1.kind: required (line {line_of(text, 'dc1:')})"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("3 parsecs", "'3 parsecs': unknown duration unit 'parsecs' (use ms, s, m or h)"),
        ("-1s", "'-1s': a duration must be a finite number >= 0"),
        ("-1", "-1: a duration must be a finite number >= 0"),
        ("'-1'", "'-1': a duration must be a finite number >= 0"),
        ("0s", "'0s': must be greater than 0"),
        ("1x", "'1x': unknown duration unit 'x' (use ms, s, m or h)"),
        ("h", "'h': expected a duration like 250ms, 3s or 1m"),
        ("1h-5m", "'1h-5m': expected a duration like 250ms, 3s or 1m"),
        ("1h30", "'1h30': give every number of a compound duration a unit, as in 1h30m"),
        ("30m1h", "'30m1h': give units from largest to smallest, each once, as in 1h30m"),
        ("1m1m", "'1m1m': give units from largest to smallest, each once, as in 1h30m"),
        ("1h30x", "'1h30x': unknown duration unit 'x' (use ms, s, m or h)"),
        ("''", "'': expected a duration like 250ms, 3s or 1m"),
    ],
)
def test_bad_duration(value: str, message: str) -> None:
    text = MINIMAL + f"health:\n  interval: {value}\n"
    assert only_problem(text) == f"health.interval: {message} (line {line_of(text, 'interval')})"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("60", 60.0),
        ("'60'", 60.0),  # quoted, a plain number is still seconds
        ("' 1.5 '", 1.5),
        ("1.5", 1.5),
        ("250ms", 0.25),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("2s500ms", 2.5),
        ("'1h 30m'", 5400.0),
        ("1h0m5s", 3605.0),
        ("3S", 3.0),
    ],
)
def test_durations_plain_quoted_and_compound(value: str, seconds: float) -> None:
    config = parse(MINIMAL + f"health:\n  interval: {value}\n", Path("/"))
    assert config.health.interval == pytest.approx(seconds)
    assert parse_duration(value.strip("'")) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10 zorks", "'10 zorks': unknown size unit 'zorks' (use B, KiB, MiB, GiB, KB, MB, GB)"),
        ("-5", "-5: a size must be >= 0"),
        ("lots", "'lots': expected a size like 64KiB or 10MiB"),
    ],
)
def test_bad_size(value: str, message: str) -> None:
    text = MINIMAL + f"limits:\n  max_body_bytes: {value}\n"
    line = line_of(text, "max_body_bytes")
    assert only_problem(text) == f"limits.max_body_bytes: {message} (line {line})"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x", "'ftp://x': the scheme must be http or https"),
        ("http://h/api", "'http://h/api': give scheme://host:port only (no path, query or user)"),
        ("http://h:99999", "'http://h:99999': Port out of range 0-65535"),
        ("http://h:port", "'http://h:port': Port could not be cast to integer value as 'port'"),
    ],
)
def test_bad_backend_url(url: str, message: str) -> None:
    text = MINIMAL.replace("http://127.0.0.1:9001", url)
    line = line_of(text, url)
    # One problem only: no follow-on "backends must not be empty" for the item that failed.
    assert only_problem(text) == f"pools.dc1.backends[0].url: {message} (line {line})"


def test_literal_lists_the_allowed_values() -> None:
    text = MINIMAL + "balancer: {policy: fastest}\n"
    assert only_problem(text) == (
        "balancer.policy: 'fastest': must be 'lowest_rtt', 'round_robin' or 'least_request' "
        f"(line {line_of(text, 'fastest')})"
    )


def test_bad_header_name_is_reported_as_a_key() -> None:
    text = MINIMAL + "    match: {headers: {'x tenant': a}}\n"
    problem = only_problem(text)
    assert problem.startswith(
        "routes[0].match.headers['x tenant']: key 'x tenant': must be an HTTP"
    )


ISSUER = "  issuers:\n    - {issuer: https://idp, audiences: [api], %s}\n"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("algorithms: [RS256]", "give exactly one key source: jwks_file, jwks_url or secret_env"),
        (
            "algorithms: [RS256], jwks_file: jwks.json, jwks_url: 'https://idp/jwks'",
            "give exactly one key source: jwks_file, jwks_url or secret_env",
        ),
        (
            "algorithms: [HS256, RS256], secret_env: KEY",
            "one issuer never mixes HMAC (HS*) with RSA/EC algorithms",
        ),
        (
            "algorithms: [RS256], secret_env: KEY",
            "secret_env goes with HS256/HS384/HS512 algorithms only",
        ),
        (
            "algorithms: [HS256], jwks_file: jwks.json",
            "HS* algorithms need secret_env (a JWKS holds public keys)",
        ),
    ],
)
def test_issuer_key_source_rules(fields: str, message: str) -> None:
    text = POOLS + "auth:\n" + ISSUER % fields + ROUTES
    line = line_of(text, "issuer:")
    assert only_problem(text) == f"auth.issuers[0]: {message} (line {line})"


def test_jwks_url_over_http_only_to_loopback() -> None:
    text = POOLS + "auth:\n" + ISSUER % "algorithms: [RS256], jwks_url: 'http://idp/jwks'" + ROUTES
    assert only_problem(text) == (
        "auth.issuers[0].jwks_url: 'http://idp/jwks': jwks_url must be https "
        f"(http only to a loopback address) (line {line_of(text, 'issuer:')})"
    )
    for url in ("http://127.0.0.1:8000/jwks", "http://localhost/jwks", "https://idp/jwks"):
        fields = f"algorithms: [RS256], jwks_url: '{url}'"
        parse(POOLS + "auth:\n" + ISSUER % fields + ROUTES, Path("/"))


def test_several_problems_are_all_reported_in_file_order() -> None:
    text = MINIMAL.replace("http://127.0.0.1:9001", "ftp://x") + (
        "limits:\n  header_timeout: 3 parsecs\n  bogus: 1\n"
        "balancer:\n  policy: fastest\n  policy: lowest_rtt\n"
    )
    found = problems(text)
    assert len(found) == 4, found
    lines = [int(re.findall(r"\(line (\d+)\)$", problem)[0]) for problem in found]
    assert lines == sorted(lines)
    assert [problem.split(":")[0] for problem in found] == [
        "pools.dc1.backends[0].url",
        "limits.header_timeout",
        "limits.bogus",
        "balancer.policy",
    ]


# --- problems of meaning (config.check) ---------------------------------------------------


def test_route_naming_an_unknown_pool() -> None:
    text = MINIMAL.replace("[dc1]", "[dc1, dc2]")
    assert only_problem(text) == (
        f"routes[0].to.pools[1]: unknown pool 'dc2' (known: dc1) (line {line_of(text, 'dc2')})"
    )


def test_selector_matching_no_pool() -> None:
    text = MINIMAL.replace("{pools: [dc1]}", "{selector: {env: staging}}")
    assert only_problem(text) == (
        "routes[0].to.selector: {env: staging} matches no pool's labels "
        f"(line {line_of(text, 'selector')})"
    )


def test_selector_matching_a_pool_is_fine() -> None:
    parse(MINIMAL.replace("{pools: [dc1]}", "{selector: {env: prod}}"), Path("/"))


def test_duplicate_route_names() -> None:
    text = MINIMAL + "  - name: all\n    match: {path_prefix: /x}\n    to: {pools: [dc1]}\n"
    found = problems(text)
    second = text.splitlines().index("  - name: all", line_of(text, "name: all")) + 1
    assert found[0] == (
        "routes[1].name: 'all' is already the name of routes[0]: route names label metrics "
        f"and must be unique (line {second})"
    )


def test_priority_not_a_class() -> None:
    text = MINIMAL + "    priority: urgent\n"
    assert only_problem(text) == (
        "routes[0].priority: 'urgent' is not one of admission.classes "
        f"(critical, high, normal, low) (line {line_of(text, 'urgent')})"
    )


def test_route_needing_a_token_without_issuers() -> None:
    text = MINIMAL + "    auth: {scopes: [read]}\n"
    assert only_problem(text) == (
        "routes[0].auth: this route needs a token, but auth.issuers is empty: nothing could "
        f"verify one (line {line_of(text, 'scopes')})"
    )


def test_default_required_without_issuers_is_one_problem() -> None:
    routes = "".join(
        f"  - name: {name}\n    match: {{path_prefix: /{name}}}\n    to: {{pools: [dc1]}}\n"
        for name in ("a", "b")
    )
    text = POOLS + "routes:\n" + routes + "  - {name: open, to: {pools: [dc1]}, auth: none}\n"
    assert problems(text) == [
        "auth.default: 'required' applies to route(s) a, b, but auth.issuers is empty: add an "
        "issuer, or set auth.default (or those routes' auth) to none"
    ]


def test_duplicate_issuers(tmp_path: Path) -> None:
    shutil.copy(CONFIG_DIR / "jwks.json", tmp_path / "jwks.json")
    fields = "algorithms: [ES256], jwks_file: jwks.json"
    text = (
        POOLS + "auth:\n" + ISSUER % fields + (ISSUER % fields).replace("  issuers:\n", "") + ROUTES
    )
    assert only_problem(text, tmp_path) == (
        "auth.issuers[1].issuer: 'https://idp' is already auth.issuers[0]: give each issuer "
        f"once (list all its audiences and algorithms there) (line {line_of(text, 'issuer:') + 1})"
    )


def test_listen_equal_to_admin() -> None:
    text = MINIMAL + "listen: 0.0.0.0:9000\nadmin: 127.0.0.1:9000\n"
    assert only_problem(text) == (
        "admin: 127.0.0.1:9000 overlaps listen 0.0.0.0:9000: the admin API must never be "
        f"served on the public listener (line {line_of(text, 'admin:')})"
    )
    parse(MINIMAL + "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n", Path("/"))  # OS-picked ports
    parse(MINIMAL + "listen: 127.0.0.1:9000\nadmin: 127.0.0.2:9000\n", Path("/"))


def test_route_that_can_never_match() -> None:
    text = MINIMAL + "  - name: api\n    match: {path_prefix: /api}\n    to: {pools: [dc1]}\n"
    assert only_problem(text) == (
        "routes[1].match: route 'api' can never match: routes[0] 'all' comes first and matches "
        "every request it would (first match wins: put the more specific route first) "
        f"(line {line_of(text, 'path_prefix: /api')})"
    )


def test_route_host_with_a_port_and_header_given_twice() -> None:
    text = (
        POOLS
        + NO_AUTH
        + (
            "routes:\n  - name: all\n    to: {pools: [dc1]}\n"
            "    match: {host: 'api.example.com:443', headers: {X-T: a, x-t: b}}\n"
        )
    )
    line = line_of(text, "api.example.com")
    assert problems(text) == [
        f"routes[0].match.host: 'api.example.com:443': give the host without a port (the "
        f"request's port is not compared) (line {line})",
        f"routes[0].match.headers.x-t: header 'x-t' is given twice (header names ignore case) "
        f"(line {line})",
    ]


def test_problems_of_meaning_are_listed_beside_a_shape_problem() -> None:
    text = (
        POOLS
        + NO_AUTH
        + "routes:\n"
        + "  - {name: all, match: {path_prefix: /a}, to: {pools: [dc2]}}\n"
        + "  - {name: all, match: {path_prefix: /x}, to: {pools: [dc1]}}\n"
        + "limits: {max_headers: lots}\n"
    )
    assert [problem.split(" (line")[0] for problem in problems(text)] == [
        "routes[0].to.pools[0]: unknown pool 'dc2' (known: dc1)",
        "routes[1].name: 'all' is already the name of routes[0]: route names label metrics "
        "and must be unique",
        "limits.max_headers: 'lots': expected a whole number",
    ]


def test_a_route_that_fails_its_shape_keeps_the_others_indexes() -> None:
    text = (
        POOLS
        + NO_AUTH
        + (
            "routes:\n"
            "  - {name: bad, to: {pools: [dc1]}, retries: many}\n"
            "  - {name: next, to: {pools: [nowhere]}}\n"
        )
    )
    assert [problem.split(" (line")[0] for problem in problems(text)] == [
        "routes[0].retries: 'many': expected a whole number",
        "routes[1].to.pools[0]: unknown pool 'nowhere' (known: dc1)",
    ]


@pytest.mark.parametrize(
    "broken",
    [
        # A pool that fails might carry the selector's labels: no "matches no pool".
        POOLS.replace("kind: on-prem", "kind: moon")
        + NO_AUTH
        + ROUTES.replace("{pools: [dc1]}", "{selector: {env: prod}}"),
        # An issuer that fails still counts: no "auth.issuers is empty".
        POOLS + "auth:\n" + ISSUER % "algorithms: [RS256]" + ROUTES,
        # admission that fails: its classes are unknown, so no priority problem.
        MINIMAL + "    priority: urgent\nadmission: {classes: [urgent], max_queue: -1}\n",
        # pools that is not a mapping: no "unknown pool" for every route.
        "pools: [dc1]\n" + NO_AUTH + ROUTES,
        # listen that fails: no overlap with admin is claimed.
        MINIMAL + "listen: 'x:99999'\nadmin: 0.0.0.0:9901\n",
    ],
)
def test_a_shape_problem_causes_no_false_problem_of_meaning(broken: str) -> None:
    assert len(problems(broken)) == 1, problems(broken)


def test_listen_overlapping_admin_is_found_beside_a_shape_problem() -> None:
    text = MINIMAL + "listen: 0.0.0.0:9901\nlimits: {max_headers: lots}\n"
    assert [problem.split(":")[0] for problem in problems(text)] == ["limits.max_headers", "admin"]


def test_jwks_file_is_checked_beside_a_shape_problem(tmp_path: Path) -> None:
    text = issuer_config(jwks_file="absent.json") + "limits: {max_headers: lots}\n"
    assert [problem.split(":")[0] for problem in problems(text, tmp_path)] == [
        "auth.issuers[0].jwks_file",
        "limits.max_headers",
    ]


def test_check_without_lines() -> None:
    config = parse(MINIMAL, Path("/"))
    assert check(config) == []
    assert Problem(("routes", 2, "to", "pools", 0), "unknown pool 'x'").render(40) == (
        "routes[2].to.pools[0]: unknown pool 'x' (line 40)"
    )
    assert format_path(("pools", "onprem-dc1", "backends", 0, "url")) == (
        "pools.onprem-dc1.backends[0].url"
    )


# --- files the config names ----------------------------------------------------------------


def issuer_config(algorithms: str = "[ES256]", jwks_file: str = "jwks.json") -> str:
    fields = f"algorithms: {algorithms}, jwks_file: {jwks_file}"
    return POOLS + "auth:\n" + ISSUER % fields + ROUTES


def test_jwks_file_missing(tmp_path: Path) -> None:
    text = issuer_config(jwks_file="keys/jwks.json")
    assert only_problem(text, tmp_path) == (
        f"auth.issuers[0].jwks_file: 'keys/jwks.json': no such file "
        f"({tmp_path / 'keys' / 'jwks.json'}) (line {line_of(text, 'issuer:')})"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON: Expecting property name enclosed in double quotes at 1:2"),
        ('{"keys": []}', 'not a JWKS: expected a JSON object with a non-empty "keys" list'),
        ("[1, 2]", 'not a JWKS: expected a JSON object with a non-empty "keys" list'),
        ('{"keys": [1]}', "keys[0]: not a JSON object"),
        ('{"keys": [{"kty": "EC", "crv": "P-256", "x": "abc"}]}', "keys[0]: not a usable key: "),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "keys[0]: holds private or secret key"),
    ],
)
def test_jwks_file_that_is_not_a_jwks(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "jwks.json").write_text(content)
    problem = only_problem(issuer_config(), tmp_path)
    assert problem.startswith(f"auth.issuers[0].jwks_file: 'jwks.json': {message}"), problem


def test_jwks_file_with_a_private_key(tmp_path: Path) -> None:
    private = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True)
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [private]}))
    assert "holds private or secret key material" in only_problem(issuer_config(), tmp_path)


def test_jwks_file_without_a_key_for_the_algorithms(tmp_path: Path) -> None:
    shutil.copy(CONFIG_DIR / "jwks.json", tmp_path / "jwks.json")  # one ES256 key
    problem = only_problem(issuer_config(algorithms="[RS256]"), tmp_path)
    assert problem.startswith("auth.issuers[0].jwks_file: 'jwks.json': ")
    assert "RS256" in problem


def test_jwks_file_with_an_rsa_key_fits_rs256_and_ps256(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (tmp_path / "jwks.json").write_text(
        json.dumps({"keys": [RSAAlgorithm.to_jwk(key, as_dict=True)]})
    )
    config = parse(issuer_config(algorithms="[PS256]"), tmp_path)
    assert config.auth.issuers[0].jwks_file == str(tmp_path / "jwks.json")


def test_jwks_file_relative_path_is_made_absolute(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    shutil.copy(CONFIG_DIR / "jwks.json", tmp_path / "keys" / "jwks.json")
    config = parse(issuer_config(jwks_file="keys/jwks.json"), tmp_path)
    assert config.auth.issuers[0].jwks_file == str(tmp_path / "keys" / "jwks.json")


def test_demo_key_signs_tokens_the_shipped_jwks_verifies() -> None:
    private = serialization.load_pem_private_key(
        (CONFIG_DIR / "demo-key.pem").read_bytes(), password=None
    )
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp256r1"
    token = jwt.encode({"sub": "demo"}, private, algorithm="ES256", headers={"kid": "demo-es256"})
    jwks = json.loads((CONFIG_DIR / "jwks.json").read_text())
    assert [(k["kid"], k["alg"], k["use"]) for k in jwks["keys"]] == [
        ("demo-es256", "ES256", "sig")
    ]
    key = jwt.PyJWKSet.from_dict(jwks)["demo-es256"]
    assert jwt.decode(token, key, algorithms=["ES256"]) == {"sub": "demo"}


# --- what `run` refuses about the environment (check reports it) --------------------------

HMAC_ISSUER = (
    POOLS + "auth:\n" + ISSUER % "algorithms: [HS256, HS512], secret_env: MCP_KEY" + ROUTES
)


@pytest.mark.parametrize(
    ("environ", "warnings", "found"),
    [
        (
            {},
            ["environment variable MCP_KEY is not set here; run refuses to start unless it is"],
            [],
        ),
        ({"MCP_KEY": ""}, [], ["environment variable MCP_KEY is empty"]),
        ({"MCP_KEY": "s" * 40}, [], ["the secret in MCP_KEY is 40 bytes; HS512 needs 64"]),
        ({"MCP_KEY": "s" * 64}, [], []),
    ],
)
def test_secret_env_findings(
    environ: dict[str, str], warnings: list[str], found: list[str]
) -> None:
    findings = secret_env_findings(parse(HMAC_ISSUER, Path("/")), environ)
    path = "auth.issuers[0].secret_env: "
    assert [problem.render() for problem in findings.warnings] == [path + w for w in warnings]
    assert [problem.render() for problem in findings.problems] == [path + p for p in found]


@pytest.mark.parametrize(
    ("prefix", "says"),
    [
        ("/api//x", "write '/api/x'"),
        ("/a/./b", "write '/a/b'"),
        ("/%70ay", "write '/pay'"),
        ("/a/%2f", "can never match a request"),
    ],
)
def test_a_path_prefix_that_no_normalised_path_can_match_is_refused(prefix: str, says: str):
    text = f"""
listen: 127.0.0.1:0
admin: 127.0.0.1:0
pools: {{p: {{backends: [{{url: "http://127.0.0.1:1"}}]}}}}
auth: {{default: none}}
routes: [{{name: r, match: {{path_prefix: "{prefix}"}}, to: {{pools: [p]}}}}]
"""
    found = problems(text)
    assert any("routes[0].match.path_prefix" in p and says in p for p in found), found
