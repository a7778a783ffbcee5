"""Shared test fixtures: small, generic data sets written to a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY_DOCS = [
    {"_id": "d1", "title": "Cats", "text": "Cats purr when they are happy."},
    {"_id": "d2", "title": "Dogs", "text": "Dogs bark at strangers."},
    {"_id": "d3", "title": "", "text": "Fish swim in schools to avoid predators."},
    {"_id": "d4", "title": "Birds", "text": "Birds migrate south in winter."},
    {"_id": "d5", "title": "Bees", "text": "Bees make honey from nectar."},
]
TINY_QUERIES = [
    {"_id": "q1", "text": "why do cats purr"},
    {"_id": "q2", "text": "where do birds go in winter"},
    {"_id": "q3", "text": "how is honey made"},
]


def write_beir(root: Path) -> Path:
    """Write a five-document BEIR directory (corpus, queries, train/test qrels) at ``root``."""
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in TINY_DOCS), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in TINY_QUERIES), encoding="utf-8")
    header = "query-id\tcorpus-id\tscore\n"
    (root / "qrels" / "test.tsv").write_text(header + "q1\td1\t1\nq2\td4\t2\nq2\td2\t0\n", encoding="utf-8")
    (root / "qrels" / "train.tsv").write_text(header + "q3\td5\t1\n", encoding="utf-8")
    return root


@pytest.fixture
def tiny_beir(tmp_path: Path) -> Path:
    """A tiny BEIR dataset directory: 5 documents, 3 queries, qrels for ``test`` and ``train``."""
    return write_beir(tmp_path / "tiny")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one thread is ~50x faster than two on a busy 2-core machine (thread hand-offs dominate)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
