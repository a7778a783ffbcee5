"""Convert data files between formats: corpora, queries, qrels, runs and training groups.

:func:`convert` is what ``nestrank data convert`` calls. Input formats are detected (from
the suffix or the content); the output format comes from ``to`` or the output's suffix.

| kind    | formats                                                              |
|---------|----------------------------------------------------------------------|
| corpus  | ``jsonl`` (BEIR corpus.jsonl), ``tsv`` (``id<TAB>[title<TAB>]text``); read also ``trec`` (SGML ``<DOC>`` collections: a file, gzipped or not, or a directory) |
| queries | ``jsonl`` (BEIR queries.jsonl), ``tsv`` (``id<TAB>text``); read also ``trec`` (``<top>`` topic files, the ``topic_field`` as text) |
| qrels   | ``tsv`` (BEIR, with header), ``trec`` (``qid 0 docid grade``)          |
| run     | ``trec`` (``qid Q0 docid rank score tag``), ``tsv`` (MS MARCO ``qid<TAB>docid<TAB>rank``) |
| groups  | ``tevatron-ids``, ``tevatron-passages``, ``flagembedding``             |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nestrank.data.corpus import CORPUS_FORMATS, READ_FORMATS, Corpus, detect_format, write_corpus
from nestrank.data.groups import GROUP_FORMATS, read_groups, write_groups
from nestrank.data.qrels import Qrels
from nestrank.data.queries import Queries
from nestrank.data.run import Run
from nestrank.errors import ConfigError

FORMATS: dict[str, tuple[str, ...]] = {
    "corpus": CORPUS_FORMATS,
    "queries": ("jsonl", "tsv"),
    "qrels": ("tsv", "trec"),
    "run": ("trec", "tsv"),
    "groups": GROUP_FORMATS,
}
KINDS = tuple(FORMATS)
#: Formats read but never written.
INPUT_FORMATS: dict[str, tuple[str, ...]] = {**FORMATS, "corpus": READ_FORMATS, "queries": ("jsonl", "tsv", "trec")}


@dataclass(frozen=True)
class Converted:
    """What :func:`convert` wrote: ``count`` records of ``kind`` in format ``fmt`` to ``path``."""

    kind: str
    fmt: str
    count: int
    path: Path


def output_format(kind: str, dst: str | Path, to: str | None = None) -> str:
    """The output format: ``to`` if given, else guessed from the suffix of ``dst``."""
    if kind not in FORMATS:
        raise ConfigError(f"unknown kind {kind!r} (fix: use one of {', '.join(KINDS)})")
    choices = FORMATS[kind]
    if to is not None:
        if to not in choices:
            raise ConfigError(f"{kind} cannot be written as {to!r} (fix: use one of {', '.join(choices)})")
        return to
    suffix = Path(dst).suffix.lower()
    if kind in ("corpus", "queries"):
        try:
            return detect_format(Path(dst))
        except ValueError:
            raise ConfigError(f"cannot tell the output format of {dst} (fix: name it .jsonl or .tsv, or pass "
                              "--to jsonl|tsv)") from None
    if kind in ("qrels", "run"):
        return "tsv" if suffix == ".tsv" else "trec"
    return "tevatron-passages"


def convert(kind: str, src: str | Path, dst: str | Path, *, to: str | None = None, src_fmt: str | None = None,
            corpus: Corpus | str | Path | None = None, queries: Mapping[str, str] | str | Path | None = None,
            top_k: int | None = None, tag: str = "nestrank", skip_empty: bool = False, topic_field: str = "title"
            ) -> Converted:
    """Read ``src`` as ``kind`` and write it to ``dst`` in another format, atomically.

    ``src_fmt`` overrides input detection (corpus/queries: ``jsonl``/``tsv``; run:
    ``trec``/``tsv``; groups: a group format). ``corpus``/``queries`` resolve the ids of
    ``tevatron-ids`` groups and, for qrels and runs, check that every id is known.
    ``top_k`` keeps the best ``k`` results per query of a run; ``tag`` names a TREC run;
    ``skip_empty`` drops documents with no text instead of failing; ``topic_field`` is the field of
    a TREC topic file that becomes the query text (title, desc, narr or title+desc).
    """
    fmt = output_format(kind, dst, to)
    src, dst = Path(src), Path(dst)
    if src_fmt is not None and src_fmt not in INPUT_FORMATS[kind]:
        raise ConfigError(f"{kind} cannot be read as {src_fmt!r} (fix: use one of {', '.join(INPUT_FORMATS[kind])})")
    if top_k is not None and (kind != "run" or top_k < 1):
        raise ConfigError("top_k applies to runs only and must be >= 1 (fix: drop --top or use --kind run)")
    docs = Corpus.open(corpus) if isinstance(corpus, str | Path) else corpus
    topics = Queries.read(queries) if isinstance(queries, str | Path) else queries
    if kind == "corpus":
        count = write_corpus(dst, Corpus.open(src, src_fmt, on_empty="skip" if skip_empty else "error"), fmt)
    elif kind == "queries":
        items = Queries.read(src, src_fmt, field=topic_field)
        items.write(dst, fmt)
        count = len(items)
    elif kind == "qrels":
        qrels = Qrels.read(src)
        qrels.check_ids(queries=topics, corpus=docs)
        (qrels.write_tsv if fmt == "tsv" else qrels.write_trec)(dst)
        count = sum(len(judged) for judged in qrels.values())
    elif kind == "run":
        run = {"trec": Run.read_trec, "tsv": Run.read_tsv}.get(src_fmt or "", Run.read)(src)
        run.check_ids(queries=topics, corpus=docs)
        if top_k is not None:
            run = run.top(top_k)
        if fmt == "tsv":
            run.write_tsv(dst)
        else:
            run.write_trec(dst, tag=tag)
        count = sum(len(ranked) for ranked in run.values())
    else:
        count = write_groups(dst, read_groups(src, corpus=docs, queries=topics, fmt=src_fmt), fmt)
    return Converted(kind, fmt, count, dst)
