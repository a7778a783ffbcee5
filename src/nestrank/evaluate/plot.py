"""Quality against cost of several runs, as a PNG: where each pipeline sits on the cost/quality plane."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

__all__ = ["finish_plot", "plot_quality_vs_cost"]


def plot_quality_vs_cost(points: Mapping[str, tuple[float, float]], path: str | Path, *, metric: str,
                         cost_label: str = "ms per query (measured)", title: str = "") -> Path:
    """One labelled point per run at ``(cost, quality)``; a log cost axis when costs span over 20x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, (cost, quality) in points.items():
        ax.scatter([cost], [quality], s=36)
        ax.annotate(label, (cost, quality), textcoords="offset points", xytext=(6, 4), fontsize=8)
    costs = [cost for cost, _ in points.values() if cost > 0]
    if costs and max(costs) / min(costs) > 20:
        ax.set_xscale("log")
    return finish_plot(fig, ax, path, xlabel=cost_label, ylabel=metric, title=title)


def finish_plot(fig, ax, path: str | Path, *, xlabel: str, ylabel: str, title: str = "", legend: bool = False) -> Path:
    """Label, grid and save a quality-vs-cost figure as a PNG at ``path`` (parents created), then close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
