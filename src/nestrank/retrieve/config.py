"""First-stage settings and their defaults, in one place.

The library and the CLI take their defaults from here (``nestrank index --help`` shows
them), so a default is written once. This module imports nothing heavy: the CLI reads it
while building its help.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nestrank.errors import ConfigError

#: The reciprocal-rank-fusion constant ``k`` of Cormack et al. (2009): ``score = sum 1 / (rrf_k + rank)``.
RRF_K = 60
#: Results each sub-index of a hybrid index retrieves before they are fused.
FUSION_DEPTH = 1000
#: How stored embeddings are typed, and how many documents are encoded per step.
EMBEDDING_DTYPE = "float16"
ENCODE_CHUNK_SIZE = 8192
#: How the dense first stage encodes long documents: cut at the passage length, or overlapping segments.
DOC_MODES = ("truncate", "maxp")
BM25_VARIANTS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
FAISS_TYPES = ("flat", "hnsw", "ivf", "ivfpq")


@dataclass(frozen=True)
class BM25Config:
    """BM25 settings, the keyword arguments of :meth:`~nestrank.retrieve.bm25.BM25Index.build`.

    The defaults (Lucene BM25, ``k1=1.5``, ``b=0.75``, English Snowball stemmer, English
    stopwords) are those of ``BM25Index.build`` and ``nestrank index``. ``stemmer`` is a
    PyStemmer algorithm name or ``None``; ``stopwords`` a language code known to bm25s
    (``"en"``), a list of words, or ``None``; ``method`` one of :data:`BM25_VARIANTS`.
    """

    k1: float = 1.5
    b: float = 0.75
    stemmer: str | None = "english"
    stopwords: str | list[str] | None = "en"
    method: str = "lucene"


@dataclass(frozen=True)
class IndexConfig:
    """FAISS settings. ``index_type`` is ``flat`` (exact), ``hnsw``, ``ivf`` or ``ivfpq``.

    HNSW: ``hnsw_m`` links per node, ``ef_construction`` build beam, ``ef_search`` search
    beam (raised to ``k`` when smaller). IVF: ``nlist`` clusters per shard (default about
    ``4 * sqrt(n)``, at most ``n / 39``), ``nprobe`` clusters visited per query,
    ``train_size`` vectors sampled for training (default ``256 * nlist``). IVF-PQ also:
    ``pq_m`` sub-quantizers (must divide the dimension) of ``pq_nbits`` bits.
    """

    index_type: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int | None = None
    nprobe: int = 16
    pq_m: int = 16
    pq_nbits: int = 8
    train_size: int | None = None

    def check(self, dim: int) -> None:
        """Raise :class:`ConfigError` for an unknown type or an impossible parameter."""
        if self.index_type not in FAISS_TYPES:
            raise ConfigError(f"unknown dense index type {self.index_type!r}; choose one of: {', '.join(FAISS_TYPES)}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "nprobe", "pq_m", "pq_nbits"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.nlist is not None and self.nlist < 1:
            raise ConfigError(f"nlist must be >= 1, got {self.nlist}")
        if self.index_type == "ivfpq" and dim % self.pq_m:
            raise ConfigError(f"pq_m={self.pq_m} must divide the vector dimension {dim}")

    def nlist_for(self, n: int) -> int:
        """The number of IVF clusters for a shard of ``n`` vectors."""
        if self.nlist is not None:
            if self.nlist > n:
                raise ConfigError(f"nlist={self.nlist} is larger than a shard of {n} vectors; lower nlist "
                                  "or use fewer, larger shards")
            return self.nlist
        return max(1, min(int(4 * math.sqrt(n)), n // 39))


