"""First stage on SciFact: BM25 index + search + evaluation, and the CLI's start-up time.

    .venv/bin/python bench/first_stage.py --dataset ../shared/data/scifact

``index_seconds`` covers opening (scanning) the corpus, building the BM25 index and saving
it; ``search_seconds`` covers loading the saved index (memory-mapped) and searching every
query of the split for the top 100. ``help_seconds`` is the median wall time of three
``nestrank --help`` subprocesses. The last line printed is a JSON object with every figure.

``--max-words N`` also indexes only the first ``N`` words of every document (title first) and
reports that index's figures as ``bm25_first_N_words.*``: what BM25 scores on the part of a
document a reranker with a short passage budget reads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nestrank.data import Corpus, Dataset, Document
from nestrank.evaluate import evaluate
from nestrank.retrieve import BM25Index, open_index


def help_seconds(repeats: int = 3) -> float:
    """Median wall time of ``nestrank --help`` in a fresh process."""
    script = Path(sys.executable).with_name("nestrank")
    command = [str(script), "--help"] if script.exists() else [
        sys.executable, "-c", "from nestrank.cli import main; main()", "--help"]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="BEIR directory (SciFact)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--work", help="directory for the index and run (default: a temporary one)")
    parser.add_argument("--max-words", type=int, default=None,
                        help="also score BM25 over the first N words of each document (title first)")
    args = parser.parse_args()

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="nestrank-first-stage-"))
    dataset = Dataset.open(args.dataset)
    queries, qrels = dataset.split_queries(args.split), dataset.qrels(args.split)

    start = time.perf_counter()
    index = BM25Index.build(Corpus.open(dataset.corpus_path))
    index.save(work / "bm25.idx")
    index_seconds = time.perf_counter() - start
    print(f"indexed {index.num_docs} documents in {index_seconds:.2f}s", file=sys.stderr)

    start = time.perf_counter()
    run = open_index(work / "bm25.idx").search(queries, k=args.k)
    search_seconds = time.perf_counter() - start
    print(f"searched {len(queries)} queries in {search_seconds:.2f}s", file=sys.stderr)
    run.write_trec(work / "bm25.run")

    scores = evaluate(run, qrels, ["nDCG@10", "R@100", "RR@10", "AP"])
    summary = {f"bm25.{name}": round(value, 4) for name, value in scores.items()}
    if args.max_words is not None:
        if args.max_words < 1:
            parser.error(f"--max-words must be at least 1, got {args.max_words}")
        cut = BM25Index.build(Document(doc.id, " ".join(doc.full_text.split()[:args.max_words]))
                              for doc in Corpus.open(dataset.corpus_path))
        cut_scores = evaluate(cut.search(queries, k=args.k), qrels, ["nDCG@10", "R@100", "RR@10", "AP"])
        summary.update({f"bm25_first_{args.max_words}_words.{name}": round(value, 4)
                        for name, value in cut_scores.items()})
    summary.update({
        "index_seconds": round(index_seconds, 3),
        "search_seconds": round(search_seconds, 3),
        "help_seconds": round(help_seconds(), 3),
        "num_docs": index.num_docs,
        "num_queries": len(queries),
        "dataset": str(args.dataset),
        "split": args.split,
    })
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
