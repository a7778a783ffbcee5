"""Hybrid indexes: BM25 and dense sub-indexes in one directory, their runs fused by reciprocal rank."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nestrank.checks import check_corpus_arg, check_k, check_text_mapping
from nestrank.data import Corpus, Run
from nestrank.errors import ArtifactError, ConfigError
from nestrank.integrity import CHECKSUMS_FILE, ids_fingerprint, write_checksums
from nestrank.retrieve.config import FUSION_DEPTH, RRF_K, IndexConfig
from nestrank.retrieve.dense_index import DenseIndex
from nestrank.retrieve.embeddings import Embeddings
from nestrank.retrieve.encode import PassageEncoder
from nestrank.retrieve.index import staged_index_dir
from nestrank.retrieve.manifest import MANIFEST, REBUILD_INDEX, CorpusCheck, open_index_dir, write_manifest

__all__ = ["HYBRID", "HybridIndex"]

HYBRID = "hybrid"


class HybridIndex(CorpusCheck):
    """BM25 and dense sub-indexes in one directory; search fuses their runs by reciprocal rank.

    Layout: ``bm25/`` and ``dense/`` (each a complete index) and a manifest with
    ``"method": "hybrid"``, the RRF constant ``rrf_k`` and the ``fusion_depth`` (results
    each sub-index retrieves before fusion; stored as ``"depth"``, the key indexes have
    always used).
    """

    def __init__(self, path: Path, manifest: dict[str, Any], bm25: Any, dense: DenseIndex) -> None:
        self.path = path
        self.manifest = manifest
        self.bm25 = bm25
        self.dense = dense

    @property
    def corpus_fingerprint(self) -> str:
        """:func:`~nestrank.integrity.ids_fingerprint` of the indexed document ids."""
        return self.bm25.corpus_fingerprint

    @property
    def num_docs(self) -> int:
        """Number of indexed documents."""
        return int(self.manifest["num_docs"])

    def __repr__(self) -> str:
        return f"HybridIndex({self.bm25!r} + {self.dense!r}, RRF k={self.manifest['params']['rrf_k']})"

    @classmethod
    def build(cls, corpus: Corpus, embeddings: Embeddings | str | Path, out: str | Path,
              config: IndexConfig | None = None, *, rrf_k: float = RRF_K, fusion_depth: int = FUSION_DEPTH,
              bm25_params: Mapping[str, Any] | None = None, progress: bool = False) -> HybridIndex:
        """Index ``corpus`` with BM25 (``bm25_params``: :meth:`BM25Index.build` keywords) and its encoded
        ``embeddings`` with FAISS (``config``), into ``out`` (atomically)."""
        from nestrank.retrieve.bm25 import BM25Index

        check_corpus_arg(corpus)
        embeddings = embeddings if isinstance(embeddings, Embeddings) else Embeddings(embeddings)
        embeddings.check_corpus(corpus)
        if fusion_depth < 1 or not (np.isfinite(rrf_k) and rrf_k >= 0):
            raise ConfigError(f"hybrid fusion_depth must be >= 1 and rrf_k a finite number >= 0, got "
                              f"fusion_depth={fusion_depth}, rrf_k={rrf_k}")
        with staged_index_dir(out) as staging:
            BM25Index.build(corpus, **dict(bm25_params or {})).save(staging / "bm25")
            DenseIndex.build(embeddings, staging / "dense", config, progress=progress)
            write_manifest(staging, HYBRID, len(corpus), {"parts": {"bm25": "bm25", "dense": "dense"},
                                                          "fusion": "rrf", "rrf_k": rrf_k, "depth": fusion_depth})
            write_checksums(staging, {"corpus_ids_sha256": ids_fingerprint(corpus.ids), "num_docs": len(corpus)})
        return cls.load(out)

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True, *, verify: str = "fast") -> HybridIndex:
        """Open a hybrid index directory (both sub-indexes); ``verify`` as in :meth:`DenseIndex.load`."""
        from nestrank.retrieve.bm25 import BM25Index

        path = Path(path)
        manifest, _ = open_index_dir(path, HYBRID, verify, "hybrid index")
        inner = "none" if (path / CHECKSUMS_FILE).is_file() else verify  # its checksums cover the sub-indexes' files
        params = manifest["params"]
        parts = params.get("parts")
        if (not isinstance(parts, dict) or not all(isinstance(parts.get(p), str) for p in ("bm25", "dense"))
                or not isinstance(params.get("depth"), int) or isinstance(params.get("rrf_k"), bool)
                or not isinstance(params.get("rrf_k"), int | float)):
            raise ArtifactError(path / MANIFEST, None, "malformed hybrid index manifest (parts, depth, rrf_k)",
                                REBUILD_INDEX)
        bm25 = BM25Index.load(path / parts["bm25"], mmap=mmap, verify=inner)
        dense = DenseIndex.load(path / parts["dense"], verify=inner)
        if not bm25.num_docs == dense.num_docs == manifest["num_docs"]:
            raise ArtifactError(path / MANIFEST, None, f"sub-indexes hold {bm25.num_docs} (BM25) and "
                                f"{dense.num_docs} (dense) documents, the manifest {manifest['num_docs']}",
                                "rebuild it with `nestrank index --method hybrid`")
        return cls(path, manifest, bm25, dense)

    def search(self, queries: Mapping[str, str], k: int = 100, *, encoder: PassageEncoder | None = None,
               fusion_depth: int | None = None, threads: int = 0) -> Run:
        """RRF of the BM25 and dense top-``fusion_depth`` runs (default: the manifest's, at least ``k``), cut to ``k``."""
        from nestrank.retrieve.fusion import reciprocal_rank_fusion

        check_text_mapping(queries, "queries", "{query_id: text}")
        check_k(k)
        params = self.manifest["params"]
        fusion_depth = max(k, fusion_depth or params["depth"])
        runs = [self.bm25.search(queries, fusion_depth, threads=threads),
                self.dense.search(queries, fusion_depth, encoder=encoder, threads=threads)]
        return reciprocal_rank_fusion(runs, rrf_k=params["rrf_k"], k=k)
