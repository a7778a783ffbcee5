"""Trainer config: TOML loading, overrides, and clear errors for bad configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from nestrank.errors import ConfigError
from nestrank.train.config import REPLLAMA_LORA_TARGETS, config_from_dict, load_config, parse_overrides

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
MINIMAL = {"data": {"train_groups": "g.jsonl"}, "train": {"output_dir": "out"}}


def test_recipes_load_with_paper_settings():
    paper = load_config(RECIPES / "repllama-msmarco-passage.toml")
    assert paper.lora.r == 32 and paper.lora.alpha == 64 and paper.lora.dropout == 0.1
    assert tuple(paper.lora.target_modules) == REPLLAMA_LORA_TARGETS
    assert (paper.data.query_max_length, paper.data.passage_max_length, paper.data.group_size) == (32, 196, 16)
    assert (paper.train.batch_size, paper.train.learning_rate, paper.train.epochs) == (128, 1e-4, 1)
    assert paper.train.temperature == 0.01 and paper.model.dtype == "bfloat16" and paper.model.gradient_checkpointing
    cpu = load_config(RECIPES / "scifact-smollm2-retriever.toml")
    assert cpu.model.backbone == "smollm2-135m" and cpu.data.validation_fraction > 0


def test_defaults_and_int_to_float():
    cfg = config_from_dict({**MINIMAL, "train": {"output_dir": "o", "learning_rate": 1}})
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)
    assert cfg.data.group_size == 16 and cfg.train.temperature == 0.0  # 0: the trainer's default (0.01 / 1.0)


@pytest.mark.parametrize(("data", "message"), [
    ({"trian": {}}, r"unknown section \[trian\] \(did you mean 'train'\?\)"),
    ({"train": {"output_dir": "o", "lerning_rate": 1e-4}}, r"unknown key train.lerning_rate \(did you mean 'learning_rate'"),
    ({"train": {"output_dir": "o", "batch_size": "8"}}, "train.batch_size must be an integer"),
    ({"train": {"output_dir": "o", "batch_size": 2.5}}, "train.batch_size must be an integer"),
    ({"lora": {"enabled": "yes"}}, "lora.enabled must be true or false"),
    ({"lora": {"target_modules": "q_proj"}}, "lora.target_modules must be a list"),
    ({"lora": {"target_modules": [1]}}, r"lora.target_modules\[0\] must be a str"),
    ({"train": {"output_dir": "o", "temperature": -1}}, "train.temperature must be > 0"),
    ({"data": {"train_groups": "g", "group_size": 0}}, "data.group_size must be >= 1"),
    ({"model": {"dtype": "float16"}}, "model.dtype must be one of float32, bfloat16"),
    ({"data": {"train_groups": ""}}, "data.train_groups is required"),
    ({"lora": 3}, "lora must be a table"),
])
def test_bad_configs_fail_clearly(data, message):
    merged = {**MINIMAL, **data}
    if "data" in data and "train_groups" not in data["data"]:
        merged["data"] = {**data["data"], "train_groups": "g.jsonl"}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(merged, "x.toml")


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    good = tmp_path / "good.toml"
    good.write_text('[data]\ntrain_groups = "g.jsonl"\n[train]\noutput_dir = "o"\n')
    cfg = load_config(good, {"train.max_steps": 7, "lora.enabled": False})
    assert cfg.train.max_steps == 7 and not cfg.lora.enabled
    with pytest.raises(ConfigError, match="section.key"):
        load_config(good, {"max_steps": 7})


def test_parse_overrides():
    assert parse_overrides(["train.max_steps=5", "model.dtype=bfloat16", "lora.enabled=false"]) == {
        "train.max_steps": 5, "model.dtype": "bfloat16", "lora.enabled": False}
    with pytest.raises(ConfigError, match="section.key=VALUE"):
        parse_overrides(["train.max_steps"])


def test_train_command_reports_bad_config(tmp_path, monkeypatch, capsys):
    import sys

    from nestrank.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\ntrain_groups = "g.jsonl"\ngroup_sise = 4\n[train]\noutput_dir = "o"\n')
    monkeypatch.setattr(sys, "argv", ["nestrank", "train", "retriever", "--config", str(bad), "--no-progress"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    assert "unknown key data.group_sise (did you mean 'group_size'?)" in capsys.readouterr().err
