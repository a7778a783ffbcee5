"""Evaluation: metrics (on ir_measures), per-query scores, significance tests, comparisons."""

from nestrank.evaluate.compare import Comparison, compare_runs, paired_test
from nestrank.evaluate.metrics import DEFAULT_METRICS, evaluate, evaluate_per_query, parse_metric, parse_metrics

__all__ = [
    "DEFAULT_METRICS",
    "Comparison",
    "compare_runs",
    "evaluate",
    "evaluate_per_query",
    "paired_test",
    "parse_metric",
    "parse_metrics",
]
