"""``nestrank data ...``: convert data files between formats and fetch BEIR datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nestrank.cli.app import app

data_app = typer.Typer(help="Convert data files between formats; download BEIR datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_KINDS = "corpus, queries, qrels, run, groups"
_FORMATS = ("corpus/queries: jsonl|tsv (read also: trec SGML collections and topic files); qrels: tsv|trec; run: trec|tsv; "
            "groups: tevatron-ids|tevatron-passages|flagembedding")


@data_app.command("convert")
def convert_command(
    src: Annotated[Path, typer.Argument(help="Input file (or a TREC collection directory).", show_default=False)],
    dst: Annotated[Path, typer.Argument(help="Output file (written atomically).", show_default=False)],
    kind: Annotated[str, typer.Option("--kind", "-k", help=f"What the file holds: {_KINDS}.", show_default=False)],
    to: Annotated[str | None, typer.Option("--to", help=f"Output format ({_FORMATS}). Default: from DST's "
                                           "suffix; groups default to tevatron-passages.")] = None,
    src_fmt: Annotated[str | None, typer.Option("--from", help="Input format, when detection from the suffix "
                                                "or content is not what you want.")] = None,
    corpus: Annotated[Path | None, typer.Option("--corpus", help="Corpus that resolves tevatron-ids groups; "
                                                "for qrels/runs, every document id is checked against it.")] = None,
    queries: Annotated[Path | None, typer.Option("--queries", help="Queries for tevatron-ids groups without "
                                                 "query_text; for qrels/runs, query ids are checked against it.")] = None,
    top: Annotated[int | None, typer.Option("--top", min=1, help="Runs: keep the best K results per query.")] = None,
    tag: Annotated[str, typer.Option("--tag", help="Runs: the tag column of a TREC run.")] = "nestrank",
    skip_empty: Annotated[bool, typer.Option("--skip-empty", help="Corpus: drop documents with no text "
                                             "instead of failing.")] = False,
    topic_field: Annotated[str, typer.Option("--topic-field", help="TREC topic files: the field that becomes "
                                             "the query (title, desc, narr, title+desc).")] = "title",
) -> None:
    """Convert SRC to DST, e.g. `nestrank data convert --kind corpus collection.tsv corpus.jsonl`."""
    from nestrank.data.convert import convert
    from nestrank.files import check_output

    check_output(dst, option="DST")
    done = convert(kind, src, dst, to=to, src_fmt=src_fmt, corpus=corpus, queries=queries, top_k=top, tag=tag,
                   skip_empty=skip_empty, topic_field=topic_field)
    typer.echo(f"wrote {done.count} {done.kind} records to {done.path} ({done.fmt})")


@data_app.command("download")
def download_command(
    name: Annotated[str, typer.Argument(help="BEIR dataset name, e.g. scifact.", show_default=False)],
) -> None:
    """Download a public BEIR dataset (unless present) and print its directory."""
    from nestrank.data.download import resolve_dataset

    typer.echo(resolve_dataset(name))
