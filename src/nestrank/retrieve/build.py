"""Building a dense or hybrid index the way ``nestrank index --method dense|hybrid`` does.

:func:`build_vector_index` encodes the corpus first when given a model (resuming an earlier,
interrupted encoding), then builds the FAISS index, and for ``hybrid`` the BM25 index too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nestrank.data import Corpus
from nestrank.errors import ConfigError
from nestrank.retrieve.config import FUSION_DEPTH, RRF_K, IndexConfig
from nestrank.retrieve.dense_index import DenseIndex
from nestrank.retrieve.embeddings import Embeddings
from nestrank.retrieve.encode import run_encoding
from nestrank.retrieve.hybrid_index import HybridIndex

VECTOR_METHODS = ("dense", "hybrid")


def build_vector_index(method: str, out: str | Path, corpus: Corpus | Callable[[], Corpus] | None = None, *,
                       embeddings: str | Path | None = None, model: str | None = None, preset: str | None = None,
                       config: IndexConfig | None = None, rrf_k: float = RRF_K, fusion_depth: int = FUSION_DEPTH,
                       bm25_params: Mapping[str, Any] | None = None, doc_mode: str | None = None,
                       stride: int | None = None, passage_tokens: int | None = None,
                       progress: bool = False) -> DenseIndex | HybridIndex:
    """Build a ``dense`` or ``hybrid`` index into directory ``out``; returns it loaded.

    The vectors come from ``embeddings`` (a directory written by :func:`run_encoding` or
    ``nestrank encode``) or are encoded first with ``model`` (and ``preset``), into
    ``embeddings`` or, by default, ``OUT.emb`` next to the index (kept, so a re-run resumes
    instead of re-encoding). ``corpus`` (or a function returning it) must be the corpus the
    vectors were made from: it is checked to be (:class:`~nestrank.errors.ArtifactError`
    otherwise); a dense index from ``embeddings`` can be built without it. ``config`` sets
    FAISS; ``rrf_k``, ``fusion_depth`` and ``bm25_params``
    (:meth:`~nestrank.retrieve.bm25.BM25Index.build` keywords) set the hybrid index.

    ``doc_mode`` (``truncate`` or ``maxp``), ``stride`` and ``passage_tokens`` say how long
    documents are encoded (see :func:`~nestrank.retrieve.encode.run_encoding`; default:
    truncate at the encoder's passage length). With ``model`` they go to the encoding, which
    refuses an ``embeddings`` directory encoded otherwise; without, the given ones must match
    what ``embeddings`` holds.
    """
    if method not in VECTOR_METHODS:
        raise ConfigError(f"unknown vector index method {method!r}; choose one of: {', '.join(VECTOR_METHODS)}")
    if embeddings is None and model is None:
        raise ConfigError(f"a {method} index needs embeddings or a model (fix: Python: embeddings=DIR or model=NAME; "
                          f"CLI: --method {method} needs --embeddings DIR (from `nestrank encode`) or --model NAME "
                          "(to encode the corpus first))")
    docs = corpus() if callable(corpus) else corpus
    if (model is not None or method == "hybrid") and docs is None:
        raise ConfigError(f"a {method} index{' encoded from a model' if model else ''} needs the corpus "
                          "(fix: pass corpus=...; CLI: --dataset DIR or --corpus FILE)")
    if model is not None:
        embeddings = embeddings or Path(out).with_name(Path(out).name + ".emb")
        run_encoding(docs, embeddings, model, preset=preset, doc_mode=doc_mode or "truncate", stride=stride,
                     passage_tokens=passage_tokens, progress=progress)
    vectors = Embeddings(embeddings)
    check_segmentation(vectors.segmentation, f"the embeddings directory {vectors.dir}", doc_mode=doc_mode,
                       stride=stride, passage_tokens=passage_tokens)
    if method == "dense":
        return DenseIndex.build(vectors, out, config, corpus=docs, progress=progress)
    return HybridIndex.build(docs, vectors, out, config, rrf_k=rrf_k, fusion_depth=fusion_depth,
                             bm25_params=bm25_params, progress=progress)


def check_segmentation(held: Mapping[str, Any], where: str, **wanted: Any) -> None:
    """Raise :class:`ConfigError` when vectors encoded as ``held`` says (``doc_mode``, ``stride``,
    ``passage_tokens``: an ``Embeddings`` or ``DenseIndex`` ``segmentation``) are not what ``wanted``
    asks for (``None``: anything). ``where`` names the vectors in the message."""
    for field, value in wanted.items():
        if value is not None and held[field] != value:
            raise ConfigError(f"{where} holds vectors encoded with {field}={held[field]!r}, not {value!r} (fix: "
                              f"encode the corpus with {field}={value!r} into a new directory, or drop the setting)")
