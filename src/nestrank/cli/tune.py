"""``nestrank tune``: choose a Matryoshka reranker's profiles (full, balanced, light) on validation queries."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from nestrank.cli.app import app
from nestrank.cli.common import DatasetOpt, check_model


def _numbers(text: str | None, kind: type, option: str, low: float, high: float = math.inf) -> list | None:
    """Comma-separated numbers in ``[low, high]``, or ``None`` when the option was not given."""
    from nestrank.errors import ConfigError

    if text is None:
        return None
    try:
        values = [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated {kind.__name__}s, got {text!r}") from None
    outside = [v for v in values if not low <= v <= high]
    if outside or not values:
        bounds = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ConfigError(f"{option} values must be {bounds}, got {text!r}")
    return values


@app.command("tune")
def tune_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Matryoshka checkpoint directory (or a preset with "
                                       "--out).", show_default=False)],
    dataset: DatasetOpt = None,
    pipeline_file: Annotated[Path | None, typer.Option("--pipeline", "-p", help="Pipeline TOML whose first stage "
                                                       "gives the candidates (default: BM25).")] = None,
    validation: Annotated[Path | None, typer.Option("--validation-queries", help="File of validation query ids, "
                                                    "one per line (default: the model directory's "
                                                    "validation_queries.txt).")] = None,
    split: Annotated[str, typer.Option("--split", help="Split whose qrels judge the validation queries (never "
                                       "test).")] = "train",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Where profiles.json, tune.csv and tune.png go "
                                             "(default: the model directory).")] = None,
    work: Annotated[Path | None, typer.Option("--work", help="Score cache (resumable; default OUT/.tune-cache).")]
        = None,
    depths: Annotated[str | None, typer.Option("--depths", help="Exit layers to try, e.g. 10,15,20,25,30.")] = None,
    widths: Annotated[str | None, typer.Option("--widths", help="Widths to try, comma-separated compress values "
                                               "('full' = none), e.g. full,8:0.5,8:0.25.")] = None,
    rerank_depths: Annotated[str | None, typer.Option("--rerank-depths", help="Reranking depths to try, e.g. "
                                                      "10,20,30.")] = None,
    weights: Annotated[str | None, typer.Option("--weights", help="Interpolation weights to try (1 = the reranker "
                                                "alone).")] = None,
    balanced: Annotated[float | None, typer.Option("--balanced", min=0, max=1, help="balanced: the cheapest point "
                                                   "giving up at most this share of full's gain over the first "
                                                   "stage (default 0.15; 0.01 of its quality with --tolerance-of "
                                                   "quality).", show_default=False)] = None,
    light: Annotated[float | None, typer.Option("--light", min=0, max=1, help="light: the same, at most this share "
                                                "(default 0.35; 0.03 with --tolerance-of quality).",
                                                show_default=False)] = None,
    tolerance_of: Annotated[str, typer.Option("--tolerance-of", help="What --balanced and --light are shares of: "
                                              "'gain' (full's gain over the first stage) or 'quality' (full's "
                                              "quality).")] = "gain",
    metric: Annotated[str, typer.Option("--metric", help="Validation metric.")] = "ndcg@10",
    timing_pairs: Annotated[int, typer.Option("--timing-pairs", min=0, help="Pairs timed per configuration (0: cost = "
                                              "FLOPs only).")] = 32,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = False,
) -> None:
    """Tune profiles on validation queries, e.g. `nestrank tune --model out/comp/final --dataset scifact`."""
    import json

    from nestrank.errors import ConfigError
    from nestrank.evaluate.metrics import parse_metric
    from nestrank.files import check_output
    from nestrank.pipeline.frontier import default_tolerances
    from nestrank.pipeline.tune import TuneGrid, default_grid, tune, validation_queries
    from nestrank.rerank import check_reranker_config

    defaults = default_tolerances(tolerance_of)
    tolerances = {"balanced": defaults["balanced"] if balanced is None else balanced,
                  "light": defaults["light"] if light is None else light}
    if split == "test":
        raise ConfigError("--split test: tuning on test queries would leak them into every reported test figure "
                          "(fix: tune on held-out training queries, the default)")
    metric_name = str(parse_metric(metric))
    numbers = {"depths": _numbers(depths, int, "--depths", 1), "rerank_depths": _numbers(rerank_depths, int,
               "--rerank-depths", 1), "weights": _numbers(weights, float, "--weights", 0, 1)}
    width_list = None if widths is None else ["" if w.strip() == "full" else w.strip() for w in widths.split(",")]
    model_dir = Path(model)
    out_dir = out or (model_dir if model_dir.is_dir() else None)
    if out_dir is None:
        raise ConfigError(f"--model {model} is not a directory: give --out DIR for profiles.json")
    check_output(out_dir, directory=True)
    check_output(work or out_dir / ".tune-cache", directory=True, option="--work")
    check_model(model)
    for option, configs in (("--depths", [f"depth={d}" for d in numbers["depths"] or []]),
                            ("--widths", [f"compress={w}" for w in width_list or [] if w])):
        for candidate in configs:
            try:
                check_reranker_config(model, candidate)
            except ConfigError as exc:
                raise ConfigError(f"{option}: {exc}") from None
    ds, val_queries, qrels, source = validation_queries(dataset, model_dir, validation, split)
    typer.echo(f"tune: {len(val_queries)} validation queries ({source})", err=True)

    from nestrank.models import MatryoshkaReranker
    from nestrank.pipeline import FirstStage, FirstStageSection, load_pipeline_config

    reranker = MatryoshkaReranker.from_pretrained(model)
    base = default_grid(reranker.num_layers, getattr(reranker, "trained_exits", None))
    grid = TuneGrid(numbers["depths"] or base.depths, width_list if width_list is not None else base.widths,
                    numbers["rerank_depths"] or base.rerank_depths, numbers["weights"] or base.weights)
    section = load_pipeline_config(pipeline_file).first_stage if pipeline_file else FirstStageSection()
    section.k = max(section.k, *grid.rerank_depths)
    candidates = FirstStage.open(section, ds.corpus).search(val_queries)
    result = tune(reranker, candidates, val_queries, qrels, ds.corpus, out_dir=out_dir,
                  work_dir=work or out_dir / ".tune-cache", model_id=str(model), grid=grid, metric=metric_name,
                  tolerances=tolerances, basis=tolerance_of, timing_pairs=timing_pairs,
                  show_progress=progress, log=lambda line: typer.echo(line, err=True))
    kept = result.gain_kept
    chosen = {name: {"config": p.config or "full", "rerank_depth": p.rerank_depth, "weight": p.weight,
                     metric_name: p.quality, "gain_kept": kept[name],
                     "flops_ratio": p.flops_ratio, "ms_per_pair": p.ms_per_pair}
              for name, p in result.chosen.items()}
    typer.echo(json.dumps({"first_stage": round(result.baseline, 4), "profiles": chosen,
                           "files": {k: str(v) for k, v in result.files.items()}}))
