"""PointwiseReranker (RankLLaMA): input format, last-real-token scoring, the PEFT layout.

Everything runs on a tiny random Llama (2 layers, hidden 32) with a word-level tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import save_rankllama_layout, save_seq_cls

from nestrank.data import Document
from nestrank.errors import ConfigError
from nestrank.models.pointwise import PointwiseReranker, format_document
from nestrank.models.pooling import last_token_index
from nestrank.models.reranker import RerankInputError


def manual_peft_scores(base_dir: Path, adapter_dir: Path, texts_ids: list[list[int]]) -> list[float]:
    """Reference: transformers + peft directly, one unpadded sequence at a time, score at position -1."""
    from peft import PeftModel
    from transformers import LlamaForSequenceClassification

    base = LlamaForSequenceClassification.from_pretrained(base_dir, num_labels=1, pad_token_id=None)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        return [model(input_ids=torch.tensor([ids])).logits[0, 0].item() for ids in texts_ids]


DOCS = [Document("d1", "cats purr when they are happy", "cats"), Document("d2", "dogs bark at strangers"),
        Document("d3", "fish swim in the south in winter " * 3), Document("d4", "bees make honey from nectar", "bees")]


@pytest.fixture(scope="module")
def rankllama(tmp_path_factory) -> tuple[Path, Path]:
    return save_rankllama_layout(tmp_path_factory.mktemp("rankllama"))


def test_input_format_appends_eos_after_truncation(tmp_path):
    reranker = PointwiseReranker.from_pretrained(save_seq_cls(tmp_path / "m"), max_length=12)
    tok = reranker.tokenizer
    full = reranker.encode(["why do cats purr"], [DOCS[0]])[0]
    assert tok.convert_ids_to_tokens(full) == ["<s>", "query:", "why", "do", "cats", "purr", "document:", "cats",
                                               "cats", "purr", "when", "</s>"]
    short = reranker.encode(["how"], [Document("x", "bees")])[0]
    assert tok.convert_ids_to_tokens(short) == ["<s>", "query:", "how", "document:", "bees", "</s>"]
    # A query longer than the whole budget is cut too; the EOS still ends the input.
    long = reranker.encode(["cats " * 40], [DOCS[1]])[0]
    assert len(long) == 12 and long[-1] == tok.eos_token_id


def test_format_document_drops_empty_title_and_templates_are_configurable(tmp_path):
    assert format_document(Document("x", " text ", "")) == "document: text"
    assert format_document(Document("x", "text", "Title")) == "document: Title text"
    reranker = PointwiseReranker.from_pretrained(save_seq_cls(tmp_path / "m"), query_template="why {query}",
                                                 document_template="{title} bees {text}")
    ids = reranker.encode(["cats"], [Document("x", "honey", "nectar")])[0]
    assert reranker.tokenizer.convert_ids_to_tokens(ids) == ["<s>", "why", "cats", "nectar", "bees", "honey", "</s>"]
    with pytest.raises(ConfigError, match="lacks"):
        PointwiseReranker(reranker.model, reranker.tokenizer, document_template="{title}")


def test_last_token_index_handles_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]


def test_rankllama_adapter_layout_matches_manual_peft(rankllama):
    base_dir, adapter_dir = rankllama
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["base_model_name_or_path"] == str(base_dir)
    from safetensors import safe_open

    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert any("lora_A" in k for k in keys) and any(k.endswith("score.weight") for k in keys)

    reranker = PointwiseReranker.from_pretrained(adapter_dir, device="cpu", dtype="float32")
    queries = ["why do cats purr", "where do birds go in winter", "how is honey made", "cats"]
    scores = reranker.score(queries, DOCS, batch_tokens=64)  # several padded batches
    expected = manual_peft_scores(base_dir, adapter_dir, reranker.encode(queries, DOCS))
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert np.ptp(scores) > 1e-3  # real, distinct scores

    merged = PointwiseReranker.from_pretrained(adapter_dir, device="cpu", dtype="float32", merge_lora=True)
    np.testing.assert_allclose(merged.score(queries, DOCS), expected, rtol=1e-4, atol=1e-4)


def test_adapter_really_changes_scores(rankllama):
    """Guards the layout test: the base model alone (random score head) scores differently."""
    base_dir, adapter_dir = rankllama
    reranker = PointwiseReranker.from_pretrained(adapter_dir, device="cpu", dtype="float32")
    ids = reranker.encode(["cats"], DOCS[:1])
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(1)
    plain = LlamaForSequenceClassification.from_pretrained(base_dir, num_labels=1, pad_token_id=None).eval()
    with torch.no_grad():
        plain_score = plain(input_ids=torch.tensor(ids)).logits[0, 0].item()
    assert abs(plain_score - float(reranker.score("cats", DOCS[:1])[0])) > 1e-3


@pytest.mark.parametrize("pad_with_eos", [False, True])
def test_padding_side_and_pad_id_do_not_change_scores(tmp_path, pad_with_eos):
    reranker = PointwiseReranker.from_pretrained(save_seq_cls(tmp_path / "m"), device="cpu", dtype="float32")
    if pad_with_eos:
        reranker.tokenizer.pad_token = reranker.tokenizer.eos_token
    single = np.array([reranker.score("why do cats purr", [d])[0] for d in DOCS])
    for side in ("right", "left"):
        reranker.tokenizer.padding_side = side
        batched = reranker.score("why do cats purr", DOCS, batch_tokens=10_000)
        np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


def test_pad_equal_eos_pitfall_of_transformers_is_avoided(tmp_path):
    """transformers' seq-cls head skips the appended EOS when pad == EOS; we read the EOS state."""
    reranker = PointwiseReranker.from_pretrained(save_seq_cls(tmp_path / "m"), device="cpu", dtype="float32")
    tok = reranker.tokenizer
    tok.pad_token = tok.eos_token
    ids = reranker.encode(["cats"], DOCS[:1])
    model = reranker.model
    model.config.pad_token_id = tok.eos_token_id
    with torch.no_grad():
        hf_score = model(input_ids=torch.tensor(ids)).logits[0, 0].item()
        model.config.pad_token_id = None
        eos_score = model(input_ids=torch.tensor(ids)).logits[0, 0].item()
    ours = float(reranker.score("cats", DOCS[:1])[0])
    assert ours == pytest.approx(eos_score, abs=1e-5)
    assert abs(ours - hf_score) > 1e-4


def test_rank_and_progress(tmp_path, capsys):
    reranker = PointwiseReranker.from_pretrained(save_seq_cls(tmp_path / "m"), device="cpu")
    ranked = reranker.rank("cats", DOCS, top_k=2)
    scores = reranker.score("cats", DOCS, show_progress=True)
    assert [r.doc_id for r in ranked] == [DOCS[i].id for i in np.argsort(-scores, kind="stable")[:2]]
    assert "reranking" in capsys.readouterr().err


def test_bad_inputs_and_paths(tmp_path, rankllama):
    reranker = PointwiseReranker.from_pretrained(save_seq_cls(tmp_path / "m"), device="cpu")
    with pytest.raises(RerankInputError, match="no documents"):
        reranker.score("cats", [])
    with pytest.raises(RerankInputError, match="empty"):
        reranker.score("", DOCS)
    with pytest.raises(ConfigError, match="no run-time configuration"):
        reranker.score("cats", DOCS, config="depth=2")
    with pytest.raises(ConfigError, match="not found"):
        PointwiseReranker.from_pretrained(tmp_path / "missing")
    base_dir, adapter_dir = rankllama
    with pytest.raises(ConfigError, match="not a sequence-classification checkpoint"):
        PointwiseReranker.from_pretrained(base_dir)
    causal = tmp_path / "causal_adapter"
    causal.mkdir()
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    (causal / "adapter_config.json").write_text(json.dumps({**config, "task_type": "CAUSAL_LM"}))
    with pytest.raises(ConfigError, match="task_type 'CAUSAL_LM'"):
        PointwiseReranker.from_pretrained(causal)
