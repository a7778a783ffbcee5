"""Train SmolLM2-135M as a RepLLaMA-style retriever on SciFact and compare it with BM25 and zero-shot.

    .venv/bin/python bench/train_retriever.py --dataset ../shared/data/scifact
    .venv/bin/python bench/train_retriever.py --dataset ../shared/data/scifact --smoke   # minutes: checks the pipeline
    .venv/bin/python bench/train_retriever.py --set train.learning_rate=1e-4 --out out/sf-lr1e-4  # one sweep point
    .venv/bin/python bench/train_retriever.py --recipe recipes/scifact-minilm-retriever.toml --out out/trials/minilm \
        --validation-only --checkpoint best --set train.eval_every=45 --results docs/results-training-trials.jsonl

Stages (each writes under ``--out``; a re-run reuses the finished BM25 runs, groups, checkpoint and
embeddings there, so give every hyperparameter setting its own ``--out``):

1. BM25 (bm25s, stemmed, English stopwords) over the corpus; top 100 for the train and test queries.
2. ``mine``: 15 negatives per training query from BM25 ranks 1-100, never a judged positive.
3. ``train``: the recipe (``recipes/scifact-smollm2-retriever.toml``). 10% of the training queries
   (seeded) are held out of training as the validation split for choosing hyperparameters.
4. ``encode``: the corpus with the zero-shot encoder (the same preset and lengths, no training) and
   with the trained checkpoint; exact dot-product search, top 100.
5. ``evaluate``: nDCG@10 and R@100 on the test queries (reported once, at the end) and nDCG@10 on
   the validation queries.
6. ``reload``: the checkpoint is loaded again and re-encodes 64 documents; the largest difference
   to the stored embeddings is ``trained.reload_max_abs_diff`` (stored as float16; 1.2e-4 measured).

``--passage-tokens N`` encodes the corpus at N tokens with both encoders (e.g. all-MiniLM-L6-v2, trained
at 128, reads 256 at inference); ``--results FILE`` appends the figures as one trial record.

``--smoke`` trains ``--max-steps`` steps (default 2) and encodes a small corpus slice (the top-10
BM25 documents and the positives of 5 test and 5 validation queries): its quality figures mean
nothing, but its measured seconds per training step and documents per second give the projected
full-run minutes. The last line printed is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from nestrank.data import Corpus, Dataset, Qrels, Queries, Run
from nestrank.errors import ConfigError
from nestrank.evaluate import evaluate
from nestrank.files import check_output
from nestrank.integrity import ids_fingerprint
from nestrank.models.dense import DenseEncoder
from nestrank.pipeline import FirstStage, FirstStageSection, cached_runs
from nestrank.retrieve.dense_index import exact_top_k
from nestrank.retrieve.embeddings import Embeddings
from nestrank.retrieve.encode import encode_corpus
from nestrank.train.config import load_config, parse_overrides
from nestrank.train.loop import LOG_FILE, VALIDATION_FILE
from nestrank.train.mining import mine_to_file
from nestrank.train.retriever import train_retriever

SMOKE_QUERIES = 5
SMOKE_DEPTH = 10
RELOAD_DOCS = 64  # documents re-encoded by a freshly loaded checkpoint to check that it reproduces its embeddings


def bm25_runs(ds: Dataset, out: Path, splits: dict[str, Queries]) -> dict[str, Run]:
    """Top-100 BM25 runs per split, cached as ``out/bm25.<split>.run`` (reused while they verify)."""
    section = FirstStageSection(method="bm25")
    return cached_runs(lambda: FirstStage.open(section, ds.corpus), splits,
                       {name: out / f"bm25.{name}.run" for name in splits}, k=100, tag="bm25",
                       built_from={"method": "bm25", "corpus_ids_sha256": ids_fingerprint(ds.corpus.ids)})


def dense_run(encoder, corpus: Corpus, emb_dir: Path, queries: Queries, model: str) -> tuple[Run, float]:
    """Encode ``corpus`` (resumable, under ``emb_dir``) and ``queries``; exact top 100. Returns the run and docs/s.

    ``model`` (a preset or the checkpoint directory) is recorded with its fingerprint, so embeddings left by an
    earlier run are refused if the checkpoint was trained again, and ``nestrank index --embeddings`` builds an
    index that ``nestrank search`` and the pipeline can query with it.
    """
    start = time.perf_counter()
    fresh = not (emb_dir / "manifest.json").is_file()
    encode_corpus(corpus, encoder, emb_dir, model=model, preset="repllama", progress=True)
    elapsed = time.perf_counter() - start
    doc_ids, doc_vectors = Embeddings(emb_dir).load_all()
    qids = list(queries)
    scores, ranked = exact_top_k(encoder.encode_queries([queries[q] for q in qids]), doc_vectors, doc_ids, 100)
    run = Run({q: zip(ids, map(float, row), strict=True) for q, ids, row in zip(qids, ranked, scores, strict=True)})
    return run, (len(corpus) / elapsed if fresh else math.nan)


def reload_check(ckpt: Path, corpus: Corpus, emb_dir: Path, passage_tokens: int, docs: int = RELOAD_DOCS) -> float:
    """Reload the checkpoint afresh and re-encode the first ``docs`` documents (at ``passage_tokens``): max abs
    difference to the stored embeddings."""
    encoder = DenseEncoder.from_pretrained(ckpt, passage_max_length=passage_tokens)
    encoder.show_progress = False
    doc_ids, doc_vectors = Embeddings(emb_dir).load_all()
    row = {doc_id: i for i, doc_id in enumerate(doc_ids)}
    sample = [doc for _, doc in zip(range(docs), corpus, strict=False)]
    again = encoder.encode_passages(sample)
    stored = doc_vectors[[row[doc.id] for doc in sample]]
    return float(np.abs(again.astype(np.float32) - stored.astype(np.float32)).max())


def smoke_corpus(ds: Dataset, runs: dict[str, Run], qrels: dict[str, Qrels]) -> Corpus:
    """The top-``SMOKE_DEPTH`` BM25 documents and the positives of the smoke queries."""
    keep: set[str] = set()
    for name, run in runs.items():
        for qid in run:
            keep.update(run.doc_ids(qid, SMOKE_DEPTH))
            keep.update(qrels[name].relevant(qid))
    return Corpus.from_documents(doc for doc in ds.corpus if doc.id in keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="../shared/data/scifact")
    parser.add_argument("--recipe", default="recipes/scifact-smollm2-retriever.toml")
    parser.add_argument("--out", default=None, help="Work directory (default: the recipe's train.output_dir).")
    parser.add_argument("--smoke", action="store_true", help="A few steps and a small corpus slice (see the doc).")
    parser.add_argument("--max-steps", type=int, default=None, help="Cap the training steps (smoke default 2).")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="Override a recipe value, e.g. --set train.learning_rate=1e-4 (repeatable).")
    parser.add_argument("--no-zeroshot", action="store_true",
                        help="Skip the zero-shot encoder (SmolLM2's EOS embedding scores ~0; an encode costs ~10 minutes).")
    parser.add_argument("--validation-only", action="store_true",
                        help="For hyperparameter sweeps: skip the zero-shot encoder and print no test figures.")
    parser.add_argument("--groups", default=None, metavar="JSONL",
                        help="Training groups to use instead of mining BM25's (e.g. `nestrank mine --run bm25.run "
                             "--run hybrid.run`); copied to <out>/train-groups.jsonl on the first run.")
    parser.add_argument("--checkpoint", default="final", choices=("final", "best"),
                        help="Evaluate final/ or best/ (validation-selected: train.eval_every).")
    parser.add_argument("--passage-tokens", type=int, default=None, metavar="N",
                        help="Encode the corpus at N tokens with both encoders (default: the recipe's "
                             "data.passage_max_length, the training length).")
    parser.add_argument("--results", default=None, metavar="JSONL",
                        help="Also append the figures as one trial record (name = the --out directory's name, date, "
                             "command) to this file, e.g. docs/results-training-trials.jsonl.")
    args = parser.parse_args()
    if args.passage_tokens is not None and args.passage_tokens < 1:
        parser.error(f"--passage-tokens must be a positive number of tokens, got {args.passage_tokens}")
    if args.results:
        try:
            check_output(args.results, option="--results")
        except ConfigError as err:
            parser.error(str(err))

    overrides: dict[str, object] = parse_overrides(args.set)
    base = load_config(args.recipe, overrides)
    out = Path(args.out or base.train.output_dir + ("-smoke" if args.smoke else ""))
    out.mkdir(parents=True, exist_ok=True)
    groups_path = out / "train-groups.jsonl"
    if args.groups and not groups_path.is_file():
        import shutil

        shutil.copyfile(args.groups, groups_path)
    overrides.update({"train.output_dir": str(out), "data.train_groups": str(groups_path)})
    max_steps = args.max_steps if args.max_steps is not None else (2 if args.smoke else None)
    if max_steps is not None:
        overrides["train.max_steps"] = max_steps
    if args.smoke:
        overrides["train.save_every"] = 0
    config = load_config(args.recipe, overrides)
    figures: dict[str, object] = {"recipe": args.recipe, "overrides": args.set, "smoke": args.smoke,
                                  "checkpoint": args.checkpoint, "groups": args.groups}

    ds = Dataset.open(args.dataset)
    train_qrels, test_qrels = ds.qrels("train"), ds.qrels("test")
    train_queries, test_queries = ds.queries.subset(set(train_qrels)), ds.queries.subset(set(test_qrels))

    start = time.perf_counter()
    runs = bm25_runs(ds, out, {"train": train_queries, "test": test_queries})
    if not args.validation_only:
        bm25 = evaluate(runs["test"], test_qrels, "ndcg@10,recall@100")
        figures.update({f"bm25.{k}": round(v, 4) for k, v in bm25.items()})
    figures["bm25_seconds"] = round(time.perf_counter() - start, 1)

    if not groups_path.is_file():
        stats = mine_to_file(groups_path, [runs["train"]], train_qrels, ds.queries, ds.corpus, rank_window=(0, 100),
                             negatives=15, seed=0)
        print(stats.summary(), flush=True)

    ckpt = out / "final"
    if not (ckpt / "trainer_state.json").is_file():
        result = train_retriever(config)
        log = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
        timed = [b["seconds"] - a["seconds"] for a, b in zip(log, log[1:], strict=False)]  # step 1 has warm-up
        cpu = [b["cpu_seconds"] - a["cpu_seconds"] for a, b in zip(log, log[1:], strict=False)]
        per_step = float(np.mean(timed)) if timed else result.seconds / max(1, result.steps)
        figures.update({"train_minutes": round(result.seconds / 60, 2), "train_steps": result.steps,
                        "seconds_per_step": round(per_step, 2), "final_loss": round(result.loss, 4),
                        "cpu_seconds_per_step": round(float(np.mean(cpu)), 2) if cpu else None})
    ckpt = out / args.checkpoint
    state = json.loads((ckpt / "trainer_state.json").read_text())
    held_file = out / VALIDATION_FILE  # written by the trainer: the held-out training queries
    held = set(held_file.read_text(encoding="utf-8").split()) if held_file.is_file() else set()
    if not held:
        raise SystemExit(f"{held_file} is missing or empty: set data.validation_fraction > 0 in the recipe")
    val_queries = train_queries.subset(held)
    val_qrels = Qrels({q: train_qrels[q] for q in held})
    with groups_path.open(encoding="utf-8") as handle:
        groups = sum(1 for line in handle if json.loads(line).get("query_id") not in held)
    full_steps = groups // (config.train.batch_size * config.train.grad_accum_steps) * config.train.epochs
    figures["full_run_steps"] = full_steps
    if "seconds_per_step" in figures:
        figures["projected_train_minutes"] = round(full_steps * figures["seconds_per_step"] / 60, 1)
    figures["trained_steps_in_checkpoint"] = state["step"]

    eval_sets = {"test": (test_queries, test_qrels), "validation": (val_queries, val_qrels)}
    corpus = ds.corpus
    if args.smoke:
        eval_sets = {name: (qs.subset(list(qs)[:SMOKE_QUERIES]), Qrels({q: qr[q] for q in list(qs)[:SMOKE_QUERIES]}))
                     for name, (qs, qr) in eval_sets.items()}
        small = {name: Run({q: runs["test" if name == "test" else "train"][q] for q in qs})
                 for name, (qs, _) in eval_sets.items()}
        corpus = smoke_corpus(ds, small, {name: qr for name, (_, qr) in eval_sets.items()})
        figures["smoke_corpus_docs"] = len(corpus)
    passage_tokens = args.passage_tokens if args.passage_tokens is not None else config.data.passage_max_length
    figures["encode_passage_tokens"] = passage_tokens
    lengths = {"query_max_length": config.data.query_max_length, "passage_max_length": passage_tokens}
    encoders = {"zeroshot": lambda: DenseEncoder.from_pretrained(config.model.backbone, config.model.preset, **lengths),
                "trained": lambda: DenseEncoder.from_pretrained(ckpt, passage_max_length=passage_tokens)}
    if args.validation_only or args.no_zeroshot:
        del encoders["zeroshot"]
    if args.validation_only:
        del eval_sets["test"]

    def emb_dir(name: str) -> Path:
        """Embeddings per encoder, checkpoint and encoding length."""
        best = "-best" if name == "trained" and args.checkpoint == "best" else ""
        return out / f"{name}{best}{f'-{passage_tokens}' if args.passage_tokens else ''}.emb"

    for name, make in encoders.items():
        encoder = make()
        encoder.show_progress = False
        all_queries = Queries({qid: text for queries, _ in eval_sets.values() for qid, text in queries.items()})
        model = str(ckpt) if name == "trained" else config.model.backbone
        run, docs_per_s = dense_run(encoder, corpus, emb_dir(name), all_queries, model)
        for split, (queries, qrels) in eval_sets.items():
            scores = evaluate(Run({q: run[q] for q in queries}), qrels, "ndcg@10,recall@100")
            prefix = name if split == "test" else f"validation.{name}"
            figures.update({f"{prefix}.{k}": round(v, 4) for k, v in scores.items()})
        if not math.isnan(docs_per_s):
            figures[f"{name}.encode_docs_per_s"] = round(docs_per_s, 2)
            figures[f"{name}.projected_corpus_encode_minutes"] = round(len(ds.corpus) / docs_per_s / 60, 1)
        del encoder
    if "trained" in encoders:
        figures["trained.reload_max_abs_diff"] = reload_check(ckpt, corpus, emb_dir("trained"), passage_tokens)
    if "projected_train_minutes" in figures and "trained.projected_corpus_encode_minutes" in figures:
        encode = sum(figures.get(f"{name}.projected_corpus_encode_minutes", 0.0) for name in encoders)
        figures["projected_full_bench_minutes"] = round(
            figures["projected_train_minutes"] + encode + figures["bm25_seconds"] / 60, 1)
    figures["total_minutes"] = round((time.perf_counter() - start) / 60, 2)
    figures["load_average_15m"] = round(os.getloadavg()[2], 2)  # other processes on the machine slow every figure
    print(json.dumps(figures), flush=True)  # before the record: a failed append cannot lose the figures
    if args.results:
        record = {"name": out.name, "date": time.strftime("%Y-%m-%d %H:%M"), "kind": "retriever",
                  "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]), **figures}
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
