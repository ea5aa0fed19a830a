"""`priority`: mcp-proxy overloaded with four priority classes; who gets through, how fast."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench import configs
from bench.lab import HOST, TargetFailed
from bench.measure import fmt_latency, say, summarize_open
from bench.report import Bars, ScenarioResult, Table
from bench.scenarios.common import Context, open_loop
from bench.stats import spread

CLASSES = ("critical", "high", "normal", "low")
# Issue 5's mix: 10% critical, the rest weighted towards the lower classes.
SHARE = {"critical": 0.1, "high": 0.2, "normal": 0.3, "low": 0.4}
MAX_INFLIGHT = 16
MAX_QUEUE = 64
QUEUE_TIMEOUT = "250ms"


def priority_config(ctx: Context, backend: tuple[str, int]) -> dict[str, Any]:
    """One route per class (`/critical/` ... `/low/`), each naming its priority."""
    routes = [
        configs.route(name, f"/{name}/", ["slow"], priority=name, timeout="5s", retries=0)
        for name in CLASSES
    ]
    return configs.mcp_proxy_conf(
        (HOST, ctx.lab.ports.mcp),
        (HOST, ctx.lab.ports.mcp_admin),
        {"slow": [backend]},
        [*routes, configs.route("default", "/", ["slow"])],
        admission={
            "classes": list(CLASSES),
            "max_inflight": MAX_INFLIGHT,
            "max_queue": MAX_QUEUE,
            "queue_timeout": QUEUE_TIMEOUT,
            "default": "normal",
        },
    )


def run_priority(ctx: Context) -> ScenarioResult:
    delay = ctx.args.priority_delay
    capacity = MAX_INFLIGHT / (delay / 1000.0)
    result = ScenarioResult(
        "priority",
        f"mcp-proxy in front of one backend answering after {delay:g} ms, admission"
        f" max_inflight {MAX_INFLIGHT} (so it serves at most {capacity:,.0f} requests/s),"
        f" max_queue {MAX_QUEUE}, queue_timeout {QUEUE_TIMEOUT}. Open loop mixing the four classes"
        " (one route each) as " + ", ".join(f"{SHARE[n]:.0%} {n}" for n in CLASSES) + " at"
        " fractions of that capacity: under overload the higher classes should still be served"
        " and fast while the lower ones get 503.",
    )
    if "mcp-proxy" not in ctx.targets:
        result.notes.append("skipped: mcp-proxy is not among --targets")
        return result
    backends = ctx.lab.start_backends([delay])
    try:
        endpoint = ctx.lab.start_target(
            "mcp-proxy", backends.addrs, mcp_config=priority_config(ctx, backends.addrs[0])
        )
    except TargetFailed as exc:
        result.failures["mcp-proxy"] = str(exc)
        return result
    mix = [(f"/{name}/x", SHARE[name]) for name in CLASSES]
    runs: dict[float, list[dict[str, Any]]] = {fraction: [] for fraction in ctx.args.overload}
    for repeat in range(ctx.options.repeats):
        for fraction in ctx.args.overload:
            rate = fraction * capacity
            run = open_loop(ctx, endpoint, rate, ctx.args.priority_connections, mix)
            runs[fraction].append(run)
            say(
                f"  [{repeat + 1}/{ctx.options.repeats}] {fraction:.0%} of capacity:"
                f" {_ok_line(run)}"
            )
    rows = {fraction: per_class(found) for fraction, found in runs.items()}
    result.tables.append(_table(rows, capacity))
    result.charts.append(_chart(rows))
    result.notes += _checks(rows)
    result.data = {
        "capacity_rps": capacity,
        "delay_ms": delay,
        "loads": [
            {"fraction": fraction, "summary": summarize_open(found), "classes": rows[fraction]}
            for fraction, found in runs.items()
        ],
    }
    return result


def per_class(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per class, over repeats: share answered 2xx, share answered 503, latency of the 2xx."""
    found: dict[str, dict[str, Any]] = {}
    for name in CLASSES:
        kinds = [run["kinds"][f"/{name}/x"] for run in runs]
        ok, shed = [], []
        for kind in kinds:
            total = sum(kind["statuses"].values()) + kind["errors"] + kind["unfinished"] or 1
            ok.append(sum(n for s, n in kind["statuses"].items() if s.startswith("2")) / total)
            shed.append(kind["statuses"].get("503", 0) / total)
        latencies = [kind["latency_us"] for kind in kinds if kind["latency_us"]]
        found[name] = {
            "ok": spread(ok).as_dict(),
            "shed": spread(shed).as_dict(),
            "latency_us": {
                key: spread([lat[key] for lat in latencies]).as_dict()
                for key in ("p50", "p99")
                if latencies
            },
        }
    return found


def _ok_line(run: dict[str, Any]) -> str:
    parts = []
    for name in CLASSES:
        kind = run["kinds"][f"/{name}/x"]
        total = sum(kind["statuses"].values()) or 1
        ok = sum(n for s, n in kind["statuses"].items() if s.startswith("2"))
        parts.append(f"{name} {ok / total:.0%}")
    return "served " + ", ".join(parts)


def _table(rows: dict[float, dict[str, dict[str, Any]]], capacity: float) -> Table:
    table_rows = []
    for fraction, classes in rows.items():
        for name, found in classes.items():
            latency = found["latency_us"]
            table_rows.append(
                [
                    f"{fraction:.0%} ({fraction * capacity:,.0f}/s)",
                    name,
                    f"{found['ok']['median']:.1%}",
                    f"{found['shed']['median']:.1%}",
                    fmt_latency(latency.get("p50", {})),
                    fmt_latency(latency.get("p99", {})),
                ]
            )
    columns = [
        "offered (of capacity)",
        "class",
        "served 2xx",
        "shed 503",
        "p50 of 2xx",
        "p99 of 2xx",
    ]
    return Table("priority classes under load (open loop)", columns, table_rows)


def _chart(rows: dict[float, dict[str, dict[str, Any]]]) -> Bars:
    chart = Bars(
        "priority-served.png",
        "Share served per class vs offered load",
        "share answered 2xx",
        [f"{f:.0%} of capacity" for f in rows],
        {},
    )
    for name in CLASSES:
        chart.series[name] = [classes[name]["ok"]["median"] for classes in rows.values()]
    return chart


def _checks(rows: dict[float, dict[str, dict[str, Any]]]) -> list[str]:
    overloaded = [fraction for fraction in rows if fraction > 1.0]
    if not overloaded:
        return []
    top = rows[max(overloaded)]
    shed_any = any(found["shed"]["median"] > 0 for found in top.values())
    if not shed_any:
        return [
            "at the highest overload nothing was shed with 503: the figures do not show"
            " priority admission at work (needs: admission with priority classes, SPEC.md"
            " `admission`)"
        ]
    critical, low = top["critical"]["ok"]["median"], top["low"]["ok"]["median"]
    return [
        f"at {max(overloaded):.0%} of capacity: critical served {critical:.0%},"
        f" low served {low:.0%}"
    ]
