"""Reranking quality: BM25 top-k on SciFact test, reranked by zero-shot SmolLM2, full vs light.

    .venv/bin/python bench/rerank_quality.py --dataset ../shared/data/scifact [--queries 100] [--depth 20]

A fixed, seeded subset of the test queries (``--queries``, ``--seed``) is searched with BM25
(bm25s, English stemmer and stopwords) to ``--depth``; the top ``--depth`` are reranked by
``MatryoshkaReranker.from_pretrained(--model)`` with the full model and with the light
configuration (``--light``, default ``depth=15,compress=8:0.5``). nDCG@10 of BM25 and both
reranked runs is computed on the same subset. Passages are truncated to
``--max-passage-tokens`` (192 by default, so the run fits this 2-core CPU). ``--model tiny``
uses a 4-layer random Llama with a byte-level tokenizer (a quick end-to-end check; its
light default is ``depth=2,compress=1:0.5``). Progress goes to stderr; the last stdout line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

LIGHT = "depth=15,compress=8:0.5"
TINY_LIGHT = "depth=2,compress=1:0.5"


def tiny_model_dir(root: Path) -> Path:
    """Save the ``--model tiny`` model under ``root``: a 4-layer random Llama (hidden 64) with a byte tokenizer."""
    from nestrank.models.tiny import byte_tokenizer, save_tiny_llama

    return save_tiny_llama(root / "tiny-llama", byte_tokenizer(eos=True), layers=4, hidden_size=64, tie_embeddings=True)


def sample_queries(query_ids: list[str], n: int, seed: int) -> list[str]:
    """``n`` query ids drawn with ``random.Random(seed)`` from the sorted ids, returned sorted."""
    ids = sorted(query_ids)
    return sorted(random.Random(seed).sample(ids, min(n, len(ids))))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="BEIR directory (e.g. ../shared/data/scifact)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--queries", type=int, default=100, help="size of the seeded query subset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depth", type=int, default=20, help="BM25 depth that is reranked")
    parser.add_argument("--model", default="smollm2-135m", help="preset, model directory, or 'tiny'")
    parser.add_argument("--light", default=None, help=f"light configuration (default {LIGHT}; tiny: {TINY_LIGHT})")
    parser.add_argument("--max-passage-tokens", type=int, default=192)
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--progress", action="store_true", help="show progress bars on stderr")
    args = parser.parse_args(argv)

    from nestrank.data import Dataset
    from nestrank.evaluate import evaluate
    from nestrank.models.matryoshka import MatryoshkaReranker
    from nestrank.rerank import rerank_run
    from nestrank.retrieve.bm25 import BM25Index

    ds = Dataset.open(args.dataset)
    qrels = ds.qrels(args.split)
    all_queries = ds.split_queries(args.split)
    subset = sample_queries(list(all_queries), args.queries, args.seed)
    queries = {qid: all_queries[qid] for qid in subset}
    sub_qrels = {qid: qrels[qid] for qid in subset}

    start = time.perf_counter()
    bm25 = BM25Index.build(ds.corpus).search(queries, k=args.depth)
    print(f"bm25: {len(queries)} queries in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    bm25_scores = evaluate(bm25, sub_qrels, ["ndcg@10", f"recall@{args.depth}"])

    light = args.light or (TINY_LIGHT if args.model == "tiny" else LIGHT)
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model_dir(Path(tmp)) if args.model == "tiny" else args.model
        start = time.perf_counter()
        reranker = MatryoshkaReranker.from_pretrained(model, max_passage_tokens=args.max_passage_tokens)
        print(f"model {args.model} loaded in {time.perf_counter() - start:.1f}s", file=sys.stderr)
        pairs = sum(len(bm25[qid]) for qid in bm25)
        configs, raw_seconds = {}, {}
        for name, config in (("full", None), ("light", light)):
            start = time.perf_counter()
            run = rerank_run(bm25, queries, ds.corpus, reranker, rerank_depth=args.depth, config=config,
                             batch_tokens=args.batch_tokens, show_progress=args.progress)
            seconds = raw_seconds[name] = time.perf_counter() - start
            ndcg = evaluate(run, sub_qrels, "ndcg@10")["nDCG@10"]
            configs[name] = {"config": config or "full", "ndcg@10": round(ndcg, 4), "seconds": round(seconds, 1),
                             "pairs_per_s": round(pairs / seconds, 2)}
            print(f"{name}: nDCG@10 {ndcg:.4f}, {pairs} pairs in {seconds:.1f}s", file=sys.stderr)

    summary = {
        "benchmark": "rerank_quality",
        "dataset": Path(args.dataset).name,
        "split": args.split,
        "queries": len(subset),
        "query_subset": f"random.Random({args.seed}).sample of the {len(all_queries)} judged {args.split} queries",
        "depth": args.depth,
        "pairs": pairs,
        "model": args.model,
        "zero_shot": True,
        "max_passage_tokens": args.max_passage_tokens,
        "bm25": {"ndcg@10": round(bm25_scores["nDCG@10"], 4),
                 f"recall@{args.depth}": round(bm25_scores[f"R@{args.depth}"], 4)},
        **configs,
        "light_speedup": round(raw_seconds["full"] / raw_seconds["light"], 2),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
