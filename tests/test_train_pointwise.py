"""Pointwise (RankLLaMA) reranker training on a tiny random Llama: learning, RankLLaMA layout, resume, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from helpers import pointwise_train_config as make_config  # noqa: E402
from helpers import rerank_groups  # noqa: E402

from nestrank.errors import ConfigError  # noqa: E402
from nestrank.models.pointwise import PointwiseReranker  # noqa: E402
from nestrank.models.tiny import byte_tokenizer, save_tiny_llama  # noqa: E402
from nestrank.rerank import detect_kind, load_reranker  # noqa: E402
from nestrank.train.pointwise import PointwiseTrainer  # noqa: E402
from nestrank.train.reranker import train_reranker  # noqa: E402

QUERY = "where is the cat"
DOCS = ["the cat is here, a cat by the road", "moon river stone", "a bird and a fish in the rain"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random causal Llama (the backbone: its score head is new) with a byte tokenizer that has an EOS."""
    root = tmp_path_factory.mktemp("train-pointwise")
    base = save_tiny_llama(root / "tiny", byte_tokenizer(eos=True), layers=2)
    return base, rerank_groups(root / "groups.jsonl")


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("pointwise")
    trainer = PointwiseTrainer(make_config(setup, out, save_every=4), progress=False)
    return trainer, trainer.train(), out


def test_loss_goes_down_and_the_checkpoint_is_a_rankllama_adapter(setup, trained):
    trainer, result, out = trained
    losses = [r["loss"] for r in log(out)]
    assert len(losses) == 8 and list(log(out)[0]["parts"]) == ["ce"]
    assert np.mean(losses[-2:]) < 0.5 * np.mean(losses[:2])
    final = result.checkpoint
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and adapter["base_model_name_or_path"] == str(setup[0])
    assert {"adapter_model.safetensors", "nestrank.json", "trainer_state.json", "optimizer.pt"} <= {
        p.name for p in final.iterdir()}
    assert detect_kind(final) == "pointwise"
    loaded = load_reranker(final, dtype="float32", device="cpu")
    assert isinstance(loaded, PointwiseReranker) and loaded.max_length == 16 + 24  # from nestrank.json
    np.testing.assert_allclose(loaded.score(QUERY, DOCS), trainer.reranker.score(QUERY, DOCS), atol=1e-5)
    assert loaded.score(QUERY, DOCS).argmax() == 0  # the learnable groups: the positive repeats the query word


def test_base_weights_stay_frozen(setup, trained):
    from safetensors.torch import load_file

    trainer, _, _ = trained
    saved = load_file(setup[0] / "model.safetensors")
    base = trainer.reranker.model.get_base_model()
    assert torch.equal(base.model.layers[0].mlp.up_proj.weight, saved["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(base.model.layers[1].self_attn.q_proj.base_layer.weight,
                       saved["model.layers.1.self_attn.q_proj.weight"])


def test_resume_reproduces_the_uninterrupted_run(setup, trained, tmp_path):
    uninterrupted, _, out = trained
    resumed = PointwiseTrainer(make_config(setup, tmp_path, save_every=4, resume_from=str(out / "checkpoint-4")),
                               progress=False)
    assert resumed.train().steps == 8
    assert [r["step"] for r in log(tmp_path)] == [5, 6, 7, 8]
    assert [r["loss"] for r in log(tmp_path)] == pytest.approx([r["loss"] for r in log(out)[4:]], rel=1e-5)
    np.testing.assert_allclose(resumed.reranker.score(QUERY, DOCS), uninterrupted.reranker.score(QUERY, DOCS),
                               atol=1e-5)


def test_train_reranker_dispatches_on_kind(setup, tmp_path):
    result = train_reranker(make_config(setup, tmp_path, max_steps=1), progress=False)
    assert detect_kind(result.checkpoint) == "pointwise"


@pytest.mark.parametrize(("reranker", "match"), [
    ({"kind": "listwise"}, "reranker.kind"),
    ({"stage": "distill"}, "reranker.stage"),
    ({"teachers": [2]}, "reranker.teachers is a Matryoshka setting"),
    ({"student_compress": ["1:0.5"]}, "reranker.student_compress is a Matryoshka setting"),
    ({"init": "somewhere"}, "reranker.init"),
])
def test_config_errors(setup, tmp_path, reranker, match):
    with pytest.raises(ConfigError, match=match):
        PointwiseTrainer(make_config(setup, tmp_path, reranker), progress=False)


def test_broken_settings_file_fails_clearly(trained, tmp_path):
    import shutil

    _, result, _ = trained
    broken = tmp_path / "broken"
    shutil.copytree(result.checkpoint, broken)
    (broken / "nestrank.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="nestrank.json: cannot read the reranker settings"):
        PointwiseReranker.from_pretrained(broken, dtype="float32", device="cpu")
    (broken / "nestrank.json").write_text('{"kind": "matryoshka"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="not a pointwise reranker checkpoint"):
        PointwiseReranker.from_pretrained(broken, dtype="float32", device="cpu")
