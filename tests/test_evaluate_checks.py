"""Evaluation cross-checks its inputs: errors where a metric would be wrong, warnings where it is suspicious."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest

from nestrank import integrity
from nestrank.data import Corpus, Document, Qrels, Run
from nestrank.errors import ArgumentTypeError, ConfigError, DataFormatError
from nestrank.evaluate import compare_runs, evaluate
from nestrank.evaluate.checks import check_inputs
from nestrank.evaluate.metrics import parse_metrics

QRELS = Qrels({"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2, "d4": 1}})
RUN = Run({"q1": [("d1", 2.0), ("d2", 1.0)], "q2": [("d4", 3.0), ("d3", 1.0)]})


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(integrity, "_warned", set())


def warnings_of(run=RUN, qrels=QRELS, metrics="ndcg@3,rr", rel=1, corpus=None) -> list[str]:
    return check_inputs(run.to_dict(), qrels.to_dict(), parse_metrics(metrics), rel, corpus=corpus)


def test_clean_inputs_give_no_warning():
    assert warnings_of() == []


def test_errors_where_the_result_would_be_wrong():
    with pytest.raises(ConfigError, match=r"none of the 1 queries of the run is judged.*'x'.*'q1'"):
        evaluate(Run({"x": [("d1", 1.0)]}), QRELS)
    with pytest.raises(ConfigError, match="NaN score"):
        evaluate({"q1": {"d1": math.nan}}, QRELS)
    with pytest.raises(ConfigError, match="rel must be at least 1"):
        evaluate(RUN, QRELS, rel=0)
    with pytest.raises(ArgumentTypeError, match="rel must be an integer"):
        evaluate(RUN, QRELS, rel=1.5)
    with pytest.raises(ConfigError, match="alpha"):
        compare_runs({"a": RUN}, QRELS, alpha=5)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: evaluate(QRELS, RUN), "run is a Qrels, not a Run"),
    (lambda: evaluate(RUN.to_dict(), {"q1": {"d1": 0.7}}), r"the grade 0.7 is not an integer \(arguments swapped"),
    (lambda: evaluate(RUN, QRELS, QRELS), "metrics must be a comma-separated string"),
    (lambda: evaluate(["q1"], QRELS), "run must be a Run or a mapping"),
    (lambda: compare_runs(RUN, QRELS), "runs must be a mapping {name: Run}"),
])
def test_swapped_or_mistyped_arguments_name_the_parameter(call, message):
    with pytest.raises(ArgumentTypeError, match=message):
        call()


def test_judged_documents_missing_from_the_corpus_are_reported():
    corpus = Corpus.from_documents([Document("d1", "a"), Document("d2", "b"), Document("d4", "c")])
    judged, ranked = warnings_of(corpus=corpus)
    assert "1 judged document(s) are not in the corpus (e.g. 'd3'" in judged
    assert "the run ranks 1 document(s) that are not in the corpus" in ranked


def test_shallow_runs_and_ignored_grades_are_reported():
    shallow = warnings_of(metrics="ndcg@3,recall@100")
    assert len(shallow) == 1 and "at most 2 results per judged query" in shallow[0] and "R@100" in shallow[0]
    graded = warnings_of(metrics="recall@3", rel=2)
    assert any("2 judgement(s) have grade 1: binary measures (R, RR, AP, P) count them as non-relevant" in w
               for w in graded)
    assert any("1 of 2 judged queries have no document judged relevant (grade >= 2)" in w for w in graded)


def test_warnings_are_logged_once_on_one_line(caplog):
    with caplog.at_level(logging.WARNING, logger="nestrank"):
        evaluate(RUN, QRELS, "ndcg@3,recall@100")
        evaluate(RUN, QRELS, "ndcg@3,recall@100")
    messages = [r.getMessage() for r in caplog.records if r.name == "nestrank"]
    assert len(messages) == 1 and messages[0].startswith("warning: ") and "\n" not in messages[0]


def test_run_files_with_ambiguous_columns(tmp_path: Path):
    scores_as_ranks = tmp_path / "run.tsv"
    scores_as_ranks.write_text("q1\td1\t3\nq1\td2\t3\n")  # a score column read as MS MARCO ranks
    with pytest.raises(DataFormatError, match="rank 3 appears twice for query 'q1'"):
        Run.read(scores_as_ranks)
    distances = tmp_path / "distances.run"  # ranked best first, but the scores are distances
    distances.write_text("q1 Q0 d1 1 0.1 t\nq1 Q0 d2 2 0.5 t\nq2 Q0 d3 1 0.2 t\nq2 Q0 d4 2 0.9 t\n")
    with pytest.raises(DataFormatError, match="score rises with the rank column.*upside down"):
        Run.read_trec(distances)
    mixed = tmp_path / "mixed.run"
    mixed.write_text("q1 Q0 d1 1 0.1 t\nq1 Q0 d2 2 0.5 t\nq2 Q0 d3 1 0.9 t\nq2 Q0 d4 2 0.2 t\n")
    assert Run.read_trec(mixed).doc_ids("q1") == ["d2", "d1"]  # read by score, as trec_eval does; with a warning


def test_dict_results_are_not_split_into_characters():
    assert Run({"q1": {"d1": 0.5, "d22": 0.2}}).to_dict() == {"q1": {"d1": 0.5, "d22": 0.2}}
    with pytest.raises(ArgumentTypeError, match="must be \\(doc_id, score\\) pairs"):
        Run({"q1": "d1"})
    with pytest.raises(DataFormatError, match="appears twice"):
        Run({"q1": [("d1", 1.0), ("d1", 2.0)]})


def test_evaluate_cli_warns_and_checks_the_corpus(tmp_path: Path, run_cli):
    (tmp_path / "qrels.tsv").write_text("q1\td1\t1\nq2\td9\t1\n")
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"}\n')
    RUN.write_trec(tmp_path / "a.run")
    done = subprocess.run([sys.executable, "-c", "from nestrank.cli import main; main()", "evaluate", tmp_path / "a.run", "--qrels",
                           tmp_path / "qrels.tsv", "--corpus", tmp_path / "corpus.jsonl", "--json", "-m", "ndcg@3"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any(line.startswith("warning: 1 judged document(s) are not in the corpus (e.g. 'd9'") for line in lines)
    Run({"x": [("d1", 1.0)]}).write_trec(tmp_path / "other.run")
    code, _, err = run_cli("evaluate", tmp_path / "other.run", "--qrels", tmp_path / "qrels.tsv")
    assert code == 2 and "none of the 1 queries" in err and "Traceback" not in err
