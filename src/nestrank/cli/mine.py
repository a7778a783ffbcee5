"""``nestrank mine``: hard-negative training groups from first-stage runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from nestrank.cli.app import app
from nestrank.cli.common import (
    CorpusOpt,
    DatasetOpt,
    QrelsOpt,
    QueriesOpt,
    check_choice,
    deprecated_option,
    given,
    open_dataset,
    parse_weights,
    renamed,
)


@app.command("mine")
def mine_command(
    runs: Annotated[list[Path], typer.Option("--run", "-r", help="Run file to sample negatives from (TREC or MS MARCO "
                                             "TSV); repeat to blend several by reciprocal-rank fusion.",
                                             show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Training-group JSONL to write.", show_default=False)],
    dataset: DatasetOpt = None,
    corpus: CorpusOpt = None,
    queries: QueriesOpt = None,
    qrels: QrelsOpt = None,
    split: Annotated[str, typer.Option("--split", help="Split whose judged queries get groups.")] = "train",
    weights: Annotated[str | None, typer.Option("--weights", help="Comma-separated fusion weights, one per --run.")] = None,
    rank_window: Annotated[str | None, typer.Option("--rank-window", help="Rank window START:END to sample from "
                                                    "(ranks START+1..END); 10:100 skips the top 10.",
                                                    show_default="0:100")] = None,
    negatives: Annotated[int, typer.Option("--negatives", "-n", min=1, help="Negatives per query.")] = 15,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (per query: seed and query id).")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="tevatron-passages, tevatron-ids or flagembedding.")]
        = "tevatron-passages",
    depth: Annotated[str | None, deprecated_option("--depth", "--rank-window")] = None,
) -> None:
    """Sample hard negatives (never a judged positive) from run(s) and write training groups."""
    from nestrank.data import Run
    from nestrank.data.groups import GROUP_FORMATS
    from nestrank.errors import ConfigError
    from nestrank.files import check_output
    from nestrank.train.mining import mine_to_file, parse_rank_window

    check_output(out)
    check_choice(fmt, GROUP_FORMATS, "--format")

    window = renamed(rank_window, depth, "--rank-window", "--depth")
    options = given(rank_window=None if window is None else parse_rank_window(window))
    weight_list = parse_weights(weights)
    if weight_list is not None and len(weight_list) != len(runs):
        raise ConfigError(f"--weights has {len(weight_list)} values for {len(runs)} --run files: give one per run")
    ds = open_dataset(dataset, corpus, queries, qrels, split)
    stats = mine_to_file(out, [Run.read(path) for path in runs], ds.qrels(split), ds.queries, ds.corpus,
                         weights=weight_list, negatives=negatives, seed=seed, fmt=fmt, **options)
    typer.echo(stats.summary(), err=True)
    typer.echo(json.dumps({"out": str(out), "groups": stats.groups, "short": len(stats.short),
                           "skipped": len(stats.no_positive) + len(stats.not_in_run)}))
