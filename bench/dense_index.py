"""Dense indexes on SciFact: sharded MiniLM encoding, flat vs HNSW/IVF/IVF-PQ, dense and hybrid quality.

Encodes the corpus with all-MiniLM-L6-v2 (preset ``minilm-l6``) through
``nestrank.retrieve.encode.encode_corpus`` (sharded, float16 by default), builds a flat
(exact), HNSW, IVF and IVF-PQ index from the shards, and reports for the test queries:
recall@100 of each approximate index against flat, search seconds, MiniLM dense nDCG@10 /
R@100 (flat) and BM25 + MiniLM reciprocal-rank fusion nDCG@10 / R@100 (the hybrid index).

    .venv/bin/python bench/dense_index.py --dataset ../shared/data/scifact

The last line printed is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nestrank.data import Dataset, Run
from nestrank.evaluate.metrics import evaluate
from nestrank.models.dense import DenseEncoder
from nestrank.retrieve.config import IndexConfig
from nestrank.retrieve.dense_index import DenseIndex
from nestrank.retrieve.encode import encode_corpus
from nestrank.retrieve.hybrid_index import HybridIndex


def overlap_at_k(approx: list[list[str]], exact: list[list[str]], k: int) -> float:
    """Mean fraction of the exact top-k that the approximate top-k found."""
    return float(np.mean([len(set(a[:k]) & set(e[:k])) / len(e[:k]) for a, e in zip(approx, exact, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="BEIR directory (SciFact)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--preset", default="minilm")
    parser.add_argument("--num-shards", type=int, default=2)
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--work", help="directory for embeddings and indexes (default: a temporary one)")
    args = parser.parse_args()

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="nestrank-dense-bench-"))
    dataset = Dataset.open(args.dataset)
    corpus, queries, qrels = dataset.corpus, dataset.split_queries(args.split), dataset.qrels(args.split)
    encoder = DenseEncoder.from_pretrained(args.model, preset=args.preset)

    start = time.perf_counter()
    encode_corpus(corpus, encoder, work / "emb", num_shards=args.num_shards, dtype=args.dtype,
                  model=args.model, preset=args.preset, progress=True)
    encode_seconds = time.perf_counter() - start
    print(f"encoded {len(corpus)} documents in {encode_seconds:.1f}s", file=sys.stderr)

    qids = list(queries)
    query_vectors = encoder.encode_queries([queries[q] for q in qids])
    configs = {
        "flat": IndexConfig("flat"),
        "hnsw": IndexConfig("hnsw", hnsw_m=32, ef_construction=200, ef_search=128),
        "ivf": IndexConfig("ivf", nprobe=16),
        "ivfpq": IndexConfig("ivfpq", nprobe=16, pq_m=48, pq_nbits=8),
    }
    result: dict[str, object] = {"dataset": dataset.name, "split": args.split, "queries": len(qids),
                                 "docs": len(corpus), "model": args.model, "dtype": args.dtype,
                                 "num_shards": args.num_shards, "encode_s": round(encode_seconds, 1),
                                 "encode_docs_per_s": round(len(corpus) / encode_seconds, 1)}
    flat_ids: list[list[str]] = []
    for name, config in configs.items():
        start = time.perf_counter()
        index = DenseIndex.build(work / "emb", work / f"{name}.idx", config)
        build_seconds = time.perf_counter() - start
        index.search_vectors(query_vectors[:1], 100)  # load the shard files once before timing
        start = time.perf_counter()
        scores, ids = index.search_vectors(query_vectors, 100)
        search_seconds = time.perf_counter() - start
        result[f"{name}.build_s"] = round(build_seconds, 2)
        result[f"{name}.search_s"] = round(search_seconds, 4)
        if name == "flat":
            flat_ids = ids
            run = Run({q: zip(row_ids, row[:len(row_ids)].tolist(), strict=True)
                       for q, row_ids, row in zip(qids, ids, scores, strict=True)})
            for metric, value in evaluate(run, qrels, ["nDCG@10", "R@100"]).items():
                result[f"minilm.{metric}"] = round(value, 4)
        else:
            result[f"{name}.recall@100_vs_flat"] = round(overlap_at_k(ids, flat_ids, 100), 4)

    start = time.perf_counter()
    hybrid = HybridIndex.build(corpus, work / "emb", work / "hybrid.idx", rrf_k=60, fusion_depth=1000)
    result["hybrid.build_s"] = round(time.perf_counter() - start, 1)
    bm25_run = hybrid.bm25.search(queries, 100)
    for metric, value in evaluate(bm25_run, qrels, ["nDCG@10", "R@100"]).items():
        result[f"bm25.{metric}"] = round(value, 4)
    start = time.perf_counter()
    fused = hybrid.search(queries, 100, encoder=encoder)
    result["hybrid.search_s"] = round(time.perf_counter() - start, 2)
    for metric, value in evaluate(fused, qrels, ["nDCG@10", "R@100"]).items():
        result[f"hybrid.{metric}"] = round(value, 4)
    result["work_dir"] = str(work)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
