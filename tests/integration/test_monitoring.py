"""deploy/: the Grafana dashboard and the Prometheus alerts parse, and every metric their
expressions name is one a running proxy that served traffic exposes on /metrics (or one
SPEC.md lists that appears only with a feature on, such as TLS). With promtool on PATH the
rules are checked and unit-tested (deploy/prometheus/alerts.test.yaml); .ci/run puts it there.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.harness import Backend, Proxy, simple_config

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "mcp-proxy.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
SPEC = ROOT.parent / "shared" / "SPEC.md"

# Series a scrape of the test proxy cannot show: made by Prometheus itself, or (SPEC.md's
# metrics table) present only with a feature the test does not configure.
MADE_BY_PROMETHEUS = {"up"}
ONLY_WITH_A_FEATURE = {"mcp_proxy_tls_cert_expiry_timestamp_seconds": "TLS"}
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, format strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges, $__rate_interval
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # groupings
    expr = re.sub(r"\$\w+", "", expr)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        name, call = match.group(1), match.group(2)
        if not call and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def dashboard_exprs(document: dict[str, Any]) -> Iterator[str]:
    for panel in document["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for annotation in document["annotations"]["list"]:
        yield annotation["expr"]
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            found = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert found, query
            yield found.group(1)


def rule_exprs(document: dict[str, Any]) -> Iterator[str]:
    for group in document["groups"]:
        for rule in group["rules"]:
            yield rule["expr"]


def exposed_names(text: str) -> set[str]:
    """Sample names and declared families (with their sample suffixes) of a scrape."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
            names |= {family, *(family + end for end in ("_total", "_bucket", "_sum", "_count"))}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return document


def test_the_expression_parser_finds_metrics_not_functions_or_labels():
    expr = (
        "histogram_quantile(0.99, sum by (route, le) (rate(mcp_proxy_request_duration_seconds_"
        'bucket{instance=~"$instance", code=~"5.."}[$__rate_interval]))) > 1 and on (pool) up'
    )
    assert metric_names(expr) == {"mcp_proxy_request_duration_seconds_bucket", "up"}
    assert metric_names("(mcp_proxy_tls_cert_expiry_timestamp_seconds - time()) < 3 * 86400") == {
        "mcp_proxy_tls_cert_expiry_timestamp_seconds"
    }


def test_the_dashboard_has_a_datasource_variable_and_the_asked_for_panels(
    dashboard: dict[str, Any],
):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    used = {name for expr in dashboard_exprs(dashboard) for name in metric_names(expr)}
    for wanted in (
        "mcp_proxy_requests_total", "mcp_proxy_request_duration_seconds_bucket",
        "mcp_proxy_upstream_rtt_seconds", "mcp_proxy_backend_healthy", "mcp_proxy_queue_depth",
        "mcp_proxy_queue_wait_seconds_bucket", "mcp_proxy_rejected_total",
        "mcp_proxy_config_reloads_total",
    ):  # fmt: skip
        assert wanted in used, wanted
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_rules_have_the_asked_for_alerts(rules: dict[str, Any]):
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {
        "McpProxyNoHealthyBackend", "McpProxyHighErrorRatio", "McpProxyReloadRefused",
        "McpProxyQueueTimeoutsRising", "McpProxyAccessLogDropping",
        "McpProxyCertificateExpiresSoon",
    } <= names  # fmt: skip
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


def test_features_only_metrics_are_documented():
    if not SPEC.is_file():
        pytest.skip(f"{SPEC} not beside the repository")
    spec = SPEC.read_text()
    for name in ONLY_WITH_A_FEATURE:
        assert f"`{name}`" in spec, name


async def test_every_metric_the_dashboard_and_rules_use_is_on_a_live_scrape(
    tmp_path: Path, dashboard: dict[str, Any], rules: dict[str, Any]
):
    backend = await Backend.start("dc1")
    proxy = await Proxy.start(tmp_path, simple_config(backend))
    try:
        async with proxy.client() as http:
            for path in ("/", "/a", "/b"):
                async with http.get(path) as response:
                    assert response.status == 200
        status, text = await proxy.admin("/metrics")
        assert status == 200
    finally:
        await proxy.stop()
        await backend.stop()
    exposed = exposed_names(text) | MADE_BY_PROMETHEUS | set(ONLY_WITH_A_FEATURE)
    for source, exprs in (
        ("dashboard", dashboard_exprs(dashboard)),
        ("alerts", rule_exprs(rules)),
    ):
        for expr in exprs:
            missing = metric_names(expr) - exposed
            assert not missing, f"{source}: {sorted(missing)} not on /metrics, in: {expr}"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip(
            "promtool is not on PATH (Debian's `prometheus` package has it; .ci/run extracts"
            " it from that package when apt-get can be used)"
        )
    return found


def test_promtool_checks_the_rules():
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_tests_pass():
    result = subprocess.run(
        [promtool(), "test", "rules", RULES_TEST.name],
        check=False, capture_output=True, text=True, timeout=60, cwd=RULES_TEST.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
