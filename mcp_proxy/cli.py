"""Commands: run, check, demo, token, register. Errors a user can make are one line each, exit 2."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Sequence
from typing import Any

from mcp_proxy.config import ConfigError, LoadedConfig, load
from mcp_proxy.memory import map_large_buffers

DEFAULT_CONFIG = "config/mcp-proxy.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: str = args.command
    if command == "check":
        return check(args.config)
    if command == "run":
        return run(args.config, args.log_level)
    if command == "demo":
        from mcp_proxy.demo_cli import run_demo

        return run_demo(args)
    if command == "register":
        from mcp_proxy.register import run_register_command

        return run_register_command(args)
    from mcp_proxy.auth.mint import run_token_command

    return run_token_command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-proxy", description=__doc__)
    parser.add_argument("--version", action=_Version, help="print the version and build, exit")
    commands = parser.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser("run", help="run the proxy")
    run_cmd.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (YAML)")
    run_cmd.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    check_cmd = commands.add_parser("check", help="validate a config and print every problem")
    check_cmd.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (YAML)")
    demo_cmd = commands.add_parser("demo", help="start demo backends and the proxy, send traffic")
    demo_cmd.add_argument("--port", type=int, default=8080, help="the proxy's port (0: any free)")
    demo_cmd.add_argument("--requests", type=int, default=300, help="requests in each phase")
    demo_cmd.add_argument("--no-serve", action="store_true", help="exit after the traffic")
    demo_cmd.add_argument(
        "--tls", action="store_true", help="serve HTTPS with a throwaway CA (curl --cacert)"
    )
    token_cmd = commands.add_parser("token", help="mint a signed JWT for trying a config")
    from mcp_proxy.auth.mint import add_token_arguments

    add_token_arguments(token_cmd)
    from mcp_proxy.register import add_register_arguments

    add_register_arguments(commands.add_parser("register", help="keep a backend registered"))
    return parser


class _Version(argparse.Action):
    """--version, with the build of the request path (looked up only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from mcp_proxy import __version__
        from mcp_proxy.build import describe

        print(f"mcp-proxy {__version__}, {describe()}")
        parser.exit()


def _load_or_report(path: str) -> LoadedConfig | None:
    """The config at `path`, or None after printing every problem, one line each."""
    try:
        return load(path)
    except ConfigError as error:
        for problem in error.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return None


def check(path: str) -> int:
    loaded = _load_or_report(path)
    if loaded is None:
        return 2
    if not _environment_ok(path, loaded):
        return 2
    _certificate_warnings(path, loaded)
    config = loaded.config
    backends = sum(len(pool.backends) for pool in config.pools.values())
    print(
        f"{path}: ok ({len(config.routes)} routes, {len(config.pools)} pools, "
        f"{backends} backends, {loaded.version[:19]})"
    )
    return 0


def _environment_ok(path: str, loaded: LoadedConfig) -> bool:
    """Print what `run` would refuse about the environment; False if it would refuse here."""
    from mcp_proxy.config.environ import secret_env_findings
    from mcp_proxy.config.load import render_for
    from mcp_proxy.config.tlsfiles import expiry_warnings

    findings = secret_env_findings(loaded.config)
    findings.warnings.extend(expiry_warnings(loaded.config, loaded.source))  # pool TLS certs
    for warning in render_for(findings.warnings, loaded.text):
        print(f"{path}: warning: {warning}", file=sys.stderr)
    for problem in render_for(findings.problems, loaded.text):
        print(f"{path}: {problem}", file=sys.stderr)
    return not findings.problems


def _certificate_warnings(path: str, loaded: LoadedConfig) -> None:
    """A certificate near its end is a warning: `check` still passes (SPEC)."""
    from mcp_proxy.config.load import render_for
    from mcp_proxy.tls.certs import expiry_warnings

    for warning in render_for(list(expiry_warnings(loaded.config.tls)), loaded.text):
        print(f"{path}: warning: {warning}", file=sys.stderr)


def run(path: str, log_level: str = "info") -> int:
    loaded = _load_or_report(path)
    if loaded is None:
        return 2
    setup_logging(log_level)
    map_large_buffers()  # memory.py: RSS comes back after a burst of slow readers
    return serve(loaded, log_level)


def setup_logging(level: str) -> None:
    """The operations log (stderr). The access log is not `logging`'s: accesslog.py."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def serve(loaded: LoadedConfig, log_level: str = "info") -> int:
    import uvloop

    from mcp_proxy.server import ProxyServer
    from mcp_proxy.workers.count import available_cpus

    workers = loaded.config.workers
    count = available_cpus() if workers == "auto" else workers
    # With workers, the zygote that forks them is forked now: everything imported, no event
    # loop or thread running yet (workers/zygote.py).
    from mcp_proxy.workers.zygote import Zygote

    zygote = Zygote.fork() if count > 1 else None

    async def main() -> int:
        server = ProxyServer(loaded)
        if zygote is not None:  # a supervisor and its workers (workers/); else one process
            from mcp_proxy.workers.group import GroupServer

            server = GroupServer(loaded, count, log_level, zygote)
        try:
            await server.start()
        except Exception as exc:  # a port in use, a key source that cannot be used
            print(f"mcp-proxy: cannot start: {exc or type(exc).__name__}", file=sys.stderr)
            await server.stop()
            return 2
        # Everything built so far lives as long as the process: move it out of the
        # collector's sight, so a full collection takes ~0 ms instead of ~10 ms (a pause
        # during a 1 ms request would make that backend look slow for seconds).
        gc.collect()
        gc.freeze()
        _log_build()
        server.install_signal_handlers()
        assert server.reloader is not None
        server.reloader.watch()
        await server.serve_until_stopped()
        return 0

    return uvloop.run(main())


def _log_build() -> None:
    from mcp_proxy.build import describe, stale

    log = logging.getLogger("mcp_proxy")
    log.info("%s", describe())
    for module in stale():
        log.warning("%s changed after it was compiled: the old code runs (rebuild)", module)
