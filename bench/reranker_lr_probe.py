"""Learning-rate probe for the Matryoshka reranker recipe: a short contrastive run, scored on validation queries.

    .venv/bin/python bench/reranker_lr_probe.py --lr 3e-3 --work out/trr --out out/probe/lr3e-3

Trains the recipe's ``contrastive`` (plain) stage for ``--steps`` (50) steps at ``--lr`` on the
groups that ``bench/train_reranker.py`` mined into ``--work`` (``train-groups.jsonl``), with
the recipe's 10% of training queries held out, then reranks the BM25 top ``--depth`` (20,
``--work``/``bm25.train.run``) of the first ``--queries`` (40, sorted by id) held-out queries and
prints nDCG@10 of BM25, of the full model (``full@30``), of exit 15 at full width
(``full@15``) and of the light configuration (``light@15`` for ``--light``'s depth 15). It never sees a test query. A
short run with the schedule compressed into ``--steps`` is a proxy for the full stage: use it
to rank learning rates, not to predict final figures. Two probes side by side with
``--threads 1`` each use the two cores well. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nestrank.data import Dataset, Qrels, Run
from nestrank.evaluate import evaluate
from nestrank.models.matryoshka import MatryoshkaReranker
from nestrank.models.matryoshka.config import parse_config
from nestrank.rerank import rerank_run_exits
from nestrank.train.config import load_config, parse_overrides
from nestrank.train.loop import VALIDATION_FILE
from nestrank.train.reranker import train_reranker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--work", required=True, help="A bench/train_reranker.py --out directory (groups, BM25 runs).")
    parser.add_argument("--out", required=True, help="Where the probe trains (reused when its final/ exists).")
    parser.add_argument("--dataset", default="../shared/data/scifact")
    parser.add_argument("--recipe", default="recipes/scifact-smollm2-matryoshka.toml")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--queries", type=int, default=40, help="Held-out queries scored (the first, by id).")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--light", default="depth=15,compress=8:0.5")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    config = load_config(args.recipe, {
        **parse_overrides(args.set), "train.learning_rate": args.lr, "train.max_steps": args.steps,
        "train.output_dir": str(out), "reranker.stage": "contrastive", "train.save_every": 0,
        "data.train_groups": str(work / "train-groups.jsonl")})
    clock = time.perf_counter()
    if not (out / "final" / "trainer_state.json").is_file():
        train_reranker(config)
    figures: dict[str, object] = {"lr": args.lr, "steps": args.steps,
                                  "train_minutes": round((time.perf_counter() - clock) / 60, 2)}

    ds = Dataset.open(args.dataset)
    held = sorted((out / VALIDATION_FILE).read_text(encoding="utf-8").split())[:args.queries]
    bm25 = Run.read(work / "bm25.train.run")
    first = Run({q: bm25[q] for q in held})
    train_qrels = ds.qrels("train")
    qrels = Qrels({q: train_qrels[q] for q in held})
    queries = ds.split_queries("train")
    figures.update({"queries": len(held), "bm25": round(evaluate(first, qrels, "ndcg@10")["nDCG@10"], 4)})
    reranker = MatryoshkaReranker.from_pretrained(out / "final", dtype="float32")
    clock = time.perf_counter()
    light = parse_config(args.light)
    light_depth = light.exits[-1] if light.exits else reranker.num_layers
    for name, width, exits in (("full", None, [15, reranker.num_layers]), ("light", light, [light_depth])):
        runs = rerank_run_exits(first, queries, ds.corpus, reranker, exits, rerank_depth=args.depth, config=width,
                                show_progress=False)
        for layer, run in runs.items():
            figures[f"{name}@{layer}"] = round(evaluate(run, qrels, "ndcg@10")["nDCG@10"], 4)
    figures["eval_minutes"] = round((time.perf_counter() - clock) / 60, 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
