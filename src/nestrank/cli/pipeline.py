"""``nestrank pipeline run`` and ``nestrank ask``: a whole multi-stage pipeline from a TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from nestrank.cli.app import app
from nestrank.cli.common import CorpusOpt, DatasetOpt, QueriesOpt, SplitOpt, check_device, check_model, open_dataset

if TYPE_CHECKING:
    from nestrank.pipeline import PipelineConfig

pipeline_app = typer.Typer(help="Run a multi-stage pipeline (first stage -> reranker) from a TOML file.",
                           no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Pipeline TOML file (see pipelines/).",
                                         show_default=False)]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a pipeline value: section.key=VALUE "
                                                  "(repeatable), e.g. --set reranker.profile=full.")]


@pipeline_app.command("run")
def pipeline_run_command(
    config: ConfigOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="TREC run to write (its costs go to RUN.meta.json).",
                                      show_default=False)],
    dataset: DatasetOpt = None,
    corpus: CorpusOpt = None,
    queries: QueriesOpt = None,
    split: SplitOpt = "test",
    overrides: SetOpt = None,
    engine: Annotated[str, typer.Option("--engine", help="local (this process) or ray (queries sharded over Ray "
                                        "Data actors; connects to RAY_ADDRESS or starts a local Ray).")] = "local",
    actors: Annotated[int, typer.Option("--actors", min=1, help="Ray: pipeline actors (each loads the index and "
                                        "model).")] = 2,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    tag: Annotated[str, typer.Option("--tag", help="Tag column of the TREC run.")] = "nestrank-pipeline",
    sample: Annotated[int | None, typer.Option("--sample", help="Run a seeded sample of N of the split's judged "
                                               "queries (evaluate it with `nestrank evaluate --sample N`).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --sample.")] = 0,
) -> None:
    """Run a pipeline over a split's queries, e.g. `nestrank pipeline run -c P.toml -d scifact --out p.run`.

    Then `nestrank evaluate` shows the run's quality with its cost columns (ms/query, pairs/s, FLOPs).
    The file, the models and the output path are checked before anything loads. The local
    engine journals finished reranking in .OUT.journal, so the same command resumes an
    interrupted run with the same result.
    """
    import json

    from nestrank.errors import ConfigError
    from nestrank.files import check_output
    from nestrank.journal import journal_path
    from nestrank.pipeline import Pipeline, load_pipeline_config
    from nestrank.pipeline.pipeline import meta_path
    from nestrank.tomlconfig import parse_overrides

    if engine not in ("local", "ray"):
        raise ConfigError(f"unknown --engine {engine!r}; choose local or ray")
    check_output(meta_path(check_output(out)))
    settings = load_pipeline_config(config, parse_overrides(overrides or []))
    _check_models(settings)
    ds = open_dataset(dataset or settings.data.dataset, corpus=corpus, queries=queries, split=split)
    query_set = ds.queries if queries is not None else ds.split_queries(split)
    if sample is not None:
        from nestrank.data.queries import sample_ids

        query_set = query_set.subset(set(sample_ids(query_set, sample, seed)))
    if engine == "ray":
        from nestrank.pipeline.ray_engine import search_ray

        result = search_ray(settings, query_set, ds.corpus_path, actors=actors)
    else:
        pipeline = Pipeline.from_config(settings, corpus=ds.corpus, progress=progress)
        if pipeline.rerank is not None:
            pipeline.rerank.journal = journal_path(out)
        result = pipeline.search(query_set, show_progress=progress)
    result.write(out, tag=tag)
    journal_path(out).unlink(missing_ok=True)
    typer.echo(json.dumps({"out": str(out), **result.summary()}))


def _check_models(settings: PipelineConfig) -> None:
    """The encoder and reranker a pipeline names, and the reranker's configuration or profile, before loading them."""
    from nestrank.rerank import check_reranker_config

    check_model(settings.first_stage.encoder, "first_stage.encoder")
    section = settings.reranker
    if section.model is not None:
        check_device(section.device, "reranker.device")
        check_model(section.model, "reranker.model")
        check_reranker_config(section.model, section.config if section.config is not None else section.profile)


@app.command("ask")
def ask_command(
    query: Annotated[str, typer.Argument(help="The query text.", show_default=False)],
    pipeline_file: Annotated[Path, typer.Option("--pipeline", "-p", help="Pipeline TOML file.", show_default=False)],
    dataset: DatasetOpt = None,
    overrides: SetOpt = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Results to print.")] = 10,
) -> None:
    """Search one query through a pipeline and print ranked titles with scores."""
    from rich.console import Console
    from rich.table import Table

    from nestrank.pipeline import Pipeline, load_pipeline_config
    from nestrank.tomlconfig import parse_overrides

    settings = load_pipeline_config(pipeline_file, parse_overrides(overrides or []))
    _check_models(settings)
    pipeline = Pipeline.from_config(settings, dataset=dataset)
    table = Table(title=query, title_justify="left")
    for column in ("rank", "score", "doc", "title"):
        table.add_column(column, justify="right" if column in ("rank", "score") else "left")
    for rank, hit in enumerate(pipeline.ask(query, k), 1):
        table.add_row(str(rank), f"{hit.score:.4f}", hit.doc_id, hit.title or hit.text[:80])
    Console().print(table)
