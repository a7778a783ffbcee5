"""``nestrank rerank``: rerank the top candidates of a first-stage run with an LLM reranker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from nestrank.cli.app import app
from nestrank.cli.common import (
    CorpusOpt,
    DatasetOpt,
    QueriesOpt,
    SplitOpt,
    check_choice,
    check_device,
    check_model,
    open_dataset,
)


@app.command("rerank")
def rerank_command(
    run: Annotated[Path, typer.Option("--run", "-r", help="First-stage TREC run to rerank.", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="Reranker: a preset (smollm2-135m), model directory, "
                                       "PEFT adapter directory, GGUF file or hub id.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Reranked TREC run to write (atomically). Finished "
                                      "queries are journaled in .OUT.journal beside it as they go, so the same "
                                      "command resumes an interrupted run.", show_default=False)],
    dataset: DatasetOpt = None,
    corpus: CorpusOpt = None,
    queries: QueriesOpt = None,
    split: SplitOpt = "test",
    kind: Annotated[str | None, typer.Option("--kind", help="auto (pointwise for sequence-classification "
                                             "checkpoints and SEQ_CLS adapters, else matryoshka; the default), "
                                             "matryoshka or pointwise.", show_default=False)] = None,
    config: Annotated[str | None, typer.Option("--config", "-c", help="Matryoshka run-time configuration, e.g. "
                                               "'depth=16,compress=8:0.5', or a profile name (full, light, or one "
                                               "of the model's profiles.json); default: the full model.")] = None,
    rerank_depth: Annotated[int | None, typer.Option("--rerank-depth", help="Rerank the top N candidates of each "
                                                     "query (default 100); deeper documents keep their first-stage "
                                                     "order below them.", show_default=False)] = None,
    k: Annotated[int | None, typer.Option("--k", "-k", hidden=True, help="Deprecated alias of --rerank-depth.")] = None,
    batch_tokens: Annotated[int | None, typer.Option("--batch-tokens", min=1, help="Padded tokens per forward batch "
                                                     "(default: the reranker's).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cuda, cuda:1, cpu (default: CUDA if "
                                               "available).")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="auto (bf16 on CUDA, else fp32; the default), "
                                              "float32, bfloat16, float16.", show_default=False)] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Show a progress bar "
                                                  "(default: on).", show_default=False)] = None,
    tag: Annotated[str, typer.Option("--tag", help="Tag column of the TREC run.")] = "nestrank-rerank",
) -> None:
    """Rerank a run, e.g. `nestrank rerank --dataset scifact --run bm25.run --model smollm2-135m --out rr.run`.

    Queries come from --queries FILE (all of them) or the queries judged in --split. The output
    path, the model name, the configuration and every option are checked before the model
    loads. Re-running an interrupted command resumes it from its journal (.OUT.journal) and
    writes the run an uninterrupted one would; the journal is removed once OUT is written.
    """
    from nestrank.data import Run
    from nestrank.errors import ConfigError
    from nestrank.files import check_output
    from nestrank.journal import journal_path
    from nestrank.models.backbone import DTYPES
    from nestrank.rerank import (
        DEFAULT_RERANK_DEPTH,
        check_rerank_depth,
        check_reranker_config,
        load_reranker,
        rerank_run,
    )

    if k is not None:
        if rerank_depth is not None:
            raise ConfigError("--k is a deprecated alias of --rerank-depth: give --rerank-depth only")
        typer.secho("warning: --k is deprecated; use --rerank-depth", fg=typer.colors.YELLOW, err=True)
        rerank_depth = k
    loading = _given(kind=kind, device=device, dtype=dtype)
    options = _given(rerank_depth=rerank_depth, config=config, batch_tokens=batch_tokens, show_progress=progress)
    if rerank_depth is not None:
        check_rerank_depth(rerank_depth)
    journal = journal_path(check_output(out))
    check_choice(dtype, DTYPES, "dtype")
    check_device(device)
    check_model(model)
    check_reranker_config(model, config, **_given(kind=kind))
    ds = open_dataset(dataset, corpus=corpus, queries=queries, split=split)
    query_set = ds.queries if queries is not None else ds.split_queries(split)
    first_stage = Run.read_trec(run)
    start = time.perf_counter()
    reranker = load_reranker(model, **loading)
    loaded = time.perf_counter()
    reranked = rerank_run(first_stage, query_set, ds.corpus, reranker, journal=journal, **options)
    seconds = time.perf_counter() - loaded
    reranked.write_trec(out, tag=tag)
    journal.unlink(missing_ok=True)
    depth = options.get("rerank_depth", DEFAULT_RERANK_DEPTH)
    pairs = sum(min(depth, len(first_stage[qid])) for qid in first_stage)
    typer.echo(f"reranked {pairs} pairs of {len(reranked)} queries in {seconds:.1f}s "
               f"({pairs / max(seconds, 1e-9):.1f} pairs/s; model loaded in {loaded - start:.1f}s) -> {out}", err=True)


def _given(**options: Any) -> dict[str, Any]:
    """The options the user gave (not ``None``), so the library's defaults apply to the others."""
    return {name: value for name, value in options.items() if value is not None}
