"""Comparing runs: paired significance tests and a side-by-side table against a baseline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from nestrank.checks import check_int
from nestrank.data import Qrels, Run
from nestrank.errors import ArgumentTypeError, ConfigError
from nestrank.evaluate.metrics import DEFAULT_METRICS, evaluate_per_query

Test = Literal["t", "permutation"]


def paired_test(scores: Mapping[str, float], baseline: Mapping[str, float], test: Test = "t",
                n_resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value that ``scores`` and ``baseline`` (per-query values) differ in mean.

    ``test="t"`` is the paired t-test (:func:`scipy.stats.ttest_rel`); ``"permutation"`` is a
    paired randomisation test that swaps each query's two values at random
    (:func:`scipy.stats.permutation_test`, ``n_resamples`` draws, seeded). Only queries in
    both mappings are paired. Identical scores give p = 1; the t-test gives p = 0 when every
    query differs by the same non-zero amount (no variance to test against).
    """
    import numpy as np
    from scipy import stats

    common = [q for q in baseline if q in scores]
    if len(common) < 2:
        raise ConfigError(f"a paired test needs at least 2 common queries, got {len(common)}")
    a = np.array([scores[q] for q in common], dtype=float)
    b = np.array([baseline[q] for q in common], dtype=float)
    if np.allclose(a, b, rtol=0, atol=1e-12):
        return 1.0
    if test == "t":
        differences = a - b
        if np.ptp(differences) <= 1e-12:  # every query moved by the same non-zero amount: no variance
            return 0.0
        return float(stats.ttest_rel(a, b).pvalue)
    if test == "permutation":
        result = stats.permutation_test(
            (a, b), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
            n_resamples=n_resamples, vectorized=True, alternative="two-sided", random_state=seed,
        )
        return float(result.pvalue)
    raise ConfigError(f"unknown significance test {test!r}; choose 't' or 'permutation'")


@dataclass
class Comparison:
    """Mean scores of several runs and p-values of each against the baseline run.

    ``means[run][metric]`` is a mean over judged queries; ``pvalues[run][metric]`` is the
    paired test's p-value against :attr:`baseline` (absent for the baseline itself, and
    for every run when fewer than two queries are judged).
    """

    runs: list[str]
    metrics: list[str]
    baseline: str
    means: dict[str, dict[str, float]]
    per_query: dict[str, dict[str, dict[str, float]]] = field(repr=False)
    pvalues: dict[str, dict[str, float]]
    test: Test = "t"
    alpha: float = 0.05

    def significant(self, run: str, metric: str) -> bool:
        """Whether ``run`` differs from the baseline on ``metric`` at level :attr:`alpha`."""
        p = self.pvalues.get(run, {}).get(metric)
        return p is not None and p < self.alpha

    def table(self, title: str | None = None, costs: Mapping[str, Mapping[str, Any]] | None = None) -> Any:
        """A :class:`rich.table.Table`: one row per run, one column per metric.

        With several runs, ``▲``/``▼`` mark values significantly above/below the baseline.
        ``costs`` (run -> ``{"ms/query": ..., "pairs/s": ..., "FLOPs ratio": ...}``, e.g. from
        a pipeline's ``RUN.meta.json``) adds one column per cost figure ("-" where unknown).
        """
        from rich.table import Table

        test_name = "paired t-test" if self.test == "t" else "paired randomisation test"
        caption = None
        if len(self.runs) > 1:
            caption = f"▲/▼: significantly better/worse than {self.baseline} ({test_name}, p < {self.alpha:g})"
        table = Table(title=title, caption=caption)
        table.add_column("run", overflow="fold")
        for metric in self.metrics:
            table.add_column(metric, justify="right")
        cost_columns = list(dict.fromkeys(name for figures in (costs or {}).values() for name in figures))
        for name in cost_columns:
            table.add_column(name, justify="right", style="dim")
        for run in self.runs:
            cells = []
            for metric in self.metrics:
                value = self.means[run][metric]
                mark = ""
                if self.significant(run, metric):
                    mark = " ▲" if value > self.means[self.baseline][metric] else " ▼"
                cells.append(f"{value:.4f}{mark}")
            figures = (costs or {}).get(run, {})
            cells += ["-" if figures.get(name) is None else f"{figures[name]:g}" for name in cost_columns]
            table.add_row(run, *cells)
        return table


def compare_runs(runs: Mapping[str, Run], qrels: Qrels | Mapping[str, Mapping[str, int]],
                 metrics: str | Sequence[str] = DEFAULT_METRICS, rel: int = 1, baseline: str | None = None,
                 test: Test = "t", alpha: float = 0.05, n_resamples: int = 10_000, seed: int = 0, *,
                 corpus: Any = None) -> Comparison:
    """Evaluate several named runs and test each against ``baseline`` (default: the first).

    Per-query scores follow :func:`~nestrank.evaluate.metrics.evaluate_per_query`: every
    judged query counts (0 when a run lacks it), so all runs are paired on the same queries.
    Each run is cross-checked against the qrels (and ``corpus`` when given), see
    :mod:`nestrank.evaluate.checks`.
    """
    if isinstance(runs, Run) or not isinstance(runs, Mapping):
        raise ArgumentTypeError(f"runs must be a mapping {{name: Run}}, got {type(runs).__name__} (fix: "
                                "{'bm25': run})")
    if not runs:
        raise ConfigError("compare_runs needs at least one run")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise ConfigError(f"alpha (the significance level) must lie strictly between 0 and 1, got {alpha!r}")
    check_int(n_resamples, "n_resamples")
    names = list(runs)
    baseline = names[0] if baseline is None else baseline
    if baseline not in runs:
        raise ConfigError(f"baseline {baseline!r} is not one of the runs: {', '.join(names)}")
    if test not in ("t", "permutation"):
        raise ConfigError(f"unknown significance test {test!r}; choose 't' or 'permutation'")
    per_query = {name: evaluate_per_query(run, qrels, metrics, rel, corpus=corpus, name=str(name))
                 for name, run in runs.items()}
    metric_names = list(per_query[baseline])
    means = {name: {m: sum(v.values()) / len(v) for m, v in scores.items()} for name, scores in per_query.items()}
    testable = len(next(iter(per_query[baseline].values()))) >= 2  # a paired test needs two queries
    pvalues = {
        name: {m: paired_test(per_query[name][m], per_query[baseline][m], test, n_resamples, seed)
               for m in metric_names}
        for name in names if name != baseline and testable
    }
    return Comparison(names, metric_names, baseline, means, per_query, pvalues, test, alpha)
