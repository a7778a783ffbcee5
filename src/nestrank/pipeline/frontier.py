"""Quality/cost points, their Pareto frontier and the named profiles chosen on it (paper section 3.1.4).

A :class:`TunePoint` is one way to run the reranker (configuration, reranking depth,
interpolation weight) with its validation quality and cost. :func:`pareto_frontier` keeps the
points no other point beats on both; :func:`choose_profiles` names three of them:

- ``full``: the best quality (ties: the cheaper);
- ``balanced``: the cheapest point within ``balanced`` (default 1%) of full's quality;
- ``light``: the cheapest point within ``light`` (default 3%) of full's quality.

Tolerances are relative: a point qualifies when ``quality >= (1 - tolerance) * full.quality``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from nestrank.errors import ConfigError

__all__ = ["TOLERANCES", "TunePoint", "choose_profiles", "pareto_frontier", "plot_lines", "plot_points", "write_points_csv",
           "write_rows_csv"]

#: Default relative quality tolerances of the chosen profiles, below the best quality.
TOLERANCES: dict[str, float] = {"balanced": 0.01, "light": 0.03}


@dataclass(frozen=True)
class TunePoint:
    """One candidate setting and how it measured on validation queries.

    ``cost`` is what the frontier minimises: measured reranking milliseconds per query when
    timing ran, else relative FLOPs per query (``rerank_depth * flops_ratio``).
    """

    config: str
    rerank_depth: int
    weight: float
    quality: float
    flops_ratio: float
    ms_per_pair: float | None
    cost: float

    @property
    def label(self) -> str:
        """Short description: configuration, reranking depth and weight."""
        return f"{self.config or 'full'} @{self.rerank_depth} w={self.weight:g}"


def pareto_frontier(points: Sequence[TunePoint]) -> list[TunePoint]:
    """The points not dominated by another (no other is as cheap and as good, and strictly one of them), by cost."""
    ordered = sorted(points, key=lambda p: (p.cost, -p.quality))
    frontier: list[TunePoint] = []
    for point in ordered:
        if not frontier or point.quality > frontier[-1].quality:
            frontier.append(point)
    return frontier


def choose_profiles(points: Sequence[TunePoint], tolerances: Mapping[str, float] | None = None
                    ) -> dict[str, TunePoint]:
    """``{"full": best, "balanced": ..., "light": ...}`` chosen among ``points`` (see the module docstring)."""
    if not points:
        raise ConfigError("no tuning points to choose profiles from")
    tolerances = dict(TOLERANCES if tolerances is None else tolerances)
    for name, tolerance in tolerances.items():
        if not 0.0 <= tolerance < 1.0:
            raise ConfigError(f"tolerance of profile {name!r} must lie in [0, 1), got {tolerance}")
    frontier = pareto_frontier(points)
    best = max(frontier, key=lambda p: (p.quality, -p.cost))
    chosen = {"full": best}
    for name, tolerance in tolerances.items():
        floor = (1.0 - tolerance) * best.quality
        chosen[name] = min((p for p in frontier if p.quality >= floor), key=lambda p: (p.cost, -p.quality))
    return chosen


def write_points_csv(points: Sequence[TunePoint], chosen: Mapping[str, TunePoint], path: str | Path) -> Path:
    """Every point as a CSV row, with ``frontier`` (0/1) and the ``profile`` names it was chosen for."""
    on_frontier = set(pareto_frontier(points))
    names: dict[TunePoint, list[str]] = {}
    for name, point in chosen.items():
        names.setdefault(point, []).append(name)
    fields = [*asdict(points[0]), "frontier", "profile"] if points else ["config"]
    return write_rows_csv([{**asdict(point), "frontier": int(point in on_frontier),
                            "profile": "+".join(names.get(point, []))}
                           for point in sorted(points, key=lambda p: (p.cost, -p.quality))], path, fields)


def write_rows_csv(rows: Sequence[Mapping[str, object]], path: str | Path, fields: Sequence[str] | None = None) -> Path:
    """``rows`` as a CSV file (header: ``fields``, default the first row's keys), written atomically."""
    from nestrank.files import atomic_write

    if fields is None and not rows:
        raise ConfigError(f"no rows to write to {path} (and no column names)")
    with atomic_write(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields or rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def plot_points(points: Sequence[TunePoint], chosen: Mapping[str, TunePoint], path: str | Path, *, metric: str,
                cost_label: str, title: str, baseline: float | None = None) -> Path:
    """Quality vs cost: every point, the frontier as a line, the chosen profiles marked and named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nestrank.evaluate.plot import finish_plot

    fig, ax = plt.subplots(figsize=(6.6, 4.6))
    ax.scatter([p.cost for p in points], [p.quality for p in points], s=12, color="0.7", label="tried")
    frontier = pareto_frontier(points)
    ax.plot([p.cost for p in frontier], [p.quality for p in frontier], marker="o", color="tab:blue",
            label="Pareto frontier")
    for name, point in chosen.items():
        ax.scatter([point.cost], [point.quality], s=80, facecolors="none", edgecolors="tab:red", linewidths=1.6)
        ax.annotate(f"{name}: {point.label}", (point.cost, point.quality), textcoords="offset points",
                    xytext=(6, -12 if name == "full" else 6), fontsize=7, color="tab:red")
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle="--", linewidth=1, label="first stage alone")
    return finish_plot(fig, ax, path, xlabel=cost_label, ylabel=metric, title=title, legend=True)


def plot_lines(lines: Mapping[str, Sequence[tuple[float, float, str]]], path: str | Path, *, metric: str,
               cost_label: str, title: str, baseline: float | None = None, baseline_label: str = "first stage alone"
               ) -> Path:
    """Quality vs cost as one line per name (a model at one width, say), each point ``(cost, quality, label)``
    annotated with its label (e.g. the exit depth): the paper's Figure 4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nestrank.evaluate.plot import finish_plot

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, line in lines.items():
        ax.plot([cost for cost, _, _ in line], [quality for _, quality, _ in line], marker="o", label=name)
        for cost, quality, label in line:
            ax.annotate(label, (cost, quality), textcoords="offset points", xytext=(3, 3), fontsize=7)
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle="--", linewidth=1, label=baseline_label)
    return finish_plot(fig, ax, path, xlabel=cost_label, ylabel=metric, title=title, legend=True)
