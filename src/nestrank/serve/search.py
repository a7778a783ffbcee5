"""``POST /search``: the served index's first stage, the reranker over its top candidates, optional fusion.

:class:`SearchPipeline` holds the pipeline's first stage (:class:`nestrank.pipeline.FirstStage`
over the served index, with the fusion settings a hybrid index recorded) and the corpus;
:meth:`SearchPipeline.search` retrieves ``max(k, rerank_depth)`` candidates, reranks the top
``rerank_depth`` through the reranker's scheduler (so search traffic is batched with rerank
traffic and pays the same per-request cost), optionally interpolates the reranker's score with
the first stage's (:func:`nestrank.pipeline.interpolate`, ``weight`` on the reranker: the
request's, else the profile's), and keeps the first-stage order below the reranked candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from nestrank.data import Corpus, Run
from nestrank.errors import ConfigError
from nestrank.serve import service
from nestrank.serve.errors import ApiError, responses
from nestrank.serve.schemas import SearchHit, SearchRequest, SearchResponse

router = APIRouter()
QID = "q"


@dataclass
class SearchPipeline:
    """A loaded first stage (index + corpus) and the name of the reranker that reranks it (optional)."""

    first: Any  # a nestrank.pipeline.FirstStage
    corpus: Corpus
    reranker: str | None
    rerank_depth: int
    method: str

    @classmethod
    def open(cls, index: str, corpus: str, reranker: str | None, rerank_depth: int) -> SearchPipeline:
        """Load the index directory (as a pipeline first stage) and the corpus it was built from."""
        from nestrank.pipeline import FirstStage, FirstStageSection
        from nestrank.retrieve import read_manifest

        manifest = read_manifest(index)
        method, params = str(manifest["method"]), manifest.get("params", {})
        section = FirstStageSection(method=method, index=index)
        if method == "hybrid":  # the fusion the index recorded
            section.rrf_k, section.fusion_depth = float(params["rrf_k"]), int(params["depth"])
        docs = Corpus.open(corpus_path(corpus))
        return cls(FirstStage.open(section, docs), docs, reranker, rerank_depth, method)

    async def search(self, request: Request, body: SearchRequest) -> SearchResponse:
        """First stage, rerank, fuse; see the module docstring."""
        state = request.app.state.nestrank
        model = body.model or self.reranker
        depth = 0 if model is None else (self.rerank_depth if body.rerank_depth is None else body.rerank_depth)
        first = await run_in_threadpool(self.first.search, {QID: body.query}, max(body.k, depth))
        candidates = first.get(QID, [])
        meta: dict[str, Any] = {"first_stage": self.method, "rerank_depth": 0, "warnings": []}
        rerank_scores: dict[str, float] = {}
        final = first
        head = candidates[:depth]
        if head:
            docs = self.corpus.get_many([doc for doc, _ in head])
            outcome = await service.rerank(state, request, model=model, query=body.query,
                                           documents=[d.full_text for d in docs], cost=body.cost)
            rerank_scores = {doc: float(s) for (doc, _), s in zip(head, outcome.rows, strict=True)}
            weight = body.weight if body.weight is not None else self._profile_weight(state, model, outcome)
            final = _combine(first, head, rerank_scores, weight)
            meta.update(rerank_depth=len(head), model=outcome.model, cost=outcome.cost.model_dump(), weight=weight,
                        warnings=outcome.warnings)
        first_scores = dict(candidates)
        hits = []
        ranked = final.get(QID, [])[:body.k]
        docs = self.corpus.get_many([doc for doc, _ in ranked])
        for (doc_id, score), doc in zip(ranked, docs, strict=True):
            hits.append(SearchHit(doc_id=doc_id, score=score, first_stage_score=first_scores[doc_id],
                                  rerank_score=rerank_scores.get(doc_id), title=doc.title or None,
                                  text=doc.text if body.return_text else None))
        return SearchResponse(query=body.query, results=hits, meta=meta)

    @staticmethod
    def _profile_weight(state, model: str, outcome: service.Outcome) -> float | None:
        engine, _ = state.engine(model, "rerank")
        profile = engine.profiles.get(outcome.cost.profile or "")
        return None if profile is None else profile.weight


def _combine(first: Run, head: list[tuple[str, float]], rerank_scores: dict[str, float], weight: float | None) -> Run:
    """The reranked head (interpolated with the first stage when ``weight`` is set), then the first-stage tail."""
    from nestrank.pipeline import interpolate

    reranked = Run({QID: list(rerank_scores.items())})
    if weight is not None:
        return interpolate(first, reranked, weight, len(head))
    ordered = reranked[QID]
    floor = min(score for _, score in ordered)
    tail = [(doc, floor - rank) for rank, (doc, _) in enumerate(first[QID][len(head):], 1)]
    return Run({QID: ordered + tail})


@router.post("/search", response_model=SearchResponse, responses=responses(), tags=["search"])
async def search(body: SearchRequest, request: Request) -> SearchResponse:
    """Search the served index: first stage, then the reranker over the top `rerank_depth`, best first."""
    state = request.app.state.nestrank
    state.require_ready()
    if state.search is None:
        raise ApiError(404, "this server has no search index (start it with --index and --corpus)",
                       code="no_index")
    if not body.query.strip():
        raise ApiError(400, "query is empty", code="empty_input", param="query")
    return await state.search.search(request, body)


def corpus_path(path: str) -> Path:
    """A corpus file, a BEIR directory's ``corpus.jsonl``, or a TREC collection directory."""
    candidate = Path(path)
    if candidate.is_dir() and (candidate / "corpus.jsonl").is_file():
        return candidate / "corpus.jsonl"
    if not candidate.exists():
        raise ConfigError(f"--corpus {path}: no corpus there (give a .jsonl/.tsv file, a BEIR directory or a TREC "
                          "collection)")
    return candidate
