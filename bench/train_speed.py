"""Training throughput, before and after: examples (queries) per second of each trainer stage, side by side.

    .venv/bin/python bench/train_speed.py                      # SmolLM2-135M at the SciFact recipes' shapes
    .venv/bin/python bench/train_speed.py --stages distill --steps 3 --threads 1
    .venv/bin/python bench/train_speed.py --model tiny --steps 3   # seconds: a tiny random Llama (a smoke check)

"Before" is the code of ``--before`` (default: the commit this work started from), extracted
with ``git archive`` into a temporary directory (its ``src/`` and ``recipes/``); "after" is this
checkout. Each stage trains ``--steps`` + 1 optimizer steps in a fresh process per side, the
two sides at the same time (``--rounds`` repeats), so load on a shared machine falls on both;
the first step (warm-up) is not timed. Both sides load the before-commit's recipe
(``recipes/scifact-smollm2-retriever.toml`` for ``retriever``, ``scifact-smollm2-matryoshka.toml``
for the rest, ``--set``-style overrides below) with the same groups and seed, so they train on
the same batches and students; the after side runs the stages' legacy mathematics
(``reranker.exits = "sampled"``, ``distill_from = "all"``, ``compensation_teachers = "frozen"``,
``compensation_heads = false``): only the speed of the same computation changes (its LoRA
dropout masks come from another generator: ``lora.fast_dropout``). Stages: ``retriever``,
``plain`` (``contrastive``), ``distill``, ``comp`` (``compensate``, from a 1-step distilled
checkpoint made by the before side), ``pointwise`` (RankLLaMA trainer, the Matryoshka recipe's
shapes). ``--bf16`` adds a third side, ``after_bf16``: the after code with ``model.dtype =
"bfloat16"`` (bf16 weights and autocast; LoRA adapters and heads stay fp32), reported with
``<stage>.ratio_bf16``: a different arithmetic, so its quality needs its own validation. ``examples_per_s`` is ``batch_size`` over the mean wall-clock seconds of a timed step,
``examples_per_cpu_s`` the same over this process's CPU seconds (steadier on a shared machine).
The last stdout line is one JSON object with both per side and stage, and the ratios. A run
with the same ``--out`` reuses the stages whose two sides finished there (a stage whose worker
died, e.g. killed for memory, is measured again, both sides at once).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The commit this branch started from (issue 21): the "before" side by default.
BASE_COMMIT = "59e5265"
STAGES = {"retriever": None, "plain": "contrastive", "distill": "distill", "comp": "compensate",
          "pointwise": "contrastive"}
LEGACY_MATH = {"reranker.exits": "sampled", "reranker.distill_from": "all", "reranker.compensation_teachers": "frozen",
               "reranker.compensation_heads": False}
TINY = {"reranker.teachers": [2, 4], "reranker.student_depths": [1, 2, 3, 4],
        "reranker.student_compress": ["", "1:0.5", "1:0.25", "2:0.5"]}


def extract(rev: str, into: Path) -> Path:
    """``src/`` and ``recipes/`` of commit ``rev`` under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src", "recipes"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def worker(args: argparse.Namespace) -> None:
    """One side of one stage: train, then print the timed steps' seconds as JSON."""
    import torch

    from nestrank.train.config import load_config

    torch.set_num_threads(args.threads)
    stage, out = args.stage, Path(args.out)
    overrides: dict[str, object] = {"data.train_groups": args.groups, "train.output_dir": str(out),
                                    "train.max_steps": args.steps + 1, "train.save_every": 0, "train.log_every": 1}
    if args.backbone:
        overrides["model.backbone"] = args.backbone
        overrides.update(TINY if stage != "retriever" and stage != "pointwise" else {})
    if stage == "retriever":
        recipe = "scifact-smollm2-retriever.toml"
        overrides["lora.enabled"] = True  # the step measured since issue 21 (the recipe now fine-tunes every weight)
    else:
        recipe = "scifact-smollm2-matryoshka.toml"
        overrides["reranker.stage"] = STAGES[stage]
        if stage == "comp":
            overrides["reranker.init"] = args.init
        if stage == "pointwise":
            overrides.update({"reranker.kind": "pointwise", "reranker.teachers": [], "reranker.student_depths": [],
                              "reranker.student_compress": [""], "reranker.students_per_step": 0,
                              "reranker.compensation_factors": [2, 4, 8]})
        if args.side != "before" and stage != "pointwise":
            overrides.update(LEGACY_MATH)
    if args.side == "after_bf16":
        overrides["model.dtype"] = "bfloat16"
    config = load_config(Path(args.recipes) / recipe, overrides)
    if stage == "retriever":
        from nestrank.train.retriever import train_retriever as train
    else:
        from nestrank.train.reranker import train_reranker as train
    train(config, progress=False)
    print(json.dumps(timings(out)))


def start_side(side: str, src: Path, recipes: Path, stage: str, args: argparse.Namespace, out: Path,
               init: Path | None = None, steps: int | None = None) -> subprocess.Popen:
    """Start one side's worker process (its JSON comes back through :func:`finish_side`)."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, __file__, "--worker", "--side", side, "--stage", stage, "--out", str(out),
           "--recipes", str(recipes), "--groups", args.groups, "--steps", str(args.steps if steps is None else steps),
           "--threads", str(args.threads), "--backbone", args.backbone or "", "--init", str(init or "")]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def timings(out: Path) -> dict:
    """The timed steps of a finished worker's run directory (its log), as the worker prints them."""
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]
    state = json.loads((out / "final" / "trainer_state.json").read_text(encoding="utf-8"))
    return {"wall": [b["seconds"] - a["seconds"] for a, b in zip(log, log[1:], strict=False)],
            "cpu": [b["cpu_seconds"] - a["cpu_seconds"] for a, b in zip(log, log[1:], strict=False)],
            "batch_size": state["config"]["train"]["batch_size"], "loss": [r["loss"] for r in log]}


def finished(out: Path, steps: int) -> bool:
    """Whether ``out`` holds a worker run of ``steps`` timed steps (a re-run with the same --out reuses it)."""
    log = out / "train_log.jsonl"
    return (out / "final" / "trainer_state.json").is_file() and len(log.read_text().splitlines()) == steps + 1


def finish_side(process: subprocess.Popen, what: str) -> dict:
    """Wait for a worker; its last stdout line is its JSON."""
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{what} failed:\n{stderr[-4000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default=BASE_COMMIT, help="Commit of the 'before' code (default: %(default)s).")
    parser.add_argument("--stages", default=",".join(STAGES), help="Comma-separated stages (default: all).")
    parser.add_argument("--steps", type=int, default=4, help="Timed steps per run (one more is trained, untimed).")
    parser.add_argument("--rounds", type=int, default=1, help="Runs per side and stage.")
    parser.add_argument("--bf16", action="store_true",
                        help="Also run the after code with model.dtype = bfloat16 (side after_bf16: NOT the same "
                             "arithmetic; this CPU's AVX512-BF16 matrix multiplies run ~4x fp32's).")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run (default 1).")
    parser.add_argument("--groups", default="out/data/train-groups.jsonl",
                        help="Training groups (e.g. `nestrank mine` over BM25; bench/train_reranker.py writes some).")
    parser.add_argument("--model", default=None, help="'tiny': a 4-layer random Llama instead of SmolLM2-135M.")
    parser.add_argument("--out", default=None, help="Work directory (default: a temporary one).")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side", default="after", help=argparse.SUPPRESS)
    parser.add_argument("--stage", default="distill", help=argparse.SUPPRESS)
    parser.add_argument("--recipes", default=str(ROOT / "recipes"), help=argparse.SUPPRESS)
    parser.add_argument("--backbone", default="", help=argparse.SUPPRESS)
    parser.add_argument("--init", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"--stages: unknown {', '.join(sorted(unknown))} (choose from {', '.join(STAGES)})")
    args.groups = str(Path(args.groups).resolve())
    if not Path(args.groups).is_file():
        parser.error(f"--groups {args.groups} not found (fix: run `nestrank mine` or bench/train_reranker.py first)")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        work = Path(args.out or tmp)
        before = extract(args.before, work / "before")
        sides = {"before": (before / "src", before / "recipes"), "after": (ROOT / "src", before / "recipes")}
        if args.bf16:
            sides["after_bf16"] = sides["after"]
        if args.model == "tiny":
            sys.path.insert(0, str(ROOT / "bench"))
            from rerank_quality import tiny_model_dir

            args.backbone = str(tiny_model_dir(work).resolve())
        init = None
        if "comp" in stages:  # a distilled checkpoint to compensate (one step: the speed does not depend on it)
            init = work / "init" / "final"
            if not (init / "trainer_state.json").is_file():
                finish_side(start_side("before", *sides["before"], "distill", args, work / "init", steps=0), "init")
        figures: dict[str, object] = {"benchmark": "train_speed", "before": args.before, "threads": args.threads,
                                      "model": args.model or "smollm2-135m", "steps": args.steps,
                                      "rounds": args.rounds}
        for stage in stages:
            timed: dict[str, dict[str, list[float]]] = {side: {"wall": [], "cpu": []} for side in sides}
            for round_ in range(args.rounds):
                print(f"{stage}: round {round_ + 1}, both sides", file=sys.stderr, flush=True)
                runs = {side: work / f"{stage}-{side}-{round_}" for side in sides}
                if all(finished(out, args.steps) for out in runs.values()):  # measured before with this --out
                    running = {}
                else:
                    running = {side: start_side(side, *sides[side], stage, args, runs[side], init) for side in sides}
                for side in sides:
                    result = finish_side(running[side], f"{side} {stage}") if running else timings(runs[side])
                    timed[side]["wall"] += result["wall"]
                    timed[side]["cpu"] += result["cpu"]
                    batch = result["batch_size"]
            for side in sides:
                wall = sum(timed[side]["wall"]) / len(timed[side]["wall"])
                cpu = sum(timed[side]["cpu"]) / len(timed[side]["cpu"])
                figures[f"{stage}.{side}.seconds_per_step"] = round(wall, 3)
                figures[f"{stage}.{side}.examples_per_s"] = round(batch / wall, 4)
                figures[f"{stage}.{side}.examples_per_cpu_s"] = round(batch / cpu, 4)
            for side in [name for name in sides if name != "before"]:
                for unit in ("examples_per_s", "examples_per_cpu_s"):
                    key = f"{stage}.ratio" + ("" if unit == "examples_per_s" else "_cpu") + side.removeprefix("after")
                    figures[key] = round(figures[f"{stage}.{side}.{unit}"] / figures[f"{stage}.before.{unit}"], 3)
            print(json.dumps({k: v for k, v in figures.items() if k.startswith(stage + ".")}), file=sys.stderr,
                  flush=True)
    figures["minutes"] = round((time.perf_counter() - start) / 60, 1)
    figures["load_average_15m"] = round(os.getloadavg()[2], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
