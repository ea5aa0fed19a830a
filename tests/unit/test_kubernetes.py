"""deploy/kubernetes: renders offline with kustomize, validates against the API schemas, and
holds what the issue asks of each object (probes, hardening, drain order, scaling, policy)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcp_proxy.config.load import parse

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "kubernetes"


@pytest.fixture(scope="module")
def rendered() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: the kustomize build is not checked here")
    return subprocess.run(
        [kubectl, "kustomize", str(BASE)], check=True, capture_output=True, text=True, timeout=30
    ).stdout


@pytest.fixture(scope="module")
def objects(rendered: str) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(rendered) if doc}


def test_the_base_renders_the_six_objects(objects: dict[str, dict[str, Any]]) -> None:
    assert set(objects) == {"ConfigMap", "Service", "Deployment", "PodDisruptionBudget",
                            "HorizontalPodAutoscaler", "NetworkPolicy"}  # fmt: skip


def test_the_rendered_objects_pass_strict_schema_validation(rendered: str, tmp_path: Path) -> None:
    validate = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    if validate is None:
        pytest.skip("kubernetes-validate is not installed (pip install -e '.[test]')")
    path = tmp_path / "rendered.yaml"
    path.write_text(rendered)
    result = subprocess.run(
        [validate, "--strict", "--quiet", str(path)],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_configmap_holds_a_config_that_passes_check(objects: dict[str, dict[str, Any]]) -> None:
    text = objects["ConfigMap"]["data"]["mcp-proxy.yaml"]
    config = parse(text, BASE)
    assert config.workers == "auto" and config.listen == ("0.0.0.0", 8080)
    assert config.admin_auth is not None  # an admin beyond loopback: writes need a token
    assert objects["ConfigMap"]["metadata"]["name"] == "mcp-proxy-config"  # no hash: reloads


def test_the_admin_secret_and_the_tls_secret_reach_the_container(
    objects: dict[str, dict[str, Any]],
) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in container["env"]}
    assert env["MCP_PROXY_ADMIN_SECRET"] == {"name": "mcp-proxy-admin", "key": "secret"}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["tls"]["secret"] == {"secretName": "mcp-proxy-tls", "optional": True}
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    assert mounts["tls"]["mountPath"] == "/etc/mcp-proxy-tls" and mounts["tls"]["readOnly"]


def test_the_deployment_probes_hardens_limits_and_drains_after_prestop(
    objects: dict[str, dict[str, Any]],
) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "startupProbe" in container
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["limits"]["cpu"]  # what workers: auto is sized from
    assert "preStop" in container["lifecycle"]
    # The folder is mounted, not a subPath (which would never see a ConfigMap update).
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == "/etc/mcp-proxy" and "subPath" not in mount
    assert container["args"] == ["run", "-c", "/etc/mcp-proxy/mcp-proxy.yaml"]
    drain = parse(objects["ConfigMap"]["data"]["mcp-proxy.yaml"], BASE).drain_timeout
    assert pod["terminationGracePeriodSeconds"] >= 5 + drain + 5


def test_selectors_scaling_and_the_admin_port_policy(objects: dict[str, dict[str, Any]]) -> None:
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("PodDisruptionBudget",):
        assert objects[kind]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects["Service"]["spec"]["selector"].items() <= labels.items()
    policy = objects["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    admin_rules = [
        r for r in policy["ingress"] if {"port": "admin", "protocol": "TCP"} in r["ports"]
    ]
    (admin,) = admin_rules
    assert admin["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["averageUtilization"] == 75
