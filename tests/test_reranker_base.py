"""The Reranker interface: input validation, rank() ordering, ids and top_k."""

from __future__ import annotations

import numpy as np
import pytest

from nestrank.data import Document
from nestrank.errors import ConfigError
from nestrank.models.reranker import RankedDocument, Reranker, RerankInputError


class WordOverlap(Reranker):
    """Scores by the number of query words in the document (a deterministic toy engine)."""

    def score(self, queries, documents, *, config=None, batch_tokens=None, show_progress=False):
        query_list, docs = self.pairs(queries, documents)
        self.resolve_batch_tokens(batch_tokens)
        bonus = 0.0 if config is None else float(config)
        return np.array([len(set(q.split()) & set(d.full_text.split())) + bonus
                         for q, d in zip(query_list, docs, strict=True)], dtype=np.float32)


class TwoExits(WordOverlap):
    def score(self, queries, documents, **kwargs):
        one = super().score(queries, documents, **kwargs)
        return np.stack([one, one], axis=1)


def test_rank_orders_by_score_with_ids_from_documents():
    docs = [Document("a", "nothing here"), Document("b", "red apple", title="apple"), Document("c", "apple pie")]
    ranked = WordOverlap().rank("red apple", docs)
    assert [r.doc_id for r in ranked] == ["b", "c", "a"]
    assert [r.rank for r in ranked] == [1, 2, 3]
    assert ranked[0] == RankedDocument("b", 2.0, 1, docs[1])


def test_rank_plain_strings_use_positions_and_ties_keep_input_order():
    ranked = WordOverlap().rank("x", ["x y", "z", "x", "w"], top_k=3)
    assert [r.doc_id for r in ranked] == ["0", "2", "1"]
    assert ranked[0].document == "x y"


def test_config_is_passed_through():
    ranked = WordOverlap().rank("x", ["x"], config=5)
    assert ranked[0].score == 6.0


def test_score_accepts_one_query_per_document():
    scores = WordOverlap().score(["a", "b"], ["a", "a"])
    np.testing.assert_array_equal(scores, [1, 0])


@pytest.mark.parametrize(
    ("queries", "documents", "message"),
    [
        ("q", [], "no documents"),
        ("  ", ["d"], "query at position 0 is empty"),
        ("q", ["d", " "], "document '1' .position 1. has empty"),
        (["q"], ["d", "e"], "1 queries for 2 documents"),
        ("q", "just a string", "not a single one"),
        ("q", [3], "position 0 is a int"),
        ([None], ["d"], "query at position 0 is a NoneType"),
    ],
)
def test_bad_inputs_raise_clear_errors(queries, documents, message):
    with pytest.raises(RerankInputError, match=message):
        WordOverlap().score(queries, documents)


def test_rank_rejects_bad_top_k_several_queries_and_multi_exit_scores():
    with pytest.raises(ConfigError, match="top_k"):
        WordOverlap().rank("q", ["d"], top_k=0)
    with pytest.raises(RerankInputError, match="one query string"):
        WordOverlap().rank(["q"], ["d"])
    with pytest.raises(ConfigError, match="single exit"):
        TwoExits().rank("q", ["d", "e"])


def test_batch_tokens_must_be_positive():
    with pytest.raises(ConfigError, match="batch_tokens"):
        WordOverlap().score("q", ["d"], batch_tokens=0)
    assert WordOverlap().resolve_batch_tokens(None) == Reranker.default_batch_tokens


def test_rank_accepts_a_generator_and_rejects_a_single_string():
    ranked = WordOverlap().rank("x", (text for text in ["y", "x"]))
    assert [r.doc_id for r in ranked] == ["1", "0"]
    with pytest.raises(RerankInputError, match="not a single one"):
        WordOverlap().rank("x", "x y z")
