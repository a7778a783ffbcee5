"""Dense vector indexes on FAISS: exact flat inner product, HNSW, IVF and IVF-PQ; sharded.

A dense index directory holds one FAISS index per embedding shard (``shard-XXXXX.faiss``
plus its ``shard-XXXXX.ids.txt``) and nestrank's ``manifest.json`` with ``"method":
"dense"``, the FAISS settings and the encoder (model and preset) that made the vectors,
so :meth:`DenseIndex.search` can encode queries the same way. Search visits the shards
one at a time (load, search, merge into a running top-k, free), so a corpus never has to
fit in memory at once; an index of one shard stays loaded between calls.

Embeddings encoded with ``doc_mode = "maxp"`` hold one vector per segment of a document, each
carrying the document's id. Search then returns documents scored by their best segment: it
fetches more segments than ``k``, keeps each document's best, and fetches more (doubling)
until it has ``k`` distinct documents or has fetched every segment. For a flat index this is
exact: a document missing from the fetched segments scores below every one found.

Scores are inner products (for L2-normalised vectors, cosine similarities), the papers'
choice: flat search is exact; HNSW and IVF(-PQ) trade recall for speed.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from nestrank.checks import check_corpus_arg, check_k, check_text_mapping
from nestrank.data import Corpus, Run
from nestrank.errors import ArtifactError, ConfigError
from nestrank.integrity import ids_fingerprint, reading, write_checksums
from nestrank.retrieve.config import IndexConfig
from nestrank.retrieve.embeddings import DOC_FIELDS, Embeddings
from nestrank.retrieve.encode import PassageEncoder
from nestrank.retrieve.index import staged_index_dir
from nestrank.retrieve.manifest import MANIFEST, REBUILD_INDEX, CorpusCheck, open_index_dir, write_manifest

METHOD = "dense"
ADD_CHUNK = 65536


def _faiss():
    import faiss

    return faiss


def build_faiss_index(vectors: np.ndarray, config: IndexConfig, seed: int = 0) -> Any:
    """A FAISS inner-product index over ``vectors`` (rows added in chunks, float32)."""
    faiss = _faiss()
    n, dim = vectors.shape
    config.check(dim)
    if config.index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif config.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
    else:
        if n == 0:
            raise ConfigError("cannot train an IVF index on an empty shard; use fewer shards or index_type='flat'")
        nlist = config.nlist_for(n)
        quantizer = faiss.IndexFlatIP(dim)
        if config.index_type == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            if n < 2 ** config.pq_nbits:
                raise ConfigError(f"IVF-PQ with pq_nbits={config.pq_nbits} needs at least {2 ** config.pq_nbits} "
                                  f"vectors per shard, this shard has {n}; lower pq_nbits or use ivf/flat")
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, config.pq_m, config.pq_nbits, faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()
        train_size = min(n, config.train_size or 256 * nlist)
        rows = np.sort(np.random.default_rng(seed).choice(n, size=train_size, replace=False))
        index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
    for start in range(0, n, ADD_CHUNK):
        index.add(np.ascontiguousarray(vectors[start:start + ADD_CHUNK], dtype=np.float32))
    return index


def _set_search_params(index: Any, config: IndexConfig, k: int) -> None:
    faiss = _faiss()
    if config.index_type == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = max(config.ef_search, k)
    elif config.index_type in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(index).nprobe = config.nprobe


class DenseIndex(CorpusCheck):
    """A (possibly sharded) FAISS index with the doc ids and the encoder that made its vectors."""

    def __init__(self, path: Path, manifest: dict[str, Any], built_from: dict[str, Any] | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self.built_from = built_from or {}
        params = manifest["params"]
        try:
            self.config = IndexConfig(**params["faiss"])
            self.dim = int(params["dim"])
            self.shards: list[dict[str, Any]] = list(params["shards"])
            self.num_vectors = int(params.get("num_vectors", manifest["num_docs"]))
            dict(params["encoder"])
            for shard in self.shards:
                if not (isinstance(shard["name"], str) and isinstance(shard["file"], str)
                        and isinstance(shard["ids"], str) and isinstance(shard["count"], int)):
                    raise TypeError(f"bad shard entry {shard!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(path / MANIFEST, None, f"malformed dense index manifest ({type(exc).__name__}: {exc})",
                                REBUILD_INDEX) from None
        self._encoder: PassageEncoder | None = None
        self._cached: tuple[Any, np.ndarray] | None = None

    @property
    def num_docs(self) -> int:
        """Number of indexed documents."""
        return int(self.manifest["num_docs"])

    @property
    def segmentation(self) -> dict[str, Any]:
        """``{"doc_mode", "stride", "passage_tokens"}`` of the embeddings (see :func:`~nestrank.retrieve.embeddings.doc_fields`)."""
        params = self.manifest["params"]
        return {field: params.get(field, default) for field, default in DOC_FIELDS.items()}

    @property
    def doc_mode(self) -> str:
        """``truncate`` (a vector per document) or ``maxp`` (a vector per segment; a document scores as its best)."""
        return str(self.segmentation["doc_mode"])

    @property
    def encoder_spec(self) -> dict[str, Any]:
        """``{"model", "preset", "normalized"}`` of the encoder that made the vectors (and its ``fingerprint``)."""
        return dict(self.manifest["params"]["encoder"])

    @property
    def corpus_fingerprint(self) -> str:
        """:func:`~nestrank.integrity.ids_fingerprint` of the indexed document ids (recorded, else read from the shards)."""
        recorded = self.built_from.get("corpus_ids_sha256")
        if recorded is not None:
            return recorded
        return ids_fingerprint([doc_id for shard in self.shards for doc_id in self._shard_ids(shard)])

    def __repr__(self) -> str:
        segments = f" as {self.num_vectors} maxp segments" if self.doc_mode == "maxp" else ""
        return (f"DenseIndex({self.num_docs} documents{segments}, {len(self.shards)} shards, {self.config.index_type}, "
                f"dim {self.dim})")

    # -- building -----------------------------------------------------------------------
    @classmethod
    def build(cls, embeddings: Embeddings | str | Path, out: str | Path, config: IndexConfig | None = None,
              *, corpus: Corpus | None = None, progress: bool = False) -> DenseIndex:
        """Build one FAISS index per embedding shard into directory ``out`` (atomically); returns it loaded.

        A vector per embedding row: per document, or per segment for ``maxp`` embeddings (whose
        doc_mode, stride and passage length the index records, and search follows). The
        embeddings are verified against their checksums first; with ``corpus``, they must have
        been encoded from it (:class:`~nestrank.errors.ArtifactError` otherwise). The index
        records its checksums, the corpus fingerprint and the encoder (see :mod:`nestrank.integrity`).
        """
        from tqdm.auto import tqdm

        faiss = _faiss()
        embeddings = embeddings if isinstance(embeddings, Embeddings) else Embeddings(embeddings)
        if corpus is not None:
            embeddings.check_corpus(check_corpus_arg(corpus))
        config = config or IndexConfig()
        config.check(embeddings.dim)
        shards = []
        with staged_index_dir(out) as staging:
            for position, name in enumerate(tqdm(embeddings.shard_names, desc="indexing", disable=not progress)):
                ids, vectors = embeddings.shard(name)
                index = build_faiss_index(vectors, config, seed=position)
                faiss.write_index(index, str(staging / f"{name}.faiss"))
                del index
                shutil.copyfile(embeddings.dir / f"{name}.ids.txt", staging / f"{name}.ids.txt")
                shards.append({"name": name, "file": f"{name}.faiss", "ids": f"{name}.ids.txt", "count": len(ids)})
            manifest = embeddings.manifest
            params = {
                "faiss": asdict(config),
                "dim": embeddings.dim,
                "metric": "inner_product",
                "encoder": {"model": manifest.get("model"), "preset": manifest.get("preset"),
                            "normalized": manifest.get("normalized"), "fingerprint": manifest.get("model_fingerprint")},
                "embeddings_dtype": manifest["dtype"],
                **embeddings.segmentation,
                "num_vectors": sum(shard["count"] for shard in shards),
                "shards": shards,
            }
            write_manifest(staging, METHOD, embeddings.num_docs, params)
            write_checksums(staging, {"corpus_ids_sha256": manifest["ids_sha256"], "num_docs": embeddings.num_docs,
                                      "embeddings": str(embeddings.dir.resolve())})
        return cls.load(out)

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, mmap: bool = True, *, verify: str = "fast") -> DenseIndex:
        """Open an index directory written by :meth:`build`; shard files are checked, loaded on search.

        ``mmap`` is accepted for :func:`~nestrank.retrieve.index.open_index`; FAISS shards are
        read whole, one at a time. ``verify`` checks the files against their checksums first:
        ``fast`` (default: whole files up to 64 MiB, larger ones sampled), ``full`` or ``none``.

        Raises:
            ArtifactError: a file is missing, damaged or inconsistent (naming it; fix: rebuild the index).
        """
        path = Path(path)
        index = cls(path, *open_index_dir(path, METHOD, verify, "dense index"))
        for shard in index.shards:
            for key in ("file", "ids"):
                if not (path / shard[key]).is_file():
                    raise ArtifactError(path / shard[key], None, f"dense index shard {shard['name']} is missing",
                                        "rebuild the index with `nestrank index --method dense`")
        if sum(s["count"] for s in index.shards) != index.num_vectors:
            raise ArtifactError(path / MANIFEST, None, "shard counts do not add up to num_vectors", REBUILD_INDEX)
        return index

    def _shard_ids(self, shard: dict[str, Any]) -> list[str]:
        with reading(self.path / shard["ids"], "dense index shard ids", REBUILD_INDEX):
            return (self.path / shard["ids"]).read_text(encoding="utf-8").splitlines()

    def _load_shard(self, shard: dict[str, Any]) -> tuple[Any, np.ndarray]:
        if self._cached is not None:
            return self._cached
        faiss = _faiss()
        with reading(self.path / shard["file"], "dense index shard", REBUILD_INDEX):
            index = faiss.read_index(str(self.path / shard["file"]))
        ids = np.asarray(self._shard_ids(shard), dtype=object)
        if index.ntotal != shard["count"] or len(ids) != shard["count"] or index.d != self.dim:
            raise ArtifactError(self.path / shard["file"], None,
                                f"shard holds {index.ntotal} vectors of dim {index.d} and {len(ids)} ids; the "
                                f"manifest says {shard['count']} of dim {self.dim}", REBUILD_INDEX)
        if len(self.shards) == 1:
            self._cached = (index, ids)
        return index, ids

    # -- search -------------------------------------------------------------------------
    def search_vectors(self, query_vectors: np.ndarray, k: int = 100, *, ef_search: int | None = None,
                       nprobe: int | None = None, threads: int = 0) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` inner products for each query vector, over all shards.

        Returns ``(scores, doc_ids)``: ``scores`` is ``(n_queries, min(k, num_docs))``, best
        first, padded with ``-inf`` where an approximate index found fewer results;
        ``doc_ids[i]`` lists the ids of row ``i``'s finite scores. A ``maxp`` index returns
        ``k`` distinct documents, each scored by its best segment (see the module docstring).
        ``ef_search``/``nprobe`` override the built settings; ``threads > 0`` sets FAISS's
        OpenMP threads (0: its default).
        """
        if threads > 0:
            _faiss().omp_set_num_threads(threads)
        queries = np.asarray(query_vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ConfigError(f"query vectors have shape {queries.shape}, the index holds {self.dim}-d vectors "
                              f"(built with encoder {self.encoder_spec.get('model')!r}); encode queries with that encoder")
        if not np.isfinite(queries).all():
            raise ConfigError("query vectors contain NaN or infinite values")
        check_k(k)
        config = IndexConfig(**{**asdict(self.config), **({"ef_search": ef_search} if ef_search else {}),
                                **({"nprobe": nprobe} if nprobe else {})})
        queries = np.ascontiguousarray(queries)
        k = min(k, self.num_docs)
        top = self._top_rows if self.doc_mode == "truncate" else self._top_documents
        best_scores, best_ids = top(queries, k, config)
        doc_ids = [[d for d, s in zip(row_ids, row_scores, strict=True) if np.isfinite(s)]
                   for row_ids, row_scores in zip(best_ids, best_scores, strict=True)]
        return best_scores, doc_ids

    def _top_rows(self, queries: np.ndarray, k: int, config: IndexConfig) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best vectors of each query over all shards: scores and ids, best first, padded -inf/None."""
        best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        best_ids = np.full((len(queries), k), None, dtype=object)
        for shard in self.shards:
            if shard["count"] == 0:
                continue
            index, ids = self._load_shard(shard)
            _set_search_params(index, config, k)
            scores, rows = index.search(queries, min(k, shard["count"]))
            found = rows >= 0
            scores = np.where(found, scores, -np.inf).astype(np.float32)
            shard_ids = np.where(found, ids[np.where(found, rows, 0)], None)
            merged_scores = np.concatenate([best_scores, scores], axis=1)
            merged_ids = np.concatenate([best_ids, shard_ids], axis=1)
            order = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
            best_scores = np.take_along_axis(merged_scores, order, axis=1)
            best_ids = np.take_along_axis(merged_ids, order, axis=1)
            del index, ids
        return best_scores, best_ids

    def _top_documents(self, queries: np.ndarray, k: int, config: IndexConfig) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best documents of each query by their best vector (over-fetch, collapse, fetch more)."""
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), None, dtype=object)
        fetch = min(self.num_vectors, max(2 * k, math.ceil(k * self.num_vectors / max(1, self.num_docs))))
        pending = np.arange(len(queries))
        while len(pending):
            row_scores, row_ids = self._top_rows(queries[pending], fetch, config)
            unfinished = []
            for position, query in enumerate(pending):
                best = _best_per_document(row_scores[position], row_ids[position], k)
                if len(best) < k and fetch < self.num_vectors:
                    unfinished.append(query)
                    continue
                scores[query, :len(best)] = list(best.values())
                ids[query, :len(best)] = list(best)
            pending = np.asarray(unfinished, dtype=np.int64)
            fetch = min(self.num_vectors, 2 * fetch)
        return scores, ids

    def encoder(self) -> PassageEncoder:
        """The query encoder recorded in the manifest (loaded once, then kept).

        Raises:
            ArtifactError: the recorded model's files changed since the documents were encoded
                (queries would be encoded by another model than the documents).
        """
        if self._encoder is None:
            spec = self.encoder_spec
            if not spec.get("model"):
                raise ConfigError(f"{self.path / MANIFEST} records no encoder model; pass encoder= to search()")
            from nestrank.models.dense import DenseEncoder

            self.check_encoder(spec["model"], "the recorded encoder")
            self._encoder = DenseEncoder.from_pretrained(spec["model"], preset=spec.get("preset"))
        return self._encoder

    def check_encoder(self, model: str | Path, what: str = "the encoder") -> None:
        """Refuse ``model`` (a preset, file or directory) when its weight files on this machine are not those the
        documents were encoded with (the fingerprint the embeddings recorded; nothing to check without one).

        Raises:
            ArtifactError: the files differ, e.g. the encoder was retrained in place after the index was built.
        """
        from nestrank.models.settings import local_fingerprint

        recorded = self.encoder_spec.get("fingerprint")
        now = local_fingerprint(model)
        if recorded and now and now != recorded:
            raise ArtifactError(self.path / MANIFEST, None, f"{what} {model} is not the model the documents were "
                                f"encoded with (recorded: {self.encoder_spec.get('model')}; the weight files differ, "
                                "e.g. retrained since): queries would be encoded by another model",
                                "rebuild the index (delete it, or encode the corpus again with this model), or "
                                "query it with the model it was built with")

    def search(self, queries: Mapping[str, str], k: int = 100, *, encoder: PassageEncoder | None = None,
               ef_search: int | None = None, nprobe: int | None = None, threads: int = 0) -> Run:
        """Encode ``{query_id: text}`` (with ``encoder``, default the recorded one) and return the top-``k`` run."""
        check_text_mapping(queries, "queries", "{query_id: text}")
        check_k(k)
        encoder = encoder or self.encoder()
        qids = list(queries)
        if not qids:
            return Run()
        vectors = encoder.encode_queries([queries[q] for q in qids])  # type: ignore[attr-defined]
        scores, doc_ids = self.search_vectors(vectors, k, ef_search=ef_search, nprobe=nprobe, threads=threads)
        return Run({qid: zip(ids, row[:len(ids)].tolist(), strict=True)
                    for qid, ids, row in zip(qids, doc_ids, scores, strict=True)})


def _best_per_document(scores: np.ndarray, ids: np.ndarray, k: int) -> dict[str, float]:
    """The first ``k`` distinct ids of rows sorted best first, with their (best) score."""
    best: dict[str, float] = {}
    for doc_id, score in zip(ids, scores, strict=True):
        if not np.isfinite(score) or len(best) == k:
            break
        best.setdefault(doc_id, float(score))
    return best


def exact_top_k(query_vectors: np.ndarray, doc_vectors: np.ndarray, doc_ids: Sequence[str],
                k: int) -> tuple[np.ndarray, list[list[str]]]:
    """Brute-force numpy top-``k`` inner products (the reference flat search must equal)."""
    scores = np.asarray(query_vectors, np.float32) @ np.asarray(doc_vectors, np.float32).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    ids = np.asarray(doc_ids, dtype=object)
    return np.take_along_axis(scores, order, axis=1), [list(ids[row]) for row in order]
