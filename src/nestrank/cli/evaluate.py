"""``nestrank evaluate``: score runs against qrels; a table, or one JSON object with --json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from nestrank.cli.app import app
from nestrank.cli.common import DatasetOpt, QrelsOpt, SplitOpt, open_dataset


@app.command("evaluate")
def evaluate_command(
    runs: Annotated[list[Path], typer.Argument(help="TREC run files; the first is the baseline of the "
                                               "significance tests.", show_default=False)],
    dataset: DatasetOpt = None,
    qrels: QrelsOpt = None,
    corpus: Annotated[Path | None, typer.Option("--corpus", help="Also check the qrels and runs against this corpus "
                                                "(warns about judged documents it lacks).")] = None,
    split: SplitOpt = "test",
    metrics: Annotated[str, typer.Option("--metrics", "-m", help="Comma-separated: ndcg@10, recall@100, "
                                         "rr@10 (mrr@10), map, p@10, or ir_measures names.")] = "ndcg@10,recall@100,rr@10",
    rel: Annotated[int, typer.Option("--rel", help="Lowest grade counted relevant by binary measures "
                                     "(R, RR, AP, P); TREC DL uses 2. nDCG keeps graded gains.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: run file -> metric -> "
                                          "value (metric names as ir_measures prints them, e.g. nDCG@10).")] = False,
    test: Annotated[str, typer.Option("--test", help="Significance test vs the first run: t (paired t-test) or "
                                      "permutation (paired randomisation).")] = "t",
    alpha: Annotated[float, typer.Option("--alpha", min=0, max=1, help="Significance level of the table's markers.")] = 0.05,
    sample: Annotated[int | None, typer.Option("--sample", min=1, help="Evaluate a seeded sample of N judged queries "
                                               "(the one `nestrank pipeline run --sample N` ran).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --sample.")] = 0,
    plot: Annotated[Path | None, typer.Option("--plot", help="Also draw the first metric against ms/query of the "
                                              "runs a pipeline wrote (RUN.meta.json) into this PNG.")] = None,
) -> None:
    """Evaluate runs, e.g. `nestrank evaluate --dataset scifact --split test bm25.run hybrid.run`.

    Judged queries missing from a run count as 0; queries without judgements are ignored.
    """
    from rich.console import Console

    from nestrank.data import Run
    from nestrank.errors import ConfigError
    from nestrank.evaluate.compare import compare_runs
    from nestrank.evaluate.metrics import parse_metrics

    parse_metrics(metrics)  # fail on a typo before reading any run
    labels = [str(path) for path in runs]
    if len(set(labels)) != len(labels):
        raise ConfigError("the same run file is given twice")
    judgements = open_dataset(dataset, qrels=qrels, split=split).qrels(split)
    total = len(judgements)
    if sample is not None:
        from nestrank.data import Qrels
        from nestrank.data.queries import sample_ids

        judgements = Qrels({qid: judgements[qid] for qid in sample_ids(judgements, sample, seed)})
    loaded = {label: Run.read_trec(path) for label, path in zip(labels, runs, strict=True)}
    for label, run in loaded.items():
        missing = sum(1 for qid in judgements if not run.get(qid))
        if missing:
            typer.echo(f"note: {label}: {missing} of {len(judgements)} judged queries have no results "
                       "(they count as 0)", err=True)
    names = [path.name for path in runs]
    if not as_json and len(set(names)) == len(names):  # the table shows short names when unambiguous
        loaded = dict(zip(names, loaded.values(), strict=True))
    documents = open_dataset(dataset, corpus=corpus).open_corpus(on_empty="skip") if corpus is not None else None
    comparison = compare_runs(loaded, judgements, metrics, rel=rel, test=test, alpha=alpha,  # type: ignore[arg-type]
                              corpus=documents)
    costs = _costs(dict(zip(loaded, runs, strict=True)))
    if as_json:
        typer.echo(json.dumps({run: {**means, **costs.get(run, {})} for run, means in comparison.means.items()}))
        return
    title = (f"{len(judgements)} judged queries" + (f" (seeded sample {seed} of {total})" if sample else "")
             + (f" ({dataset}, {split})" if dataset else ""))
    Console().print(comparison.table(title=title, costs=costs))
    if plot is not None:
        from nestrank.evaluate.plot import plot_quality_vs_cost

        first = comparison.metrics[0]
        points = {run: (costs[run]["ms/query"], comparison.means[run][first]) for run in comparison.means
                  if costs.get(run, {}).get("ms/query") is not None}
        if not points:
            raise ConfigError("--plot needs runs written by `nestrank pipeline run` (their RUN.meta.json has the costs)")
        plot_quality_vs_cost(points, plot, metric=first, title=title)
        typer.echo(f"plotted {len(points)} runs -> {plot}", err=True)


def _costs(paths: dict[str, Path]) -> dict[str, dict[str, float | None]]:
    """Cost columns of the runs a pipeline wrote (``RUN.meta.json``): ms/query, pairs/s, FLOPs ratio."""
    from nestrank.pipeline.pipeline import read_meta

    costs = {}
    for label, path in paths.items():
        meta = read_meta(path)
        if meta is not None:
            summary = meta["summary"]
            costs[label] = {"ms/query": summary.get("ms_per_query"), "pairs/s": summary.get("pairs_per_s"),
                            "FLOPs ratio": summary.get("flops_ratio")}
    return costs
