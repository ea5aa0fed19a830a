"""What a run leaves behind in bench/results/<timestamp>/: results.json (everything, raw
runs included), results.md (the tables), and PNG charts when matplotlib is installed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.preflight import MATPLOTLIB_HINT, has_matplotlib


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = [
            f"**{self.title}**",
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join("---" for _ in self.columns) + "|",
        ]
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        return "\n".join(lines)


@dataclass
class Bars:
    """Grouped bars: one group per category, one bar per series, min-max as error bars."""

    filename: str
    title: str
    ylabel: str
    categories: list[str]
    series: dict[str, list[float | None]]
    low: dict[str, list[float | None]] = field(default_factory=dict)
    high: dict[str, list[float | None]] = field(default_factory=dict)
    logy: bool = False


@dataclass
class Lines:
    """One line per series over a numeric x axis."""

    filename: str
    title: str
    xlabel: str
    ylabel: str
    series: dict[str, list[tuple[float, float]]]
    logy: bool = True


Chart = Bars | Lines


@dataclass
class ScenarioResult:
    name: str
    what: str  # one paragraph: what this scenario measures and how
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        parts = [f"## {self.name}", "", self.what, ""]
        for table in self.tables:
            parts += [table.markdown(), ""]
        parts += [f"- {note}" for note in self.notes]
        parts += [
            f"- **{target} failed**: {why.splitlines()[0]}" for target, why in self.failures.items()
        ]
        for chart in self.charts:
            parts.append(f"\n![{chart.title}]({chart.filename})")
        return "\n".join(parts).rstrip() + "\n"


def write_report(
    run_dir: Path, meta: dict[str, Any], results: Sequence[ScenarioResult]
) -> list[str]:
    """Write results.json, results.md and the charts; returns warnings (e.g. no matplotlib)."""
    warnings = []
    charted = has_matplotlib()
    if charted:
        for result in results:
            for chart in result.charts:
                draw(chart, run_dir / chart.filename)
    else:
        warnings.append(f"charts skipped: matplotlib is not installed ({MATPLOTLIB_HINT})")
        for result in results:
            result.charts.clear()
    document = {
        "meta": meta,
        "scenarios": {
            result.name: {
                "what": result.what,
                "notes": result.notes,
                "failures": result.failures,
                **result.data,
            }
            for result in results
        },
    }
    text = json.dumps(document, indent=1, default=str, ensure_ascii=False)
    (run_dir / "results.json").write_text(text + "\n")
    header = [
        "# mcp-proxy benchmark results",
        "",
        f"- command: `{meta['command']}`",
        f"- when: {meta['started']}; machine: {meta['machine']}",
        f"- CPUs: {meta['cpus']['note']}; idle CPUs: {meta.get('idle_cpu', 'unknown')}",
        f"- measured: {meta.get('mcp_proxy') or 'mcp-proxy (version unknown)'}",
        f"- repeats: {meta['options']['repeats']} per point; figures are the median with"
        " (min-max) over them",
    ]
    if meta["quiet_check"]["busy_share"] > meta["options"]["max_busy"]:
        header.append(
            f"- **the machine was busy** ({meta['quiet_check']['busy_share']:.0%} of CPU time in"
            " use at the start; run with --allow-busy): these figures are disturbed"
        )
    header.append("")
    body = "\n".join(result.markdown() for result in results)
    (run_dir / "results.md").write_text("\n".join(header) + "\n" + body)
    return warnings


def draw(chart: Chart, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.8), dpi=110)
    if isinstance(chart, Bars):
        _draw_bars(axes, chart)
    else:
        for name, points in chart.series.items():
            xs, ys = zip(*points, strict=True) if points else ((), ())
            axes.plot(xs, ys, marker="o", label=name)
        axes.set_xlabel(chart.xlabel)
        axes.set_ylabel(chart.ylabel)
        if chart.logy:
            axes.set_yscale("log")
    axes.set_title(chart.title)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _draw_bars(axes: Any, chart: Bars) -> None:
    names = list(chart.series)
    width = 0.8 / max(1, len(names))
    for index, name in enumerate(names):
        values = chart.series[name]
        xs = [position + (index - (len(names) - 1) / 2) * width for position in range(len(values))]
        heights = [value or 0.0 for value in values]
        low, high = chart.low.get(name), chart.high.get(name)
        errors = None
        if low and high:
            below = [h - (lo if lo is not None else h) for h, lo in zip(heights, low, strict=True)]
            above = [(hi if hi is not None else h) - h for h, hi in zip(heights, high, strict=True)]
            errors = [[max(0.0, e) for e in below], [max(0.0, e) for e in above]]
        axes.bar(xs, heights, width, label=name, yerr=errors, capsize=3)
    crowded = sum(len(label) for label in chart.categories) > 70
    axes.set_xticks(
        range(len(chart.categories)),
        chart.categories,
        rotation=20 if crowded else 0,
        ha="right" if crowded else "center",
    )
    axes.set_ylabel(chart.ylabel)
    if chart.logy:
        axes.set_yscale("log")
