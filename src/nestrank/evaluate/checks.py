"""Cross-checks of what is evaluated: the run, the qrels, the corpus and the options, against each other.

:func:`check_inputs` raises where a metric would come out wrong without a word (a run whose
queries match none of the qrels, arguments swapped, NaN scores, grades that are not integers,
a relevance threshold below 1) and returns warnings where it would only be suspicious:

- judged documents that are not in the corpus (when a corpus is given): they can never be retrieved;
- runs much shallower than a measure's cutoff (the deepest query has under half of it);
- grades the binary measures ignore (judgements of grade 1 to ``rel - 1`` count as non-relevant);
- judged queries with no relevant document: they score 0 on every measure and pull the mean down.

:func:`~nestrank.evaluate.metrics.evaluate` and friends call it and log each warning once
(one line on stderr, the ``nestrank`` logger).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any

from nestrank.checks import check_int, type_name
from nestrank.data import Qrels, Run
from nestrank.errors import ArgumentTypeError, ConfigError

#: Said when the run and the qrels look swapped.
SWAPPED = "arguments swapped? the order is evaluate(run, qrels, metrics)"


def _check_score(where: str, score: Any) -> None:
    if isinstance(score, bool) or not isinstance(score, Real):
        raise ArgumentTypeError(f"{where}: the score {score!r} is not a number")
    if math.isnan(score):
        raise ConfigError(f"{where} has a NaN score: the ranking would be undefined (fix: the model or scoring "
                          "that produced it)")


def _check_grade(where: str, grade: Any) -> None:
    if isinstance(grade, bool) or not isinstance(grade, Integral):
        raise ArgumentTypeError(f"{where}: the grade {grade!r} is not an integer ({SWAPPED})")


def _plain(value: Any, name: str, own: type, swapped: type, unit: str, check: Any, cast: type) -> dict:
    """``value`` (an ``own`` or ``{qid: {doc_id: unit}}``) as plain dicts, each value checked and cast."""
    if isinstance(value, swapped):
        raise ArgumentTypeError(f"{name} is a {swapped.__name__}, not a {own.__name__} ({SWAPPED})")
    if isinstance(value, own):
        return value.to_dict()  # type: ignore[attr-defined]
    if not isinstance(value, Mapping):
        raise ArgumentTypeError(f"{name} must be a {own.__name__} or a mapping {{query_id: {{doc_id: {unit}}}}}, "
                                f"got {type_name(value)}")
    out: dict[str, dict] = {}
    for qid, docs in value.items():
        if not isinstance(docs, Mapping):
            raise ArgumentTypeError(f"{name}[{qid!r}] must be a mapping {{doc_id: {unit}}}, got {type_name(docs)}")
        for doc, item in docs.items():
            check(f"{name}[{qid!r}][{doc!r}]", item)
        out[str(qid)] = {str(d): cast(item) for d, item in docs.items()}
    return out


def run_dict(run: Any, name: str = "run") -> dict[str, dict[str, float]]:
    """``run`` (a :class:`Run` or ``{qid: {doc_id: score}}``) as plain dicts, its types and scores checked."""
    return _plain(run, name, Run, Qrels, "score", _check_score, float)


def qrels_dict(qrels: Any, name: str = "qrels") -> dict[str, dict[str, int]]:
    """``qrels`` (a :class:`Qrels` or ``{qid: {doc_id: grade}}``) as plain dicts, its grades checked to be integers."""
    return _plain(qrels, name, Qrels, Run, "grade", _check_grade, int)


def check_inputs(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                 measures: Sequence[Any], rel: int, *, corpus: Any = None, name: str = "the run") -> list[str]:
    """Check plain-dict ``run`` and ``qrels`` (see :func:`run_dict`, :func:`qrels_dict`) against each other.

    Returns the warnings (see the module docstring); raises :class:`ConfigError` where the
    metrics would be wrong. ``corpus`` (anything supporting ``in``) adds the corpus checks;
    ``name`` names the run in messages.
    """
    check_int(rel, "rel", 1, "the lowest grade binary measures count as relevant")
    if not qrels:
        raise ConfigError("the qrels are empty: nothing to evaluate against")
    if not run:
        raise ConfigError(f"{name} has no queries: nothing to evaluate")
    judged = [qid for qid in run if qid in qrels]
    if not judged:
        raise ConfigError(f"none of the {len(run)} queries of {name} is judged in the qrels (e.g. the run has "
                          f"{next(iter(run))!r}, the qrels {next(iter(qrels))!r}): every measure would be 0 (fix: "
                          "evaluate with the qrels of the split and dataset the run was made on)")
    warnings: list[str] = []
    if corpus is not None:
        missing = [(q, d) for q, docs in qrels.items() for d in docs if d not in corpus]
        if missing:
            warnings.append(f"{len(missing)} judged document(s) are not in the corpus (e.g. {missing[0][1]!r} for "
                            f"query {missing[0][0]!r}): no run can retrieve them (check that qrels and corpus match)")
        unknown = sum(1 for q in judged for d in run[q] if d not in corpus)
        if unknown:
            warnings.append(f"{name} ranks {unknown} document(s) that are not in the corpus (check that the run was "
                            "made on this corpus)")
    depth = max((len(run[q]) for q in judged), default=0)
    for measure in measures:
        cutoff = getattr(measure, "params", {}).get("cutoff")
        if isinstance(cutoff, int) and depth * 2 <= cutoff:
            warnings.append(f"{name} has at most {depth} results per judged query, far fewer than the cutoff of "
                            f"{measure}: it is computed on those only (fix: retrieve at least {cutoff} per query)")
    between = sum(1 for docs in qrels.values() for g in docs.values() if 0 < g < rel)
    if between and any("rel" in getattr(m, "SUPPORTED_PARAMS", {}) for m in measures):
        grades = "1" if rel == 2 else f"1..{rel - 1}"
        warnings.append(f"{between} judgement(s) have grade {grades}: binary measures (R, RR, AP, P) count them as "
                        f"non-relevant with rel={rel}; nDCG keeps their gains")
    hopeless = sum(1 for docs in qrels.values() if not any(g >= rel for g in docs.values()))
    if hopeless:
        warnings.append(f"{hopeless} of {len(qrels)} judged queries have no document judged relevant (grade >= "
                        f"{rel}): they score 0 on binary measures and pull every mean down")
    return warnings
