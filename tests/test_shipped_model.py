"""The shipped SciFact reranker: loads by its preset name, verifies itself, and reproduces its model card."""

from __future__ import annotations

from pathlib import Path

import pytest

from nestrank.models.presets import preset_path
from nestrank.reproduce import load_conditions, reproduce

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
SHIPPED = preset_path("smollm2-135m-scifact")


def test_the_shipped_directory_is_small_and_complete() -> None:
    files = {p.relative_to(SHIPPED).as_posix(): p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file()}
    assert sum(files.values()) <= 25 * 1024 * 1024
    assert {"nestrank.json", "profiles.json", "checksums.json", "README.md", "validation_queries.txt",
            "lora/adapter_model.safetensors", "heads.safetensors"} <= set(files)
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))]


@pytest.mark.slow
def test_the_preset_loads_with_its_profiles(one_torch_thread) -> None:
    from nestrank.models import MatryoshkaReranker

    reranker = MatryoshkaReranker.from_pretrained("smollm2-135m-scifact", dtype="float32", device="cpu")
    assert {"full", "balanced", "light"} <= set(reranker.profiles)
    docs = ["Scurvy is caused by a lack of vitamin C.", "The Eiffel Tower is in Paris."]
    for config in ("full", ""):  # the best profile and the whole model (light, exit 10, leans on the first stage)
        scores = reranker.score(["what causes scurvy"] * 2, docs, config=config)
        assert scores[0] > scores[1], (config, scores)


@pytest.mark.slow
@pytest.mark.skipif(not SCIFACT.is_dir(), reason="needs ../shared/data/scifact")
def test_the_model_card_figure_reproduces(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the condition names pipelines/ relative to the repository
    conditions = [c for c in load_conditions(ROOT / "reproductions" / "scifact.toml") if c.name == "shipped-full-sample"]
    assert conditions, "reproductions/scifact.toml lost its shipped-model condition"
    card = (SHIPPED / "README.md").read_text(encoding="utf-8")
    assert f"{conditions[0].expected:.4f}" in card  # the card quotes the figure the condition checks
    [outcome] = reproduce(conditions, dataset=str(SCIFACT), out=tmp_path)
    assert outcome.ok, (outcome.got, outcome.condition.expected)
