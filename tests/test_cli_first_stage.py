"""``nestrank index / search / fuse / evaluate`` end to end, through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytrec_eval

from nestrank.data import Qrels, Run

SCIFACT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"


def test_index_search_evaluate_json(run_cli, tiny_beir: Path, tmp_path: Path) -> None:
    idx, run_file = tmp_path / "idx", tmp_path / "bm25.run"
    code, out, err = run_cli("index", "--dataset", tiny_beir, "--method", "bm25", "--out", idx)
    assert code == 0, err
    assert out == "" and "indexed 5 documents" in err
    assert json.loads((idx / "manifest.json").read_text())["method"] == "bm25"
    code, out, err = run_cli("search", "--index", idx, "--dataset", tiny_beir, "--split", "test", "--k", "3",
                             "--out", run_file)
    assert code == 0, err
    assert out == "" and "searched 2 queries" in err
    run = Run.read_trec(run_file)
    assert set(run) == {"q1", "q2"} and run.doc_ids("q1")[0] == "d1" and run.doc_ids("q2")[0] == "d4"
    code, out, err = run_cli("evaluate", "--dataset", tiny_beir, "--split", "test", run_file, "--json",
                             "--metrics", "ndcg@10,recall@100,mrr@10,map,p@1")
    assert code == 0, err
    result = json.loads(out)  # stdout is exactly one JSON object
    assert list(result) == [str(run_file)]
    assert result[str(run_file)] == {"nDCG@10": 1.0, "R@100": 1.0, "RR@10": 1.0, "AP": 1.0, "P@1": 1.0}


def test_explicit_files_instead_of_dataset(run_cli, tiny_beir: Path, tmp_path: Path) -> None:
    idx, run_file = tmp_path / "idx", tmp_path / "all.run"
    assert run_cli("index", "--corpus", tiny_beir / "corpus.jsonl", "--out", idx, "--stemmer", "none",
                   "--stopwords", "none", "--k1", "0.9", "--b", "0.4")[0] == 0
    assert json.loads((idx / "manifest.json").read_text())["params"]["k1"] == 0.9
    code, _, err = run_cli("search", "--index", idx, "--queries", tiny_beir / "queries.jsonl", "--out", run_file)
    assert code == 0, err
    assert set(Run.read_trec(run_file)) == {"q1", "q2", "q3"}  # every query of the file
    code, out, err = run_cli("evaluate", "--qrels", tiny_beir / "qrels" / "train.tsv", run_file, "--json",
                             "-m", "rr@10")
    assert code == 0, err
    assert json.loads(out) == {str(run_file): {"RR@10": 1.0}}


def test_rel_threshold_and_missing_queries(run_cli, tiny_beir: Path, tmp_path: Path) -> None:
    run_file = tmp_path / "partial.run"
    Run({"q2": [("d2", 2.0), ("d4", 1.0)]}).write_trec(run_file)
    code, out, err = run_cli("evaluate", "--dataset", tiny_beir, run_file, "--json", "-m", "rr@10", "--rel", "2")
    assert code == 0, err
    assert json.loads(out) == {str(run_file): {"RR@10": 0.25}}  # q1 missing -> 0; q2: d4 at rank 2
    assert "1 of 2 judged queries have no results" in err


def test_fuse_and_compare_table(run_cli, tiny_beir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.run", tmp_path / "b.run"
    Run({"q1": [("d1", 3.0), ("d2", 1.0)], "q2": [("d2", 2.0), ("d4", 1.0)]}).write_trec(a)
    Run({"q1": [("d3", 3.0), ("d1", 1.0)], "q2": [("d4", 2.0)]}).write_trec(b)
    code, _, err = run_cli("fuse", a, b, "--out", tmp_path / "rrf.run")
    assert code == 0, err
    assert Run.read_trec(tmp_path / "rrf.run").doc_ids("q1")[0] == "d1"
    code, _, err = run_cli("fuse", a, b, "--out", tmp_path / "lin.run", "--method", "linear", "--weights", "0,1",
                           "--k", "1")
    assert code == 0, err
    assert Run.read_trec(tmp_path / "lin.run").to_dict() == {"q1": {"d3": 1.0}, "q2": {"d4": 1.0}}
    code, out, err = run_cli("evaluate", "--dataset", tiny_beir, a, b, tmp_path / "rrf.run")
    assert code == 0, err
    assert "nDCG@10" in out and "R@100" in out and "RR@10" in out and "rrf.run" in out
    assert "significantly better/worse than" in out and "a.run (paired t-test" in out


@pytest.mark.parametrize(("args", "message"), [
    (["index", "--out", "IDX"], "give --dataset DIR"),
    (["index", "--dataset", "DATA", "--out", "IDX", "--method", "splade"], "unknown --method 'splade'"),
    (["index", "--dataset", "DATA", "--out", "IDX", "--stemmer", "klingon"], "unknown stemmer"),
    (["search", "--index", "NOWHERE", "--dataset", "DATA", "--out", "RUN"], "index directory not found"),
    (["search", "--index", "IDX", "--dataset", "DATA", "--split", "dev", "--out", "RUN"], "no qrels for split 'dev'"),
    (["evaluate", "GOOD"], "give --dataset DIR"),
    (["evaluate", "--dataset", "DATA", "GOOD", "-m", "ndcg@ten"], "unknown metric 'ndcg@ten'"),
    (["evaluate", "--dataset", "DATA", "BAD"], "bad.run:2: expected 6 columns"),
    (["evaluate", "--dataset", "DATA", "GOOD", "GOOD"], "given twice"),
    (["evaluate", "--dataset", "DATA", "GOOD", "--test", "magic"], "unknown significance test"),
    (["fuse", "GOOD", "GOOD", "--out", "RUN", "--weights", "1,x"], "--weights must be comma-separated numbers"),
    (["fuse", "GOOD", "--out", "RUN", "--method", "borda"], "unknown fusion method 'borda'"),
    (["fuse", "GOOD", "GOOD", "--out", "RUN", "--k", "0"], "must be at least 1"),
    (["mine", "--run", "GOOD", "--qrels", "QRELS", "--out", "RUN"], "the dataset has no queries file"),
])
def test_bad_input_exits_2_with_a_message(run_cli, tiny_beir: Path, tmp_path: Path, args, message) -> None:
    idx = tmp_path / "idx"
    assert run_cli("index", "--dataset", tiny_beir, "--out", idx)[0] == 0
    (tmp_path / "good.run").write_text("q1 Q0 d1 1 2.0 t\n")
    (tmp_path / "bad.run").write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2\n")
    names = {"DATA": tiny_beir, "IDX": idx, "RUN": tmp_path / "out.run", "NOWHERE": tmp_path / "nowhere",
             "GOOD": tmp_path / "good.run", "BAD": tmp_path / "bad.run", "QRELS": tiny_beir / "qrels" / "test.tsv"}
    code, out, err = run_cli(*[names.get(a, a) for a in args])
    assert code == 2
    assert message in err and out == ""
    assert not (tmp_path / "out.run").exists()


def test_a_bug_is_not_reported_as_a_user_error(run_cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import nestrank.retrieve.fusion

    def broken(*args, **kwargs):
        raise KeyError("a bug deep inside")

    monkeypatch.setattr(nestrank.retrieve.fusion, "fuse", broken)
    Run({"q1": [("d1", 1.0)]}).write_trec(tmp_path / "a.run")
    with pytest.raises(KeyError, match="a bug deep inside"):  # a traceback, not "error: ..." and exit 2
        run_cli("fuse", tmp_path / "a.run", "--out", tmp_path / "f.run")


def test_index_refuses_to_overwrite_a_non_index_folder(run_cli, tiny_beir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_text("meow")
    code, _, err = run_cli("index", "--dataset", tiny_beir, "--out", folder)
    assert code == 2 and "not a nestrank index" in err
    assert (folder / "cat.jpg").read_text() == "meow"


@pytest.mark.slow
@pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason="SciFact not found next to the repo")
def test_scifact_bm25_through_the_cli_matches_pytrec_eval(run_cli, tmp_path: Path) -> None:
    idx, run_file = tmp_path / "idx", tmp_path / "bm25.run"
    assert run_cli("index", "--dataset", SCIFACT, "--method", "bm25", "--out", idx)[0] == 0
    assert run_cli("search", "--index", idx, "--dataset", SCIFACT, "--split", "test", "--k", "100",
                   "--out", run_file)[0] == 0
    code, out, err = run_cli("evaluate", "--dataset", SCIFACT, "--split", "test", run_file, "--json",
                             "--metrics", "ndcg@10,recall@100,map,p@10,rr,ndcg@100,mrr@10")
    assert code == 0, err
    ours = json.loads(out)[str(run_file)]
    assert ours["nDCG@10"] >= 0.68
    run = Run.read_trec(run_file)
    qrels = Qrels.read(SCIFACT / "qrels" / "test.tsv").to_dict()
    assert set(run) == set(qrels) and all(run[q] for q in qrels)  # nothing missing: plain means compare
    measures = {"nDCG@10": "ndcg_cut_10", "R@100": "recall_100", "AP": "map", "P@10": "P_10", "RR": "recip_rank",
                "nDCG@100": "ndcg_cut_100"}
    theirs = pytrec_eval.RelevanceEvaluator(qrels, set(measures.values())).evaluate(run.to_dict())
    for name, trec_name in measures.items():
        expected = sum(values[trec_name] for values in theirs.values()) / len(theirs)
        assert abs(ours[name] - expected) < 1e-6, name
    top10 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run.top(10).to_dict())
    assert abs(ours["RR@10"] - sum(v["recip_rank"] for v in top10.values()) / len(top10)) < 1e-6


def test_index_skip_empty_documents(run_cli, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "a", "text": "alpha"}\n{"_id": "b", "title": "", "text": ""}\n'
                      '{"_id": "c", "text": "gamma"}\n', encoding="utf-8")
    code, _, err = run_cli("index", "--corpus", corpus, "--out", tmp_path / "idx")
    assert code == 2 and "corpus.jsonl:2" in err and "empty" in err
    code, _, err = run_cli("index", "--corpus", corpus, "--out", tmp_path / "idx", "--skip-empty")
    assert code == 0, err
    assert "indexed 2 documents" in err
