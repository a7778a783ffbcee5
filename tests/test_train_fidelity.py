"""Fidelity of the Matryoshka trainer to the paper (issue 21, item 3): each deviation, with the test that catches it.

Tiny random Llama (6 layers): teachers [3, 6], students at depths 2..5, widths "", "1:0.5", "2:0.5".
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from helpers import matryoshka_train_config as reranker_config  # noqa: E402
from helpers import rerank_groups as make_groups  # noqa: E402

from nestrank.errors import ConfigError  # noqa: E402
from nestrank.models.matryoshka import MatryoshkaReranker, UntrainedExitWarning  # noqa: E402
from nestrank.models.tiny import byte_tokenizer, tiny_llama  # noqa: E402
from nestrank.train.checkpoint import check_compatible  # noqa: E402
from nestrank.train.config import config_from_dict, load_config  # noqa: E402
from nestrank.train.losses import StudentScores, cascaded_self_distillation, distillation_kl  # noqa: E402
from nestrank.train.losses.group import group_cross_entropy  # noqa: E402
from nestrank.train.matryoshka import MatryoshkaTrainer  # noqa: E402
from nestrank.train.reranker import train_reranker  # noqa: E402
from nestrank.train.students import Student, plan_step, student_options  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
LEGACY = {"exits": "sampled", "distill_from": "all", "compensation_teachers": "frozen", "compensation_heads": False}


DOCS = ["the cat is here, a cat by the road", "moon river stone", "a bird and a fish in the rain"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    base = root / "tiny"
    tiny_llama().save_pretrained(base)
    byte_tokenizer().save_pretrained(base)
    return base, make_groups(root / "groups.jsonl")


@pytest.fixture(scope="module")
def distilled(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill")
    return train_reranker(reranker_config(setup, out, max_steps=3), progress=False).checkpoint


# ----------------------------------------------------------------- train.temperature


def test_reranker_temperature_defaults_to_raw_scores_not_the_retrievers(setup, tmp_path):
    """A reranker config without train.temperature used 0.01 (the retriever's), dividing raw logits by 100."""
    data = reranker_config(setup, tmp_path).to_dict()
    del data["train"]["temperature"]
    trainer = MatryoshkaTrainer(config_from_dict(data), progress=False)
    assert trainer.config.train.temperature == 1.0
    from nestrank.train.retriever import RetrieverTrainer

    assert RetrieverTrainer.default_temperature == 0.01
    for name in ("scifact-smollm2-matryoshka", "matryoshka-msmarco-passage", "rankllama-msmarco-passage"):
        config = load_config(RECIPES / f"{name}.toml", {"reranker.init": "x"})
        assert MatryoshkaTrainer.resolve_defaults(trainer, config).train.temperature == 1.0, name


def test_msmarco_recipe_keeps_the_papers_total_length():
    """The paper's 224 tokens are query 32 + passage 192; the recipe had passage 224 on top of a 64-token query."""
    config = load_config(RECIPES / "matryoshka-msmarco-passage.toml")
    assert (config.data.query_max_length, config.data.passage_max_length) == (32, 192)


# ----------------------------------------------------------------- the cascade


def test_nearest_cascade_teaches_each_structure_from_its_close_super_architecture():
    torch.manual_seed(0)
    s = {name: torch.randn(2, 3) for name in ("t3", "t6", "f2", "f4", "c4", "c5")}
    teachers = {3: s["t3"], 6: s["t6"]}
    students = [StudentScores(2, s["f2"], "depth=2", full_width=True), StudentScores(4, s["f4"], "depth=4", True),
                StudentScores(4, s["c4"], "depth=4,compress=1:0.5"), StudentScores(5, s["c5"], "depth=5,compress=1:0.5")]
    loss = cascaded_self_distillation(teachers, students, distill_from="nearest")
    kl = {k: v for k, v in loss.parts.items() if k.startswith("kl.")}
    # one teacher each: full width from the next deeper full-width exit, compressed from full width at its depth
    assert set(kl) == {"kl.teacher3<-4", "kl.depth=2<-3", "kl.depth=4<-6", "kl.depth=4,compress=1:0.5<-4",
                       "kl.depth=5,compress=1:0.5<-6"}
    assert kl["kl.teacher3<-4"] == pytest.approx(float(distillation_kl(s["t3"], s["f4"])), rel=1e-6)
    expected = sum(float(group_cross_entropy(v)) for v in s.values()) + sum(kl.values())
    assert float(loss.total) == pytest.approx(expected, rel=1e-5)
    # the old sum: a depth-2 student learns from both teachers, the deepest teacher's KL counted at every depth
    legacy = cascaded_self_distillation(teachers, students, distill_from="all")
    assert {"kl.depth=2<-3", "kl.depth=2<-6"} <= set(legacy.parts) and "kl.teacher3<-6" not in legacy.parts


def test_all_exits_are_read_and_trained_every_step(setup, tmp_path):
    config = reranker_config(setup, tmp_path, {"students_per_step": 1}).reranker
    options = student_options(config, [3, 6])
    for step in range(4):
        plan = plan_step(config, [3, 6], options, 42, step)
        assert plan.full == (2, 3, 4, 5, 6)  # every full-width exit, teachers included
        ((width, exits),) = plan.widths
        first = int(width.split(":")[0])
        assert exits == tuple(d for d in (2, 3, 4, 5) if d > first)  # the pass reads every depth after its merge
        assert {Student(d, width) for d in exits} <= set(plan.students)
    legacy = plan_step(reranker_config(setup, tmp_path, {"students_per_step": 1, **LEGACY}).reranker, [3, 6],
                       options, 42, 0)
    assert len(legacy.students) == 1 and len(set(legacy.full) | {d for _, e in legacy.widths for d in e}) <= 3


def test_untrained_exits_warn_and_trained_ones_are_recorded(setup, tmp_path):
    out = tmp_path / "sampled"
    train_reranker(reranker_config(setup, out, {"students_per_step": 0, **LEGACY}), progress=False)
    loaded = MatryoshkaReranker.from_pretrained(str(out / "final"), dtype="float32", device="cpu")
    assert loaded.trained_exits == (3, 6)  # only the teachers' heads were ever read
    with pytest.warns(UntrainedExitWarning, match="exit layer.s. 2 were not trained"):
        loaded.score("where is the cat", DOCS, config="depth=2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.score("where is the cat", DOCS, config="depth=3")
        loaded.score("where is the cat", DOCS)
    out = tmp_path / "all"
    train_reranker(reranker_config(setup, out), progress=False)
    assert MatryoshkaReranker.from_pretrained(str(out / "final"), dtype="float32").trained_exits == (2, 3, 4, 5, 6)


# ----------------------------------------------------------------- compensation


def test_compensation_trains_the_full_model_and_heads(setup, distilled, tmp_path):
    """Frozen teachers left full width untrained (V-LoRA could only drift it); compensated ones train it."""
    with pytest.raises(ConfigError, match="only students train the compensation"):
        reranker_config(setup, tmp_path, {"stage": "compensate", "init": str(distilled), "students_per_step": 0,
                                          **LEGACY}).validate_reranker()
    config = reranker_config(setup, tmp_path / "comp", {"stage": "compensate", "init": str(distilled),
                                                        "students_per_step": 0}, max_steps=3)
    trainer = MatryoshkaTrainer(config, progress=False)
    trainer.train()
    init = MatryoshkaReranker.from_pretrained(str(distilled), dtype="float32", device="cpu")
    trained = trainer.reranker
    assert not np.allclose(trained.score("where is the cat", DOCS), init.score("where is the cat", DOCS), atol=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(init.heads.parameters(), trained.heads.parameters(),
                                                      strict=True))
    log = [line for line in (tmp_path / "comp" / "train_log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert all('"kl.teacher3<-4"' in line for line in log)  # an intermediate teacher learns from the next exit


def test_resume_treats_keys_a_checkpoint_predates_as_their_legacy_values(setup, tmp_path):
    current = reranker_config(setup, tmp_path, LEGACY).to_dict()
    saved = {section: dict(values) for section, values in current.items()}
    for key in LEGACY:
        del saved["reranker"][key]
    del saved["lora"]["fast_dropout"]
    current["lora"]["fast_dropout"] = False
    check_compatible(saved, current, tmp_path, {"lora": None, "reranker": None})
    current["reranker"]["distill_from"] = "nearest"
    with pytest.raises(ConfigError, match="reranker.distill_from was 'all'"):
        check_compatible(saved, current, tmp_path, {"lora": None, "reranker": None})
