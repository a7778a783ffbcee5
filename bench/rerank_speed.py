"""Throughput of the Matryoshka reranker under run-time depth/width configurations.

Measures pairs/s of SciFact (query, passage) pairs, passages cut to exactly L tokens, for:

- ``full``: the whole model (all layers, no merging);
- ``depth=15``: exit after layer 15;
- ``compress=8:0.5``: all layers, passage merged to 50% after layer 8;
- ``light``: ``depth=15,compress=8:0.5``;
- ``light_reference``: the light config computed the way the FlagEmbedding research code does:
  a model with eager attention in every layer (``output_attentions`` needs it), the importance
  read from the full attention matrices of layer 8.

Variants run interleaved (round robin, the order rotated every repeat) and each figure is the
best (minimum) time over repeats, which keeps a busy machine fair: other load only ever adds
time, so the minimum is the closest to the uncontended speed; every time is in the JSON. Analytic FLOPs per pair
(:meth:`MatryoshkaReranker.flops`) are reported beside the measured speed-ups. The last
line printed is one JSON object.

    python bench/rerank_speed.py                      # SmolLM2-135M, L = 128 and 512
    python bench/rerank_speed.py --model tiny --pairs 8 --repeats 2   # seconds, random model

One torch thread by default: on a shared 2-core machine two threads spin-waiting for each
other ran SmolLM2 3-4x slower than one (use ``--threads 0`` on a machine of your own).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from nestrank.data.corpus import Corpus
from nestrank.data.queries import Queries
from nestrank.models.matryoshka import MatryoshkaReranker

VARIANTS = {
    "full": None,
    "depth=15": "depth=15",
    "compress=8:0.5": "compress=8:0.5",
    "light": "depth=15,compress=8:0.5",
    "light_reference": "depth=15,compress=8:0.5",
}
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scifact"


def tiny_model():
    """A random 30-layer Llama (hidden 64) with a byte-level tokenizer: same layer count as SmolLM2."""
    from nestrank.models.tiny import byte_tokenizer, tiny_llama

    tokenizer = byte_tokenizer()
    return tiny_llama(tokenizer, layers=30, hidden_size=64), tokenizer


def load(name: str, max_len: int) -> tuple[MatryoshkaReranker, MatryoshkaReranker]:
    """The engine (SDPA, attention row) and the reference engine (eager, full attention matrices)."""
    if name == "tiny":
        model, tokenizer = tiny_model()
    else:
        from nestrank.models.backbone import load_backbone

        model, tokenizer = load_backbone(name, task="causal-lm", dtype="float32", device="cpu")
    reference_model = copy.deepcopy(model)
    reference_model.config._attn_implementation = "eager"
    engine = MatryoshkaReranker(model, tokenizer, max_passage_tokens=max_len)
    reference = MatryoshkaReranker(reference_model, tokenizer, max_passage_tokens=max_len, importance="eager")
    return engine, reference


def make_pairs(count: int, data: Path) -> tuple[list[str], list[str]]:
    """``count`` SciFact test-query texts and long passages (consecutive abstracts joined)."""
    queries = list(Queries.read(data / "queries.jsonl").values())[:count]
    texts = []
    for doc in Corpus.open(data / "corpus.jsonl"):
        texts.append(doc.full_text)
        if len(texts) >= 8 * count:
            break
    passages = [" ".join(texts[8 * i: 8 * i + 8]) for i in range(count)]
    return queries, passages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny, or a model path")
    parser.add_argument("--lengths", default="128,512", help="passage lengths in tokens, comma separated")
    parser.add_argument("--pairs", type=int, default=8, help="pairs scored per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurements per variant")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per forward batch")
    parser.add_argument("--data", type=Path, default=DATA, help="BEIR SciFact directory")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0 = torch's default); 1 is 3-4x faster on an oversubscribed machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    engine, reference = load(args.model, max(lengths))
    queries, passages = make_pairs(args.pairs, args.data)
    report = {"model": args.model, "pairs": args.pairs, "repeats": args.repeats, "threads": torch.get_num_threads(),
              "batch_tokens": args.batch_tokens, "results": {}, "ratios": {}}
    for length in lengths:
        engine.max_passage_tokens = reference.max_passage_tokens = length
        encoded = [engine.encode(q, p) for q, p in zip(queries, passages, strict=True)]
        short = [e.passage_len for e in encoded if e.passage_len != length]
        if short:
            raise SystemExit(f"passages shorter than {length} tokens: {short} (use --lengths <= the data's)")
        query_len = statistics.mean(e.passage_start for e in encoded)
        prompt_len = statistics.mean(len(e.ids) - e.passage_start - e.passage_len for e in encoded)
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        names = list(VARIANTS)
        for name in names:  # warm-up: one pair each
            run(engine, reference, name, queries[:1], passages[:1], args.batch_tokens)
        for repeat in range(args.repeats):
            order = names[repeat % len(names):] + names[:repeat % len(names)]
            for name in order:
                times[name].append(run(engine, reference, name, queries, passages, args.batch_tokens))
            print(f"L={length} repeat {repeat + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names), flush=True)
        rows = {}
        for name, spec in VARIANTS.items():
            which = reference if name == "light_reference" else engine
            seconds = min(times[name])
            flops = which.flops(spec, round(query_len), length, round(prompt_len))
            rows[name] = {"pairs_per_s": round(args.pairs / seconds, 3), "seconds": [round(t, 3) for t in times[name]],
                          "gflops_per_pair": round(flops / 1e9, 3)}
        report["results"][str(length)] = rows

        def speedup(a: str, b: str, rows=rows) -> float:
            return round(rows[a]["pairs_per_s"] / rows[b]["pairs_per_s"], 3)

        def flops_ratio(a: str, b: str, rows=rows) -> float:
            return round(rows[b]["gflops_per_pair"] / rows[a]["gflops_per_pair"], 3)

        report["ratios"][str(length)] = {
            "light/full": speedup("light", "full"), "light/full_flops": flops_ratio("light", "full"),
            "light/reference": speedup("light", "light_reference"),
            "light/reference_flops": flops_ratio("light", "light_reference"),
            "depth15/full": speedup("depth=15", "full"), "depth15/full_flops": flops_ratio("depth=15", "full"),
            "compress/full": speedup("compress=8:0.5", "full"),
            "compress/full_flops": flops_ratio("compress=8:0.5", "full"),
        }
        print(json.dumps({"length": length, **report["ratios"][str(length)]}), flush=True)
    if "512" in report["ratios"]:
        r512 = report["ratios"]["512"]
        report["targets"] = {"light/full>=2.0@512": r512["light/full"] >= 2.0,
                             "light/reference>=1.3@512": r512["light/reference"] >= 1.3}
    print(json.dumps(report))


def run(engine: MatryoshkaReranker, reference: MatryoshkaReranker, name: str, queries: list[str],
        passages: list[str], batch_tokens: int) -> float:
    """Seconds to score the pairs under one variant."""
    which = reference if name == "light_reference" else engine
    start = time.perf_counter()
    which.score(queries, passages, config=VARIANTS[name], batch_tokens=batch_tokens)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
