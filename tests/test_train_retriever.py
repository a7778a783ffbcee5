"""Contrastive retriever trainer on a tiny random Llama: GradCache, checkpoints, resume, full FT, batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from helpers import retrieval_groups  # noqa: E402
from helpers import retriever_train_config as make_config  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from nestrank.data import Document  # noqa: E402
from nestrank.data.groups import TrainingGroup  # noqa: E402
from nestrank.errors import ConfigError  # noqa: E402
from nestrank.models.dense import DenseEncoder  # noqa: E402
from nestrank.train.batches import GroupBatcher, holdout  # noqa: E402
from nestrank.train.retriever import RetrieverTrainer, train_retriever  # noqa: E402
from nestrank.train.schedule import linear_warmup_decay  # noqa: E402
from nestrank.train.validation import group_mrr, pool_table, validation_batch  # noqa: E402


@pytest.fixture(scope="module")
def setup(word_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return word_llama_dir, retrieval_groups(root / "groups.jsonl")


def adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "adapter_model.safetensors")


def assert_same_weights(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0)


def test_gradcache_training_equals_full_batch_training(setup, tmp_path):
    plain = train_retriever(make_config(setup, tmp_path / "plain"), progress=False)
    cached = train_retriever(make_config(setup, tmp_path / "cached", gradcache_chunk_size=3), progress=False)
    assert cached.loss == pytest.approx(plain.loss, abs=1e-5)
    trained = adapter(plain.checkpoint)
    assert any(v.abs().sum() > 0 for k, v in trained.items() if "lora_B" in k)  # the update is not a no-op
    assert_same_weights(trained, adapter(cached.checkpoint))
    logs = [[json.loads(line) for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
            for run in ("plain", "cached")]
    assert [r["grad_norm"] for r in logs[1]] == pytest.approx([r["grad_norm"] for r in logs[0]], rel=1e-5)


def test_checkpoint_reloads_and_reproduces_embeddings(setup, tmp_path):
    trainer = RetrieverTrainer(make_config(setup, tmp_path / "run", lora={"dropout": 0.1}), progress=False)
    ckpt = trainer.train().checkpoint
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
    settings = json.loads((ckpt / "nestrank.json").read_text())
    assert settings["preset"] == "repllama" and settings["encoder"]["passage_max_length"] == 16
    assert json.loads((ckpt / "adapter_config.json").read_text())["r"] == 4
    docs = [Document("a", "gene study of cancer", "title"), Document("b", "blood cells")]
    trained = trainer.encoder
    trained.model.eval()
    trained.show_progress = False
    reloaded = DenseEncoder.from_pretrained(ckpt, device="cpu", show_progress=False)
    assert reloaded.config == trained.config and reloaded.config.passage_max_length == 16
    np.testing.assert_allclose(reloaded.encode_passages(docs), trained.encode_passages(docs), atol=1e-5)
    np.testing.assert_allclose(reloaded.encode_queries(["gene risk"]), trained.encode_queries(["gene risk"]), atol=1e-5)
    base = DenseEncoder.from_pretrained(setup[0], device="cpu", passage_max_length=16, show_progress=False)
    assert not np.allclose(reloaded.encode_passages(docs), base.encode_passages(docs), atol=1e-4)


def test_resume_continues_like_an_uninterrupted_run(setup, tmp_path):
    lora = {"dropout": 0.1}  # dropout on: the per-step reseeding must make the resumed masks identical
    whole = train_retriever(make_config(setup, tmp_path / "whole", lora, max_steps=4, save_every=2), progress=False)
    assert (tmp_path / "whole" / "checkpoint-2" / "optimizer.pt").is_file()
    resumed = train_retriever(make_config(setup, tmp_path / "resumed", lora, max_steps=4,
                                          resume_from=str(tmp_path / "whole" / "checkpoint-2")), progress=False)
    assert resumed.steps == 4
    assert_same_weights(adapter(whole.checkpoint), adapter(resumed.checkpoint), atol=1e-6)
    with pytest.raises(ConfigError, match="data.group_size"):
        train_retriever(make_config(setup, tmp_path / "bad", lora, data={"group_size": 2}, max_steps=4,
                                    resume_from=str(tmp_path / "whole" / "checkpoint-2")), progress=False)


def test_full_fine_tuning_with_accumulation(setup, tmp_path):
    result = train_retriever(make_config(setup, tmp_path / "full", lora={"enabled": False}, max_steps=1,
                                         model={"gradient_checkpointing": True}, grad_accum_steps=2, batch_size=2),
                             progress=False)
    assert (result.checkpoint / "model.safetensors").is_file()
    encoder = DenseEncoder.from_pretrained(result.checkpoint, device="cpu", show_progress=False)
    base = DenseEncoder.from_pretrained(setup[0], device="cpu", passage_max_length=16, show_progress=False)
    docs = ["gene study", "blood cells in patients"]
    assert not np.allclose(encoder.encode_passages(docs), base.encode_passages(docs), atol=1e-4)


def test_validation_holdout_is_excluded_and_written(setup, tmp_path):
    result = train_retriever(make_config(setup, tmp_path / "v", data={"validation_fraction": 0.25}, max_steps=1),
                             progress=False)
    held = (tmp_path / "v" / "validation_queries.txt").read_text().split()
    assert len(held) == 4 and set(held) == holdout([f"q{i}" for i in range(16)], 0.25, 0)
    assert result.steps == 1


def test_eval_pool_ranks_each_positive_among_every_held_out_passage(setup, tmp_path):
    from nestrank.data.groups import read_groups

    config = make_config(setup, tmp_path / "p", data={"validation_fraction": 0.25}, max_steps=2, eval_every=1,
                         eval_pool=True, eval_group_size=3, lora={"dropout": 0.1})
    result = train_retriever(config, progress=False)
    records = [json.loads(line) for line in (tmp_path / "p" / "validation_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(set(r["validation"]) == {"mrr_mean", "mrr.pool"} for r in records)
    # the kept checkpoint's own embeddings give its logged figure: 4 held-out queries x 12 held-out passages
    held_ids = set((tmp_path / "p" / "validation_queries.txt").read_text().split())
    batch = validation_batch(config, [g for g in read_groups(setup[1]) if g.query_id in held_ids])
    encoder = DenseEncoder.from_pretrained(result.best, device="cpu", show_progress=False)
    queries, passages = encoder.encode_queries(batch.queries), encoder.encode_passages(batch.passages)
    table = pool_table(queries, passages, batch)
    assert table.shape == (4, 12) and np.isfinite(table).all()
    saved = json.loads((tmp_path / "p" / "best" / "validation.json").read_text())
    assert saved["mrr.pool"] == pytest.approx(group_mrr(table)) == pytest.approx(result.best_validation)
    own_group = (passages.reshape(4, 3, -1) @ queries[:, :, None])[:, :, 0]
    assert group_mrr(table) <= group_mrr(own_group)  # more distractors never raise a positive


def test_bad_training_setups_fail_clearly(setup, tmp_path):
    with pytest.raises(ConfigError, match="fewer than one batch"):
        train_retriever(make_config(setup, tmp_path / "a", batch_size=64), progress=False)
    with pytest.raises(ConfigError, match="match no module"):
        train_retriever(make_config(setup, tmp_path / "b", lora={"target_modules": ["qkv"]}), progress=False)
    with pytest.raises(ConfigError, match="not a training checkpoint"):
        train_retriever(make_config(setup, tmp_path / "c", resume_from=str(tmp_path)), progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is about CPU training")
def test_bf16_training_on_a_cpu_without_native_bf16_warns(setup, tmp_path, monkeypatch):
    """Full fine-tuning keeps fp32 weights (no bf16 load to warn at), so the trainer itself warns about autocast."""
    from accelerate import Accelerator

    from nestrank.models import SlowDtypeWarning, cpu_dtype

    monkeypatch.setattr(cpu_dtype, "cpu_bf16_native", lambda: False)
    cpu_dtype.warn_slow_cpu_bf16.cache_clear()
    try:
        config = make_config(setup, tmp_path / "bf16", model={"dtype": "bfloat16"}, lora={"enabled": False})
        with pytest.warns(SlowDtypeWarning, match="model.dtype"):  # the process's accelerator: its state is fixed
            RetrieverTrainer(config, accelerator=Accelerator(cpu=True), progress=False)
    finally:
        cpu_dtype.warn_slow_cpu_bf16.cache_clear()


def test_batches_are_deterministic_and_sliced_by_rank():
    groups = [TrainingGroup(f"q{i}", [Document(f"p{i}", "pos")], [Document(f"n{i}", "neg")], f"q{i}") for i in range(8)]
    batcher = GroupBatcher(groups, batch_size=4, group_size=3, seed=1)
    whole = batcher.batch(0, 1)
    halves = [batcher.batch(0, 1, rank, 2) for rank in (0, 1)]
    assert whole.queries == halves[0].queries + halves[1].queries
    assert whole.passages == halves[0].passages + halves[1].passages
    assert len(whole.passages) == 12 and whole.passages[0].id.startswith("p")  # positive first; one negative repeated
    assert batcher.batch(0, 1) == whole  # a pure function of (seed, epoch, index)
    epochs = [[q for i in range(2) for q in batcher.batch(e, i).queries] for e in (0, 1)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(f"q{i}" for i in range(8))  # each group once per epoch
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    with pytest.raises(ConfigError, match="no negatives"):
        GroupBatcher([TrainingGroup("q", [Document("p", "x")])] * 4, batch_size=2, group_size=2, seed=0)
    with pytest.raises(ConfigError, match="not divisible"):
        batcher.batch(0, 0, 0, 3)


def test_linear_warmup_then_decay():
    factor = linear_warmup_decay(total_steps=10, warmup_steps=4)
    assert [round(factor(s), 3) for s in (0, 3, 4, 7, 9, 10)] == [0.2, 0.8, 1.0, 0.5, 0.167, 0.0]


def test_broken_checkpoint_settings_fail_clearly(tmp_path):
    (tmp_path / "nestrank.json").write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read the encoder settings"):
        DenseEncoder.from_pretrained(tmp_path)
    (tmp_path / "nestrank.json").write_text('{"kind": "matryoshka"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="not a dense-encoder checkpoint"):
        DenseEncoder.from_pretrained(tmp_path)
