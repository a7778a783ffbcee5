"""The public Python API checks its arguments at the entry points, naming the parameter (no AttributeError from inside)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import make_corpus

from nestrank.data import Corpus, Document, Qrels, Queries, Run
from nestrank.errors import ArgumentTypeError, ConfigError, NestrankError
from nestrank.models.reranker import Reranker
from nestrank.pipeline import Pipeline
from nestrank.pipeline.config import FirstStageSection
from nestrank.pipeline.first_stage import FirstStage
from nestrank.rerank import rerank_run
from nestrank.retrieve import BM25Index, fuse, open_index

CORPUS = make_corpus(12)
QUERIES = Queries({"q1": "text number 3", "q2": "title 5"})


class WordOverlap(Reranker):
    """A real (if simple) reranker: the number of query words in the document."""

    def score(self, queries, documents, *, config=None, batch_tokens=None, show_progress=False) -> np.ndarray:
        query_list, docs = self.pairs(queries, documents)
        return np.array([len(set(q.split()) & set(d.full_text.split())) for q, d in zip(query_list, docs, strict=True)],
                        dtype=np.float32)


@pytest.fixture(scope="module")
def bm25() -> BM25Index:
    return BM25Index.build(CORPUS)


@pytest.fixture(scope="module")
def run(bm25) -> Run:
    return bm25.search(QUERIES, 5)


@contextlib.contextmanager
def raises(error: type[Exception], *names: str) -> Iterator[None]:
    """The block raises nestrank's ``error`` whose message contains every one of ``names``."""
    with pytest.raises(error) as info:
        yield
    assert isinstance(info.value, NestrankError), type(info.value)
    for name in names:
        assert name in str(info.value), (name, str(info.value))


def test_retrieve_entry_points(bm25, tmp_path: Path):
    with raises(ArgumentTypeError, "queries must be a mapping {query_id: text}, got a str"):
        bm25.search("a string")
    with raises(ArgumentTypeError, "queries must be a mapping", "enumerate(texts)"):
        bm25.search(["what is a cat"])
    with raises(ArgumentTypeError, "queries['q'] is a int"):
        bm25.search({"q": 3})
    with raises(ArgumentTypeError, "k must be an integer"):
        bm25.search(QUERIES, k="10")
    with raises(ConfigError, "k must be at least 1"):
        bm25.search(QUERIES, k=0)
    with raises(ArgumentTypeError, "corpus must be a nestrank.data.Corpus, got str"):
        BM25Index.build("corpus.jsonl")
    with raises(ArgumentTypeError, "corpus: item 1 is a str, not a nestrank.data.Document"):
        BM25Index.build(["a text", "another"])
    with raises(ArgumentTypeError, "directory must be a path"):
        open_index(None)
    with raises(ArgumentTypeError, "runs must be a list of Runs", "fix: [run]"):
        fuse(bm25.search(QUERIES, 3))


def test_rerank_run_entry_point(run):
    reranker = WordOverlap()
    assert rerank_run(run, QUERIES, CORPUS, reranker, rerank_depth=3, show_progress=False).doc_ids("q1")
    with raises(ArgumentTypeError, "queries must be a mapping", "the order is run, queries, corpus, reranker"):
        rerank_run(run, CORPUS, QUERIES, reranker)
    with raises(ArgumentTypeError, "corpus must be a nestrank.data.Corpus, got dict"):
        rerank_run(run, QUERIES, {"d1": "text"}, reranker)
    with raises(ArgumentTypeError, "reranker must be a nestrank Reranker", "got str"):
        rerank_run(run, QUERIES, CORPUS, "smollm2-135m")
    with raises(ArgumentTypeError, "run must be a nestrank.data.Run", "got Queries"):
        rerank_run(QUERIES, run, CORPUS, reranker)
    with raises(ConfigError, "rerank_depth", "must be an integer"):
        rerank_run(run, QUERIES, CORPUS, reranker, rerank_depth="20")


def test_reranker_entry_points():
    reranker = WordOverlap()
    with raises(ArgumentTypeError, "queries must be one query string"):
        reranker.score(None, ["a document"])
    with raises(ArgumentTypeError, "documents must be a list of documents", "got NoneType"):
        reranker.score("a query", None)
    with raises(ArgumentTypeError, "top_k must be an integer"):
        reranker.rank("a query", ["a document"], top_k="2")


def test_pipeline_entry_points(bm25):
    pipeline = Pipeline(FirstStage(FirstStageSection(k=3), bm25=bm25), CORPUS)
    assert pipeline.search(QUERIES).run.doc_ids("q1")
    with raises(ArgumentTypeError, "queries must be a mapping", "for one query, use ask(text)"):
        pipeline.search(["text number 3"])
    with raises(ArgumentTypeError, "query must be one query string"):
        pipeline.ask(["text number 3"])


def test_data_entry_points():
    with raises(ArgumentTypeError, "path must be a path"):
        Corpus.open(42)
    with raises(ArgumentTypeError, "docs: item 1 is a str"):
        Corpus.from_documents(["text"])
    with raises(ArgumentTypeError, "docs must be an iterable", "got str"):
        Corpus.from_documents("text")
    with raises(ArgumentTypeError, "items['q1'] is a int"):
        Queries({"q1": 1})
    with raises(ArgumentTypeError, "judgements['q1']['d1']: the grade 0.5 is not an integer"):
        Qrels({"q1": {"d1": 0.5}})
    assert Qrels({"q1": {"d1": np.int64(2)}})["q1"] == {"d1": 2}
    with raises(ArgumentTypeError, "ranked must be a mapping"):
        Run([("d1", 1.0)])


def test_dense_encoder_rejects_a_string_for_a_list(word_llama_dir, one_torch_thread):
    from nestrank.models.dense import DenseEncoder

    encoder = DenseEncoder.from_pretrained(word_llama_dir, device="cpu", show_progress=False)
    assert encoder.encode_queries(["what is dna"]).shape == (1, encoder.dim)
    with raises(ArgumentTypeError, "texts must be a list of query texts, got one str", "fix: ['what is dna']"):
        encoder.encode_queries("what is dna")
    with raises(ArgumentTypeError, "docs must be a list of documents or passage texts", "wrap it in a list"):
        encoder.encode_passages(Document("d1", "dna"))
    with raises(ArgumentTypeError, "name_or_path must be a model name or path"):
        DenseEncoder.from_pretrained(None)


def test_matryoshka_score_rejects_a_missing_query(tiny_llama_dir, one_torch_thread):
    from nestrank.models.matryoshka import MatryoshkaReranker

    reranker = MatryoshkaReranker.from_pretrained(tiny_llama_dir, device="cpu")
    with raises(ArgumentTypeError, "queries must be one query string"):
        reranker.score(None, ["a document"])
