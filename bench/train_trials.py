"""Run one named training trial and append its record (config, validation figures, command, timing) to a results file.

    .venv/bin/python bench/train_trials.py --name distill-nearest --recipe recipes/scifact-smollm2-matryoshka.toml \
        --set reranker.init=out/trials/plain-base/final --set train.max_steps=40 --threads 1
    .venv/bin/python bench/train_trials.py --name retriever-hybrid --retriever --recipe recipes/scifact-smollm2-retriever.toml \
        --set data.train_groups=out/data/train-groups-hybrid.jsonl

The trial trains the recipe with the ``--set`` overrides into ``--out-root/<name>`` (a finished
trial is not retrained: its record is written again from its files) and validates with the
trainer's own held-out groups (``train.eval_every``, default here: once, at the last step;
``train.eval_queries`` 40, ``eval_group_size`` 8 unless set; Matryoshka: ``train.eval_configs``
``["", "light"]`` unless set): the MRR of the positive among its group's BM25 negatives
(:mod:`nestrank.train.validation`), never a test query. One JSON line per trial goes to
``--results`` (default ``docs/results-training-trials.jsonl``)::

    {"name", "date", "command", "overrides", "config" (the full resolved config), "steps",
     "validation" (the last validation record), "best" (best step and figures),
     "seconds_per_step", "cpu_seconds_per_step", "minutes", "threads", "load_average_15m"}

Choose between trials on these figures; report test once, for the chosen one.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from nestrank.train.config import load_config, parse_overrides
from nestrank.train.loop import LOG_FILE, VALIDATION_LOG
from nestrank.train.validation import BEST_DIR, BEST_FILE

EVAL_DEFAULTS: dict[str, object] = {"train.eval_queries": 40, "train.eval_group_size": 8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="Trial name (its directory under --out-root).")
    parser.add_argument("--recipe", default="recipes/scifact-smollm2-matryoshka.toml")
    parser.add_argument("--retriever", action="store_true", help="Train a retriever (default: a reranker).")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out-root", default="out/trials")
    parser.add_argument("--results", default="docs/results-training-trials.jsonl")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    user = parse_overrides(args.set)
    out = Path(args.out_root) / args.name
    overrides: dict[str, object] = {**EVAL_DEFAULTS, "train.output_dir": str(out)}
    if not args.retriever:
        overrides["train.eval_configs"] = ["", "light"]
    base = load_config(args.recipe, {**overrides, **user})
    overrides.setdefault("train.eval_every", base.train.max_steps or 10**9)
    config = load_config(args.recipe, {**overrides, **user})
    start = time.perf_counter()
    if not (out / "final" / "trainer_state.json").is_file():
        if args.retriever:
            from nestrank.train.retriever import train_retriever as train
        else:
            from nestrank.train.reranker import train_reranker as train
        train(config, progress=False)
    steps = [json.loads(line) for line in (out / LOG_FILE).read_text(encoding="utf-8").splitlines()]
    checked = out / VALIDATION_LOG
    checks = [json.loads(line) for line in checked.read_text(encoding="utf-8").splitlines()] if checked.is_file() else []
    timed = list(zip(steps, steps[1:], strict=False))
    record = {
        "name": args.name, "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "overrides": user, "config": config.to_dict(), "steps": steps[-1]["step"] if steps else 0,
        "final_loss": steps[-1]["loss"] if steps else None,
        "validation": checks[-1] if checks else None,
        "best": json.loads((out / BEST_DIR / BEST_FILE).read_text("utf-8")) if (out / BEST_DIR / BEST_FILE).is_file()
        else None,
        "seconds_per_step": round(sum(b["seconds"] - a["seconds"] for a, b in timed) / max(1, len(timed)), 2),
        "cpu_seconds_per_step": round(sum(b["cpu_seconds"] - a["cpu_seconds"] for a, b in timed) / max(1, len(timed)),
                                      2),
        "minutes": round((time.perf_counter() - start) / 60, 1), "threads": torch.get_num_threads(),
        "load_average_15m": round(os.getloadavg()[2], 2),
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    print(json.dumps({k: record[k] for k in ("name", "steps", "validation", "best", "seconds_per_step", "minutes")}))


if __name__ == "__main__":
    main()
