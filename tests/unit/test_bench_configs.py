"""bench.configs: the configs the harness generates for nginx, HAProxy, mcp-proxy and wrk."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.configs import (
    JwtIssuer,
    backend_files,
    haproxy_conf,
    mcp_proxy_conf,
    nginx_backend_conf,
    nginx_proxy_conf,
    route,
    wrk_script,
)
from mcp_proxy.config.model import Config

BACKENDS = [("127.0.0.1", 21001), ("127.0.0.1", 21002)]


def test_nginx_proxy_keeps_upstream_connections_alive_and_does_the_same_header_work(
    tmp_path: Path,
) -> None:
    text = nginx_proxy_conf(tmp_path, ("127.0.0.1", 21081), BACKENDS)
    assert "worker_processes 1;" in text
    assert "daemon off;" in text
    assert "access_log off;" in text
    assert "server 127.0.0.1:21001;" in text and "server 127.0.0.1:21002;" in text
    assert "keepalive 256;" in text
    assert "proxy_http_version 1.1;" in text
    assert 'proxy_set_header Connection "";' in text  # else nginx closes upstream connections
    assert "keepalive_requests 1000000;" in text  # nginx's default closes after 1000
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" in text
    assert "listen 127.0.0.1:21081" in text
    assert f"{tmp_path}/proxy_temp" in text
    assert "least_conn;" not in text
    assert "least_conn;" in nginx_proxy_conf(tmp_path, ("127.0.0.1", 1), BACKENDS, "least_request")
    assert text.count("{") == text.count("}")


def test_nginx_as_backend_serves_sized_files(tmp_path: Path) -> None:
    www = tmp_path / "www"
    backend_files(www, [16384])
    assert (www / "size" / "16384").stat().st_size == 16384
    assert (www / "size" / "100").stat().st_size == 100
    text = nginx_backend_conf(tmp_path, ("127.0.0.1", 21001), www)
    assert "location /size/" in text and "location = /healthz" in text


def test_haproxy_one_thread_keep_alive_and_reuse() -> None:
    text = haproxy_conf(("127.0.0.1", 21082), BACKENDS, "least_request")
    assert "nbthread 1" in text
    assert "http-reuse always" in text
    assert "option http-keep-alive" in text
    assert "option forwardfor" in text
    assert "bind 127.0.0.1:21082" in text
    assert "balance leastconn" in text
    assert "server b1 127.0.0.1:21001" in text and "server b2 127.0.0.1:21002" in text
    assert "balance roundrobin" in haproxy_conf(("127.0.0.1", 1), BACKENDS)
    limited = haproxy_conf(("127.0.0.1", 1), BACKENDS, file_limit=20000)
    assert "maxconn 9900" in limited  # 2 descriptors per connection within 20000


def test_mcp_proxy_config_is_valid_for_the_proxy() -> None:
    issuer = JwtIssuer()
    raw = mcp_proxy_conf(
        ("127.0.0.1", 21080),
        ("127.0.0.1", 21090),
        {"bench": BACKENDS},
        [route("open", "/open/", ["bench"], auth="none"), route("all", "/", ["bench"])],
        policy="round_robin",
        auth=issuer,
        admission={"max_inflight": 16, "max_queue": 64, "queue_timeout": "250ms"},
    )
    config = Config.model_validate(yaml.safe_load(yaml.safe_dump(raw)))
    assert config.listen == ("127.0.0.1", 21080)
    assert config.balancer.policy == "round_robin"
    assert [b.url for b in config.pools["bench"].backends] == [
        "http://127.0.0.1:21001",
        "http://127.0.0.1:21002",
    ]
    assert config.auth.issuers[0].secret_env == issuer.secret_env
    assert config.admission.max_inflight == 16
    assert config.access_log.enabled is False
    assert config.limits.idle_timeout >= 300  # idle connections outlive the memory reading


def test_mcp_proxy_config_without_auth_lets_everything_through() -> None:
    raw = mcp_proxy_conf(
        ("127.0.0.1", 1), ("127.0.0.1", 2), {"p": BACKENDS[:1]}, [route("all", "/", ["p"])]
    )
    assert Config.model_validate(raw).auth.default == "none"


def test_wrk_script_reports_json_and_cycles_tokens() -> None:
    plain = wrk_script({"Authorization": "Bearer abc"})
    assert 'wrk.headers["Authorization"] = "Bearer abc"' in plain
    assert "done = function(summary, latency, requests)" in plain
    assert "request = function" not in plain  # no Lua per request when nothing changes
    cycling = wrk_script({}, ["t1", "t2"])
    assert 'local tokens = {\n"t1",\n"t2"\n}' in cycling
    assert "prepared[i] = wrk.format(nil, nil, headers)" in cycling  # built once, in init
