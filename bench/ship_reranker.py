"""Package a trained Matryoshka checkpoint as the shipped model directory: fp16 tensors, checked against fp32.

    .venv/bin/python bench/ship_reranker.py --checkpoint out/ship/comp/final \
        --out src/nestrank/pretrained/smollm2-135m-scifact --validation out/ship/distill/validation_queries.txt

Copies ``nestrank.json``, ``profiles.json``/``tune.csv``/``tune.png`` (when tuned), the LoRA adapter,
heads and compensation, storing every floating-point tensor as float16 (half the bytes), and the
held-out validation query ids, then records the checksums of the package (``checksums.json``,
with the base model's fingerprint from the checkpoint's own record). Then it scores ``--pairs`` (query, document) pairs of SciFact
validation queries (BM25 candidates) with the fp32 checkpoint and the fp16 package, under the
full and light configurations, and reports the largest score difference and whether every
query's ranking is unchanged; it fails when the difference exceeds ``--tolerance``. The model
card (``README.md`` in the directory) is written by hand from these and the bench figures.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

COPIED = ("nestrank.json", "profiles.json", "tune.csv", "tune.png")


def to_fp16(src: Path, dst: Path) -> int:
    """Write ``src``'s safetensors with floating-point tensors as float16; returns the bytes written."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(src)
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()}, dst)
    return dst.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="The trained checkpoint (e.g. out/ship/comp/final).")
    parser.add_argument("--out", required=True, help="The shipped model directory to write.")
    parser.add_argument("--validation", required=True, help="The trainer's validation_queries.txt.")
    parser.add_argument("--dataset", default="../shared/data/scifact")
    parser.add_argument("--pairs", type=int, default=64, help="Pairs scored to compare fp16 with fp32.")
    parser.add_argument("--tolerance", type=float, default=0.05, help="Largest allowed score difference.")
    args = parser.parse_args()
    source, out = Path(args.checkpoint), Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    (out / "lora").mkdir(parents=True)
    for name in COPIED:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    shutil.copy2(args.validation, out / "validation_queries.txt")
    shutil.copy2(source / "lora" / "adapter_config.json", out / "lora" / "adapter_config.json")
    sizes = {str(path.relative_to(source)): to_fp16(path, out / path.relative_to(source))
             for path in sorted(source.rglob("*.safetensors"))}
    from nestrank.integrity import read_checksums, write_checksums

    write_checksums(out, (read_checksums(source) or {}).get("built_from"))  # the package verifies itself when loaded

    from nestrank.data import Dataset
    from nestrank.models import MatryoshkaReranker
    from nestrank.retrieve import BM25Index

    ds = Dataset.open(args.dataset)
    ids = (out / "validation_queries.txt").read_text(encoding="utf-8").split()
    queries = ds.queries.subset(set(ids))
    per_query = max(1, args.pairs // max(1, min(len(queries), 8)))
    run = BM25Index.build(ds.corpus).search(queries, per_query)
    chosen = list(run)[:max(1, args.pairs // per_query)]
    pair_queries = [queries[q] for q in chosen for _ in run.doc_ids(q)]
    pair_docs = [d for q in chosen for d in ds.corpus.get_many(run.doc_ids(q))]
    reference = MatryoshkaReranker.from_pretrained(source, dtype="float32", device="cpu")
    shipped = MatryoshkaReranker.from_pretrained(out, dtype="float32", device="cpu")
    figures: dict[str, object] = {"benchmark": "ship_reranker", "checkpoint": str(source), "out": str(out),
                                  "pairs": len(pair_docs), "fp16_bytes": sizes,
                                  "directory_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}
    worst = 0.0
    for name in ("full", "light"):
        a = reference.score(pair_queries, pair_docs, config=name)
        b = shipped.score(pair_queries, pair_docs, config=name)
        diff = float(np.max(np.abs(a - b)))
        worst = max(worst, diff)
        same_order = all(np.array_equal(np.argsort(-a[i:i + per_query], kind="stable"),
                                        np.argsort(-b[i:i + per_query], kind="stable"))
                         for i in range(0, len(a), per_query))
        figures[f"{name}_max_abs_diff"] = round(diff, 6)
        figures[f"{name}_score_range"] = [round(float(a.min()), 3), round(float(a.max()), 3)]
        figures[f"{name}_rankings_unchanged"] = same_order
    figures["within_tolerance"] = worst <= args.tolerance
    print(json.dumps(figures))
    if worst > args.tolerance:
        sys.exit(f"fp16 scores differ from fp32 by {worst:.4f} > --tolerance {args.tolerance}")


if __name__ == "__main__":
    main()
