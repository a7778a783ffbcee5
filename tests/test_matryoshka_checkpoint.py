"""The Matryoshka checkpoint: one directory (base reference, heads, settings), safetensors only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import DOCS, QUERY
from safetensors.torch import load_file, save_file

from nestrank.errors import ArtifactError, ConfigError
from nestrank.models.matryoshka import MatryoshkaReranker


@pytest.fixture
def trained(tiny_llama_dir):
    reranker = MatryoshkaReranker.from_pretrained(str(tiny_llama_dir), dtype="float32", device="cpu",
                                                  max_passage_tokens=40, prompt="Relevant?")
    torch.manual_seed(1)
    with torch.no_grad():
        for head in reranker.heads.values():
            head.weight.normal_()
            head.bias.normal_()
    return reranker


def test_checkpoint_layout_and_round_trip(trained, tiny_llama_dir, tmp_path):
    ckpt = trained.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in ckpt.iterdir()) == ["checksums.json", "heads.safetensors", "nestrank.json"]
    settings = json.loads((ckpt / "nestrank.json").read_text())
    assert settings["kind"] == "matryoshka"
    assert settings["base_model"] == str(tiny_llama_dir)
    assert settings["reranker"]["prompt"] == "Relevant?" and settings["reranker"]["max_passage_tokens"] == 40
    heads = load_file(ckpt / "heads.safetensors")
    assert sorted(heads) == sorted(f"heads.{n}.{p}" for n in range(1, 7) for p in ("weight", "bias"))

    loaded = MatryoshkaReranker.from_pretrained(str(ckpt), dtype="float32", device="cpu")
    for config in (None, "depth=3", "depth=5,compress=2:0.5"):
        np.testing.assert_allclose(loaded.score(QUERY, DOCS, config=config),
                                   trained.score(QUERY, DOCS, config=config), atol=1e-6)
    fresh = MatryoshkaReranker.from_pretrained(str(tiny_llama_dir), dtype="float32", device="cpu", max_passage_tokens=40,
                                               prompt="Relevant?")
    assert not np.allclose(fresh.score(QUERY, DOCS), loaded.score(QUERY, DOCS))


def test_saving_over_a_foreign_directory_is_refused(trained, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        trained.save_pretrained(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_damaged_checkpoints_fail_clearly(trained, tmp_path):
    ckpt = trained.save_pretrained(tmp_path / "ckpt")
    heads = load_file(ckpt / "heads.safetensors")
    save_file({**heads, "heads.9.weight": heads["heads.1.weight"].clone()}, ckpt / "heads.safetensors")
    with pytest.raises(ArtifactError, match="heads.safetensors: is 1848 bytes, its checksum record says 1648"):
        MatryoshkaReranker.from_pretrained(str(ckpt), device="cpu")
    with pytest.raises(ConfigError, match="heads.9.weight"):  # unverified, the layout check still catches it
        MatryoshkaReranker.from_pretrained(str(ckpt), device="cpu", verify="none")
    (ckpt / "heads.safetensors").unlink()
    with pytest.raises(ArtifactError, match="heads.safetensors: missing from the Matryoshka checkpoint"):
        MatryoshkaReranker.from_pretrained(str(ckpt), device="cpu")
    with pytest.raises(ConfigError, match="heads.safetensors is missing"):
        MatryoshkaReranker.from_pretrained(str(ckpt), device="cpu", verify="none")
    (ckpt / "nestrank.json").write_text(json.dumps({"kind": "pointwise"}))
    with pytest.raises(ConfigError, match="not a Matryoshka checkpoint"):
        MatryoshkaReranker.from_pretrained(str(ckpt), device="cpu")


def test_compensation_round_trips_in_the_checkpoint(trained, tmp_path):
    from nestrank.models.matryoshka.compensation import CompensationSettings, FactorizedCompensation

    reranker = trained
    compensation = FactorizedCompensation(reranker.decoder.layers, CompensationSettings(r=2, alpha=4, factors=(2,)))
    with torch.no_grad():
        for p in compensation.parameters():
            p.normal_(0.0, 0.3)
    reranker.set_compensation(compensation)
    try:
        config = "depth=4,compress=2:0.5"
        expected = reranker.score(QUERY, DOCS, config=config)
        out = reranker.save_pretrained(tmp_path / "ckpt")
        assert sorted(p.name for p in out.iterdir()) == ["checksums.json", "compensation.safetensors",
                                                         "heads.safetensors", "nestrank.json"]
        settings = json.loads((out / "nestrank.json").read_text())
        assert settings["compensation"]["factors"] == [2] and settings["compensation"]["r"] == 2
        loaded = MatryoshkaReranker.from_pretrained(out)
        assert loaded.compensation is not None
        assert loaded.score(QUERY, DOCS, config=config) == pytest.approx(expected, abs=1e-5)

        (out / "compensation.safetensors").unlink()
        with pytest.raises(ConfigError, match="compensation.safetensors is missing"):
            MatryoshkaReranker.from_pretrained(out, verify="none")
    finally:
        reranker.set_compensation(None)
