"""One scenario's bench: backends, the proxies under test, and how to reach them.

A `Lab` starts each party pinned to its CPUs (bench.cpus), with configs generated into a
temporary folder, and waits (bounded) until each answers. A proxy that does not come up
raises `TargetFailed` with the reason and the tail of its log; scenarios report that leg
as failed and go on with the others.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import configs
from bench.configs import Addr
from bench.cpus import CpuPlan, Cpus
from bench.procs import (
    Service,
    Services,
    StartError,
    answers,
    http_get,
    process_tree,
    wait_ready,
)

HOST = "127.0.0.1"
READY_TIMEOUT_S = 20.0
SMOKE_PATH = "/size/100"

TARGETS = ("direct", "mcp-proxy", "nginx", "haproxy")
TARGET_TOOLS = {"nginx": "nginx", "haproxy": "haproxy"}


class TargetFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Ports:
    """Every port a run listens on, from one base (below Linux's ephemeral range, so the
    10,000 client connections of the memory scenario cannot collide with them)."""

    base: int = 21000

    def backend(self, index: int) -> int:
        return self.base + 1 + index

    @property
    def mcp(self) -> int:
        return self.base + 80

    @property
    def nginx(self) -> int:
        return self.base + 81

    @property
    def haproxy(self) -> int:
        return self.base + 82

    @property
    def mcp_admin(self) -> int:
        return self.base + 90

    @property
    def mcp_second(self) -> tuple[int, int]:
        """A second mcp-proxy's listener and admin (compare-access-log runs two builds' configs)."""
        return self.base + 83, self.base + 91

    def listened(self, backends: int) -> list[int]:
        fixed = [self.mcp, self.nginx, self.haproxy, self.mcp_admin]
        return [self.backend(index) for index in range(backends)] + fixed


@dataclass(frozen=True)
class Endpoint:
    """Where a target under test answers; `service` is its process (None for direct)."""

    name: str
    port: int
    service: Service | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"


@dataclass
class Backends:
    addrs: list[Addr]
    services: list[Service]

    def requests_served(self) -> list[int]:
        """Each backend's count of answered requests (from its /stats)."""
        counts = []
        for host, port in self.addrs:
            status, body = http_get(host, port, "/stats")
            counts.append(int(json.loads(body)["requests"]) if status == 200 else -1)
        return counts


class Lab:
    def __init__(
        self,
        run_dir: Path,
        work_dir: Path,
        cpus: CpuPlan,
        ports: Ports,
        services: Services,
        backend_kind: str = "python",
    ) -> None:
        self.log_dir = run_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir = work_dir
        # nginx's worker runs as `nobody` when started by root: it must reach its temp folders.
        work_dir.chmod(0o755)
        self.cpus = cpus
        self.ports = ports
        self.services = services
        self.backend_kind = backend_kind
        self._serial = 0

    def _name(self, base: str) -> str:
        """`03-nginx`: names this run's files (config, log) in the order things started."""
        self._serial += 1
        return f"{self._serial:02d}-{base}"

    def _service(
        self,
        file_name: str,
        argv: Sequence[str],
        cpus: Cpus | None,
        env: Mapping[str, str] | None = None,
    ) -> Service:
        label = file_name.split("-", 1)[1]  # what messages call it: "mcp-proxy"
        return Service(label, argv, self.log_dir / f"{file_name}.log", cpus, env)

    def _config_path(self, name: str, suffix: str) -> Path:
        return self.work_dir / f"{name}.{suffix}"

    # backends
    def start_backends(self, delays_ms: Sequence[float] = (0.0,)) -> Backends:
        """One backend process per delay (ms); nginx only when asked and no delay is needed."""
        if self.backend_kind == "nginx" and all(delay == 0 for delay in delays_ms):
            return self._start_nginx_backends(len(delays_ms))
        addrs, services = [], []
        for index, delay in enumerate(delays_ms):
            port = self.ports.backend(index)
            argv = [sys.executable, "-m", "bench.backend", "--port", str(port)]
            argv += ["--delay-ms", f"{delay:g}"] if delay else []
            service = self._service(self._name(f"backend-{port}"), argv, self.cpus.backend)
            self.services.start(service)
            wait_ready(service, answers(HOST, port, "/healthz"), READY_TIMEOUT_S, "GET /healthz")
            addrs.append((HOST, port))
            services.append(service)
        return Backends(addrs, services)

    def _start_nginx_backends(self, count: int) -> Backends:
        www = self.work_dir / "www"
        configs.backend_files(www, [100, 16384])
        addrs, services = [], []
        for index in range(count):
            port = self.ports.backend(index)
            name = self._name(f"nginx-backend-{port}")
            workdir = self.work_dir / name
            workdir.mkdir()
            conf = self._config_path(name, "conf")
            conf.write_text(configs.nginx_backend_conf(workdir, (HOST, port), www))
            service = self._start_nginx(name, conf, workdir, self.cpus.backend)
            wait_ready(service, answers(HOST, port, "/healthz"), READY_TIMEOUT_S, "GET /healthz")
            addrs.append((HOST, port))
            services.append(service)
        return Backends(addrs, services)

    # targets
    def start_target(
        self,
        target: str,
        backends: Sequence[Addr],
        *,
        balance: str = "round_robin",
        mcp_config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Endpoint:
        """Start one target in front of `backends` and check that it forwards a request."""
        headers = dict(headers or {})
        try:
            if target == "direct":
                return Endpoint("direct", backends[0][1], None, headers)
            if target == "mcp-proxy":
                config = mcp_config or self.default_mcp_config(backends)
                service = self.start_mcp_proxy(config, env)
                port = self.ports.mcp
            elif target == "nginx":
                service, port = self.start_nginx_proxy(backends, balance), self.ports.nginx
            elif target == "haproxy":
                service, port = self.start_haproxy(backends, balance), self.ports.haproxy
            else:
                raise TargetFailed(f"unknown target {target!r} (known: {', '.join(TARGETS)})")
            endpoint = Endpoint(target, port, service, headers)
            self.smoke(endpoint)
            return endpoint
        except StartError as exc:
            raise TargetFailed(str(exc)) from None

    def default_mcp_config(self, backends: Sequence[Addr]) -> dict[str, Any]:
        return configs.mcp_proxy_conf(
            (HOST, self.ports.mcp),
            (HOST, self.ports.mcp_admin),
            {"bench": backends},
            [configs.route("all", "/", ["bench"])],
        )

    def start_mcp_proxy(
        self, config: Mapping[str, Any], env: Mapping[str, str] | None = None, admin: int = 0
    ) -> Service:
        name = self._name("mcp-proxy")
        path = self._config_path(name, "yaml")
        path.write_text(configs.dump_yaml(config))
        argv = [sys.executable, "-m", "mcp_proxy", "run", "-c", str(path)]
        service = self._service(name, argv, self.cpus.proxy, env)
        self.services.start(service)
        admin = admin or self.ports.mcp_admin
        wait_ready(
            service, answers(HOST, admin, "/readyz"), READY_TIMEOUT_S, f"GET :{admin}/readyz"
        )
        return service

    def start_nginx_proxy(
        self, backends: Sequence[Addr], balance: str, access_log: bool = False, workers: int = 1
    ) -> Service:
        name = self._name("nginx")
        workdir = self.work_dir / name
        workdir.mkdir()
        conf = self._config_path(name, "conf")
        log = workdir / "access.log" if access_log else None
        conf.write_text(
            configs.nginx_proxy_conf(
                workdir, (HOST, self.ports.nginx), backends, balance, log, workers
            )
        )
        return self._start_nginx(name, conf, workdir, self.cpus.proxy)

    def _start_nginx(self, name: str, conf: Path, workdir: Path, cpus: Cpus | None) -> Service:
        argv = ["nginx", "-p", str(workdir), "-c", str(conf), "-e", "stderr"]
        return self.services.start(self._service(name, argv, cpus))

    def start_haproxy(
        self, backends: Sequence[Addr], balance: str, access_log: bool = False
    ) -> Service:
        name = self._name("haproxy")
        conf = self._config_path(name, "cfg")
        file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        listen = (HOST, self.ports.haproxy)
        conf.write_text(configs.haproxy_conf(listen, backends, balance, file_limit, access_log))
        argv = ["haproxy", "-f", str(conf), "-db"]
        return self.services.start(self._service(name, argv, self.cpus.proxy))

    def smoke(self, endpoint: Endpoint) -> None:
        """Wait until the target forwards GET /size/100 and answers 100 bytes (bounded)."""
        assert endpoint.service is not None
        last: list[str] = []

        def forwards() -> bool:
            try:
                status, body = http_get(HOST, endpoint.port, SMOKE_PATH, endpoint.headers)
            except OSError as exc:
                last[:] = [f"connection failed: {exc}"]
                return False
            last[:] = [f"answered {status} with {len(body)} bytes"]
            return status == 200 and len(body) == 100

        try:
            wait_ready(endpoint.service, forwards, READY_TIMEOUT_S, f"GET {SMOKE_PATH}")
        except StartError as exc:
            raise TargetFailed(f"{exc}\n    last try: {''.join(last)}") from None

    def stop(self, endpoint: Endpoint) -> None:
        if endpoint.service is not None:
            self.services.stop(endpoint.service)

    def our_pids(self) -> list[int]:
        """Every process this harness started, for the CPU-time bookkeeping of OtherLoad."""
        return process_tree(os.getpid())[1:]
