"""Corpus, queries, qrels and runs: every reader's bad-input errors and every writer's round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nestrank.data import Corpus, Dataset, Document, Qrels, Queries, Run
from nestrank.data.corpus import write_corpus
from nestrank.errors import ConfigError, DataFormatError, NestrankError


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def raises_at(path: Path, line: int | None, fix: str):
    """Context manager: a DataFormatError naming ``path``, ``line`` and a fix containing ``fix``."""

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(DataFormatError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            err = self.info.value
            assert err.path == str(path), str(err)
            assert err.line == line, str(err)
            assert err.fix and fix in err.fix, str(err)
            where = f"{path}:{line}" if line is not None else str(path)
            assert str(err).startswith(where) and "(fix: " in str(err)
            return handled

    return _Check()


# -- corpus ----------------------------------------------------------------------------------
CORPUS_CASES = {
    "bad json": ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n', 2, "JSON object per line"),
    "not an object": ('{"_id": "a", "text": "x"}\n["b", "y"]\n', 2, "JSON object"),
    "missing id": ('{"_id": "a", "text": "x"}\n{"text": "y"}\n', 2, "give every line an id"),
    "missing text": ('{"_id": "a", "title": "t"}\n', 1, "'text'"),
    "non-string text": ('{"_id": "a", "text": 5}\n', 1, "JSON strings"),
    "duplicate id": ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"}\n{"_id": "a", "text": "z"}\n', 3, "unique id"),
    "empty text": ('{"_id": "a", "text": "x"}\n{"_id": "b", "title": "", "text": "  "}\n', 2, "on_empty='skip'"),
    "empty id": ('{"_id": "", "text": "x"}\n', 1, "non-empty id"),
}


@pytest.mark.parametrize("case", sorted(CORPUS_CASES))
def test_corpus_jsonl_errors_name_file_line_and_fix(tmp_path, case):
    text, line, fix = CORPUS_CASES[case]
    path = write(tmp_path / "corpus.jsonl", text)
    with raises_at(path, line, fix):
        Corpus.open(path)


def test_corpus_wrong_encoding(tmp_path):
    path = write(tmp_path / "corpus.jsonl", b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "caf\xe9"}\n')
    with raises_at(path, 2, "UTF-8") as info:
        Corpus.open(path)
    assert "not valid UTF-8" in str(info.value)


def test_corpus_tsv_column_count(tmp_path):
    path = write(tmp_path / "collection.tsv", "0\tfine\n1\ta\tb\tc\n")
    with raises_at(path, 2, "id<TAB>text"):
        Corpus.open(path)


def test_corpus_unknown_suffix_and_missing_file(tmp_path):
    with raises_at(tmp_path / "c.xml", None, ".jsonl or .tsv"):
        Corpus.open(write(tmp_path / "c.xml", "x"))
    with raises_at(tmp_path / "nope.jsonl", None, "check the path"):
        Corpus.open(tmp_path / "nope.jsonl")


def test_corpus_skip_empty_and_bom(tmp_path):
    path = write(tmp_path / "c.jsonl", b'\xef\xbb\xbf{"_id": "a", "text": "x"}\n\n{"_id": "b", "text": ""}\n{"id": 7, "contents": "y"}\n')
    corpus = Corpus.open(path, on_empty="skip")
    assert corpus.ids == ["a", "7"]
    assert [d.id for d in corpus] == ["a", "7"]
    assert corpus.get_many(["7", "a"]) == [Document("7", "y"), Document("a", "x")]


def test_corpus_streams_and_seeks(tiny_beir):
    corpus = Corpus.open(tiny_beir / "corpus.jsonl")
    assert corpus._docs is None  # nothing but ids and offsets in memory
    assert corpus._offsets.dtype.name == "int64" and len(corpus._offsets) == 5
    assert corpus["d4"] == Document("d4", "Birds migrate south in winter.", "Birds")
    assert corpus["d3"].full_text == "Fish swim in schools to avoid predators."
    assert next(corpus.texts()) == "Cats Cats purr when they are happy."
    with pytest.raises(KeyError, match="unknown document id"):
        corpus["d9"]


def test_unknown_ids_are_nestrank_errors_and_still_key_errors(tiny_beir):
    corpus, queries = Corpus.open(tiny_beir / "corpus.jsonl"), Queries.read(tiny_beir / "queries.jsonl")
    for lookup in (lambda: corpus["d9"], lambda: corpus.get_many(["d1", "d9"]), lambda: queries["q9"]):
        with pytest.raises(NestrankError) as info:
            lookup()
        assert isinstance(info.value, KeyError)  # Mapping semantics: `in`, .get() and except KeyError keep working
        assert str(info.value).startswith("unknown ") and not str(info.value).startswith("'")
    assert "q9" not in queries and queries.get("q9") is None and queries.get("q1") == "why do cats purr"


def test_msmarco_collection_tsv(tmp_path):
    corpus = Corpus.open(write(tmp_path / "collection.tsv", "0\tThe presence of communication\n1\tTitle\tBody text\n"))
    assert list(corpus) == [Document("0", "The presence of communication"), Document("1", "Body text", "Title")]


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_corpus_round_trip(tiny_beir, tmp_path, fmt):
    corpus = Corpus.open(tiny_beir / "corpus.jsonl")
    out = tmp_path / f"out.{fmt}"
    assert corpus.write(out) == 5
    assert list(Corpus.open(out)) == list(corpus)


def test_corpus_tsv_writer_flattens_whitespace_and_rejects_bad_ids(tmp_path):
    out = tmp_path / "c.tsv"
    write_corpus(out, [Document("a", "line one\nline\ttwo", "A\ttitle")])
    assert list(Corpus.open(out)) == [Document("a", "line one line two", "A title")]
    with raises_at(tmp_path / "bad.tsv", None, "JSONL"):
        write_corpus(tmp_path / "bad.tsv", [Document("a\tb", "x")])
    assert not (tmp_path / "bad.tsv").exists()


# -- queries ---------------------------------------------------------------------------------
QUERY_CASES = {
    "bad json": ("q.jsonl", '{"_id": "1", "text": "a"}\n{"_id": "2", "text": "b"\n', 2, "JSON object per line"),
    "missing id": ("q.jsonl", '{"text": "a"}\n', 1, '{"_id": "q1"'),
    "missing text": ("q.jsonl", '{"_id": "1"}\n', 1, "'text' string"),
    "duplicate id": ("q.jsonl", '{"_id": "1", "text": "a"}\n{"_id": "1", "text": "b"}\n', 2, "unique id"),
    "empty text": ("q.tsv", "1\ta\n2\t \n", 2, "remove the query"),
    "tsv columns": ("q.tsv", "1\ta\tb\n", 1, "id<TAB>text"),
    "wrong encoding": ("q.tsv", b"1\ta\n2\t\xff\xfe\n", 2, "UTF-8"),
}


@pytest.mark.parametrize("case", sorted(QUERY_CASES))
def test_queries_errors_name_file_line_and_fix(tmp_path, case):
    name, text, line, fix = QUERY_CASES[case]
    path = write(tmp_path / name, text)
    with raises_at(path, line, fix):
        Queries.read(path)


@pytest.mark.parametrize("suffix", ["jsonl", "tsv"])
def test_queries_round_trip(tiny_beir, tmp_path, suffix):
    queries = Queries.read(tiny_beir / "queries.jsonl")
    queries.write(tmp_path / f"q.{suffix}")
    assert dict(Queries.read(tmp_path / f"q.{suffix}")) == dict(queries)


# -- qrels -----------------------------------------------------------------------------------
QRELS_CASES = {
    "columns": ("q1 d1\n", 1, "qid 0 docid grade"),
    "inconsistent columns": ("q1 0 d1 1\nq2 d2 1\n", 2, "one layout"),
    "grade": ("q1\td1\t1\nq1\td2\thigh\n", 2, "integer grades"),
    "duplicate": ("q1 0 d1 1\nq1 0 d1 2\n", 2, "one judgement"),
    "wrong encoding": (b"q1 0 d1 1\nq\xe92 0 d1 1\n", 2, "UTF-8"),
}


@pytest.mark.parametrize("case", sorted(QRELS_CASES))
def test_qrels_errors_name_file_line_and_fix(tmp_path, case):
    text, line, fix = QRELS_CASES[case]
    path = write(tmp_path / "qrels.txt", text)
    with raises_at(path, line, fix):
        Qrels.read(path)


def test_qrels_formats_agree(tmp_path):
    beir = Qrels.read(write(tmp_path / "a.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\nq2\td1\t2\n"))
    trec = Qrels.read(write(tmp_path / "b.txt", "q1 0 d1 1\nq1 0 d2 0\nq2 0 d1 2\n"))
    assert beir.to_dict() == trec.to_dict() == {"q1": {"d1": 1, "d2": 0}, "q2": {"d1": 2}}
    assert beir.relevant("q2", min_grade=2) == {"d1"}


def test_qrels_unknown_ids_name_the_line(tiny_beir, tmp_path):
    corpus, queries = Corpus.open(tiny_beir / "corpus.jsonl"), Queries.read(tiny_beir / "queries.jsonl")
    path = write(tmp_path / "qrels.tsv", "q1\td1\t1\nq9\td2\t1\n")
    with raises_at(path, 2, "one dataset"):
        Qrels.read(path).check_ids(queries=queries)
    path = write(tmp_path / "qrels2.tsv", "q1\td1\t1\nq2\td2\t1\nq2\td77\t0\n")
    with raises_at(path, 3, "qrels and corpus match") as info:
        Qrels.read(path).check_ids(queries=queries, corpus=corpus)
    assert "'d77'" in str(info.value)


@pytest.mark.parametrize("writer", ["write_tsv", "write_trec"])
def test_qrels_round_trip(tiny_beir, tmp_path, writer):
    qrels = Qrels.read(tiny_beir / "qrels" / "test.tsv")
    getattr(qrels, writer)(tmp_path / "out")
    assert Qrels.read(tmp_path / "out").to_dict() == qrels.to_dict()


# -- runs ------------------------------------------------------------------------------------
RUN_CASES = {
    "columns": ("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 0.4\n", 2, "TREC run format"),
    "score": ("q1 Q0 d1 1 high t\n", 1, "5th column"),
    "nan": ("q1 Q0 d1 1 nan t\n", 1, "NaN"),
    "duplicate": ("q1 Q0 d1 1 0.5 t\nq1 Q0 d1 2 0.4 t\n", 2, "one line per"),
    "wrong encoding": (b"q1 Q0 d1 1 0.5 t\nq1 Q0 d\xff 2 0.4 t\n", 2, "UTF-8"),
    "tsv rank": ("q1\td1\t1\nq1\td2\t0\n", 2, "ranks start at 1"),
}


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_run_errors_name_file_line_and_fix(tmp_path, case):
    text, line, fix = RUN_CASES[case]
    path = write(tmp_path / "run.txt", text)
    with raises_at(path, line, fix):
        Run.read(path)


def test_run_empty_and_missing(tmp_path):
    with raises_at(tmp_path / "empty.txt", None, "at least one line"):
        Run.read_trec(write(tmp_path / "empty.txt", "\n"))
    with raises_at(tmp_path / "none.txt", None, "check the path"):
        Run.read_trec(tmp_path / "none.txt")


def test_run_unknown_ids_name_the_line(tiny_beir, tmp_path):
    corpus, queries = Corpus.open(tiny_beir / "corpus.jsonl"), Queries.read(tiny_beir / "queries.jsonl")
    path = write(tmp_path / "run.txt", "q1 Q0 d1 1 2.0 t\nq1 Q0 dX 2 1.0 t\n")
    run = Run.read_trec(path)
    run.check_ids(queries=queries)
    with raises_at(path, 2, "made on this corpus") as info:
        run.check_ids(corpus=corpus)
    assert "'dX'" in str(info.value)
    path = write(tmp_path / "run2.txt", "q1 Q0 d1 1 2.0 t\nqZ Q0 d1 1 2.0 t\n")
    with raises_at(path, 2, "one dataset"):
        Run.read_trec(path).check_ids(queries=queries, corpus=corpus)


def test_run_ties_and_round_trips(tmp_path):
    run = Run.from_scores({"q1": {"a": 1.0, "c": 1.0, "b": 3.0, "z": -math.inf}, "q2": {"x": 0.1}})
    assert run.doc_ids("q1") == ["b", "c", "a", "z"]  # ties: doc id descending, as trec_eval
    run.write_trec(tmp_path / "r.trec", tag="mine")
    assert (tmp_path / "r.trec").read_text().splitlines()[0] == "q1 Q0 b 1 3.0 mine"
    back = Run.read(tmp_path / "r.trec")
    assert back.to_dict() == run.to_dict() and back.path == tmp_path / "r.trec"
    run.write_tsv(tmp_path / "r.tsv")
    tsv = Run.read(tmp_path / "r.tsv")
    assert [tsv.doc_ids(q) for q in tsv] == [run.doc_ids(q) for q in run]
    assert tsv["q1"][0] == ("b", 1.0)


def test_run_writer_rejects_ids_with_spaces(tmp_path):
    with raises_at(tmp_path / "r.trec", None, "fix the id"):
        Run.from_scores({"q 1": {"a": 1.0}}).write_trec(tmp_path / "r.trec")
    assert not (tmp_path / "r.trec").exists()


# -- dataset ---------------------------------------------------------------------------------
def test_dataset_open_and_splits(tiny_beir):
    ds = Dataset.open(tiny_beir)
    assert ds.splits == ["test", "train"]
    assert list(ds.split_queries("test")) == ["q1", "q2"]
    assert ds.qrels("train").to_dict() == {"q3": {"d5": 1}}
    with pytest.raises(DataFormatError, match="choose one of: test, train"):
        ds.qrels("dev")


def test_dataset_from_msmarco_files(tmp_path):
    write(tmp_path / "collection.tsv", "0\tpassage zero\n1\tpassage one\n")
    write(tmp_path / "queries.dev.tsv", "100\twhat is zero\n")
    write(tmp_path / "qrels.dev.tsv", "100\t0\t0\t1\n")
    ds = Dataset.from_files(tmp_path / "collection.tsv", tmp_path / "queries.dev.tsv", {"dev": tmp_path / "qrels.dev.tsv"})
    assert ds.split_queries("dev") == {"100": "what is zero"}
    assert ds.qrels("dev").to_dict() == {"100": {"0": 1}}
    assert len(ds.corpus) == 2
    assert json.loads(json.dumps(ds.qrels("dev").to_dict()))  # plain types


def test_dataset_parts_are_optional_and_missing_ones_fail_clearly(tiny_beir):
    only_qrels = Dataset.from_files(qrels={"test": tiny_beir / "qrels" / "test.tsv"})
    assert only_qrels.corpus_path is None and only_qrels.queries_path is None
    assert only_qrels.qrels("test").to_dict()["q1"] == {"d1": 1}
    with pytest.raises(ConfigError, match="no corpus file"):
        len(only_qrels.corpus)
    with pytest.raises(ConfigError, match="no queries file"):
        only_qrels.split_queries("test")
    only_corpus = Dataset(corpus_path=tiny_beir / "corpus.jsonl")
    assert len(only_corpus.corpus) == 5 and only_corpus.open_corpus() is not only_corpus.corpus
    with pytest.raises(ConfigError, match="no queries file"):
        len(only_corpus.queries)
