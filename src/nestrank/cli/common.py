"""Options and helpers shared by several commands."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from nestrank.data import Dataset

T = TypeVar("T")

DatasetOpt = Annotated[
    str | None,
    typer.Option("--dataset", "-d", help="BEIR directory, or a BEIR dataset name (found in $NESTRANK_DATA "
                 "or the cache dir, downloaded if missing)."),
]
CorpusOpt = Annotated[Path | None, typer.Option("--corpus", help="Corpus instead of --dataset: a .jsonl or .tsv "
                                                "file, or a TREC SGML collection (file, .gz or directory).")]
QueriesOpt = Annotated[Path | None, typer.Option("--queries", help="Queries instead of --dataset: a .jsonl or .tsv "
                                                 "file, or a TREC topic file (titles; other fields: `nestrank data "
                                                 "convert --kind queries --topic-field desc`).")]
QrelsOpt = Annotated[Path | None, typer.Option("--qrels", help="Qrels file (BEIR TSV or TREC) instead of --dataset.")]
SplitOpt = Annotated[str, typer.Option("--split", help="Dataset split whose qrels/queries are used.")]


def open_dataset(dataset: str | None, corpus: Path | None = None, queries: Path | None = None,
                 qrels: Path | None = None, split: str = "test") -> Dataset:
    """Build a :class:`~nestrank.data.Dataset` from ``--dataset`` or explicit files.

    Explicit files override the dataset's own. With explicit ``--qrels`` the file becomes
    the qrels of ``split``. A part given neither way fails when a command uses it.
    """
    from nestrank.data import Dataset
    from nestrank.errors import ConfigError

    if dataset is None and corpus is None and queries is None and qrels is None:
        raise ConfigError("give --dataset DIR, or explicit --corpus/--queries/--qrels files")
    if dataset is not None:
        from nestrank.data.download import resolve_dataset

        ds = Dataset.open(resolve_dataset(dataset))
    else:
        ds = Dataset()
    if corpus is not None:
        ds.corpus_path = corpus
    if queries is not None:
        ds.queries_path = queries
    if qrels is not None:
        ds.qrels_paths[split] = qrels
    return ds


def library_option(flag: str, help: str, default: object, **limits: float) -> Any:
    """An option that defaults to ``None``: unset, the library's ``default`` holds (``--help`` shows it).

    ``limits`` are Typer's ``min``/``max`` (a value outside is a usage error, exit 2).
    """
    return typer.Option(flag, help=help, show_default="none" if default is None else str(default), **limits)


def deprecated_option(flag: str, replacement: str) -> Any:
    """A hidden option kept as the old name of ``replacement`` (read it with :func:`renamed`)."""
    return typer.Option(flag, hidden=True, help=f"Deprecated: use {replacement}.")


def given(**options: Any) -> dict[str, Any]:
    """The options the user gave (not ``None``): unset ones are left to the library's defaults."""
    return {name: value for name, value in options.items() if value is not None}


def parse_weights(text: str | None, flag: str = "--weights") -> list[float] | None:
    """Comma-separated numbers (``"0.5,0.5"``), or ``None`` when the option was not given."""
    from nestrank.errors import ConfigError

    if text is None:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated numbers, e.g. 0.5,0.5, got {text!r}") from None


def renamed(value: T | None, old_value: T | None, flag: str, old_flag: str) -> T | None:
    """The value of ``flag``, or of its deprecated hidden alias ``old_flag`` (with a one-line warning on stderr)."""
    from nestrank.errors import ConfigError

    if old_value is None:
        return value
    if value is not None:
        raise ConfigError(f"give {flag} only ({old_flag} is its deprecated name)")
    typer.secho(f"warning: {old_flag} is deprecated and will be removed; use {flag}", fg=typer.colors.YELLOW, err=True)
    return old_value


_DEVICE = re.compile(r"(cpu|cuda|mps|xpu|hpu|npu|meta)(:\d+)?")


def check_choice(value: str | None, choices: Sequence[str], option: str) -> None:
    """Raise :class:`~nestrank.errors.ConfigError` unless ``value`` is ``None`` or one of ``choices``."""
    from nestrank.errors import ConfigError

    if value is not None and value not in choices:
        raise ConfigError(f"unknown {option} {value!r}; choose one of: {', '.join(choices)}")


def check_device(device: str | None, option: str = "--device") -> None:
    """A torch device string such as ``cpu``, ``cuda`` or ``cuda:1`` (availability is checked when the model loads)."""
    from nestrank.errors import ConfigError

    if device is not None and not _DEVICE.fullmatch(device):
        raise ConfigError(f"{option} {device!r} is not a device (fix: cpu, cuda, cuda:1, mps...)")


def check_model(name: str | Path | None, option: str = "--model") -> None:
    """Fail before any work on a model that cannot load here (:func:`nestrank.models.backbone.check_model_name`)."""
    from nestrank.errors import ConfigError
    from nestrank.models.backbone import check_model_name

    if name is None:
        return
    try:
        check_model_name(name)
    except ConfigError as exc:
        raise ConfigError(f"{option}: {exc}") from None
