"""First-stage retrieval: BM25, index directories and run fusion.

Heavy libraries (bm25s, faiss) are imported only when an index is built, loaded or
searched, so importing this package is cheap.
"""

from nestrank.retrieve.bm25 import BM25Index
from nestrank.retrieve.fusion import fuse, linear_fusion, reciprocal_rank_fusion
from nestrank.retrieve.index import INDEX_TYPES, SearchIndex, open_index, read_manifest

__all__ = [
    "INDEX_TYPES",
    "BM25Index",
    "SearchIndex",
    "fuse",
    "linear_fusion",
    "open_index",
    "read_manifest",
    "reciprocal_rank_fusion",
]
