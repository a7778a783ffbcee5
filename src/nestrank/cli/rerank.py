"""``nestrank rerank``: rerank the top-k of a first-stage run with an LLM reranker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from nestrank.cli import app
from nestrank.cli.common import CorpusOpt, DatasetOpt, QueriesOpt, SplitOpt, open_dataset


@app.command("rerank")
def rerank_command(
    run: Annotated[Path, typer.Option("--run", "-r", help="First-stage TREC run to rerank.", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="Reranker: a preset (smollm2-135m), model directory, "
                                       "PEFT adapter directory, GGUF file or hub id.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Reranked TREC run to write (atomically).",
                                      show_default=False)],
    dataset: DatasetOpt = None,
    corpus: CorpusOpt = None,
    queries: QueriesOpt = None,
    split: SplitOpt = "test",
    kind: Annotated[str, typer.Option("--kind", help="auto (pointwise for sequence-classification checkpoints and "
                                      "SEQ_CLS adapters, else matryoshka), matryoshka or pointwise.")] = "auto",
    config: Annotated[str | None, typer.Option("--config", "-c", help="Matryoshka run-time configuration, e.g. "
                                               "'depth=16,compress=8:0.5' (default: the full model).")] = None,
    k: Annotated[int, typer.Option("--k", "-k", help="Rerank the top K of each query; deeper documents keep "
                                   "their first-stage order below them.")] = 100,
    batch_tokens: Annotated[int | None, typer.Option("--batch-tokens", help="Padded tokens per forward batch "
                                                     "(default: the reranker's).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cuda, cuda:1, cpu (default: CUDA if "
                                               "available).")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="auto (bf16 on CUDA, else fp32), float32, bfloat16, "
                                       "float16.")] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    tag: Annotated[str, typer.Option("--tag", help="Tag column of the TREC run.")] = "nestrank-rerank",
) -> None:
    """Rerank a run, e.g. `nestrank rerank --dataset scifact --run bm25.run --model smollm2-135m --out rr.run`.

    Queries come from --queries FILE (all of them) or the queries judged in --split.
    """
    from nestrank.data import Run
    from nestrank.rerank import load_reranker, rerank_run

    ds = open_dataset(dataset, corpus=corpus, queries=queries, split=split)
    query_set = ds.queries if queries is not None else ds.split_queries(split)
    first_stage = Run.read_trec(run)
    docs = ds.corpus
    start = time.perf_counter()
    reranker = load_reranker(model, kind=kind, device=device, dtype=dtype)  # type: ignore[arg-type]
    loaded = time.perf_counter()
    reranked = rerank_run(first_stage, query_set, docs, reranker, k=k, config=config, batch_tokens=batch_tokens,
                          show_progress=progress)
    seconds = time.perf_counter() - loaded
    reranked.write_trec(out, tag=tag)
    pairs = sum(min(k, len(first_stage[qid])) for qid in first_stage)
    typer.echo(f"reranked {pairs} pairs of {len(reranked)} queries in {seconds:.1f}s "
               f"({pairs / max(seconds, 1e-9):.1f} pairs/s; model loaded in {loaded - start:.1f}s) -> {out}", err=True)
