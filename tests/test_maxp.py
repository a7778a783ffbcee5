"""MaxP: long documents score as their best overlapping segment."""

from __future__ import annotations

import numpy as np
import pytest

from nestrank.data.corpus import Document
from nestrank.errors import ConfigError
from nestrank.models.matryoshka import MatryoshkaReranker
from nestrank.models.maxp import MaxPReranker, split_document
from nestrank.models.tiny import byte_tokenizer, tiny_llama

LONG = Document("long", "the cat sat on the mat. " * 6 + "dogs bark loudly at night.", title="Pets")


@pytest.fixture(scope="module")
def reranker(one_torch_thread):
    return MatryoshkaReranker(tiny_llama(), byte_tokenizer(), max_passage_tokens=40)


def test_segments_overlap_cover_the_text_and_keep_the_title():
    tokenizer = byte_tokenizer()  # one token per byte
    segments = split_document(LONG, tokenizer, max_tokens=40, stride=16)
    window = 40 - len("Pets")
    assert all(s.id == "long" and s.title == "Pets" and len(s.text) <= window for s in segments)
    assert segments[0].text == LONG.text[:window]
    assert [LONG.text.index(s.text, 16 * i) for i, s in enumerate(segments)] == [16 * i for i in range(len(segments))]
    assert segments[-1].text == LONG.text[16 * (len(segments) - 1):]  # the last one reaches the end
    assert split_document(Document("s", "short", title="T"), tokenizer, 40, 16) == [Document("s", "short", title="T")]
    with pytest.raises(ConfigError):
        split_document(LONG, tokenizer, 0, 16)


def test_maxp_score_is_the_max_over_segments(reranker):
    maxp = MaxPReranker(reranker, max_tokens=40, stride=16)
    docs = [LONG, Document("short", "a cat", title="Cats")]
    got = maxp.score("what did the cat do", docs, config="depth=4")
    segments = split_document(LONG, reranker.tokenizer, 40, 16)
    by_hand = reranker.score("what did the cat do", segments, config="depth=4")
    assert len(segments) > 3
    assert got[0] == pytest.approx(by_hand.max(), abs=1e-5)
    assert got[1] == pytest.approx(reranker.score("what did the cat do", [docs[1]], config="depth=4")[0], abs=1e-5)
    exits = maxp.score_exits("what did the cat do", docs, [2, 4])
    np.testing.assert_allclose(exits[4], got, atol=1e-5)
    assert maxp.profiles is reranker.profiles and maxp.num_layers == reranker.num_layers  # delegated
    assert [r.doc_id for r in maxp.rank("what did the cat do", docs)] in (["long", "short"], ["short", "long"])
