"""Matryoshka reranker trainer on a tiny random Llama: stages, Eq. 9 loss, checkpoints, resume, config errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from helpers import matryoshka_train_config as make_config  # noqa: E402
from helpers import rerank_groups  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from nestrank.errors import ConfigError  # noqa: E402
from nestrank.models.matryoshka import MatryoshkaReranker  # noqa: E402
from nestrank.train.batches import GroupBatcher  # noqa: E402
from nestrank.train.config import config_from_dict, load_config  # noqa: E402
from nestrank.train.loop import load_groups  # noqa: E402
from nestrank.train.losses import StudentScores, cascaded_self_distillation  # noqa: E402
from nestrank.train.matryoshka import MatryoshkaTrainer  # noqa: E402
from nestrank.train.reranker import train_reranker  # noqa: E402
from nestrank.train.students import Student, sample_students, student_options  # noqa: E402

CONFIGS = (None, "depth=3", "depth=5,compress=2:0.5", "depth=4,compress=1:0.5;2:0.25")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("train-reranker")
    return tiny_llama_dir, rerank_groups(root / "groups.jsonl")


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def assert_same_scores(a: MatryoshkaReranker, b: MatryoshkaReranker, query: str, docs: list[str]) -> None:
    for config in CONFIGS:
        np.testing.assert_allclose(a.score(query, docs, config=config), b.score(query, docs, config=config),
                                   atol=1e-5, err_msg=str(config))


DOCS = ["the cat is here, a cat by the road", "moon river stone", "a bird and a fish in the rain"]


@pytest.fixture(scope="module")
def distilled(setup, tmp_path_factory):
    """4 distill steps with LoRA dropout on, checkpoints every 2 steps."""
    out = tmp_path_factory.mktemp("distill")
    trainer = MatryoshkaTrainer(make_config(setup, out, lora={"dropout": 0.1}, max_steps=4, save_every=2),
                              progress=False)
    result = trainer.train()
    return trainer, result, out


# ----------------------------------------------------------------- config


@pytest.mark.parametrize(("reranker", "lora", "match"), [
    ({"stage": "pretrain"}, {}, "reranker.stage"),
    ({"stage": "compensate"}, {}, "reranker.init"),
    ({"student_compress": ["8"]}, {}, "student_compress entry '8'"),
    ({"student_compress": ["5:0.5"]}, {}, "at or after every student depth"),
    ({"student_depths": []}, {}, "students_per_step = 0"),
    ({"compensation_factors": [1, 2]}, {}, "reranker.compensation_factors"),
    ({"distill_temperature": 0}, {}, "reranker.distill_temperature"),
    ({"stage": "compensate", "init": "x", "students_per_step": 0, "compensation_teachers": "frozen"}, {},
     "only students train the compensation"),
    ({}, {"enabled": False}, "lora.enabled"),
])
def test_config_errors(setup, tmp_path, reranker, lora, match):
    with pytest.raises(ConfigError, match=match):
        make_config(setup, tmp_path, reranker, lora).validate_reranker()


@pytest.mark.parametrize(("reranker", "match"), [
    ({"teachers": [7]}, "layer 7 does not exist"),
    ({"teachers": [3]}, r"student_depths \[4, 5\] are deeper than the deepest teacher 3"),
    ({"students_per_step": 20, "exits": "sampled"}, "exceeds the 10 distinct students"),
    ({"students_per_step": 3}, "exceeds the 2 compressed widths"),
    ({"init": "nowhere"}, "reranker.init: nowhere is not a Matryoshka checkpoint"),
])
def test_errors_found_with_the_model(setup, tmp_path, reranker, match):
    with pytest.raises(ConfigError, match=match):
        train_reranker(make_config(setup, tmp_path, reranker), progress=False)


def test_retriever_configs_and_recipes_load():
    root = Path(__file__).resolve().parents[1] / "recipes"
    for name in ("repllama-msmarco-passage", "scifact-smollm2-retriever"):
        load_config(root / f"{name}.toml")
    assert load_config(root / "rankllama-msmarco-passage.toml").validate_reranker().reranker.kind == "pointwise"
    for name in ("matryoshka-msmarco-passage", "scifact-smollm2-matryoshka"):
        for stage in ("contrastive", "distill", "compensate"):
            load_config(root / f"{name}.toml", {"reranker.stage": stage, "reranker.init": "x"}).validate_reranker()


def test_student_sampling_is_deterministic_and_valid(setup, tmp_path):
    config = make_config(setup, tmp_path).reranker
    options = student_options(config, [3, 6])
    assert Student(3) not in options and Student(2, "2:0.5") not in options  # a teacher; compressing at the exit
    assert Student(3, "2:0.5") in options and Student(2) in options
    draws = [sample_students(options, 2, 42, step) for step in range(20)]
    assert draws == [sample_students(options, 2, 42, step) for step in range(20)]
    assert all(len(set(d)) == 2 for d in draws) and len({tuple(d) for d in draws}) > 5


# ----------------------------------------------------------------- stages


def test_contrastive_loss_goes_down_and_checkpoint_reloads(setup, tmp_path):
    out = tmp_path / "plain"
    trainer = MatryoshkaTrainer(make_config(setup, out, {"stage": "contrastive", "students_per_step": 0}, max_steps=8),
                              progress=False)
    result = trainer.train()
    losses = [r["loss"] for r in log(out)]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0]
    assert all(not any(k.startswith("kl.") for k in r["parts"]) for r in log(out))
    assert all(float(head.bias.abs().max()) == 0.0 for head in trainer.reranker.heads.values())  # biases stay fixed
    final = result.checkpoint
    assert sorted(p.name for p in final.iterdir()) == ["checksums.json", "heads.safetensors", "lora", "nestrank.json",
                                                       "optimizer.pt", "scheduler.json", "trainer_state.json"]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (final / "lora").iterdir()}
    loaded = MatryoshkaReranker.from_pretrained(str(final), dtype="float32", device="cpu")
    assert_same_scores(loaded, trainer.reranker, "where is the cat", DOCS)
    fresh = MatryoshkaReranker.from_pretrained(str(setup[0]), dtype="float32", device="cpu", max_passage_tokens=24,
                                               max_query_tokens=16)
    assert not np.allclose(fresh.score("where is the cat", DOCS), loaded.score("where is the cat", DOCS), atol=1e-3)


LEGACY = {"exits": "sampled", "distill_from": "all", "compensation_teachers": "frozen", "compensation_heads": False}


def test_distill_logged_loss_is_eq9_on_the_batch(setup, tmp_path):
    config = make_config(setup, tmp_path, LEGACY, max_steps=1)
    train_reranker(config, progress=False)
    (record,) = log(tmp_path)
    # recompute with the untrained reranker (LoRA B = 0) through the public scoring API
    reranker = MatryoshkaReranker.from_pretrained(str(setup[0]), dtype="float32", device="cpu",
                                                  max_passage_tokens=24, max_query_tokens=16)
    batch = GroupBatcher(load_groups(config), 4, 3, config.train.seed).batch(0, 0)
    queries = [q for q in batch.queries for _ in range(3)]
    students = sample_students(student_options(config.reranker, [3, 6]), 2, config.train.seed, 0)
    assert record["students"] == [s.name for s in students]

    def scores(config=None, exits=None):
        out = (reranker.score_exits(queries, batch.passages, exits) if exits
               else {0: reranker.score(queries, batch.passages, config=config)})
        return {k: torch.from_numpy(v.reshape(4, 3)) for k, v in out.items()}

    teachers = scores(exits=[3, 6])
    scored = [StudentScores(s.depth, scores(s.name)[0], s.name) for s in students]
    expected = cascaded_self_distillation(teachers, scored, temperature=1.0, distill_temperature=1.0)
    assert record["loss"] == pytest.approx(float(expected.total), rel=1e-5)
    assert record["parts"].keys() == expected.parts.keys()
    assert any(k.startswith("kl.") for k in record["parts"])


def test_compensate_trains_only_the_compensation(setup, distilled, tmp_path):
    _, distill_result, _ = distilled
    init = MatryoshkaReranker.from_pretrained(str(distill_result.checkpoint), dtype="float32", device="cpu")
    before = {k: v.clone() for k, v in init.model.state_dict().items()}
    heads = {k: v.clone() for k, v in init.heads.state_dict().items()}
    out = tmp_path / "comp"
    config = make_config(setup, out, {"stage": "compensate", "init": str(distill_result.checkpoint),
                                      "compensation_r": 2, "compensation_alpha": 4, "compensation_factors": [2, 4],
                                      **LEGACY})
    trainer = MatryoshkaTrainer(config, progress=False)
    result = trainer.train()
    trained = trainer.reranker
    after = trained.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(heads[k], v) for k, v in trained.heads.state_dict().items())
    assert any(float(p.detach().abs().max()) > 0 for n, p in trained.compensation.named_parameters() if n.endswith("lora_B"))
    assert (result.checkpoint / "compensation.safetensors").is_file() and (result.checkpoint / "lora").is_dir()
    loaded = MatryoshkaReranker.from_pretrained(str(result.checkpoint), dtype="float32", device="cpu")
    assert loaded.compensation is not None and loaded.compensation.settings.factors == (2, 4)
    assert_same_scores(loaded, trained, "where is the dog", DOCS)
    # the compensation changes compressed scores of the distilled model
    assert not np.allclose(loaded.score("where is the dog", DOCS, config="depth=5,compress=2:0.5"),
                           init.score("where is the dog", DOCS, config="depth=5,compress=2:0.5"), atol=1e-4)


@pytest.mark.parametrize("stage", ["distill", "compensate"])
def test_gradient_checkpointing_changes_nothing(setup, distilled, tmp_path, stage):
    """Recomputed layers see the adapters of their forward (compensation hooks are per-layer contexts)."""
    init = str(distilled[1].checkpoint) if stage == "compensate" else ""
    runs = []
    for checkpointing in (False, True):
        config = make_config(setup, tmp_path / str(checkpointing), {"stage": stage, "init": init}).to_dict()
        config["model"]["gradient_checkpointing"] = checkpointing
        trainer = MatryoshkaTrainer(config_from_dict(config), progress=False)
        trainer.train()
        runs.append((trainer.reranker, log(tmp_path / str(checkpointing))))
    (plain, plain_log), (checkpointed, checkpointed_log) = runs
    assert [r["grad_norm"] for r in checkpointed_log] == pytest.approx([r["grad_norm"] for r in plain_log], rel=1e-5)
    assert_same_scores(checkpointed, plain, "where is the moon", DOCS)


def test_resume_reproduces_the_uninterrupted_run(setup, distilled, tmp_path):
    uninterrupted, _, out = distilled
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-4").exists()
    config = make_config(setup, tmp_path, lora={"dropout": 0.1}, max_steps=4, save_every=2,
                         resume_from=str(out / "checkpoint-2"))
    resumed = MatryoshkaTrainer(config, progress=False)
    assert resumed.train().steps == 4
    assert [r["step"] for r in log(tmp_path)] == [3, 4]
    assert [r["loss"] for r in log(tmp_path)] == pytest.approx([r["loss"] for r in log(out)[2:]], rel=1e-5)
    assert_same_scores(resumed.reranker, uninterrupted.reranker, "where is the sun", DOCS)


def test_resume_refuses_changed_settings(setup, distilled, tmp_path):
    _, _, out = distilled
    config = make_config(setup, tmp_path, {"students_per_step": 1}, lora={"dropout": 0.1}, max_steps=4,
                         resume_from=str(out / "checkpoint-2"))
    with pytest.raises(ConfigError, match="reranker.students_per_step"):
        train_reranker(config, progress=False)


def test_cli_train_reranker(setup, tmp_path):
    from nestrank.cli import app, commands  # noqa: F401  (commands registers the subcommands)

    base, groups = setup
    path = tmp_path / "config.toml"
    path.write_text(f"""
[model]
backbone = "{base}"
[lora]
r = 2
alpha = 4
target_modules = ["q_proj", "v_proj"]
[data]
train_groups = "{groups}"
group_size = 2
passage_max_length = 16
[train]
output_dir = "{tmp_path / 'out'}"
batch_size = 2
temperature = 1.0
[reranker]
stage = "contrastive"
teachers = [6]
student_depths = [3]
student_compress = ["1:0.5"]
""")
    result = CliRunner().invoke(app, ["train", "reranker", "--config", str(path), "--set", "train.max_steps=1",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index('{"checkpoint"'):].strip())  # after transformers' bars
    assert summary["steps"] == 1 and Path(summary["checkpoint"]).name == "final"


@pytest.mark.timeout(300)
def test_two_process_torchrun_matches_one_process(setup, tmp_path):
    """DDP (gloo): same global batch, same students, so the same weights and the same (global) logged loss."""
    from safetensors.torch import load_file

    single = train_reranker(make_config(setup, tmp_path / "one"), progress=False)
    path = tmp_path / "two.toml"
    config = make_config(setup, tmp_path / "two").to_dict()
    path.write_text("".join(f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
                            for section, values in config.items()), encoding="utf-8")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "nestrank.train", "reranker", "--config", str(path), "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("lora/adapter_model.safetensors", "heads.safetensors"):
        one, two = load_file(single.checkpoint / name), load_file(tmp_path / "two" / "final" / name)
        for key in one:
            # gloo's all-reduce sums in another order than one process; Adam turns that rounding into
            # ~1e-5 differences in a few elements (seen: 1.2e-5 in 1 of 256), far below a real DDP error
            torch.testing.assert_close(two[key], one[key], atol=5e-5, rtol=0)
    assert [r["loss"] for r in log(tmp_path / "two")] == pytest.approx([r["loss"] for r in log(tmp_path / "one")],
                                                                      rel=1e-5)
