"""Train the Matryoshka reranker recipe on SciFact, then rerank BM25 top-20 with every stage's model.

    .venv/bin/python bench/train_reranker.py --dataset ../shared/data/scifact
    .venv/bin/python bench/train_reranker.py --dataset ../shared/data/scifact --smoke   # minutes: checks the pipeline
    .venv/bin/python bench/train_reranker.py --set train.learning_rate=1e-4 --out out/rr-lr1e-4 --validation-only
    .venv/bin/python bench/train_reranker.py --model tiny --smoke --out /tmp/trr-tiny  # ~1 minute, random weights

A short driver of the library (docs/training.md, "The reranker benchmark"). Under ``--out``: cached BM25
top-100 runs (``nestrank.pipeline.cached_runs``), mined groups, the stages ``plain``/``distill``/``comp``
(``nestrank.train.stages``; finished ones reused; ``--init OUT`` continues OUT's ``plain`` and ``distill``).
Then BM25's top ``--depth`` reranked by the zero-shot model and each stage, full and ``--light``, one pass
per width (``nestrank.pipeline.tune.plan_passes``), on ``--queries`` seeded test queries or, with
``--validation-only``, the held-out training queries (``validation.*`` keys); the depth x width sweep
with relative FLOPs (``nestrank.pipeline.cost``; ``sweep-<split>.csv``/``.png``); and each run
interpolated with BM25 (``nestrank.pipeline.interpolate``: the weight chosen on validation into
``fuse-weights.json``, applied by a test run). ``--smoke``: 2 steps per stage and 5 queries (projected
minutes); ``--model tiny``: a 4-layer random Llama. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rerank_quality import LIGHT, TINY_LIGHT, sample_queries, tiny_model_dir
from train_retriever import bm25_runs

from nestrank.data import Dataset, Qrels, Queries, Run
from nestrank.errors import ConfigError
from nestrank.evaluate import evaluate
from nestrank.models.matryoshka import MatryoshkaReranker
from nestrank.pipeline import choose_weight, interpolate
from nestrank.pipeline.cost import PairShapes, flops_ratio, pair_shapes, run_pairs
from nestrank.pipeline.frontier import plot_lines, write_rows_csv
from nestrank.pipeline.tune import TuneGrid, rerank_configs
from nestrank.train.config import TrainConfig, load_config, parse_overrides
from nestrank.train.loop import LOG_FILE, VALIDATION_FILE, TrainResult, load_groups
from nestrank.train.mining import mine_to_file
from nestrank.train.schedule import plan_steps
from nestrank.train.stages import StagePlan, plan_stages, train_stages

SMOKE_QUERIES = 5
NAMES = {"contrastive": "plain", "distill": "distill", "compensate": "comp"}  # stage -> directory and figure name
STAGE_OF = {name: stage for stage, name in NAMES.items()}
MODELS = ("zeroshot", *STAGE_OF)
TIMING_FILE = "bench_stage.json"  # next to a stage's final/, so a re-run still reports its minutes
FUSE_FILE = "fuse-weights{tag}.json"  # {"plain_full": w, ...}: chosen on validation, read by a test run
SWEEP = {False: ("10,15,20,25,30", "full,8:0.5,8:0.25,4:0.5"), True: ("1,2,3,4", "full,1:0.5,1:0.25,2:0.5")}
#: --model tiny: the recipe's teachers and students scaled from 30 layers to 4.
TINY_OVERRIDES: dict[str, object] = {"reranker.teachers": [2, 4], "reranker.student_depths": [1, 2, 3, 4],
                                     "reranker.student_compress": ["", "1:0.5", "1:0.25", "2:0.5"]}


def arguments() -> argparse.Namespace:
    """The command line, checked."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="../shared/data/scifact")
    p.add_argument("--recipe", default="recipes/scifact-smollm2-matryoshka.toml")
    p.add_argument("--model", default=None, choices=("tiny",), help="'tiny': a 4-layer random Llama.")
    p.add_argument("--out", default=None, help="Work directory (default: the recipe's train.output_dir + -bench).")
    p.add_argument("--init", default=None, metavar="OUT", help="Continue OUT's plain and distill (comp: this run's).")
    p.add_argument("--smoke", action="store_true", help="A few steps per stage and 5 queries.")
    p.add_argument("--max-steps", type=int, default=None, help="Cap the training steps (smoke default 2).")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="Override the recipe.")
    p.add_argument("--validation-only", action="store_true", help="Evaluate on validation queries, no test figure.")
    p.add_argument("--queries", type=int, default=100, help="Size of the seeded test query subset.")
    p.add_argument("--validation-queries", type=int, default=None, help="The first N held-out queries by id.")
    p.add_argument("--models", default=",".join(MODELS), help=f"Models to evaluate (of {', '.join(MODELS)}).")
    p.add_argument("--fuse-weights", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="Tried on validation.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the test query subset.")
    p.add_argument("--depth", type=int, default=20, help="BM25 depth that is reranked.")
    p.add_argument("--passage-tokens", type=int, default=None, help="Cut passages to N tokens when scoring.")
    p.add_argument("--light", default=None, help=f"Light configuration (default {LIGHT}; tiny: {TINY_LIGHT}).")
    p.add_argument("--sweep-models", default="comp", help="Models swept over every width ('' = no sweep).")
    p.add_argument("--sweep-depths", default=None, help=f"Exit layers (default {SWEEP[False][0]}).")
    p.add_argument("--sweep-compress", default=None, help=f"Widths, full = none (default {SWEEP[False][1]}).")
    p.add_argument("--batch-tokens", type=int, default=None, help="Padded tokens per scoring batch.")
    p.add_argument("--train-only", default=None, metavar="STAGES", help="Train these (of plain, distill, comp), stop.")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    p.add_argument("--groups", default=None, metavar="JSONL", help="Training groups instead of mining BM25's.")
    p.add_argument("--checkpoint", default="final", choices=("final", "best"), help="Evaluate final/ or best/.")
    args = p.parse_args()
    args.sweep_models, args.models = ([m for m in getattr(args, f).split(",") if m] for f in ("sweep_models", "models"))
    args.train_only = [m for m in (args.train_only or "").split(",") if m]
    for flag, names, known in (("--sweep-models", args.sweep_models, MODELS), ("--models", args.models, MODELS),
                               ("--train-only", args.train_only, STAGE_OF)):
        if set(names) - set(known):
            p.error(f"{flag}: unknown {', '.join(sorted(set(names) - set(known)))} (choose from {', '.join(known)})")
    try:
        args.fuse_weights = [float(w) for w in args.fuse_weights.split(",")]
    except ValueError:
        p.error(f"--fuse-weights: comma-separated numbers expected, got {args.fuse_weights!r}")
    if not all(0 < w < 1 for w in args.fuse_weights):
        p.error(f"--fuse-weights: each weight must lie strictly between 0 and 1, got {args.fuse_weights}")
    if args.passage_tokens is not None and args.passage_tokens < 1:
        p.error(f"--passage-tokens: a positive number of tokens expected, got {args.passage_tokens}")
    depths, widths = SWEEP[args.model == "tiny"]
    args.sweep_depths = [int(x) for x in (args.sweep_depths or depths).split(",")]
    args.sweep_compress = ["" if w == "full" else w for w in (args.sweep_compress or widths).split(",")]
    args.light = args.light or (TINY_LIGHT if args.model else LIGHT)
    args.error = p.error
    return args


def record_timing(plan: StagePlan, result: TrainResult) -> None:
    """Keep a trained stage's minutes and seconds per step (step 1 has warm-up) in ``TIMING_FILE``."""
    log = [json.loads(line) for line in (plan.directory / LOG_FILE).read_text(encoding="utf-8").splitlines()]
    timed = [b["seconds"] - a["seconds"] for a, b in zip(log, log[1:], strict=False)]
    record = {"minutes": round(result.seconds / 60, 2), "steps": result.steps, "final_loss": round(result.loss, 4),
              "threads": torch.get_num_threads(), "load_average_15m": round(os.getloadavg()[2], 2),
              "seconds_per_step": round(float(np.mean(timed)) if timed else result.seconds / max(1, result.steps), 2)}
    (plan.directory / TIMING_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")


def ndcg(run: Run, qrels: Qrels) -> float:
    return round(evaluate(run, qrels, "ndcg@10")["nDCG@10"], 4)


def load_model(name: str, out: Path, distill: TrainConfig, args: argparse.Namespace) -> MatryoshkaReranker:
    """The zero-shot model (the recipe's lengths) or a stage's checkpoint (which records the lengths it trained with)."""
    dtype = "bfloat16" if distill.model.dtype == "bfloat16" else "float32"
    if name == "zeroshot":
        return MatryoshkaReranker.from_pretrained(distill.model.backbone, dtype=dtype, max_query_tokens=distill.data.
                                                  query_max_length, max_passage_tokens=args.passage_tokens or
                                                  distill.data.passage_max_length)
    cut = {} if args.passage_tokens is None else {"max_passage_tokens": args.passage_tokens}
    return MatryoshkaReranker.from_pretrained(out / name / args.checkpoint, dtype=dtype, **cut)


def write_sweep(rows: list[dict[str, object]], csv_path: Path, png_path: Path, bm25: float, title: str) -> None:
    """The sweep as CSV, and plotted: one line per model and width, points labelled by depth (the paper's Figure 4)."""
    lines: dict[str, list[tuple[float, float, str]]] = {}
    for r in rows:
        label = f"{r['model']}, {'full width' if r['compress'] == 'full' else 'compress=' + str(r['compress'])}"
        lines.setdefault(label, []).append((r["relative_flops"], r["ndcg@10"], str(r["depth"])))
    write_rows_csv(rows, csv_path)
    plot_lines(lines, png_path, metric="nDCG@10", cost_label="relative FLOPs (full model = 1; points labelled by depth)",
               baseline=bm25, baseline_label="BM25", title=title)


def rerank_model(name: str, reranker: MatryoshkaReranker, first: Run, queries: Queries, qrels: Qrels, ds: Dataset,
                 args: argparse.Namespace, shapes: PairShapes) -> tuple[dict[str, Run], list[dict[str, object]]]:
    """The full and light runs of one model, and its sweep rows (one reranking pass per width)."""
    grid = TuneGrid(args.sweep_depths, args.sweep_compress if name in args.sweep_models else [""])
    swept = grid.configs(reranker.num_layers)  # (compress value, depth, configuration) that fit the model
    runs = rerank_configs(reranker, first, queries, ds.corpus, [c for _, _, c in swept] + [None, args.light],
                          rerank_depth=args.depth, batch_tokens=args.batch_tokens)
    rows = [{"model": name, "depth": depth, "compress": compress or "full",
             "config": f"depth={depth}" + (f",compress={compress}" if compress else ""),
             "relative_flops": round(flops_ratio(reranker, config, shapes), 4), "ndcg@10": ndcg(runs[config], qrels)}
            for compress, depth, config in swept] if args.sweep_models else []
    return {"full": runs[None], "light": runs[args.light]}, rows


def main() -> None:
    args = arguments()
    tiny = args.model == "tiny"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    user = parse_overrides(args.set)
    base = load_config(args.recipe, user)
    out = Path(args.out or base.train.output_dir + "-bench" + ("-tiny" if tiny else "") + ("-smoke" * args.smoke))
    out.mkdir(parents=True, exist_ok=True)
    groups_path = out / "train-groups.jsonl"
    if args.groups and not groups_path.is_file():
        shutil.copyfile(args.groups, groups_path)
    overrides: dict[str, object] = {"data.train_groups": str(groups_path)}
    if tiny:
        torch.set_num_threads(1)  # tiny models run far faster on one thread on this busy 2-core machine
        model_dir = out / "tiny-llama"
        if not (model_dir / "config.json").is_file():
            tiny_model_dir(out)
        overrides.update({**TINY_OVERRIDES, "model.backbone": str(model_dir.resolve())})
    overrides.update(user)
    if args.max_steps is not None or args.smoke:
        overrides["train.max_steps"] = 2 if args.max_steps is None else args.max_steps
    overrides.update({"train.save_every": 0} if args.smoke else {})
    plan = {"recipe": args.recipe, "out_dir": out, "overrides": overrides, "init": args.init, "names": NAMES}
    try:
        plans = plan_stages(**plan)
    except ConfigError as exc:
        args.error(str(exc))
    figures: dict[str, object] = {"benchmark": "train_reranker", "recipe": args.recipe, "overrides": args.set,
                                  "model": "tiny" if tiny else base.model.backbone, **{k: getattr(args, k) for k in (
                                      "smoke", "depth", "light", "init", "checkpoint", "groups")}}

    ds = Dataset.open(args.dataset)
    train_qrels, test_qrels = ds.qrels("train"), ds.qrels("test")
    train_queries, test_queries = ds.split_queries("train"), ds.split_queries("test")
    clock = time.perf_counter()
    runs = bm25_runs(ds, out, {"train": train_queries, "test": test_queries})
    figures["bm25_minutes"] = round((time.perf_counter() - clock) / 60, 2)
    if not groups_path.is_file():
        stats = mine_to_file(groups_path, [runs["train"]], train_qrels, ds.queries, ds.corpus, rank_window=(0, 100),
                             negatives=15, seed=0)
        print(stats.summary(), file=sys.stderr, flush=True)

    # distill always: comp starts from it, and its trainer records the validation split
    to_train = args.train_only or [m for m in STAGE_OF if m in args.models or m == "distill"]
    train_stages(**plan, stages=[STAGE_OF[m] for m in to_train], on_trained=record_timing)
    for stage, stage_plan in plans.items():
        timing = stage_plan.directory / TIMING_FILE
        if NAMES[stage] in to_train and timing.is_file():
            figures.update({f"{NAMES[stage]}_{k}": v for k, v in json.loads(timing.read_text("utf-8")).items()})
    if args.train_only:
        figures["total_minutes"] = round((time.perf_counter() - start) / 60, 2)
        print(json.dumps(figures))
        return
    held_file = out / "distill" / VALIDATION_FILE  # written by the trainer: the held-out training queries
    held = set(held_file.read_text(encoding="utf-8").split()) if held_file.is_file() else set()
    if not held:
        raise SystemExit(f"{held_file} is missing or empty: set data.validation_fraction > 0 in the recipe")
    distill = plans["distill"].config
    uncapped = dataclasses.replace(distill, train=dataclasses.replace(distill.train, max_steps=base.train.max_steps))
    figures["full_run_steps"] = full_steps = plan_steps(uncapped, load_groups(uncapped))[2]
    figures.update({f"{m}_projected_minutes": round(full_steps * figures[f"{m}_seconds_per_step"] / 60, 1)
                    for m in STAGE_OF if f"{m}_seconds_per_step" in figures})

    if args.validation_only:
        split, qrels_all, queries_all, run_all = "validation", train_qrels, train_queries, runs["train"]
        ids = sorted(held)[:SMOKE_QUERIES if args.smoke else args.validation_queries or len(held)]
        figures["validation_queries"] = f"{len(ids)} of the {len(held)} held-out training queries ({VALIDATION_FILE})"
    else:
        split, qrels_all, queries_all, run_all = "test", test_qrels, test_queries, runs["test"]
        ids = sample_queries(list(test_queries), SMOKE_QUERIES if args.smoke else args.queries, args.seed)
        figures["test_queries"] = (f"random.Random({args.seed}).sample of {len(ids)} of the {len(test_queries)} "
                                   "judged test queries")
    prefix = "validation." if args.validation_only else ""
    queries = Queries({q: queries_all[q] for q in ids})
    qrels = Qrels({q: qrels_all[q] for q in ids})
    first = Run({q: run_all[q] for q in ids})
    figures.update({"queries": len(ids), "pairs": sum(min(args.depth, len(first[q])) for q in ids)})
    figures[f"{prefix}bm25"] = bm25 = ndcg(first, qrels)

    tag = "" if args.passage_tokens is None else f"-p{args.passage_tokens}"
    fuse_file = out / FUSE_FILE.format(tag=tag)
    chosen = {} if args.validation_only or not fuse_file.is_file() else json.loads(fuse_file.read_text("utf-8"))
    best_weights: dict[str, float] = {}
    rows: list[dict[str, object]] = []
    shapes = None
    clock, rerank_seconds = time.perf_counter(), 0.0  # reranking alone scales with the queries
    for name in args.models:
        reranker = load_model(name, out, distill, args)
        figures[f"{prefix}{name}_passage_tokens"] = reranker.max_passage_tokens
        if shapes is None:
            shapes = pair_shapes(reranker, run_pairs(first, queries, ds.corpus, args.depth))
        rerank_clock = time.perf_counter()
        kept, model_rows = rerank_model(name, reranker, first, queries, qrels, ds, args, shapes)
        rerank_seconds += time.perf_counter() - rerank_clock
        rows += model_rows
        for variant, run in kept.items():
            key = f"{name}_{variant}"
            figures[f"{prefix}{key}"] = ndcg(run, qrels)
            if args.validation_only:  # the reranker weight that interpolates best with BM25 on validation
                best_weights[key], tried = choose_weight(first, run, qrels, args.depth, weights=args.fuse_weights)
                figures[f"{prefix}{key}_fused"] = round(tried[best_weights[key]], 4)
                figures[f"{prefix}{key}_fused_weight"] = best_weights[key]
            elif key in chosen:
                figures[f"{key}_fused"] = ndcg(interpolate(first, run, chosen[key], args.depth), qrels)
                figures[f"{key}_fused_weight"] = chosen[key]
        print(f"{split} {name}: full {figures[f'{prefix}{name}_full']:.4f}, light "
              f"{figures[f'{prefix}{name}_light']:.4f}", file=sys.stderr, flush=True)
        del reranker
    eval_seconds = time.perf_counter() - clock
    figures["eval_minutes"] = round(eval_seconds / 60, 2)
    if best_weights:  # merged, so validation runs over different --models add up
        known = json.loads(fuse_file.read_text("utf-8")) if fuse_file.is_file() else {}
        fuse_file.write_text(json.dumps({**known, **best_weights}, indent=1) + "\n", encoding="utf-8")
    if rows:
        csv_path, png_path = out / f"sweep-{split}{tag}.csv", out / f"sweep-{split}{tag}.png"
        cut = "" if args.passage_tokens is None else f", passages cut to {args.passage_tokens} tokens"
        write_sweep(rows, csv_path, png_path, bm25,
                    f"{figures['model']} on SciFact {split} ({len(ids)} queries, BM25 top {args.depth}{cut})")
        figures.update({f"{prefix}sweep": rows, "sweep_csv": str(csv_path), "sweep_png": str(png_path)})
    if args.smoke:  # a full run evaluates --queries (or every held-out one): project the evaluation's minutes
        full_queries = len(held) if args.validation_only else min(args.queries, len(test_queries))
        figures["projected_eval_minutes"] = round((eval_seconds + rerank_seconds * (full_queries / len(ids) - 1)) / 60,
                                                  1)
        train = sum(figures.get(f"{m}_projected_minutes", 0.0) for m in STAGE_OF)
        figures["projected_full_bench_minutes"] = round(train + figures["projected_eval_minutes"], 1)
    figures["total_minutes"] = round((time.perf_counter() - start) / 60, 2)
    figures["load_average_15m"] = round(os.getloadavg()[2], 2)  # other processes on the machine slow every figure
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
