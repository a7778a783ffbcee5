"""Retrieval metrics on `ir_measures <https://ir-measur.es>`_ (pytrec_eval underneath).

Measures are named as users type them (``ndcg@10``, ``recall@100``, ``mrr@10``, ``map``,
``p@10``; any case) or in ir_measures syntax (``nDCG@10``, ``R(rel=2)@100``), and are
reported under ir_measures' own names (``nDCG@10``, ``R@100``, ``RR@10``, ``AP``, ``P@10``).

Two choices differ from plain pytrec_eval / ir_measures and are deliberate:

- A query that has judgements but no results in the run scores 0 on every measure and is
  part of the mean (pytrec_eval would silently leave it out and inflate the mean).
- Queries in the run that have no judgements in the qrels are ignored.

Inputs are cross-checked first (:mod:`nestrank.evaluate.checks`): what would make a metric
wrong is an error, what is only suspicious a one-line warning.

``rel`` is the lowest grade that counts as relevant for binary measures (R, RR, AP, P):
TREC DL uses ``rel=2``. nDCG always uses the graded judgements as gains.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nestrank.checks import check_texts
from nestrank.data import Qrels, Run
from nestrank.errors import ArgumentTypeError, ConfigError
from nestrank.evaluate.checks import check_inputs, qrels_dict, run_dict
from nestrank.integrity import warn_once

DEFAULT_METRICS = ("nDCG@10", "R@100", "RR@10")

#: lower-cased user spelling -> ir_measures measure name
ALIASES: dict[str, str] = {
    "ndcg": "nDCG",
    "recall": "R", "r": "R",
    "rr": "RR", "mrr": "RR", "recip_rank": "RR",
    "map": "AP", "ap": "AP",
    "p": "P", "precision": "P",
}
_SPELLING = re.compile(r"^(?P<name>[a-z_]+)(?:@(?P<cutoff>\d+))?$")


def parse_metric(spec: str) -> Any:
    """One user metric spelling -> an ir_measures measure (e.g. ``"mrr@10"`` -> ``RR@10``)."""
    import ir_measures

    text = spec.strip()
    match = _SPELLING.match(text.lower())
    if match and match["name"] in ALIASES:
        name = ALIASES[match["name"]]
        if match["cutoff"] is not None and int(match["cutoff"]) < 1:
            raise ConfigError(f"metric {spec!r}: the cutoff must be at least 1")
        text = name if match["cutoff"] is None else f"{name}@{match['cutoff']}"
    try:
        return ir_measures.parse_measure(text)
    except (ValueError, NameError, SyntaxError, TypeError, AttributeError):
        raise ConfigError(f"unknown metric {spec!r}; use e.g. ndcg@10, recall@100, rr@10 (mrr@10), map, p@10, "
                          "or any ir_measures measure such as 'nDCG@10' or 'R(rel=2)@100'") from None


def parse_metrics(metrics: str | Iterable[str]) -> list[Any]:
    """A comma-separated string or a list of spellings -> ir_measures measures, in order."""
    if not isinstance(metrics, str):
        if isinstance(metrics, Mapping | Run | Qrels) or not isinstance(metrics, Iterable):
            raise ArgumentTypeError(f"metrics must be a comma-separated string or a list of metric names, got "
                                    f"{type(metrics).__name__} (the order is evaluate(run, qrels, metrics))")
        metrics = check_texts(metrics, "metrics", "metric names")
    specs = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    specs = [s for s in (spec.strip() for spec in specs) if s]
    if not specs:
        raise ConfigError("no metrics given; use e.g. ndcg@10,recall@100,rr@10")
    measures = [parse_metric(s) for s in specs]
    return list(dict.fromkeys(measures))


def _computed(measure: Any, rel: int) -> Any:
    """The measure actually computed: binary measures get the ``rel`` threshold unless set."""
    if "rel" in measure.SUPPORTED_PARAMS and "rel" not in measure.params and rel != 1:
        return measure(rel=rel)
    return measure


def evaluate_per_query(run: Run | Mapping[str, Mapping[str, float]],
                       qrels: Qrels | Mapping[str, Mapping[str, int]],
                       metrics: str | Sequence[str] = DEFAULT_METRICS, rel: int = 1, *,
                       corpus: Any = None, name: str | None = None) -> dict[str, dict[str, float]]:
    """Per-query scores: ``{metric name: {query id: value}}`` for every judged query.

    Judged queries missing from the run get 0; queries in the run that are not in the
    qrels are ignored. ``rel`` is the relevance threshold of binary measures. The inputs are
    cross-checked first (:func:`nestrank.evaluate.checks.check_inputs`, with ``corpus`` when
    given): what would make the result wrong raises, what is only suspicious is logged as a
    warning (``name`` names the run in messages; default its file).
    """
    import ir_measures

    measures = parse_metrics(metrics)
    label = name or (str(run.path) if isinstance(run, Run) and run.path else "the run")
    runs, judgements = run_dict(run), qrels_dict(qrels)
    for warning in check_inputs(runs, judgements, measures, rel, corpus=corpus, name=label):
        warn_once(f"evaluate:{warning}", f"warning: {warning}")
    computed = {_computed(m, rel): str(m) for m in measures}
    scored = {q: docs for q, docs in runs.items() if q in judgements and docs}
    out: dict[str, dict[str, float]] = {str(m): dict.fromkeys(judgements, 0.0) for m in measures}
    if scored:
        for metric in ir_measures.iter_calc(list(computed), judgements, scored):
            out[computed[metric.measure]][metric.query_id] = float(metric.value)
    return out


def evaluate(run: Run | Mapping[str, Mapping[str, float]], qrels: Qrels | Mapping[str, Mapping[str, int]],
             metrics: str | Sequence[str] = DEFAULT_METRICS, rel: int = 1, *, corpus: Any = None) -> dict[str, float]:
    """Mean of each metric over all judged queries: ``{"nDCG@10": 0.686, ...}``.

    ``metrics`` accepts user spellings (``"ndcg@10,recall@100,mrr@10,map,p@10"``, any case)
    and returns them under ir_measures' names (``nDCG@10``, ``R@100``, ``RR@10``, ``AP``,
    ``P@10``; the ``rel`` threshold is not part of the name). Judged queries missing from the
    run count as 0; queries in the run that are not in the qrels are ignored. ``rel`` is the
    lowest grade that binary measures (R, RR, AP, P) count as relevant; nDCG keeps the graded
    gains. Inputs are cross-checked (with ``corpus``, also against it): see
    :mod:`nestrank.evaluate.checks`.
    """
    per_query = evaluate_per_query(run, qrels, metrics, rel, corpus=corpus)
    return {name: sum(values.values()) / len(values) for name, values in per_query.items()}
