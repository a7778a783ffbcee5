"""Dense retrieval on a BEIR dataset (SciFact): MiniLM through nestrank vs sentence-transformers,
and zero-shot SmolLM2 EOS embeddings (RepLLaMA settings, no training).

    .venv/bin/python bench/dense.py --dataset ../shared/data/scifact

MiniLM (the ``minilm`` preset on the ``minilm-l6`` backbone) encodes the whole corpus and
the split's queries; so does ``SentenceTransformer`` on the same model directory and the
same texts (``title text``, as BEIR joins them), in the same process. To even out load from
other processes, the corpus is cut into ``--chunks`` pieces and the two encoders alternate
which goes first on each piece; the throughputs are documents per second over all pieces.
Search is exact: dot product of normalised vectors, top 100 by numpy.

SmolLM2-135M (``smollm2-135m`` GGUF preset, ``repllama`` preset, passage max 128 tokens)
encodes a document subset: every document judged for the split plus random others up to
``--smollm2-docs`` (seed 0); MiniLM is scored on the same subset for comparison. A subset
makes every figure higher than on the full corpus.

The last line printed is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np

from nestrank.data import Dataset, Document, Qrels, Queries, Run
from nestrank.evaluate import evaluate
from nestrank.models.backbone import preset_path
from nestrank.models.dense import DenseEncoder

METRICS = "ndcg@10,recall@100"


def exact_search(query_vectors: np.ndarray, doc_vectors: np.ndarray, query_ids: list[str], doc_ids: list[str],
                 k: int = 100) -> Run:
    """Top-``k`` documents per query by dot product, as a :class:`Run`."""
    scores = query_vectors @ doc_vectors.T
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return Run({qid: [(doc_ids[j], float(scores[row, j])) for j in top[row]] for row, qid in enumerate(query_ids)})


def minilm(docs: list[Document], queries: Queries, qrels: Qrels, chunks: int, batch_tokens: int | None) -> dict:
    """MiniLM through nestrank and through sentence-transformers on the same texts."""
    from sentence_transformers import SentenceTransformer

    encoder = DenseEncoder.from_preset("minilm", device="cpu", batch_tokens=batch_tokens, show_progress=False)
    reference = SentenceTransformer(str(preset_path("minilm-l6")), device="cpu")
    texts = [doc.full_text for doc in docs]
    ours, theirs = [], []
    seconds = {"nestrank": 0.0, "st": 0.0}
    for piece, bounds in enumerate(np.array_split(np.arange(len(texts)), chunks)):
        part = [texts[i] for i in bounds]
        runners = [("nestrank", lambda p=part: encoder.encode_passages(p), ours),
                   ("st", lambda p=part: reference.encode(p, batch_size=32, convert_to_numpy=True), theirs)]
        for name, run, sink in runners if piece % 2 == 0 else runners[::-1]:
            start = time.perf_counter()
            sink.append(run())
            seconds[name] += time.perf_counter() - start
    doc_vectors, st_doc_vectors = np.concatenate(ours), np.concatenate(theirs).astype(np.float32)
    query_ids = list(queries)
    query_texts = [queries[q] for q in query_ids]
    query_vectors = encoder.encode_queries(query_texts)
    st_query_vectors = reference.encode(query_texts, batch_size=32, convert_to_numpy=True)
    doc_ids = [doc.id for doc in docs]
    scores = evaluate(exact_search(query_vectors, doc_vectors, query_ids, doc_ids), qrels, METRICS)
    st_scores = evaluate(exact_search(st_query_vectors, st_doc_vectors, query_ids, doc_ids), qrels, METRICS)
    max_diff = max(float(np.abs(doc_vectors - st_doc_vectors).max()),
                   float(np.abs(query_vectors - st_query_vectors).max()))
    return {
        "scores": scores, "st_scores": st_scores, "doc_vectors": doc_vectors, "query_vectors": query_vectors,
        "encode_docs_per_s": len(texts) / seconds["nestrank"], "st_encode_docs_per_s": len(texts) / seconds["st"],
        "max_abs_diff_vs_st": max_diff, "batch_tokens": encoder.batch_tokens,
    }


def judged_subset(docs: list[Document], qrels: Qrels, size: int, seed: int = 0) -> list[int]:
    """Positions of every judged document plus random others, up to ``size``, in corpus order."""
    judged = {doc for qid in qrels for doc in qrels[qid]}
    chosen = [i for i, doc in enumerate(docs) if doc.id in judged]
    others = [i for i, doc in enumerate(docs) if doc.id not in judged]
    chosen += random.Random(seed).sample(others, max(0, min(len(others), size - len(chosen))))
    return sorted(chosen)


def smollm2(docs: list[Document], queries: Queries, passage_max_length: int, batch_tokens: int | None) -> dict:
    """Zero-shot SmolLM2 embeddings with RepLLaMA's settings."""
    start = time.perf_counter()
    encoder = DenseEncoder.from_pretrained("smollm2-135m", "repllama", device="cpu", batch_tokens=batch_tokens,
                                           passage_max_length=passage_max_length)
    load_seconds = time.perf_counter() - start
    start = time.perf_counter()
    doc_vectors = encoder.encode_passages(docs)
    doc_seconds = time.perf_counter() - start
    query_ids = list(queries)
    query_vectors = encoder.encode_queries([queries[q] for q in query_ids])
    return {"run": exact_search(query_vectors, doc_vectors, query_ids, [d.id for d in docs]),
            "load_s": load_seconds, "encode_docs_per_s": len(docs) / doc_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="BEIR directory (SciFact)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--chunks", type=int, default=4, help="corpus pieces for alternating timing")
    parser.add_argument("--batch-tokens", type=int, default=None,
                        help="nestrank token budget per batch (default: the encoder's, 4096 on CPU)")
    parser.add_argument("--no-minilm", action="store_true", help="skip the MiniLM / sentence-transformers part")
    parser.add_argument("--smollm2-docs", type=int, default=1000, help="document subset size for SmolLM2 (0: skip)")
    parser.add_argument("--smollm2-passage-max-length", type=int, default=128)
    args = parser.parse_args()

    dataset = Dataset.open(args.dataset)
    queries, qrels = dataset.split_queries(args.split), dataset.qrels(args.split)
    docs = list(dataset.corpus)
    result: dict = {"dataset": dataset.name, "split": args.split, "queries": len(queries), "docs": len(docs)}

    mini = None if args.no_minilm else minilm(docs, queries, qrels, args.chunks, args.batch_tokens)
    if mini:
        result.update({f"minilm.{name}": round(value, 4) for name, value in mini["scores"].items()})
        result.update({f"st.{name}": round(value, 4) for name, value in mini["st_scores"].items()})
        result.update({key: mini[key] for key in ("encode_docs_per_s", "st_encode_docs_per_s", "max_abs_diff_vs_st",
                                                  "batch_tokens")})
        result["speedup_vs_st"] = mini["encode_docs_per_s"] / mini["st_encode_docs_per_s"]

    if args.smollm2_docs:
        subset = judged_subset(docs, qrels, args.smollm2_docs)
        subset_docs = [docs[i] for i in subset]
        small = smollm2(subset_docs, queries, args.smollm2_passage_max_length, args.batch_tokens)
        result.update({f"smollm2_zeroshot.{name}": round(value, 4)
                       for name, value in evaluate(small["run"], qrels, METRICS).items()})
        result.update({"smollm2_zeroshot.docs": len(subset_docs),
                       "smollm2_zeroshot.passage_max_length": args.smollm2_passage_max_length,
                       "smollm2_zeroshot.encode_docs_per_s": small["encode_docs_per_s"],
                       "smollm2_zeroshot.load_s": small["load_s"]})
        if mini:
            subset_run = exact_search(mini["query_vectors"], mini["doc_vectors"][subset], list(queries),
                                      [d.id for d in subset_docs])
            result.update({f"minilm_same_subset.{name}": round(value, 4)
                           for name, value in evaluate(subset_run, qrels, METRICS).items()})
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
