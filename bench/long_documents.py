"""Long documents on SciFact: truncate vs MaxP at 128-token passages, dense first stage (and a reranker).

    OMP_NUM_THREADS=1 .venv/bin/python bench/long_documents.py --dataset ../shared/data/scifact
    .venv/bin/python bench/long_documents.py --reranker smollm2-135m --queries 5   # the reranker part, a smoke check

Dense (all-MiniLM-L6-v2, the ``minilm-l6`` model, passages of ``--passage-tokens`` 128 tokens):
the corpus is encoded twice with :func:`nestrank.retrieve.run_encoding`, ``doc_mode="truncate"``
(each document cut at 128 tokens) and ``doc_mode="maxp"`` (overlapping 128-token segments
``--stride`` 64 tokens apart, the title repeated in each, one vector per segment), into
``--work`` (kept: a re-run reuses or resumes them; the same directories as ``nestrank encode
--dataset D --model minilm-l6 --passage-tokens 128 --doc-mode truncate|maxp [--stride 64]
--num-shards 8 --out WORK/scifact-minilm-p128-...emb``). Each becomes a flat (exact) hybrid
index (:func:`nestrank.retrieve.build_vector_index`); conditions ``dense-<mode>`` search the
dense part (a maxp document scores as its best segment), ``hybrid-<mode>`` fuse it with BM25
by RRF (k=60, top 1000 of each), as ``nestrank search`` on the hybrid index does.

``--reranker MODEL`` adds the reranker at 128-token passages over the top ``--rerank-depth`` (20)
of the ``--candidates`` run (default ``hybrid-truncate``): ``rerank-truncate`` (each document cut
at 128 tokens) and ``rerank-maxp`` (:class:`nestrank.models.maxp.MaxPReranker`: 128-token
segments ``--stride`` apart, a document scores as its best), the reranker's score alone.

``--queries N`` takes a seeded subset of the test queries. nDCG@10 and R@100 per condition, with
milliseconds per query; the last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from nestrank.data import Dataset, Qrels, Run
from nestrank.evaluate import evaluate
from nestrank.retrieve import Embeddings, build_vector_index, run_encoding

METRICS = ["nDCG@10", "R@100"]
DOC_MODES = ("truncate", "maxp")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def first_stage(ds: Dataset, queries, work: Path, mode: str, args: argparse.Namespace) -> dict[str, object]:
    """Encode (or reuse), index and search one doc_mode: the dense and hybrid runs and their costs."""
    stride = args.stride if mode == "maxp" else None
    name = f"{ds.name}-minilm-p{args.passage_tokens}-{mode}" + (f"-s{stride}" if stride else "")
    emb = work / f"{name}.emb"
    clock = time.perf_counter()
    run_encoding(ds.corpus, emb, args.model, passage_tokens=args.passage_tokens, doc_mode=mode, stride=stride,
                 num_shards=args.num_shards, progress=True)
    encode_s = time.perf_counter() - clock
    index = build_vector_index("hybrid", work / f"{name}.hybrid", ds.corpus, embeddings=emb)
    index.dense.search({"warm": "up"}, 10)  # load the encoder and the shards before timing
    clock = time.perf_counter()
    dense = index.dense.search(queries, args.fusion_depth)
    dense_s = time.perf_counter() - clock
    clock = time.perf_counter()
    hybrid = index.search(queries, args.fusion_depth)
    hybrid_s = time.perf_counter() - clock
    vectors = Embeddings(emb).num_vectors
    return {"runs": {f"dense-{mode}": (dense, dense_s), f"hybrid-{mode}": (hybrid, hybrid_s)},
            "encoding": {"embeddings": str(emb), "vectors": vectors, "vectors_per_doc": round(vectors / len(ds.corpus), 2),
                         "encode_or_check_s": round(encode_s, 1)}}


def rerank(ds: Dataset, queries, candidates: Run, mode: str, reranker, args: argparse.Namespace) -> tuple[Run, float]:
    """The reranker alone over the top ``rerank_depth`` candidates, truncating or MaxP; the run and its seconds."""
    from nestrank.models.maxp import MaxPReranker
    from nestrank.rerank import rerank_run

    model = reranker if mode == "truncate" else MaxPReranker(reranker, max_tokens=args.passage_tokens,
                                                             stride=args.stride)
    clock = time.perf_counter()
    run = rerank_run(candidates, queries, ds.corpus, model, rerank_depth=args.rerank_depth, config=args.config,
                     show_progress=True)
    return run, time.perf_counter() - clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="../shared/data/scifact")
    parser.add_argument("--model", default="minilm-l6", help="Dense encoder (default all-MiniLM-L6-v2).")
    parser.add_argument("--passage-tokens", type=int, default=128)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--num-shards", type=int, default=8)
    parser.add_argument("--fusion-depth", type=int, default=1000, help="Results per run searched and fused.")
    parser.add_argument("--queries", type=int, default=None, help="A seeded subset of the test queries (default all).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="out")
    parser.add_argument("--reranker", default=None, help="Also rerank: a reranker model (preset, checkpoint).")
    parser.add_argument("--config", default=None, help="Reranker configuration string or profile (default: full).")
    parser.add_argument("--rerank-depth", type=int, default=20)
    parser.add_argument("--candidates", default="hybrid-truncate", help="The run whose top --rerank-depth is reranked.")
    args = parser.parse_args()
    start = time.perf_counter()
    ds = Dataset.open(args.dataset)
    queries, qrels = ds.split_queries("test"), ds.qrels("test")
    ids = sorted(queries)
    if args.queries:
        ids = sorted(random.Random(args.seed).sample(ids, args.queries))
    queries, qrels = queries.subset(set(ids)), Qrels({q: qrels[q] for q in ids if q in qrels})
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    figures: dict[str, object] = {"benchmark": "long_documents", "dataset": ds.name, "split": "test",
                                  "queries": len(ids), "model": args.model, "passage_tokens": args.passage_tokens,
                                  "stride": args.stride, "fusion": "rrf k=60, top 1000 each", "index": "flat (exact)"}
    conditions: dict[str, dict[str, object]] = {}
    runs: dict[str, Run] = {}
    for mode in DOC_MODES:
        stage = first_stage(ds, queries, work, mode, args)
        figures[f"encoding_{mode}"] = stage["encoding"]
        for name, (run, seconds) in stage["runs"].items():
            runs[name] = run
            conditions[name] = {**{k: round(v, 4) for k, v in evaluate(run, qrels, METRICS).items()},
                                "ms_per_query": round(1000 * seconds / len(ids), 2)}
            log(f"{name}: {json.dumps(conditions[name])}")
    if args.reranker:
        from nestrank.rerank import load_reranker

        reranker = load_reranker(args.reranker, device="cpu", max_passage_tokens=args.passage_tokens)
        figures.update({"reranker": args.reranker, "reranker_config": args.config or "full",
                        "rerank_depth": args.rerank_depth, "candidates": args.candidates})
        for mode in DOC_MODES:
            run, seconds = rerank(ds, queries, runs[args.candidates], mode, reranker, args)
            conditions[f"rerank-{mode}"] = {**{k: round(v, 4) for k, v in evaluate(run, qrels, METRICS).items()},
                                            "ms_per_query": round(1000 * seconds / len(ids), 1)}
            log(f"rerank-{mode}: {json.dumps(conditions[f'rerank-{mode}'])}")
    figures["conditions"] = conditions
    figures["maxp_minus_truncate_ndcg10"] = {
        stage: round(conditions[f"{stage}-maxp"]["nDCG@10"] - conditions[f"{stage}-truncate"]["nDCG@10"], 4)
        for stage in ("dense", "hybrid", "rerank") if f"{stage}-maxp" in conditions}
    figures["total_minutes"] = round((time.perf_counter() - start) / 60, 2)
    figures["load_average_15m"] = round(os.getloadavg()[2], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
