"""`mcp-proxy run` with `workers: N` as a real process group, for the worker tests.

group = await Group.start(tmp_path, config_dict, workers=2)   # ready: every worker up
await group.admin("/admin/workers")                            # (status, JSON)
await group.stop()                                             # SIGTERM; the exit code

With `configmap=True` the config lives in the layout the kubelet gives a ConfigMap volume, and
`write_config` updates it as the kubelet does (`ConfigMapDir`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.integration.harness import eventually, free_port

REPO = Path(__file__).resolve().parents[2]


class Group:
    def __init__(
        self, process: asyncio.subprocess.Process, path: Path, port: int, admin: int, count: int
    ) -> None:
        self.configmap: ConfigMapDir | None = None
        self.count = count
        self.process = process
        self.path = path
        self.port = port
        self.admin_port = admin
        self.http = aiohttp.ClientSession()

    @classmethod
    async def start(
        cls, tmp_path: Path, config: dict[str, Any], workers: int | str = 2, configmap: bool = False
    ) -> Group:
        port, admin = free_port(), free_port()
        config = {**config, "listen": f"127.0.0.1:{port}", "admin": f"127.0.0.1:{admin}",
                  "workers": workers}  # fmt: skip
        mount = ConfigMapDir(tmp_path / "etc") if configmap else None
        path = tmp_path / "proxy.yaml" if mount is None else mount.root / "proxy.yaml"
        if mount is None:
            path.write_text(yaml.safe_dump(config))
        else:
            mount.write("proxy.yaml", yaml.safe_dump(config))
        with (tmp_path / "stderr").open("wb") as stderr:  # the child has its own copy
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mcp_proxy", "run", "-c", str(path), cwd=REPO,
                stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        group = cls(process, path, port, admin, workers if isinstance(workers, int) else 1)
        group.configmap = mount
        try:
            await eventually(group._ready, timeout=30)
        except BaseException:
            await group.kill()
            raise
        return group

    async def _ready(self) -> bool:
        if self.process.returncode is not None:
            raise AssertionError(f"mcp-proxy exited with {self.process.returncode}")
        try:
            status, body = await self.admin("/admin/workers")
        except aiohttp.ClientError:
            return False
        return status == 200 and len(body["workers"]) >= self.count

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def admin(self, path: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        async with self.http.request(method, url, json=body) as r:
            body = await r.read()
            if r.content_type == "application/json":
                return r.status, await r.json()
            return r.status, body.decode()

    async def workers(self) -> list[dict[str, Any]]:
        _, body = await self.admin("/admin/workers")
        return list(body["workers"])

    async def metric(self, name: str) -> float:
        """The sum of a family's samples named `name` in the group's exposition."""
        _, text = await self.admin("/metrics")
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((name + "{", name + " "))
        )

    def write_config(self, config: dict[str, Any]) -> None:
        current = yaml.safe_load(self.path.read_text())
        keep = {key: current[key] for key in ("listen", "admin", "workers")}
        text = yaml.safe_dump({**config, **keep})
        if self.configmap is None:
            self.path.write_text(text)
        else:
            self.configmap.write(self.path.name, text)

    def stderr(self) -> str:
        return (self.path.parent / "stderr").read_text()

    async def stop(self, timeout: float = 20.0) -> int:
        await self.http.close()
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def kill(self) -> None:
        await self.http.close()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


class ConfigMapDir:
    """A ConfigMap volume as the kubelet lays it out: the files are symlinks through `..data`,
    itself a symlink to a timestamped folder; an update writes a new folder, points a temporary
    link at it and renames that over `..data` (one atomic step), then removes the old one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.updates = 0
        root.mkdir(parents=True)

    def write(self, name: str, text: str) -> None:
        self.updates += 1
        old = sorted(self.root.glob("..2*"))
        stamped = self.root / f"..2026_12_02_04_00_{self.updates:02d}.{os.getpid()}"
        stamped.mkdir()
        (stamped / name).write_text(text)
        link = self.root / "..data_tmp"
        link.symlink_to(stamped.name)
        os.replace(link, self.root / "..data")
        if not (self.root / name).is_symlink():
            (self.root / name).symlink_to(f"..data/{name}")
        for folder in old:
            shutil.rmtree(folder)
