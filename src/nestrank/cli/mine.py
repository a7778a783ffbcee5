"""``nestrank mine``: hard-negative training groups from first-stage runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from nestrank.cli import app
from nestrank.cli.common import CorpusOpt, DatasetOpt, QrelsOpt, QueriesOpt, open_dataset


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
    depth: Annotated[str, typer.Option("--depth", help="Rank window START:END to sample from (ranks START+1..END); "
                                       "10:100 skips the top 10.")] = "0:100",
    negatives: Annotated[int, typer.Option("--negatives", "-n", help="Negatives per query.")] = 15,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (per query: seed and query id).")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="tevatron-passages, tevatron-ids or flagembedding.")]
        = "tevatron-passages",
) -> None:
    """Sample hard negatives (never a judged positive) from run(s) and write training groups."""
    from nestrank.data import Run
    from nestrank.errors import ConfigError
    from nestrank.train.mining import mine_to_file, parse_depth

    window = parse_depth(depth)
    weight_list = None
    if weights is not None:
        try:
            weight_list = [float(w) for w in weights.split(",")]
        except ValueError:
            raise ConfigError(f"--weights {weights!r}: give comma-separated numbers, e.g. 0.5,0.5") from None
        if len(weight_list) != len(runs):
            raise ConfigError(f"--weights has {len(weight_list)} values for {len(runs)} --run files: give one per run")
    ds = open_dataset(dataset, corpus, queries, qrels, split)
    stats = mine_to_file(out, [Run.read(path) for path in runs], ds.qrels(split), ds.queries, ds.corpus,
                         weights=weight_list, depth=window, negatives=negatives, seed=seed, fmt=fmt)
    typer.echo(stats.summary(), err=True)
    typer.echo(json.dumps({"out": str(out), "groups": stats.groups, "short": len(stats.short),
                           "skipped": len(stats.no_positive) + len(stats.not_in_run)}))
