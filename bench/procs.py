"""The processes of a run: start pinned, wait until ready (bounded), read RSS, stop by pid.

Every process the harness starts is a `Service` in a `Services` stack; leaving the stack
stops them all in reverse order (SIGTERM, then SIGKILL after a grace period). Nothing is
ever stopped by name: only the pids this harness started.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from bench.cpus import Cpus, pinned_argv

STOP_GRACE_S = 5.0


class StartError(RuntimeError):
    """A service did not come up; the message says which, why, and what it printed."""


class Service:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        cpus: Cpus | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = pinned_argv(argv, cpus)
        self.log_path = log_path
        self._env = {**os.environ, **env} if env else None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self._process.pid

    def start(self) -> Service:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,  # a Ctrl-C in the harness's terminal is ours to relay
            )
        return self

    def exit_code(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_GRACE_S)

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def tree_pids(self) -> list[int]:
        """This process and all its descendants (nginx's worker, for instance)."""
        return process_tree(self.pid)

    def rss_bytes(self) -> int:
        return sum(rss_of(pid) for pid in self.tree_pids())

    def fail(self, why: str) -> StartError:
        tail = self.log_tail()
        detail = (
            f"\n    last lines of {self.log_path}:\n    " + tail.replace("\n", "\n    ")
            if tail
            else ""
        )
        return StartError(f"{self.name} {why}{detail}")

    def __repr__(self) -> str:
        state = (
            "not started" if self._process is None else f"pid={self.pid} exit={self.exit_code()}"
        )
        return f"Service({self.name!r}, {state})"


class Services:
    """A stack of running services; leaving it stops them, newest first."""

    def __init__(self) -> None:
        self._running: list[Service] = []

    def start(self, service: Service) -> Service:
        self._running.append(service.start())
        return service

    def stop(self, service: Service) -> None:
        service.stop()
        if service in self._running:
            self._running.remove(service)

    def stop_all(self) -> None:
        while self._running:
            self._running.pop().stop()

    def __enter__(self) -> Services:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()

    def __repr__(self) -> str:
        return f"Services(running={[service.name for service in self._running]})"


def wait_ready(service: Service, probe: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `probe` every 50 ms until it is true; fail at once if the process exits."""
    deadline = time.monotonic() + timeout
    while True:
        code = service.exit_code()
        if code is not None:
            raise service.fail(f"failed to start (exit code {code})")
        if probe():
            return
        if time.monotonic() > deadline:
            raise service.fail(f"not ready after {timeout:.0f} s ({what})")
        time.sleep(0.05)


def http_get(
    host: str, port: int, path: str, headers: Mapping[str, str] | None = None, timeout: float = 2.0
) -> tuple[int, bytes]:
    """One blocking GET on a new connection: (status, body); raises OSError when refused."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers=dict(headers or {}))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def mcp_proxy_build() -> str:
    """`mcp-proxy --version` as run from here: the version and whether its request path is
    compiled (setup.py), which moves every figure; empty when it cannot be asked."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mcp_proxy", "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def answers(host: str, port: int, path: str, status: int = 200) -> Callable[[], bool]:
    """A probe: does GET `path` answer `status`?"""

    def probe() -> bool:
        try:
            return http_get(host, port, path)[0] == status
        except (OSError, http.client.HTTPException):
            return False

    return probe


def process_tree(root: int) -> list[int]:
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children_of(pid))
    return found


def children_of(pid: int) -> list[int]:
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            children.extend(int(child) for child in text.split())
    except OSError:
        pass
    return children


def rss_of(pid: int) -> int:
    """Resident set size of one process in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
