"""Cached first-stage runs (nestrank.pipeline.cached_run/cached_runs): reused while they verify, else searched again."""

from __future__ import annotations

import logging

import pytest
from helpers import TINY_DOCS, TINY_QUERIES

from nestrank.data import Corpus, Document, Run
from nestrank.errors import ConfigError
from nestrank.pipeline import FirstStage, FirstStageSection, cached_run, cached_runs
from nestrank.pipeline.run_cache import RECORD_SUFFIX
from nestrank.retrieve.bm25 import BM25Index

CORPUS = Corpus.from_documents(Document(d["_id"], d["text"], d["title"]) for d in TINY_DOCS)
QUERIES = {q["_id"]: q["text"] for q in TINY_QUERIES}


class Counting:
    """A BM25 first stage that counts how often it is built (``open``: the factory) and searched."""

    def __init__(self) -> None:
        self.opened = self.searched = 0

    def open(self) -> Counting:
        self.opened += 1
        self.stage = FirstStage.open(FirstStageSection(method="bm25"), CORPUS)
        return self

    def search(self, queries, k):
        self.searched += 1
        return self.stage.search(queries, k)


def same(a: Run, b: Run) -> bool:
    return a.to_dict() == b.to_dict() and all(a.doc_ids(q) == b.doc_ids(q) for q in a)


def test_runs_are_searched_once_then_read_back(tmp_path):
    stage = Counting()
    splits = {"train": {"q3": QUERIES["q3"]}, "test": {q: QUERIES[q] for q in ("q1", "q2")}}
    paths = {name: tmp_path / f"bm25.{name}.run" for name in splits}
    runs = cached_runs(stage.open, splits, paths, k=3, tag="bm25")
    assert (stage.opened, stage.searched) == (1, 2)  # the index is built once for both
    assert all((tmp_path / f"bm25.{name}.run{RECORD_SUFFIX}").is_file() for name in splits)
    assert set(runs["test"]) == {"q1", "q2"} and runs["test"].doc_ids("q1")[0] == "d1"
    again = cached_runs(stage.open, splits, paths, k=3, tag="bm25")
    assert (stage.opened, stage.searched) == (1, 2)  # nothing built or searched
    assert all(same(runs[name], again[name]) for name in splits)
    # the cached file is the search's own run
    assert same(Run.read_trec(paths["test"]), BM25Index.build(CORPUS).search(splits["test"], k=3))


def test_a_stage_object_is_used_as_it_is(tmp_path):
    index = BM25Index.build(CORPUS)
    run = cached_run(index, QUERIES, tmp_path / "x.run", k=2)
    assert same(run, index.search(QUERIES, k=2))
    with pytest.raises(ConfigError, match="no path for the query set 'test'"):
        cached_runs(index, {"train": QUERIES, "test": QUERIES}, {"train": tmp_path / "t.run"})


@pytest.mark.parametrize(("change", "reason"), [
    ("damage", "differs from its checksum"),
    ("truncate", "differs from its checksum"),
    ("no record", "no x.run.cache.json"),
    ("bad record", "x.run.cache.json is unreadable"),
    ("queries", "cached for other queries"),
    ("k", "cached for other k"),
    ("built_from", "cached for other built_from"),
])
def test_a_run_that_does_not_verify_is_searched_again(tmp_path, caplog, change, reason):
    stage, path = Counting(), tmp_path / "x.run"
    built = {"method": "bm25"}
    first = cached_run(stage.open, QUERIES, path, k=3, built_from=built)
    queries, k = dict(QUERIES), 3
    if change == "damage":
        text = path.read_text()
        path.write_text(text.replace(" Q0 d1 ", " Q0 d4 ", 1))  # same size, other content
        assert path.read_text() != text and path.stat().st_size == len(text)
    elif change == "truncate":
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))
    elif change == "no record":
        path.with_name(path.name + RECORD_SUFFIX).unlink()
    elif change == "bad record":
        path.with_name(path.name + RECORD_SUFFIX).write_text("{not json")
    elif change == "queries":
        queries["q1"] = "why do dogs bark"
    elif change == "k":
        k = 2
    else:
        built = {"method": "bm25", "corpus": "another"}
    with caplog.at_level(logging.WARNING, logger="nestrank"):
        again = cached_run(stage.open, queries, path, k=k, built_from=built)
    assert stage.searched == 2
    assert any(reason in r.getMessage() and "searching again" in r.getMessage() for r in caplog.records)
    if change in ("damage", "truncate", "no record", "bad record"):
        assert same(again, first) and same(Run.read_trec(path), first)  # the run is written again, whole
    third = cached_run(stage.open, queries, path, k=k, built_from=built)  # and now verifies
    assert stage.searched == 2 and same(third, again)
