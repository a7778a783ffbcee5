"""Evaluation: metric spellings, missing queries, relevance thresholds, tests, comparisons."""

from __future__ import annotations

import math

import pytest
import pytrec_eval
from rich.console import Console
from scipy import stats

from nestrank.data import Qrels, Run
from nestrank.errors import ConfigError
from nestrank.evaluate import compare_runs, evaluate, evaluate_per_query, paired_test, parse_metrics

QRELS = Qrels({"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2, "d4": 1}, "q3": {"d5": 1}})
RUN = Run({
    "q1": [("d2", 3.0), ("d1", 2.0)],
    "q2": [("d4", 5.0), ("d3", 4.0), ("d9", 1.0)],
    "q9": [("d1", 1.0)],  # not judged: ignored
})
NDCG_Q1 = 1 / math.log2(3)
NDCG_Q2 = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))  # graded gains, linear as in trec_eval


def test_spellings_map_to_ir_measures_names() -> None:
    names = [str(m) for m in parse_metrics("NDCG@10, recall@100,rr@10,MRR@5,map,p@10,ap,r@20,ndcg,Precision@3")]
    assert names == ["nDCG@10", "R@100", "RR@10", "RR@5", "AP", "P@10", "R@20", "nDCG", "P@3"]
    assert [str(m) for m in parse_metrics(["nDCG@10", "R(rel=2)@100", "ndcg@10"])] == ["nDCG@10", "R(rel=2)@100"]


@pytest.mark.parametrize("bad", ["ndgc@10", "ndcg@0", "recall@ten", "", " , "])
def test_unknown_metrics_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_metrics(bad)


def test_hand_computed_values_and_missing_query_counts_zero() -> None:
    scores = evaluate(RUN, QRELS, "ndcg@10,rr@10,recall@100")
    assert scores["nDCG@10"] == pytest.approx((NDCG_Q1 + NDCG_Q2 + 0) / 3, abs=1e-9)
    assert scores["RR@10"] == pytest.approx((0.5 + 1 + 0) / 3, abs=1e-9)
    assert scores["R@100"] == pytest.approx(2 / 3, abs=1e-9)
    # pytrec_eval alone scores only the queries in the run (q1, q2; q9 is unjudged)
    raw = pytrec_eval.RelevanceEvaluator(QRELS.to_dict(), {"recip_rank"}).evaluate(RUN.to_dict())
    assert sorted(raw) == ["q1", "q2"] and sum(v["recip_rank"] for v in raw.values()) / len(raw) == 0.75


def test_relevance_threshold_applies_to_binary_measures_only() -> None:
    graded = evaluate(RUN, QRELS, "ndcg@10,rr@10,recall@100,p@1", rel=2)
    assert list(graded) == ["nDCG@10", "RR@10", "R@100", "P@1"]
    assert graded["nDCG@10"] == pytest.approx((NDCG_Q1 + NDCG_Q2) / 3, abs=1e-9)  # unchanged
    assert graded["RR@10"] == pytest.approx(0.5 / 3, abs=1e-9)  # only d3 (grade 2) counts, at rank 2
    assert graded["R@100"] == pytest.approx(1 / 3, abs=1e-9)
    assert graded["P@1"] == 0.0


def test_per_query_scores_cover_every_judged_query() -> None:
    per_query = evaluate_per_query(RUN, QRELS, ["rr@10"])
    assert per_query == {"RR@10": {"q1": 0.5, "q2": 1.0, "q3": 0.0}}


def test_empty_or_unjudged_runs_are_errors_not_zeros() -> None:
    with pytest.raises(ConfigError, match="the run has no queries"):
        evaluate(Run(), QRELS, "ndcg@10")
    with pytest.raises(ConfigError, match="none of the 1 queries of the run is judged in the qrels"):
        evaluate(Run({"zz": [("d1", 1.0)]}), QRELS, "ndcg@10")
    with pytest.raises(ConfigError, match="qrels are empty"):
        evaluate(RUN, Qrels(), "ndcg@10")


def test_agrees_with_pytrec_eval_when_nothing_is_missing() -> None:
    run = Run({q: docs for q, docs in RUN.items() if q != "q9"})
    run.add("q3", [("d1", 2.0), ("d5", 1.0)])
    ours = evaluate(run, QRELS, "ndcg@10,map,p@5,recall@100")
    evaluator = pytrec_eval.RelevanceEvaluator(QRELS.to_dict(), {"ndcg_cut_10", "map", "P_5", "recall_100"})
    theirs = evaluator.evaluate(run.to_dict())
    for ours_name, trec_name in [("nDCG@10", "ndcg_cut_10"), ("AP", "map"), ("P@5", "P_5"), ("R@100", "recall_100")]:
        assert ours[ours_name] == pytest.approx(sum(v[trec_name] for v in theirs.values()) / 3, abs=1e-9)


def test_paired_t_test_matches_scipy_and_identical_runs_give_one() -> None:
    a = {"q1": 0.9, "q2": 0.8, "q3": 0.7, "q4": 0.95}
    b = {"q1": 0.5, "q2": 0.6, "q3": 0.65, "q4": 0.4}
    expected = stats.ttest_rel([0.9, 0.8, 0.7, 0.95], [0.5, 0.6, 0.65, 0.4]).pvalue
    assert paired_test(a, b) == pytest.approx(expected)
    assert paired_test(a, dict(a)) == 1.0
    with pytest.raises(ConfigError, match="at least 2 common queries"):
        paired_test({"q1": 1.0}, {"q1": 0.0})
    with pytest.raises(ConfigError, match="unknown significance test"):
        paired_test(a, b, test="wilcoxon")  # type: ignore[arg-type]


def test_permutation_test_is_seeded_and_sensible() -> None:
    better = {f"q{i}": 0.8 + 0.01 * (i % 3) for i in range(30)}
    worse = {f"q{i}": 0.3 + 0.02 * (i % 5) for i in range(30)}
    noisy = {f"q{i}": 0.3 + 0.02 * (i % 5) + (0.01 if i % 2 else -0.01) for i in range(30)}
    p = paired_test(better, worse, "permutation", n_resamples=2000, seed=1)
    assert p < 0.01
    assert p == paired_test(better, worse, "permutation", n_resamples=2000, seed=1)
    assert paired_test(noisy, worse, "permutation", n_resamples=2000) > 0.5


def test_compare_runs_table_marks_significant_differences() -> None:
    qrels = Qrels({f"q{i}": {"good": 1} for i in range(20)})
    strong = Run({f"q{i}": [("good", 2.0), ("bad", 1.0)] for i in range(20)})
    weak = Run({f"q{i}": [("bad", 2.0), ("good", 1.0)] for i in range(20)})
    same = Run.from_scores(strong.to_dict())
    comparison = compare_runs({"weak": weak, "strong": strong, "same": same, "weak2": weak}, qrels, "rr@10,ndcg@10")
    assert comparison.baseline == "weak" and comparison.metrics == ["RR@10", "nDCG@10"]
    assert comparison.means["strong"]["RR@10"] == 1.0 and comparison.means["weak"]["RR@10"] == 0.5
    assert comparison.significant("strong", "RR@10") and not comparison.significant("weak2", "RR@10")
    assert "weak" not in comparison.pvalues
    console = Console(record=True, width=120)
    console.print(comparison.table(title="demo"))
    text = console.export_text()
    assert "1.0000 ▲" in text and "0.5000 ▲" not in text and "paired t-test" in text
    flipped = compare_runs({"strong": strong, "weak": weak}, qrels, "rr@10")
    console = Console(record=True, width=120)
    console.print(flipped.table())
    assert "0.5000 ▼" in console.export_text()


def test_compare_runs_bad_input() -> None:
    with pytest.raises(ConfigError, match="at least one run"):
        compare_runs({}, QRELS)
    with pytest.raises(ConfigError, match="baseline 'x'"):
        compare_runs({"a": RUN}, QRELS, baseline="x")
    single = compare_runs({"a": RUN, "b": RUN}, Qrels({"q1": {"d1": 1}}))
    assert single.pvalues == {}  # one judged query: no test possible, no markers
