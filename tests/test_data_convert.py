"""``nestrank.data.convert`` and the ``nestrank data convert`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nestrank.cli import (
    app,
    commands,  # noqa: F401  (registers the commands)
)
from nestrank.data import Corpus, Qrels, Queries, Run
from nestrank.data.convert import convert, output_format
from nestrank.data.groups import read_groups
from nestrank.errors import ConfigError, DataFormatError


def test_corpus_jsonl_to_tsv_and_back(tiny_beir, tmp_path):
    done = convert("corpus", tiny_beir / "corpus.jsonl", tmp_path / "c.tsv")
    assert (done.fmt, done.count) == ("tsv", 5)
    assert (tmp_path / "c.tsv").read_text().splitlines()[2] == "d3\tFish swim in schools to avoid predators."
    convert("corpus", tmp_path / "c.tsv", tmp_path / "c.out", to="jsonl")
    assert list(Corpus.open(tmp_path / "c.out", fmt="jsonl")) == list(Corpus.open(tiny_beir / "corpus.jsonl"))


def test_corpus_skip_empty(tmp_path):
    (tmp_path / "c.tsv").write_text("a\tx\nb\t \n")
    with pytest.raises(DataFormatError, match="empty title and text"):
        convert("corpus", tmp_path / "c.tsv", tmp_path / "c.jsonl")
    assert convert("corpus", tmp_path / "c.tsv", tmp_path / "c.jsonl", skip_empty=True).count == 1


def test_queries_and_qrels(tiny_beir, tmp_path):
    assert convert("queries", tiny_beir / "queries.jsonl", tmp_path / "q.tsv").count == 3
    assert Queries.read(tmp_path / "q.tsv")["q2"] == "where do birds go in winter"
    done = convert("qrels", tiny_beir / "qrels" / "test.tsv", tmp_path / "test.qrels",
                   corpus=tiny_beir / "corpus.jsonl", queries=tiny_beir / "queries.jsonl")
    assert (done.fmt, done.count) == ("trec", 3)
    assert (tmp_path / "test.qrels").read_text().splitlines()[0] == "q1 0 d1 1"
    convert("qrels", tmp_path / "test.qrels", tmp_path / "back.tsv")
    assert (tmp_path / "back.tsv").read_text().startswith("query-id\tcorpus-id\tscore\n")
    assert Qrels.read(tmp_path / "back.tsv").to_dict() == Qrels.read(tiny_beir / "qrels" / "test.tsv").to_dict()


def test_qrels_unknown_document_is_reported(tiny_beir, tmp_path):
    (tmp_path / "q.tsv").write_text("q1\td1\t1\nq1\tzzz\t1\n")
    with pytest.raises(DataFormatError, match=r"q\.tsv:2: .*'zzz'"):
        convert("qrels", tmp_path / "q.tsv", tmp_path / "q.trec", corpus=tiny_beir / "corpus.jsonl")
    assert not (tmp_path / "q.trec").exists()


def test_run_trec_to_tsv_with_top_k(tmp_path):
    Run.from_scores({"1": {"a": 0.5, "b": 0.9, "c": 0.1}}).write_trec(tmp_path / "r.trec")
    done = convert("run", tmp_path / "r.trec", tmp_path / "r.tsv", top_k=2)
    assert done.count == 2
    assert (tmp_path / "r.tsv").read_text() == "1\tb\t1\n1\ta\t2\n"
    convert("run", tmp_path / "r.tsv", tmp_path / "again.trec", tag="x")
    assert (tmp_path / "again.trec").read_text().splitlines()[0] == "1 Q0 b 1 1.0 x"


def test_groups_ids_to_passages_to_flag(tiny_beir, tmp_path):
    src = tmp_path / "ids.jsonl"
    src.write_text(json.dumps({"query_id": "q1", "positive_document_ids": ["d1"], "negative_document_ids": ["d2"]}) + "\n")
    with pytest.raises(DataFormatError, match="--queries"):
        convert("groups", src, tmp_path / "p.jsonl", corpus=tiny_beir / "corpus.jsonl")
    done = convert("groups", src, tmp_path / "p.jsonl", corpus=tiny_beir / "corpus.jsonl",
                   queries=tiny_beir / "queries.jsonl")
    assert (done.fmt, done.count) == ("tevatron-passages", 1)
    row = json.loads((tmp_path / "p.jsonl").read_text())
    assert row["query"] == "why do cats purr"
    assert row["positive_passages"] == [{"docid": "d1", "title": "Cats", "text": "Cats purr when they are happy."}]
    convert("groups", tmp_path / "p.jsonl", tmp_path / "f.jsonl", to="flagembedding")
    assert json.loads((tmp_path / "f.jsonl").read_text()) == {
        "query": "why do cats purr", "pos": ["Cats Cats purr when they are happy."], "neg": ["Dogs Dogs bark at strangers."]}
    (group,) = read_groups(tmp_path / "f.jsonl")
    assert group.query == "why do cats purr"


def test_bad_requests():
    with pytest.raises(ConfigError, match="use one of corpus, queries, qrels, run, groups"):
        output_format("vectors", "x.jsonl")
    with pytest.raises(ConfigError, match="use one of trec, tsv"):
        output_format("run", "x.txt", "jsonl")
    with pytest.raises(ConfigError, match="--to jsonl"):
        output_format("corpus", "out.parquet")


def test_cli_convert(tiny_beir, tmp_path):
    out = tmp_path / "collection.tsv"
    result = CliRunner().invoke(app, ["data", "convert", "--kind", "corpus", str(tiny_beir / "corpus.jsonl"), str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 5 corpus records" in result.output
    assert len(Corpus.open(out)) == 5
    result = CliRunner().invoke(app, ["data", "convert", "-k", "qrels", "--to", "trec",
                                      str(tiny_beir / "qrels" / "train.tsv"), str(tmp_path / "train.txt")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "train.txt").read_text() == "q3 0 d5 1\n"


def test_cli_error_is_one_clear_line(tmp_path):
    bad = tmp_path / "queries.jsonl"
    bad.write_text('{"_id": "1", "text": "a"}\n{"_id": "1", "text": "b"}\n')
    proc = subprocess.run([sys.executable, "-c", "from nestrank.cli import main; main()", "data", "convert",
                           "--kind", "queries", str(bad), str(tmp_path / "q.tsv")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {bad}:2: duplicate query id '1' (first at line 1) "
                                   "(fix: give every query a unique id)")
    assert not Path(tmp_path / "q.tsv").exists()
