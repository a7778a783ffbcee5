"""A retrieval dataset: a corpus, queries and qrels per split (BEIR directory layout).

``Dataset.open(dir)`` reads ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv``;
:meth:`Dataset.from_files` takes explicit files instead (MS MARCO TSVs, TREC qrels, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from nestrank.data.corpus import Corpus, OnEmpty
from nestrank.data.qrels import Qrels
from nestrank.data.queries import Queries
from nestrank.errors import ConfigError, DataFormatError


@dataclass
class Dataset:
    """Corpus, queries and qrels, loaded lazily on first use.

    Every part is optional (a dataset can be just a corpus to index, or just qrels to
    evaluate against); using a part that was not given raises :class:`ConfigError`.
    """

    corpus_path: Path | None = None
    queries_path: Path | None = None
    qrels_paths: dict[str, Path] = field(default_factory=dict)
    name: str = ""

    @classmethod
    def open(cls, root: str | Path) -> Dataset:
        """Open a BEIR-layout directory (``corpus.jsonl``, ``queries.jsonl``, ``qrels/*.tsv``)."""
        root = Path(root)
        if not root.is_dir():
            raise DataFormatError(root, None, "dataset directory not found",
                                  "pass a BEIR directory with corpus.jsonl, queries.jsonl and qrels/")
        for required in ("corpus.jsonl", "queries.jsonl"):
            if not (root / required).is_file():
                raise DataFormatError(root / required, None, "missing from the dataset directory")
        qrels = {p.stem: p for p in sorted((root / "qrels").glob("*.tsv"))}
        return cls(root / "corpus.jsonl", root / "queries.jsonl", qrels, root.name)

    @classmethod
    def from_files(cls, corpus: str | Path | None = None, queries: str | Path | None = None,
                   qrels: dict[str, str | Path] | None = None) -> Dataset:
        """A dataset from explicit files (any of them may be left out); ``qrels`` maps split name to file."""
        corpus_path = None if corpus is None else Path(corpus)
        return cls(corpus_path, None if queries is None else Path(queries),
                   {s: Path(p) for s, p in (qrels or {}).items()}, "" if corpus_path is None else corpus_path.parent.name)

    def open_corpus(self, on_empty: OnEmpty = "error") -> Corpus:
        """Open the corpus file afresh (see :meth:`Corpus.open` for ``on_empty``)."""
        return Corpus.open(_required(self.corpus_path, "corpus", "--corpus FILE"), on_empty=on_empty)

    @cached_property
    def corpus(self) -> Corpus:
        """The corpus (opened on first access)."""
        return self.open_corpus()

    @cached_property
    def queries(self) -> Queries:
        """All queries (read on first access)."""
        return Queries.read(_required(self.queries_path, "queries", "--queries FILE"))

    @property
    def splits(self) -> list[str]:
        """Split names that have qrels."""
        return list(self.qrels_paths)

    def qrels(self, split: str) -> Qrels:
        """The qrels of one split."""
        if split not in self.qrels_paths:
            where = self.corpus_path.parent if self.corpus_path is not None else self.name or None
            raise DataFormatError(where, None, f"no qrels for split {split!r}",
                                  f"choose one of: {', '.join(self.splits) or '(none found)'}")
        return Qrels.read(self.qrels_paths[split])

    def split_queries(self, split: str) -> Queries:
        """The queries judged in ``split`` (unknown judged query ids are an error)."""
        qrels = self.qrels(split)
        qrels.check_ids(queries=self.queries)
        return self.queries.subset(set(qrels))


def _required(path: Path | None, part: str, flag: str) -> Path:
    if path is None:
        raise ConfigError(f"the dataset has no {part} file (fix: give one: Python {part}_path=..., "
                          f"command line {flag} or --dataset DIR)")
    return path
