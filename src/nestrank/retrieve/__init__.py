"""First-stage retrieval: BM25, dense and hybrid indexes, corpus encoding and run fusion.

Every name below is importable from here (``from nestrank.retrieve import BM25Index``);
its module is imported on first use, so importing this package is cheap (the CLI reads
:mod:`nestrank.retrieve.config` while building its help). Heavy libraries (bm25s, faiss,
torch) are imported only when an index is built, loaded or searched.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module of this package that defines it.
_EXPORTS = {
    "BM25Config": "config",
    "IndexConfig": "config",
    "BM25Index": "bm25",
    "DenseIndex": "dense_index",
    "HybridIndex": "hybrid_index",
    "Embeddings": "embeddings",
    "encode_corpus": "encode",
    "run_encoding": "encode",
    "build_vector_index": "build",
    "fuse": "fusion",
    "linear_fusion": "fusion",
    "reciprocal_rank_fusion": "fusion",
    "INDEX_TYPES": "index",
    "SearchIndex": "index",
    "open_index": "index",
    "read_manifest": "manifest",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value

