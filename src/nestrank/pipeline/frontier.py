"""Quality/cost points, their Pareto frontier and the named profiles chosen on it (paper section 3.1.4).

A :class:`TunePoint` is one way to run the reranker (configuration, reranking depth,
interpolation weight) with its validation quality and cost. :func:`pareto_frontier` keeps the
points no other point beats on both; :func:`choose_profiles` names three of them:

- ``full``: the best quality (ties: the cheaper);
- ``balanced``: the cheapest point that keeps all but ``balanced`` (default 15%) of full's gain;
- ``light``: the cheapest point that keeps all but ``light`` (default 35%) of full's gain.

Tolerances are shares of the gain over the first stage alone (``baseline``) by default: a point
qualifies when ``quality >= baseline + (1 - tolerance) * (full.quality - baseline)``, a rule that
means the same at nDCG 0.3 as at 0.8. With ``basis="quality"`` they are shares of full's
quality instead (no baseline needed): ``quality >= (1 - tolerance) * full.quality``, where 1% of
an nDCG of 0.84 is already an eighth of a reranker gain of 0.07.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from nestrank.errors import ConfigError

__all__ = ["BASES", "QUALITY_TOLERANCES", "TOLERANCES", "TunePoint", "choose_profiles", "default_tolerances",
           "gain_kept", "pareto_frontier", "plot_lines", "plot_points", "quality_floor", "shares_kept",
           "write_points_csv", "write_rows_csv"]

#: Default tolerances of the chosen profiles: the share of full's gain over the first stage each may give up.
TOLERANCES: dict[str, float] = {"balanced": 0.15, "light": 0.35}
#: Defaults when the tolerances are shares of full's quality (``basis="quality"``), as before gain shares.
QUALITY_TOLERANCES: dict[str, float] = {"balanced": 0.01, "light": 0.03}
BASES = ("gain", "quality")


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


def default_tolerances(basis: str = "gain") -> dict[str, float]:
    """The default tolerances of ``basis`` (``"gain"`` or ``"quality"``)."""
    if basis not in BASES:
        raise ConfigError(f"tolerance basis must be one of {', '.join(BASES)}, got {basis!r}")
    return dict(TOLERANCES if basis == "gain" else QUALITY_TOLERANCES)


def quality_floor(best: float, tolerance: float, basis: str = "gain", baseline: float | None = None) -> float:
    """The least quality a point needs to keep all but ``tolerance`` of ``best`` (``basis="quality"``) or of
    ``best``'s gain over ``baseline`` (``basis="gain"``; with no gain to keep, ``best`` itself)."""
    if basis == "quality":
        return (1.0 - tolerance) * best
    if baseline is None:
        raise ConfigError("tolerances of the gain need the first stage's quality (baseline)")
    return best - tolerance * max(0.0, best - baseline)


def choose_profiles(points: Sequence[TunePoint], tolerances: Mapping[str, float] | None = None, *,
                    basis: str = "gain", baseline: float | None = None) -> dict[str, TunePoint]:
    """``{"full": best, "balanced": ..., "light": ...}`` chosen among ``points`` (see the module docstring).

    ``basis="gain"`` needs ``baseline``, the first stage's quality on the same queries.
    """
    if not points:
        raise ConfigError("no tuning points to choose profiles from")
    defaults = default_tolerances(basis)  # checks the basis
    tolerances = dict(defaults if tolerances is None else tolerances)
    for name, tolerance in tolerances.items():
        if not 0.0 <= tolerance < 1.0:
            raise ConfigError(f"tolerance of profile {name!r} must lie in [0, 1), got {tolerance}")
    frontier = pareto_frontier(points)
    best = max(frontier, key=lambda p: (p.quality, -p.cost))
    chosen = {"full": best}
    for name, tolerance in tolerances.items():
        floor = quality_floor(best.quality, tolerance, basis, baseline) - 1e-12  # a point exactly at it qualifies
        chosen[name] = min((p for p in frontier if p.quality >= floor), key=lambda p: (p.cost, -p.quality))
    return chosen


def gain_kept(point: TunePoint, best: TunePoint, baseline: float) -> float | None:
    """The share of ``best``'s gain over ``baseline`` that ``point`` keeps (``None`` when ``best`` gains nothing)."""
    gain = best.quality - baseline
    return None if gain <= 0 else (point.quality - baseline) / gain


def shares_kept(chosen: Mapping[str, TunePoint], baseline: float) -> dict[str, float | None]:
    """:func:`gain_kept` of every chosen profile against ``chosen["full"]``, to 4 decimals."""
    shares = {name: gain_kept(point, chosen["full"], baseline) for name, point in chosen.items()}
    return {name: None if share is None else round(share, 4) for name, share in shares.items()}


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
