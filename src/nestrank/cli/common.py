"""Options and helpers shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DatasetOpt = Annotated[
    str | None,
    typer.Option("--dataset", "-d", help="BEIR directory, or a BEIR dataset name (found in $NESTRANK_DATA "
                 "or the cache dir, downloaded if missing)."),
]
CorpusOpt = Annotated[Path | None, typer.Option("--corpus", help="Corpus file (.jsonl or .tsv) instead of --dataset.")]
QueriesOpt = Annotated[Path | None, typer.Option("--queries", help="Queries file (.jsonl or .tsv) instead of --dataset.")]
QrelsOpt = Annotated[Path | None, typer.Option("--qrels", help="Qrels file (BEIR TSV or TREC) instead of --dataset.")]
SplitOpt = Annotated[str, typer.Option("--split", help="Dataset split whose qrels/queries are used.")]


def open_dataset(dataset: str | None, corpus: Path | None = None, queries: Path | None = None,
                 qrels: Path | None = None, split: str = "test"):
    """Build a :class:`~nestrank.data.Dataset` from ``--dataset`` or explicit files.

    Explicit files override the dataset's own. With explicit ``--qrels`` the file becomes
    the qrels of ``split``.
    """
    from nestrank.data import Dataset
    from nestrank.errors import ConfigError

    if dataset is not None:
        from nestrank.data.download import resolve_dataset

        ds = Dataset.open(resolve_dataset(dataset))
        if corpus is not None:
            ds.corpus_path = corpus
        if queries is not None:
            ds.queries_path = queries
    else:
        if corpus is None and queries is None and qrels is None:
            raise ConfigError("give --dataset DIR, or explicit --corpus/--queries/--qrels files")
        ds = Dataset(corpus or Path("<no corpus given: pass --corpus>"), queries or Path("<no queries given: pass --queries>"))
    if qrels is not None:
        ds.qrels_paths[split] = qrels
    return ds
