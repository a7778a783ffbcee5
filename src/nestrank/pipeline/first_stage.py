"""The pipeline's first stage: candidates from BM25, a dense index, or both fused.

:meth:`FirstStage.open` loads the index named by ``first_stage.index``; when the directory
does not exist yet it is built there from the corpus (BM25 in about a second; dense and
hybrid indexes encode the corpus first into ``INDEX.emb``, kept so a re-run resumes), so the
first run of a pipeline builds its index and later runs reuse it. ``doc_mode``, ``stride`` and
``passage_tokens`` say how the dense part encodes long documents: they are used to build the
index, and an existing index encoded otherwise is refused, as is one whose documents were encoded
by other weights than ``encoder``'s (e.g. an encoder retrained in place since). A hybrid index also serves
``method = "bm25"`` or ``"dense"`` (its sub-indexes), and the pipeline fuses the two runs
itself, with the file's fusion method, weights and depth.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nestrank.data import Corpus, Run
from nestrank.errors import ConfigError
from nestrank.pipeline.config import FirstStageSection

__all__ = ["FirstStage"]


class FirstStage:
    """A loaded first stage: ``search(queries)`` returns the top ``k`` candidates per query.

    Args:
        section: the ``[first_stage]`` settings.
        bm25: the BM25 index (methods ``bm25`` and ``hybrid``).
        dense: the dense index (methods ``dense`` and ``hybrid``).
        encoder: the query encoder of the dense index (default: the one its embeddings record).
    """

    def __init__(self, section: FirstStageSection, *, bm25: Any = None, dense: Any = None, encoder: Any = None) -> None:
        needs = {"bm25": (bm25,), "dense": (dense,), "hybrid": (bm25, dense)}[section.method]
        if any(part is None for part in needs):
            raise ConfigError(f"first stage {section.method!r} needs {'a BM25 and a dense' if len(needs) == 2 else 'an'}"
                              f" index")
        self.section = section
        self.bm25 = bm25
        self.dense = dense
        self.encoder = encoder

    @classmethod
    def open(cls, section: FirstStageSection, corpus: Corpus | None = None, *, progress: bool = False) -> FirstStage:
        """Load ``section.index`` (building it from ``corpus`` when it does not exist yet).

        Without ``section.index`` only ``method = "bm25"`` works: the index is built in
        memory from ``corpus``.
        """
        from nestrank.retrieve import BM25Index, open_index

        method = section.method
        section.validate("first_stage")
        if section.index is None:
            if corpus is None:
                raise ConfigError("first_stage: no index and no corpus to build BM25 from (fix: give --dataset)")
            return cls(section, bm25=BM25Index.build(corpus))
        path = Path(section.index)
        if not path.exists():
            if corpus is None:
                raise ConfigError(f"first_stage.index {path} does not exist and there is no corpus to build it from "
                                  "(fix: give --dataset, or build it with `nestrank index`)")
            _build(section, path, corpus, progress)
        index = open_index(path, corpus=corpus)  # refuses an index built from another corpus
        built = _method_of(index)
        if method != "bm25":
            _check_segmentation(section, path, index)
            if section.encoder is not None:  # the documents must have been encoded by these weights
                getattr(index, "dense", index).check_encoder(section.encoder, "first_stage.encoder")
        encoder = _encoder(section)
        if built == method:
            parts = {"bm25": {"bm25": index}, "dense": {"dense": index},
                     "hybrid": {"bm25": getattr(index, "bm25", None), "dense": getattr(index, "dense", None)}}[method]
            return cls(section, encoder=encoder, **parts)
        if built == "hybrid":  # one of its two halves
            return cls(section, encoder=encoder, **{method: getattr(index, method)})
        wanted = "a hybrid index" if method == "hybrid" else f"a {method} or hybrid index"
        raise ConfigError(f"first_stage.index {path} is a {built} index, but first_stage.method is {method!r} "
                          f"(fix: set method = {built!r}, or point index to {wanted})")

    def search(self, queries: Mapping[str, str], k: int | None = None) -> Run:
        """The top ``k`` (default ``section.k``) candidates of every query (``{query_id: text}``)."""
        from nestrank.retrieve.fusion import fuse

        s = self.section
        k = s.k if k is None else k
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        if s.method == "bm25":
            return self.bm25.search(queries, k)
        if s.method == "dense":
            return self.dense.search(queries, k, encoder=self.encoder)
        depth = max(k, s.fusion_depth)
        runs = [self.bm25.search(queries, depth), self.dense.search(queries, depth, encoder=self.encoder)]
        return fuse(runs, s.fusion, s.weights, rrf_k=s.rrf_k, norm=s.norm, k=k)  # type: ignore[arg-type]


def _method_of(index: Any) -> str:
    from nestrank.retrieve.bm25 import BM25Index
    from nestrank.retrieve.dense_index import DenseIndex

    if isinstance(index, BM25Index):
        return "bm25"
    return "dense" if isinstance(index, DenseIndex) else "hybrid"


def _check_segmentation(section: FirstStageSection, path: Path, index: Any) -> None:
    """Refuse a dense part encoded with another doc_mode (or the section's stride / passage_tokens)."""
    from nestrank.retrieve.build import check_segmentation

    dense = getattr(index, "dense", index)
    if hasattr(dense, "segmentation"):
        check_segmentation(dense.segmentation, f"first_stage.index {path}", doc_mode=section.doc_mode,
                           stride=section.stride, passage_tokens=section.passage_tokens)


def _encoder(section: FirstStageSection) -> Any:
    if section.encoder is None or section.method == "bm25":
        return None  # the dense index loads the encoder its embeddings record
    from nestrank.models.dense import DenseEncoder

    return DenseEncoder.from_pretrained(section.encoder)


def _build(section: FirstStageSection, path: Path, corpus: Corpus, progress: bool) -> None:
    """Build the index ``section`` names at ``path`` from ``corpus``."""
    from nestrank.retrieve import BM25Index, build_vector_index

    if section.method == "bm25":
        BM25Index.build(corpus).save(path)
        return
    if section.encoder is None:
        raise ConfigError(f"first_stage.index {path} does not exist: set first_stage.encoder (e.g. minilm-l6) to "
                          "encode the corpus, or build the index with `nestrank index`")
    build_vector_index(section.method, path, corpus, model=section.encoder, doc_mode=section.doc_mode,
                       stride=section.stride, passage_tokens=section.passage_tokens, progress=progress)
