"""Train the Matryoshka reranker recipe on SciFact, then rerank BM25 top-20 with every stage's model.

    .venv/bin/python bench/train_reranker.py --dataset ../shared/data/scifact
    .venv/bin/python bench/train_reranker.py --dataset ../shared/data/scifact --smoke   # minutes: checks the pipeline
    .venv/bin/python bench/train_reranker.py --set train.learning_rate=1e-4 --out out/rr-lr1e-4 --validation-only
    .venv/bin/python bench/train_reranker.py --model tiny --smoke --out /tmp/trr-tiny  # ~1 minute, random weights

Stages (each writes under ``--out``; a re-run reuses the finished BM25 runs, groups and stage
checkpoints there, so give every hyperparameter setting its own ``--out``):

1. ``bm25``: BM25 (bm25s, stemmed, English stopwords); top 100 for the train and test queries.
2. ``mine``: 15 negatives per training query from BM25 ranks 1-100, never a judged positive.
3. ``plain`` (stage ``contrastive``), ``distill`` (stage ``distill``) and ``comp`` (stage
   ``compensate``, ``reranker.init = <out>/distill/final``): the recipe
   (``recipes/scifact-smollm2-matryoshka.toml``), each in ``<out>/<stage>/``. 10% of the training
   queries (seeded) are held out of training as the validation split for choosing hyperparameters.
   ``--init OUT`` continues an earlier bench: ``plain`` and ``distill`` start from ``OUT``'s
   ``plain/final`` and ``distill/final`` (LoRA and heads), e.g. with ``--set
   data.passage_max_length=256`` to go on at longer passages; ``comp`` starts from this run's
   ``distill``. The held-out split is the same (it depends on the groups and
   ``data.validation_seed`` only).
4. ``evaluate``: BM25's top ``--depth`` (20) reranked by the zero-shot model
   (``MatryoshkaReranker.from_pretrained(model.backbone)``, untrained heads) and by every stage's
   checkpoint, each with the full model (``*_full``) and the light configuration (``*_light``,
   ``--light``). Test figures use a fixed subset of the test queries: ``random.Random(--seed)``
   draws ``--queries`` (100) of them. Passages are truncated to the recipe's
   ``data.passage_max_length`` (what each checkpoint records), or to ``--passage-tokens`` when
   given (a scoring-time setting to choose on validation; the 128-token SciFact models did not
   score better at 256, docs/results.md section 5.3). Reranking runs one pass per width and
   reads every exit of that width from it (``nestrank.rerank.rerank_run_exits``): the
   full-width pass gives ``*_full`` and every sweep depth at full width; the light configuration joins the pass of its width.
5. ``sweep``: the quality-vs-FLOPs table (the paper's Figure 4): nDCG@10 and relative FLOPs (the
   pairs' summed ``MatryoshkaReranker.flops`` under the configuration over that of the full model)
   at ``--sweep-depths`` for every width of ``--sweep-compress`` for the ``--sweep-models``
   (``comp``), and at full width for every model (free from the full-width pass); written to
   ``sweep-<split>.csv`` and plotted to ``sweep-<split>.png``.

6. ``fused``: each model's full and light reranking interpolated with BM25 over the top
   ``--depth`` (``nestrank.retrieve.fusion.linear_fusion``, min-max per query; weight ``w`` on the
   reranker, ``1 - w`` on BM25). ``w`` is chosen per model and configuration on the validation
   queries (``--validation-only`` tries ``--fuse-weights`` and writes the best to
   ``<out>/fuse-weights.json``); a test run reports ``*_full_fused`` / ``*_light_fused`` at those
   weights when that file exists. The raw ``*_full`` / ``*_light`` figures are the models alone.

``--validation-only`` (for hyperparameter sweeps) evaluates on the held-out validation queries
(BM25 top ``--depth`` of those training queries; all of them, or the first
``--validation-queries`` by id, as ``bench/reranker_lr_probe.py`` scores) and prints no test
figure; its keys start with ``validation.``. ``--models`` limits the evaluated models (default
all four); only the stages it names (and ``distill``) are trained. ``--smoke`` trains
``--max-steps`` steps per stage (default 2) and evaluates 5 queries: its quality figures mean
nothing, but its seconds per step give each stage's projected full-run minutes. ``--model tiny``
trains a 4-layer random Llama with a byte-level tokenizer
(built under ``--out``) with teachers, students, light and sweep configurations scaled to 4
layers: a quick end-to-end check of the bench. Progress goes to stderr; the last stdout line is
one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from rerank_quality import LIGHT, TINY_LIGHT, sample_queries, tiny_model_dir
from train_retriever import bm25_runs

from nestrank.data import Corpus, Dataset, Qrels, Queries, Run
from nestrank.errors import ConfigError
from nestrank.evaluate import evaluate
from nestrank.models.matryoshka import MatryoshkaReranker
from nestrank.models.matryoshka.config import parse_config
from nestrank.rerank import rerank_run_exits
from nestrank.train.config import TrainConfig, load_config, parse_overrides
from nestrank.train.loop import LOG_FILE, VALIDATION_FILE
from nestrank.train.mining import mine_to_file

SMOKE_QUERIES = 5
STAGES = {"plain": "contrastive", "distill": "distill", "comp": "compensate"}
TIMING_FILE = "bench_stage.json"  # written next to a stage's final/ so a re-run still reports its minutes
SWEEP_DEPTHS = "10,15,20,25,30"
SWEEP_COMPRESS = "full,8:0.5,8:0.25,4:0.5"
MODELS = ("zeroshot", *STAGES)
FUSE_WEIGHTS = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
FUSE_FILE = "fuse-weights{tag}.json"  # {"plain_full": w, ...}: chosen on validation, read by a test run
#: --model tiny: the recipe's teachers, students and sweep scaled from 30 layers to 4.
TINY_OVERRIDES: dict[str, object] = {"reranker.teachers": [2, 4], "reranker.student_depths": [1, 2, 3, 4],
                                     "reranker.student_compress": ["", "1:0.5", "1:0.25", "2:0.5"]}
TINY_SWEEP_DEPTHS = "1,2,3,4"
TINY_SWEEP_COMPRESS = "full,1:0.5,1:0.25,2:0.5"


def stage_config(recipe: str, overrides: dict[str, object], out: Path, stage: str, init: Path | None = None
                 ) -> TrainConfig:
    """The recipe for one bench stage, trained in ``out/<stage>``; ``init``: continue an earlier bench's stage."""
    extra: dict[str, object] = {"train.output_dir": str(out / stage), "reranker.stage": STAGES[stage]}
    if stage == "comp":
        extra["reranker.init"] = str(out / "distill" / "final")
    elif init is not None:
        extra["reranker.init"] = str(init / stage / "final")
    return load_config(recipe, {**overrides, **extra})


def is_trained(stage_dir: Path) -> bool:
    """Whether a stage directory holds a finished checkpoint (its ``final/``)."""
    return (stage_dir / "final" / "trainer_state.json").is_file()


def train_stage(config: TrainConfig) -> dict[str, float]:
    """Train one stage unless its ``final/`` exists; returns its timing record (stored in ``TIMING_FILE``)."""
    from nestrank.train.reranker import train_reranker

    out = Path(config.train.output_dir)
    if is_trained(out):  # trained before (by the bench: with its timing record)
        timing = out / TIMING_FILE
        return json.loads(timing.read_text(encoding="utf-8")) if timing.is_file() else {}
    start = time.perf_counter()
    result = train_reranker(config)
    minutes = (time.perf_counter() - start) / 60
    log = [json.loads(line) for line in (out / LOG_FILE).read_text(encoding="utf-8").splitlines()]
    timed = [b["seconds"] - a["seconds"] for a, b in zip(log, log[1:], strict=False)]  # step 1 has warm-up
    record = {"minutes": round(minutes, 2), "steps": result.steps, "final_loss": round(result.loss, 4),
              "threads": torch.get_num_threads(), "load_average_15m": round(os.getloadavg()[2], 2),
              "seconds_per_step": round(float(np.mean(timed)) if timed else result.seconds / max(1, result.steps), 2)}
    (out / TIMING_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")
    return record


def full_run_steps(config: TrainConfig, groups_path: Path, held: set[str], max_steps: int | None) -> int:
    """Optimizer steps of a full stage: the training groups (validation held out) per batch, times epochs, capped."""
    t = config.train
    with groups_path.open(encoding="utf-8") as handle:
        groups = sum(1 for line in handle if json.loads(line).get("query_id") not in held)
    steps = groups // (t.batch_size * t.grad_accum_steps) * t.epochs
    return min(steps, max_steps) if max_steps else steps


def pair_lengths(reranker: MatryoshkaReranker, run: Run, queries: Mapping[str, str], corpus: Corpus, depth: int
                 ) -> Counter[tuple[int, int, int]]:
    """How many reranked pairs have each ``(query_len, passage_len, prompt_len)``, from ``reranker.encode``."""
    blank = reranker.encode("", "")
    # template, prompt and special tokens (the blank query's slot may add a space token: FLOPs only see the sum)
    prompt = len(blank.ids) - blank.passage_len
    lengths: Counter[tuple[int, int, int]] = Counter()
    for qid in run:
        for doc in corpus.get_many(run.doc_ids(qid, depth)):
            pair = reranker.encode(queries[qid], doc)
            lengths[(len(pair.ids) - pair.passage_len - prompt, pair.passage_len, prompt)] += 1
    return lengths


def relative_flops(reranker: MatryoshkaReranker, config: str, lengths: Counter[tuple[int, int, int]]) -> float:
    """Summed FLOPs of the pairs under ``config`` over those of the full model."""
    cost = sum(n * reranker.flops(config, *shape) for shape, n in lengths.items())
    full = sum(n * reranker.flops(None, *shape) for shape, n in lengths.items())
    return cost / full


def fused_ndcg(first: Run, reranked: Run, weight: float, depth: int, qrels: Qrels) -> float:
    """nDCG@10 of ``reranked`` interpolated with ``first`` over the top ``depth``: ``w`` reranker + ``1 - w`` first stage."""
    from nestrank.retrieve.fusion import linear_fusion

    fused = linear_fusion([first.top(depth), reranked.top(depth)], weights=[1 - weight, weight])
    return round(evaluate(fused, qrels, "ndcg@10")["nDCG@10"], 4)


def width_label(width: str | None) -> str:
    """A sweep width's label: ``full`` or the compress value (``8:0.5``)."""
    return "full" if width is None else width.removeprefix("compress=")


def width_passes(num_layers: int, widths: list[str], depths: list[int]
                 ) -> dict[tuple[object, int | None], tuple[str | None, list[int]]]:
    """``{width key: (config, exits)}``: one reranking pass per width, scoring every valid depth of it.

    The key is the parsed width (compression steps, passage cap), so a configuration of the same
    width (the light one) can join its pass. A depth the width does not allow (a compression at or
    after the exit, or beyond the model) is skipped with a message.
    """
    passes: dict[tuple[object, int | None], tuple[str | None, list[int]]] = {((), None): (None, [])}
    for width in widths:
        config = None if width == "full" else f"compress={width}"
        parsed = parse_config(config)
        exits = passes.setdefault((parsed.compress, parsed.passage_tokens), (config, []))[1]
        for depth in depths:
            try:
                parse_config(f"depth={depth}" + ("" if config is None else f",{config}")).validate(num_layers)
            except ConfigError as exc:
                print(f"sweep: skipping depth={depth} at width {width}: {exc}", file=sys.stderr)
                continue
            exits.append(depth)
    return passes


def write_sweep(rows: list[dict[str, object]], bm25: float, csv_path: Path, png_path: Path, title: str) -> None:
    """The sweep table as CSV, and its plot: one line per (model, compression), x = relative FLOPs, y = nDCG@10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for model, compress in dict.fromkeys((r["model"], r["compress"]) for r in rows):
        line = [r for r in rows if r["model"] == model and r["compress"] == compress]
        label = f"{model}, {'full width' if compress == 'full' else 'compress=' + str(compress)}"
        ax.plot([r["relative_flops"] for r in line], [r["ndcg@10"] for r in line], marker="o", label=label)
        for r in line:
            ax.annotate(str(r["depth"]), (r["relative_flops"], r["ndcg@10"]), textcoords="offset points",
                        xytext=(3, 3), fontsize=7)
    ax.axhline(bm25, color="grey", linestyle="--", linewidth=1, label="BM25")
    ax.set_xlabel("relative FLOPs (full model = 1; points labelled by depth)")
    ax.set_ylabel("nDCG@10")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="../shared/data/scifact")
    parser.add_argument("--recipe", default="recipes/scifact-smollm2-matryoshka.toml")
    parser.add_argument("--model", default=None,
                        help="'tiny': a 4-layer random Llama (default: the recipe's backbone).")
    parser.add_argument("--out", default=None, help="Work directory (default: the recipe's train.output_dir + -bench).")
    parser.add_argument("--init", default=None, metavar="OUT",
                        help="Continue another bench's --out: plain and distill start from its plain/final and "
                             "distill/final (e.g. at a longer data.passage_max_length); comp from this run's distill.")
    parser.add_argument("--smoke", action="store_true", help="A few steps per stage and 5 queries (see the doc).")
    parser.add_argument("--max-steps", type=int, default=None, help="Cap the training steps (smoke default 2).")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="Override a recipe value in every stage, e.g. --set train.learning_rate=1e-4.")
    parser.add_argument("--validation-only", action="store_true",
                        help="For hyperparameter sweeps: evaluate on the validation queries, print no test figure.")
    parser.add_argument("--queries", type=int, default=100, help="Size of the seeded test query subset.")
    parser.add_argument("--validation-queries", type=int, default=None,
                        help="With --validation-only: the first N held-out queries by id (default all).")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"Comma-separated models to evaluate (of {', '.join(MODELS)}).")
    parser.add_argument("--fuse-weights", default=FUSE_WEIGHTS,
                        help="With --validation-only: reranker weights tried when interpolating with BM25.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the test query subset.")
    parser.add_argument("--depth", type=int, default=20, help="BM25 depth that is reranked.")
    parser.add_argument("--passage-tokens", type=int, default=None,
                        help="Score with passages truncated to this many tokens (default: the length each "
                             "checkpoint was trained with); files that depend on it get a -p<N> suffix.")
    parser.add_argument("--light", default=None, help=f"Light configuration (default {LIGHT}; tiny: {TINY_LIGHT}).")
    parser.add_argument("--sweep-models", default="comp",
                        help="Comma-separated models swept over every width (of zeroshot, plain, distill, comp; "
                             "'' = no sweep); when sweeping, every model's full-width depths come free.")
    parser.add_argument("--sweep-depths", default=None, help=f"Comma-separated exit layers (default {SWEEP_DEPTHS}).")
    parser.add_argument("--sweep-compress", default=None,
                        help=f"Comma-separated widths, 'full' = none (default {SWEEP_COMPRESS}).")
    parser.add_argument("--batch-tokens", type=int, default=None, help="Padded tokens per scoring batch.")
    parser.add_argument("--train-only", default=None, metavar="STAGES",
                        help="Comma-separated stages to train (of plain, distill, comp), then stop without "
                             "evaluating: run two benches with one stage each and --threads 1 to train plain and "
                             "distill side by side; a later run reuses them.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--groups", default=None, metavar="JSONL",
                        help="Training groups to use instead of mining BM25's (e.g. `nestrank mine --run bm25.run "
                             "--run hybrid.run`); copied to <out>/train-groups.jsonl on the first run.")
    parser.add_argument("--checkpoint", default="final", choices=("final", "best"),
                        help="Evaluate each stage's final/ or its best/ (validation-selected: train.eval_every).")
    args = parser.parse_args()
    tiny = args.model == "tiny"
    if args.model not in (None, "tiny"):
        parser.error("--model takes only 'tiny'; for another backbone use --set model.backbone=...")
    sweep_models = [m for m in args.sweep_models.split(",") if m]
    eval_models = [m for m in args.models.split(",") if m]
    for flag, names in (("--sweep-models", sweep_models), ("--models", eval_models)):
        unknown = set(names) - set(MODELS)
        if unknown:
            parser.error(f"{flag}: unknown {', '.join(sorted(unknown))} (choose from {', '.join(MODELS)})")
    try:
        fuse_weights = [float(w) for w in args.fuse_weights.split(",")]
    except ValueError:
        parser.error(f"--fuse-weights: comma-separated numbers expected, got {args.fuse_weights!r}")
    if not all(0 < w < 1 for w in fuse_weights):
        parser.error(f"--fuse-weights: each weight must lie strictly between 0 and 1, got {fuse_weights}")
    init = None if args.init is None else Path(args.init)
    if init is not None:
        missing = [stage for stage in ("plain", "distill") if not is_trained(init / stage)]
        if missing:
            parser.error(f"--init {init}: no trained {' or '.join(missing)} (fix: point to a bench --out whose "
                         "plain/final and distill/final exist)")
    if args.passage_tokens is not None and args.passage_tokens < 1:
        parser.error(f"--passage-tokens: a positive number of tokens expected, got {args.passage_tokens}")
    train_only = [m for m in (args.train_only or "").split(",") if m]
    if set(train_only) - set(STAGES):
        parser.error(f"--train-only: unknown {', '.join(sorted(set(train_only) - set(STAGES)))} "
                     f"(choose from {', '.join(STAGES)})")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    depths = [int(x) for x in (args.sweep_depths or (TINY_SWEEP_DEPTHS if tiny else SWEEP_DEPTHS)).split(",")]
    widths = (args.sweep_compress or (TINY_SWEEP_COMPRESS if tiny else SWEEP_COMPRESS)).split(",")

    start = time.perf_counter()
    user: dict[str, object] = parse_overrides(args.set)
    base = load_config(args.recipe, user)
    suffix = "-bench" + ("-tiny" if tiny else "") + ("-smoke" if args.smoke else "")
    out = Path(args.out or base.train.output_dir + suffix)
    out.mkdir(parents=True, exist_ok=True)
    groups_path = out / "train-groups.jsonl"
    if args.groups and not groups_path.is_file():
        import shutil

        shutil.copyfile(args.groups, groups_path)
    overrides: dict[str, object] = {"data.train_groups": str(groups_path)}
    if tiny:
        torch.set_num_threads(1)  # tiny models run far faster on one thread on this busy 2-core machine
        model_dir = out / "tiny-llama"
        if not (model_dir / "config.json").is_file():
            tiny_model_dir(out)
        overrides.update({**TINY_OVERRIDES, "model.backbone": str(model_dir.resolve())})
    overrides.update(user)
    max_steps = args.max_steps if args.max_steps is not None else (2 if args.smoke else None)
    if max_steps is not None:
        overrides["train.max_steps"] = max_steps
    if args.smoke:
        overrides["train.save_every"] = 0
    light = args.light or (TINY_LIGHT if tiny else LIGHT)
    figures: dict[str, object] = {"benchmark": "train_reranker", "recipe": args.recipe, "overrides": args.set,
                                  "model": "tiny" if tiny else base.model.backbone, "smoke": args.smoke,
                                  "depth": args.depth, "light": light, "init": args.init,
                                  "checkpoint": args.checkpoint, "groups": args.groups}

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

    configs = {stage: stage_config(args.recipe, overrides, out, stage, init) for stage in STAGES}
    # distill always: comp starts from it, and its trainer records the validation split
    to_train = train_only or [stage for stage in STAGES if stage in eval_models or stage == "distill"]
    for stage, config in configs.items():
        if stage not in to_train:
            continue
        print(f"stage {stage} ({config.reranker.stage}) -> {config.train.output_dir}", file=sys.stderr, flush=True)
        record = train_stage(config)
        figures.update({f"{stage}_{key}": value for key, value in record.items()})
    if train_only:
        figures["total_minutes"] = round((time.perf_counter() - start) / 60, 2)
        print(json.dumps(figures))
        return
    held_file = out / "distill" / VALIDATION_FILE  # written by the trainer: the held-out training queries
    held = set(held_file.read_text(encoding="utf-8").split()) if held_file.is_file() else set()
    if not held:
        raise SystemExit(f"{held_file} is missing or empty: set data.validation_fraction > 0 in the recipe")
    full_steps = full_run_steps(configs["distill"], groups_path, held, base.train.max_steps)
    figures["full_run_steps"] = full_steps
    figures.update({f"{stage}_projected_minutes": round(full_steps * figures[f"{stage}_seconds_per_step"] / 60, 1)
                    for stage in STAGES if f"{stage}_seconds_per_step" in figures})

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
    pairs = sum(min(args.depth, len(first[q])) for q in ids)
    figures.update({"queries": len(ids), "pairs": pairs})
    figures[f"{prefix}bm25"] = bm25 = round(evaluate(first, qrels, "ndcg@10")["nDCG@10"], 4)

    d = configs["distill"]
    longer = {} if args.passage_tokens is None else {"max_passage_tokens": args.passage_tokens}
    tag = "" if args.passage_tokens is None else f"-p{args.passage_tokens}"
    dtype = "bfloat16" if d.model.dtype == "bfloat16" else "float32"
    loaders: dict[str, Callable[[], MatryoshkaReranker]] = {
        "zeroshot": lambda: MatryoshkaReranker.from_pretrained(
            d.model.backbone, dtype=dtype, max_passage_tokens=args.passage_tokens or d.data.passage_max_length,
            max_query_tokens=d.data.query_max_length),
        **{stage: (lambda stage=stage: MatryoshkaReranker.from_pretrained(
            out / stage / args.checkpoint, dtype=dtype, **longer))
           for stage in STAGES}}  # a checkpoint records the passage and query lengths it was trained with
    fuse_file = out / FUSE_FILE.format(tag=tag)
    chosen = {} if args.validation_only or not fuse_file.is_file() else json.loads(fuse_file.read_text("utf-8"))
    best_weights: dict[str, float] = {}

    rerank_seconds = [0.0]  # reranking alone (no model loading), which scales with the queries
    light_config = parse_config(light)
    light_width = (light_config.compress, light_config.passage_tokens)
    rows: list[dict[str, object]] = []
    lengths: Counter[tuple[int, int, int]] | None = None
    eval_seconds = 0.0
    for name in eval_models:
        load = loaders[name]
        clock = time.perf_counter()
        reranker = load()
        figures[f"{prefix}{name}_passage_tokens"] = reranker.max_passage_tokens
        if lengths is None:
            lengths = pair_lengths(reranker, first, queries, ds.corpus, args.depth)
        # One pass per width scores every exit of that width (rerank_run_exits): the full-width pass
        # gives *_full and the full-width sweep line of every model; the light configuration joins
        # the pass of its width; other widths are swept for --sweep-models only.
        passes = width_passes(reranker.num_layers, widths if name in sweep_models else ["full"], depths)
        light_depth = light_config.exits[-1] if light_config.exits else reranker.num_layers
        passes.setdefault(light_width, (light, []))[1].append(light_depth)
        passes[((), None)][1].append(reranker.num_layers)
        scores: dict[tuple[object, int], float] = {}
        wanted = {(((), None), reranker.num_layers): "full", (light_width, light_depth): "light"}
        kept: dict[str, Run] = {}  # the full and light runs, for the interpolation with BM25
        for key, (width, exits) in passes.items():
            rerank_clock = time.perf_counter()
            runs = rerank_run_exits(first, queries, ds.corpus, reranker, exits, rerank_depth=args.depth, config=width,
                                    batch_tokens=args.batch_tokens, show_progress=False)
            rerank_seconds[0] += time.perf_counter() - rerank_clock
            for layer, run in runs.items():
                scores[(key, layer)] = round(evaluate(run, qrels, "ndcg@10")["nDCG@10"], 4)
                if (key, layer) in wanted:
                    kept[wanted[(key, layer)]] = run
        figures[f"{prefix}{name}_full"] = scores[(((), None), reranker.num_layers)]
        figures[f"{prefix}{name}_light"] = scores[(light_width, light_depth)]
        print(f"{split} {name}: full {figures[f'{prefix}{name}_full']:.4f}, light "
              f"{figures[f'{prefix}{name}_light']:.4f}", file=sys.stderr, flush=True)
        for variant, run in kept.items():
            key = f"{name}_{variant}"
            if args.validation_only:  # the reranker weight that interpolates best with BM25 on validation
                tried = {w: fused_ndcg(first, run, w, args.depth, qrels) for w in fuse_weights}
                best_weights[key] = max(tried, key=lambda w: (tried[w], -w))
                figures[f"{prefix}{key}_fused"] = tried[best_weights[key]]
                figures[f"{prefix}{key}_fused_weight"] = best_weights[key]
            elif key in chosen:
                figures[f"{key}_fused"] = fused_ndcg(first, run, chosen[key], args.depth, qrels)
                figures[f"{key}_fused_weight"] = chosen[key]
        for key, (width, _) in passes.items() if sweep_models else ():
            label = width_label(width)
            if key == light_width and label not in widths:
                continue  # the light configuration's own width, not part of the sweep
            for depth in depths:
                if (key, depth) in scores:
                    config = f"depth={depth}" + ("" if label == "full" else f",compress={label}")
                    rows.append({"model": name, "depth": depth, "compress": label, "config": config,
                                 "relative_flops": round(relative_flops(reranker, config, lengths), 4),
                                 "ndcg@10": scores[(key, depth)]})
        eval_seconds += time.perf_counter() - clock
        del reranker
    figures["eval_minutes"] = round(eval_seconds / 60, 2)
    if best_weights:  # merged, so validation runs over different --models add up
        known = json.loads(fuse_file.read_text("utf-8")) if fuse_file.is_file() else {}
        fuse_file.write_text(json.dumps({**known, **best_weights}, indent=1) + "\n", encoding="utf-8")
    if rows:
        csv_path, png_path = out / f"sweep-{split}{tag}.csv", out / f"sweep-{split}{tag}.png"
        cut = "" if args.passage_tokens is None else f", passages cut to {args.passage_tokens} tokens"
        title = f"{figures['model']} on SciFact {split} ({len(ids)} queries, BM25 top {args.depth}{cut})"
        write_sweep(rows, bm25, csv_path, png_path, title)
        figures.update({f"{prefix}sweep": rows, "sweep_csv": str(csv_path), "sweep_png": str(png_path),
})
    if args.smoke:  # reranking scales with the queries; a full run evaluates --queries (or every held-out one)
        full_queries = len(held) if args.validation_only else min(args.queries, len(test_queries))
        projected = eval_seconds + rerank_seconds[0] * (full_queries / len(ids) - 1)
        train = sum(figures.get(f"{stage}_projected_minutes", 0.0) for stage in STAGES)
        figures["projected_eval_minutes"] = round(projected / 60, 1)
        figures["projected_full_bench_minutes"] = round(train + figures["projected_eval_minutes"], 1)
    figures["total_minutes"] = round((time.perf_counter() - start) / 60, 2)
    figures["load_average_15m"] = round(os.getloadavg()[2], 2)  # other processes on the machine slow every figure
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
