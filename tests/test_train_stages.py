"""The three-stage reranker training sequence (nestrank.train.stages) on a tiny random Llama, 1 step per stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from helpers import matryoshka_train_config, rerank_groups  # noqa: E402

from nestrank.errors import ConfigError  # noqa: E402
from nestrank.train.stages import STAGES, is_trained, plan_stages, train_stages  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAMES = {"contrastive": "plain", "compensate": "comp"}


@pytest.fixture(scope="module")
def recipe(tiny_llama_dir, tmp_path_factory):
    """A tiny Matryoshka recipe (as a config; its output_dir is replaced by every plan): 1 step per stage."""
    groups = rerank_groups(tmp_path_factory.mktemp("stages") / "groups.jsonl")
    return matryoshka_train_config((tiny_llama_dir, groups), tmp_path_factory.mktemp("unused"), max_steps=1,
                                   save_every=0)


def first_loss(stage_dir: Path) -> float:
    return json.loads((stage_dir / "train_log.jsonl").read_text().splitlines()[0])["loss"]


def test_plan_sets_each_stage_and_chains_compensate_to_distill(recipe, tmp_path):
    plans = plan_stages(recipe, tmp_path, ["compensate", "contrastive", "distill"], names=NAMES,
                        overrides={"train.learning_rate": 5e-3})
    assert list(plans) == list(STAGES)  # training order, whatever the order asked
    assert [p.config.reranker.stage for p in plans.values()] == list(STAGES)
    assert [p.directory for p in plans.values()] == [tmp_path / "plain", tmp_path / "distill", tmp_path / "comp"]
    assert plans["compensate"].config.reranker.init == str(tmp_path / "distill" / "final")
    assert plans["contrastive"].config.reranker.init == plans["distill"].config.reranker.init == ""
    assert all(p.config.train.learning_rate == 5e-3 for p in plans.values())
    assert not any(p.is_trained() for p in plans.values())


@pytest.mark.parametrize(("stages", "match"), [(["contrastive", "pretrain"], "unknown training stage 'pretrain'"),
                                               ([], "no training stage given")])
def test_unknown_or_no_stage_is_a_config_error(recipe, tmp_path, stages, match):
    with pytest.raises(ConfigError, match=match):
        plan_stages(recipe, tmp_path, stages)
    with pytest.raises(ConfigError, match=match):
        train_stages(recipe, tmp_path, stages)
    assert not any(tmp_path.iterdir())  # nothing trained


def test_init_must_hold_the_planned_stages(recipe, tmp_path):
    (tmp_path / "earlier" / "plain").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"no trained plain or distill .*plain/final and distill/final"):
        plan_stages(recipe, tmp_path / "new", ["contrastive", "distill"], init=tmp_path / "earlier", names=NAMES)


def test_compensate_needs_a_trained_distill(recipe, tmp_path):
    with pytest.raises(ConfigError, match="train distill first"):
        train_stages(recipe, tmp_path, ["compensate"], progress=False)
    assert not is_trained(tmp_path / "compensate")


def test_stages_train_in_order_then_are_reused_and_checked(recipe, tmp_path):
    trained = []
    overrides = {"reranker.compensation_r": 2, "reranker.compensation_alpha": 4}
    finals = train_stages(recipe, tmp_path, ["distill", "compensate"], overrides=overrides, progress=False,
                          on_trained=lambda plan, result: trained.append((plan.stage, result.steps)))
    assert trained == [("distill", 1), ("compensate", 1)]
    assert finals == {"distill": tmp_path / "distill" / "final", "compensate": tmp_path / "compensate" / "final"}
    state = json.loads((finals["compensate"] / "trainer_state.json").read_text())
    assert state["config"]["reranker"]["init"] == str(finals["distill"])
    stamps = {stage: (path / "trainer_state.json").stat().st_mtime_ns for stage, path in finals.items()}

    # finished: reused as they are, also when only the schedule (max_steps, learning rate) differs
    again = train_stages(recipe, tmp_path, ["distill", "compensate"], progress=False, on_trained=trained.append,
                         overrides={**overrides, "train.max_steps": 3, "train.learning_rate": 1e-3})
    assert again == finals and len(trained) == 2
    assert {stage: (path / "trainer_state.json").stat().st_mtime_ns for stage, path in finals.items()} == stamps
    # a finished stage trained with other settings (here the LoRA rank) is refused, not reused
    with pytest.raises(ConfigError, match=r"stage distill: .* other settings: lora\.r was 4 there and is 8 now"):
        train_stages(recipe, tmp_path, ["distill"], overrides={"lora.r": 8}, progress=False)


def test_init_continues_an_earlier_plan(recipe, tmp_path):
    earlier = train_stages(recipe, tmp_path / "earlier", ["contrastive"], names=NAMES, progress=False)
    later = train_stages(recipe, tmp_path / "later", ["contrastive"], names=NAMES, init=tmp_path / "earlier",
                         progress=False)
    state = json.loads((later["contrastive"] / "trainer_state.json").read_text())
    assert state["config"]["reranker"]["init"] == str(earlier["contrastive"])
    # the same seeded first batch: only the starting weights differ
    assert first_loss(tmp_path / "later" / "plain") != first_loss(tmp_path / "earlier" / "plain")
