"""A retrieval dataset: a corpus, queries and qrels per split (BEIR directory layout).

``Dataset.open(dir)`` reads ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv``;
:meth:`Dataset.from_files` takes explicit files instead (MS MARCO TSVs, TREC qrels, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from nestrank.data.corpus import Corpus
from nestrank.data.qrels import Qrels
from nestrank.data.queries import Queries
from nestrank.errors import DataFormatError


@dataclass
class Dataset:
    """Corpus, queries and qrels, loaded lazily on first use."""

    corpus_path: Path
    queries_path: Path
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
    def from_files(cls, corpus: str | Path, queries: str | Path, qrels: dict[str, str | Path] | None = None) -> Dataset:
        """A dataset from explicit files; ``qrels`` maps split name to file."""
        return cls(Path(corpus), Path(queries), {s: Path(p) for s, p in (qrels or {}).items()}, Path(corpus).parent.name)

    @cached_property
    def corpus(self) -> Corpus:
        """The corpus (opened on first access)."""
        return Corpus.open(self.corpus_path)

    @cached_property
    def queries(self) -> Queries:
        """All queries (read on first access)."""
        return Queries.read(self.queries_path)

    @property
    def splits(self) -> list[str]:
        """Split names that have qrels."""
        return list(self.qrels_paths)

    def qrels(self, split: str) -> Qrels:
        """The qrels of one split."""
        if split not in self.qrels_paths:
            raise DataFormatError(self.corpus_path.parent, None, f"no qrels for split {split!r}",
                                  f"choose one of: {', '.join(self.splits) or '(none found)'}")
        return Qrels.read(self.qrels_paths[split])

    def split_queries(self, split: str) -> Queries:
        """The queries judged in ``split`` (unknown judged query ids are an error)."""
        qrels = self.qrels(split)
        qrels.check_ids(queries=self.queries)
        return self.queries.subset(set(qrels))
