"""Validation-based selection during training (train.eval_every): held-out MRR logged, the best step kept in best/."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from helpers import matryoshka_train_config as reranker_config  # noqa: E402
from helpers import rerank_groups as make_groups  # noqa: E402

from nestrank.data.groups import TrainingGroup  # noqa: E402
from nestrank.errors import ConfigError  # noqa: E402
from nestrank.models.matryoshka import MatryoshkaReranker  # noqa: E402
from nestrank.models.tiny import byte_tokenizer, tiny_llama  # noqa: E402
from nestrank.train.batches import ContrastiveBatch, holdout  # noqa: E402
from nestrank.train.reranker import train_reranker  # noqa: E402
from nestrank.train.validation import group_mrr, pool_table, validation_batch  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_group_mrr_counts_ties_against_the_positive():
    assert group_mrr(np.array([[3.0, 1.0, 2.0], [1.0, 2.0, 1.0], [0.0, 0.0, -1.0]])) == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)


def test_pool_table_keeps_one_column_per_passage_id_and_no_other_judged_positive():
    from nestrank.data import Document

    p, x, y, q = (Document(i, i) for i in "pxyq")
    batch = ContrastiveBatch(["a", "b"], [p, x, y, q, x, p], [frozenset("pq"), frozenset("q")])
    vectors = {"p": [1.0, 0.0], "x": [0.5, 0.5], "y": [0.0, 2.0], "q": [3.0, 1.0]}
    passages = np.array([vectors[d.id] for d in batch.passages])
    table = pool_table(np.array([[1.0, 0.0], [0.0, 1.0]]), passages, batch)
    # a: p first, then x and y; q is another judged positive of a, so not a distractor
    np.testing.assert_array_equal(table, [[1.0, 0.5, 0.0, -np.inf], [1.0, 0.0, 0.5, 2.0]])
    assert group_mrr(table) == pytest.approx((1 + 1 / 2) / 2)


def test_eval_pool_is_refused_for_rerankers(tmp_path):
    from nestrank.train.config import config_from_dict

    data = reranker_config((tmp_path / "tiny", make_groups(tmp_path / "g.jsonl", count=6, negatives=3)),
                           tmp_path).to_dict()
    data["train"]["eval_pool"] = True
    with pytest.raises(ConfigError, match="train.eval_pool is for retrievers"):
        config_from_dict(data).validate_reranker("r.toml")


def test_validation_batch_is_the_first_held_out_groups_with_their_first_negatives(tmp_path):
    base = tmp_path / "tiny"
    from nestrank.data import Document

    groups = [TrainingGroup(f"q{i}", [Document(f"p{i}", "text")], [Document("n", "other")], f"q{i}") for i in range(3)]
    config = reranker_config((base, make_groups(tmp_path / "g.jsonl", count=6, negatives=3)), tmp_path)
    with pytest.raises(ConfigError, match="none of the 3 held-out groups has a positive and 2 negatives"):
        validation_batch(config, groups)


def test_eval_every_logs_held_out_mrr_and_keeps_the_best_checkpoint(tmp_path):
    base = tmp_path / "tiny"
    tiny_llama().save_pretrained(base)
    byte_tokenizer().save_pretrained(base)
    groups = make_groups(tmp_path / "groups.jsonl", count=8, negatives=3)
    data = reranker_config((base, groups), tmp_path / "out", max_steps=4).to_dict()
    data["data"]["validation_fraction"] = 0.25
    data["train"].update({"eval_every": 2, "eval_group_size": 3, "eval_configs": ["", "depth=3"], "batch_size": 2})
    from nestrank.train.config import config_from_dict

    result = train_reranker(config_from_dict(data), progress=False)
    records = [json.loads(line) for line in (tmp_path / "out" / "validation_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4] and all(r["queries"] == 2 for r in records)
    assert all(set(r["validation"]) == {"mrr_mean", "mrr.full", "mrr.depth=3"} for r in records)
    best = max(records, key=lambda r: (r["validation"]["mrr_mean"], -r["step"]))
    saved = json.loads((tmp_path / "out" / "best" / "validation.json").read_text())
    assert saved["step"] == best["step"] and result.best == tmp_path / "out" / "best"
    assert result.best_validation == pytest.approx(best["validation"]["mrr_mean"])
    held = holdout([f"q{i}" for i in range(8)], 0.25, 0)
    assert set((tmp_path / "out" / "validation_queries.txt").read_text().split()) == held
    MatryoshkaReranker.from_pretrained(str(result.best), dtype="float32").score("where is the cat", ["the cat"])
    assert all("loss" in json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines())
