"""BM25 first stage on `bm25s <https://github.com/xhluca/bm25s>`_ with PyStemmer.

Defaults (Lucene BM25, ``k1=1.5``, ``b=0.75``, English Snowball stemmer, English stopwords)
give SciFact test nDCG@10 0.686 / R@100 0.913, the bm25s figure.

Indexing streams the corpus: texts are tokenized one document at a time into a flat
``int32`` array of token ids (4 bytes per token), never held as Python strings all at once.
``bm25s`` then builds its sparse score matrix from that array, reading one document's ids at
a time. On disk an index is bm25s' own files (``*.npy`` score matrix, vocabulary, params)
plus ``doc_ids.json`` and nestrank's ``manifest.json``; loading memory-maps the matrix.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from nestrank.checks import check_corpus_arg, check_k, check_text_mapping
from nestrank.data import Corpus, Document, Run
from nestrank.errors import ArgumentTypeError, ArtifactError, ConfigError, DataFormatError
from nestrank.integrity import CHECKSUMS_FILE, ids_fingerprint, reading, write_checksums
from nestrank.retrieve.config import BM25_VARIANTS, BM25Config
from nestrank.retrieve.index import staged_index_dir
from nestrank.retrieve.manifest import MANIFEST, REBUILD_INDEX, CorpusCheck, open_index_dir, write_manifest

METHOD = "bm25"
DOC_IDS_FILE = "doc_ids.json"


class _TokenIds(Sequence[list[int]]):
    """Per-document token ids stored flat; each document becomes a list only while read."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self._flat, self._offsets = flat, offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> list[int]:  # type: ignore[override]
        return self._flat[self._offsets[i]:self._offsets[i + 1]].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for start, end in zip(self._offsets[:-1], self._offsets[1:], strict=True):
            yield self._flat[start:end].tolist()


def _check_params(k1: float, b: float, stemmer: str | None, stopwords: str | list[str] | None, method: str) -> None:
    import Stemmer

    if not (k1 >= 0 and np.isfinite(k1)):
        raise ConfigError(f"BM25 k1 must be a finite number >= 0, got {k1}")
    if not 0 <= b <= 1:
        raise ConfigError(f"BM25 b must be between 0 and 1, got {b}")
    if method not in BM25_VARIANTS:
        raise ConfigError(f"unknown BM25 variant {method!r}; choose one of: {', '.join(BM25_VARIANTS)}")
    if stemmer is not None and stemmer not in Stemmer.algorithms():
        raise ConfigError(f"unknown stemmer {stemmer!r}; choose 'none' or one of: {', '.join(Stemmer.algorithms())}")
    if isinstance(stopwords, str):
        from bm25s.tokenization import _infer_stopwords

        try:
            _infer_stopwords(stopwords)
        except ValueError:
            raise ConfigError(f"unknown stopword list {stopwords!r}; use 'none', a language code such as "
                              "'en', 'de', 'fr', or a list of words") from None


def _matrix_problem(retriever: Any, num_docs: int) -> str | None:
    """What is inconsistent in a loaded bm25s index (arrays, vocabulary, data types), or ``None``."""
    scores, vocab = retriever.scores, retriever.vocab_dict
    data, indices, indptr = scores["data"], scores["indices"], scores["indptr"]
    try:
        np.dtype(retriever.dtype), np.dtype(retriever.int_dtype)
    except TypeError:
        return f"unknown data types in its parameters ({retriever.dtype!r}, {retriever.int_dtype!r})"
    if indptr.ndim != 1 or len(indptr) < 1 or indptr[0] != 0 or not indptr[-1] == len(indices) == len(data):
        return "the score matrix's arrays do not fit together"
    if len(indptr) > 1 and (np.diff(indptr) < 0).any():
        return "the score matrix's column pointers decrease"
    if len(indices) and (indices.min() < 0 or indices.max() >= num_docs):
        return "the score matrix points at documents that do not exist"
    if not isinstance(vocab, dict) or not all(isinstance(i, int) and 0 <= i < len(indptr) - 1 for i in vocab.values()):
        return "the vocabulary points outside the score matrix"
    return None


def _tokenizer(stemmer: str | None, stopwords: str | list[str] | None):
    import bm25s
    import Stemmer

    return bm25s.tokenization.Tokenizer(
        lower=True,
        stopwords=stopwords,
        stemmer=Stemmer.Stemmer(stemmer) if stemmer else None,
    )


class BM25Index(CorpusCheck):
    """A BM25 index over a corpus: build, save, load (memory-mapped) and batch search.

    Documents are indexed as ``title text`` (:attr:`Document.full_text`). Search returns
    only documents that share at least one term with the query (score > 0), so a query
    can get fewer than ``k`` results, or none.
    """

    def __init__(self, retriever: Any, doc_ids: list[str], params: dict[str, Any]) -> None:
        self._retriever = retriever
        self.doc_ids = doc_ids
        self.params = params
        self.path: Path | None = None  # the directory it was loaded from, if any

    @property
    def corpus_fingerprint(self) -> str:
        """:func:`~nestrank.integrity.ids_fingerprint` of the indexed document ids (identifies the corpus)."""
        return ids_fingerprint(self.doc_ids)

    @property
    def num_docs(self) -> int:
        """Number of indexed documents."""
        return len(self.doc_ids)

    def __len__(self) -> int:
        return len(self.doc_ids)

    def __repr__(self) -> str:
        return f"BM25Index({self.num_docs} documents, {self.params})"

    # -- building -----------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        corpus: Corpus | Iterable[Document],
        *,
        k1: float = BM25Config.k1,
        b: float = BM25Config.b,
        stemmer: str | None = BM25Config.stemmer,
        stopwords: str | list[str] | None = BM25Config.stopwords,
        method: str = BM25Config.method,
        show_progress: bool = False,
    ) -> BM25Index:
        """Index ``corpus`` in one streaming pass (defaults: :class:`~nestrank.retrieve.config.BM25Config`).

        Args:
            corpus: a :class:`Corpus` (streamed from disk) or any iterable of documents.
            k1, b: BM25 term-frequency saturation and length normalisation.
            stemmer: a Snowball stemmer name from PyStemmer (``"english"``), or ``None``.
            stopwords: a language code known to bm25s (``"en"``), a list of words, or ``None``.
            method: the BM25 variant: ``lucene`` (default), ``robertson``, ``atire``,
                ``bm25l`` or ``bm25+``.
            show_progress: show bm25s' progress bars (on stderr).
        """
        import bm25s

        check_corpus_arg(corpus, "corpus", iterable=True)
        _check_params(k1, b, stemmer, stopwords, method)
        tokenizer = _tokenizer(stemmer, stopwords)
        doc_ids: list[str] = []

        def texts() -> Iterator[str]:
            for position, doc in enumerate(corpus, 1):
                if not isinstance(doc, Document):
                    raise ArgumentTypeError(f"corpus: item {position} is a {type(doc).__name__}, not a "
                                            "nestrank.data.Document (fix: Corpus.from_documents([Document(id, text), "
                                            "...]) or Corpus.open(path))")
                if any(ch.isspace() for ch in doc.id):
                    raise DataFormatError(getattr(corpus, "path", None), None,
                                          f"document id {doc.id!r} (document {position}) contains whitespace",
                                          "TREC run files cannot hold such ids: rename the document")
                doc_ids.append(doc.id)
                yield doc.full_text

        flat = array("i")
        lengths = array("q", [0])
        for ids in tokenizer.streaming_tokenize(texts(), update_vocab=True, allow_empty=True):
            flat.extend(ids)
            lengths.append(len(ids))
        if not doc_ids:
            raise DataFormatError(getattr(corpus, "path", None), None, "cannot index an empty corpus")
        if len(set(doc_ids)) != len(doc_ids):
            raise DataFormatError(getattr(corpus, "path", None), None, "duplicate document ids in the corpus",
                                  "give every document a unique id")
        token_ids = _TokenIds(np.frombuffer(flat, dtype=np.int32), np.cumsum(np.frombuffer(lengths, dtype=np.int64)))
        retriever = bm25s.BM25(k1=k1, b=b, method=method)
        retriever.index(bm25s.tokenization.Tokenized(ids=token_ids, vocab=tokenizer.get_vocab_dict()),
                        show_progress=show_progress)
        params = {"k1": k1, "b": b, "variant": method, "stemmer": stemmer, "lowercase": True,
                  "stopwords": stopwords if stopwords is None or isinstance(stopwords, str) else list(stopwords)}
        return cls(retriever, doc_ids, params)

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the index to directory ``path`` atomically (built aside, then renamed), with its checksums
        and the fingerprint of the corpus it was built from (see :mod:`nestrank.integrity`)."""
        path = Path(path)
        with staged_index_dir(path) as staging:
            self._retriever.save(staging, show_progress=False)
            (staging / DOC_IDS_FILE).write_text(json.dumps(self.doc_ids, ensure_ascii=False), encoding="utf-8")
            write_manifest(staging, METHOD, self.num_docs, self.params)
            write_checksums(staging, {"corpus_ids_sha256": self.corpus_fingerprint, "num_docs": self.num_docs})
        return path

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True, *, verify: str = "fast") -> BM25Index:
        """Load an index written by :meth:`save`; ``mmap`` memory-maps the score matrix.

        ``verify`` checks the files against their checksums first: ``fast`` (default: whole
        files up to 64 MiB, larger ones sampled), ``full`` or ``none`` (see :mod:`nestrank.integrity`).

        Raises:
            ArtifactError: a file is missing, damaged or inconsistent (naming it; fix: rebuild the index).
        """
        import bm25s

        path = Path(path)
        manifest, built_from = open_index_dir(path, METHOD, verify, "BM25 index")
        params = manifest.get("params")
        try:
            _check_params(params["k1"], params["b"], params["stemmer"], params["stopwords"], params["variant"])
        except (ConfigError, KeyError, TypeError) as exc:
            raise ArtifactError(path / MANIFEST, None, f"bad BM25 settings ({exc})", REBUILD_INDEX) from None
        with reading(path, "BM25 index", REBUILD_INDEX, also=(TypeError, AttributeError)):  # bm25s' JSON damaged
            retriever = bm25s.BM25.load(path, mmap=mmap, load_corpus=False)
            doc_ids = json.loads((path / DOC_IDS_FILE).read_text(encoding="utf-8"))
        if not isinstance(doc_ids, list) or not all(isinstance(d, str) for d in doc_ids):
            raise ArtifactError(path / DOC_IDS_FILE, None, "not a JSON list of document ids", REBUILD_INDEX)
        if len(doc_ids) != manifest["num_docs"] or retriever.scores["num_docs"] != len(doc_ids):
            raise ArtifactError(path, None, "document count differs between manifest, ids and matrix", REBUILD_INDEX)
        problem = None if (path / CHECKSUMS_FILE).is_file() else _matrix_problem(retriever, len(doc_ids))
        if problem is not None:  # an index of an older nestrank: no checksums vouch for its matrix
            raise ArtifactError(path, None, f"damaged BM25 index: {problem}", REBUILD_INDEX)
        index = cls(retriever, doc_ids, params)
        index.path = path
        recorded = built_from.get("corpus_ids_sha256")
        if recorded is not None and recorded != index.corpus_fingerprint:
            raise ArtifactError(path / DOC_IDS_FILE, None, "the document ids differ from the corpus the index "
                                "records it was built from", REBUILD_INDEX)
        return index

    # -- search -------------------------------------------------------------------------
    def search(self, queries: Mapping[str, str], k: int = 100, *, threads: int = 0, batch_size: int = 10_000,
               show_progress: bool = False) -> Run:
        """Top-``k`` documents for every query in ``{query_id: text}``.

        Scores come from bm25s; the top ``k`` are selected among the documents that contain
        a query term (all others are left out), with ties ordered as :class:`Run` orders
        them. Queries are tokenized in batches of ``batch_size``; ``threads`` > 1 scores the
        queries of a batch on that many threads (``-1``: one per CPU; 0 or 1: the calling
        thread). Scoring is numpy-bound and mostly holds the GIL: on a 2-core machine two
        threads measured no faster than one, on SciFact and on a 300k-document corpus.
        """
        from concurrent.futures import ThreadPoolExecutor

        from rich.console import Console
        from rich.progress import Progress

        check_text_mapping(queries, "queries", "{query_id: text}")
        check_k(k)
        threads = (os.cpu_count() or 1) if threads == -1 else threads
        tokenizer = _tokenizer(self.params["stemmer"], self.params["stopwords"])
        qids = list(queries)
        ranked: dict[str, list[tuple[str, float]]] = {}
        top_k = partial(self._top, k=k)
        with ThreadPoolExecutor(max(threads, 1)) as pool, \
                Progress(console=Console(stderr=True), disable=not show_progress, transient=True) as progress:
            task = progress.add_task("BM25 search", total=len(qids))
            for start in range(0, len(qids), batch_size):
                batch = qids[start:start + batch_size]
                tokens = tokenizer.tokenize([queries[q] for q in batch], update_vocab=True, return_as="string",
                                            show_progress=False)
                results = pool.map(top_k, tokens) if threads > 1 else map(top_k, tokens)
                for qid, result in zip(batch, results, strict=True):
                    ranked[qid] = result
                    progress.advance(task)
        return Run(ranked).top(k)

    def _top(self, tokens: list[str], k: int) -> list[tuple[str, float]]:
        """The ``k`` best matching documents of one tokenized query, plus any tied with the last."""
        token_ids = self._retriever.get_tokens_ids([t for t in tokens if t])
        if not token_ids:
            return []
        indices, indptr = self._retriever.scores["indices"], self._retriever.scores["indptr"]
        matched = np.zeros(len(self.doc_ids), dtype=bool)
        for t in token_ids:
            matched[indices[indptr[t]:indptr[t + 1]]] = True
        candidates = np.flatnonzero(matched)
        scores = self._retriever.get_scores_from_ids(token_ids)[candidates]
        if len(candidates) > k:
            kth = np.partition(scores, len(candidates) - k)[len(candidates) - k]
            keep = scores >= kth
            candidates, scores = candidates[keep], scores[keep]
        return [(self.doc_ids[i], score) for i, score in zip(candidates.tolist(), scores.tolist(), strict=True)]
