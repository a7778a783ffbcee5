"""Reranking runs: the second stage of the pipeline (first-stage ``Run`` -> reranked ``Run``).

:func:`rerank_run` rescores the top ``k`` documents of every query with a
:class:`~nestrank.models.reranker.Reranker`. Documents ranked below ``k`` by the first stage
are kept, in their first-stage order, *below* every reranked document: they get synthetic
scores ``min(reranked) - 1``, ``min(reranked) - 2``, ... (so deeper metrics such as R@1000
still see them, and no tail document can overtake a reranked one). Tail scores carry no
meaning beyond that order.

Pairs of several queries are scored in one :meth:`Reranker.score` call (about
``pairs_per_call`` pairs), so length-sorted batching packs them across queries.
:func:`rerank_run_exits` reranks with several exits of a Matryoshka reranker in one pass.
:func:`load_reranker` builds a reranker from a model name for the CLI and scripts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nestrank.data.corpus import Corpus, Document
from nestrank.data.run import Run
from nestrank.errors import ConfigError
from nestrank.models.reranker import Reranker, RerankInputError

if TYPE_CHECKING:
    from nestrank.models.matryoshka import MatryoshkaReranker

Kind = Literal["auto", "matryoshka", "pointwise"]
KINDS: tuple[str, ...] = ("auto", "matryoshka", "pointwise")


def rerank_run(
    run: Run,
    queries: Mapping[str, str],
    corpus: Corpus,
    reranker: Reranker,
    *,
    k: int = 100,
    config: Any = None,
    batch_tokens: int | None = None,
    pairs_per_call: int = 512,
    show_progress: bool = True,
) -> Run:
    """Rerank the top ``k`` documents of each query of ``run``; returns a new :class:`Run`.

    Args:
        run: first-stage results.
        queries: query id -> text for every query of ``run``.
        corpus: holds every document in the top ``k`` (fetched with ``corpus.get_many``).
        reranker: any :class:`Reranker`.
        k: depth to rerank; documents below it keep their first-stage order, below the
            reranked ones (see the module docstring).
        config: passed to ``reranker.score`` (a Matryoshka depth/width configuration).
        batch_tokens: padded-token budget of one forward batch (reranker default if ``None``).
        pairs_per_call: pairs gathered across queries before one ``score`` call.
        show_progress: a progress bar over queries (on stderr).

    Raises:
        RerankInputError: a run query missing from ``queries`` or a top-``k`` document
            missing from ``corpus`` (checked before any scoring).
        ConfigError: ``k`` or ``pairs_per_call`` below 1.
    """
    def score(pair_queries: list[str], pair_docs: list[Document]) -> list[Sequence[float]]:
        scores = reranker.score(pair_queries, pair_docs, config=config, batch_tokens=batch_tokens)
        if len(scores) != len(pair_docs) or getattr(scores, "ndim", 1) != 1:
            raise ConfigError(f"{type(reranker).__name__}.score must return one score per document "
                              "(request a single exit in config, or use rerank_run_exits)")
        return [scores]

    return _rerank(run, queries, corpus, score, 1, k, pairs_per_call, show_progress)[0]


def rerank_run_exits(
    run: Run,
    queries: Mapping[str, str],
    corpus: Corpus,
    reranker: MatryoshkaReranker,
    exits: Sequence[int],
    *,
    k: int = 100,
    config: Any = None,
    batch_tokens: int | None = None,
    pairs_per_call: int = 512,
    show_progress: bool = True,
) -> dict[int, Run]:
    """Rerank with several exit layers of a Matryoshka reranker at the cost of the deepest: ``{layer: Run}``.

    Every batch runs once, up to the deepest of ``exits``, and each exit's head scores it
    (:meth:`MatryoshkaReranker.score_exits`); ``config``'s width steps apply to every exit, so
    ``exits=[10, 20, 30], config="compress=8:0.5"`` gives the same runs as three
    :func:`rerank_run` calls with ``depth=10/20/30,compress=8:0.5``. Arguments, the ranking of
    documents below ``k`` and errors are those of :func:`rerank_run`.
    """
    layers = sorted(set(exits))
    if not layers:
        raise ConfigError("rerank_run_exits needs at least one exit layer")

    def score(pair_queries: list[str], pair_docs: list[Document]) -> list[Sequence[float]]:
        table = reranker.score_exits(pair_queries, pair_docs, layers, config=config, batch_tokens=batch_tokens)
        return [table[layer] for layer in layers]

    runs = _rerank(run, queries, corpus, score, len(layers), k, pairs_per_call, show_progress)
    return dict(zip(layers, runs, strict=True))


ScoreFn = Callable[[list[str], list[Document]], list[Sequence[float]]]


def _rerank(run: Run, queries: Mapping[str, str], corpus: Corpus, score: ScoreFn, outputs: int, k: int,
            pairs_per_call: int, show_progress: bool) -> list[Run]:
    """Rerank ``run`` with ``score``, which returns ``outputs`` score lists per call: one Run per list."""
    if k < 1:
        raise ConfigError(f"k (the reranking depth) must be at least 1, got {k}")
    if pairs_per_call < 1:
        raise ConfigError(f"pairs_per_call must be at least 1, got {pairs_per_call}")
    _check_ids(run, queries, corpus, k)
    results = [Run() for _ in range(outputs)]
    progress = None
    if show_progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(run), desc="reranking", unit="query")
    try:
        chunk: list[str] = []
        pending = 0
        for qid in run:
            chunk.append(qid)
            pending += min(k, len(run[qid]))
            if pending >= pairs_per_call:
                _rerank_chunk(chunk, run, queries, corpus, score, k, results)
                if progress is not None:
                    progress.update(len(chunk))
                chunk, pending = [], 0
        if chunk:
            _rerank_chunk(chunk, run, queries, corpus, score, k, results)
            if progress is not None:
                progress.update(len(chunk))
    finally:
        if progress is not None:
            progress.close()
    return results


def _check_ids(run: Run, queries: Mapping[str, str], corpus: Corpus, k: int) -> None:
    if len(run) == 0:
        raise RerankInputError("the run has no queries to rerank")
    missing_queries = [qid for qid in run if qid not in queries]
    if missing_queries:
        shown = ", ".join(map(repr, missing_queries[:5]))
        raise RerankInputError(f"{len(missing_queries)} run quer{'y' if len(missing_queries) == 1 else 'ies'} "
                               f"not in the queries: {shown} (fix: pass the queries file or split the run was made "
                               "from)")
    for qid in run:
        missing = [doc for doc in run.doc_ids(qid, k) if doc not in corpus]
        if missing:
            raise RerankInputError(f"query {qid!r}: {len(missing)} document(s) of the top {k} not in the corpus: "
                                   f"{', '.join(map(repr, missing[:5]))} (fix: use the corpus the run was made "
                                   "from)")


def _rerank_chunk(chunk: list[str], run: Run, queries: Mapping[str, str], corpus: Corpus, score: ScoreFn,
                  k: int, results: list[Run]) -> None:
    """Score the top-k pairs of several queries in one call and add their reranked lists to ``results``."""
    pair_queries: list[str] = []
    pair_docs: list[Document] = []
    for qid in chunk:
        docs = corpus.get_many(run.doc_ids(qid, k))
        pair_queries.extend([queries[qid]] * len(docs))
        pair_docs.extend(docs)
    tables = score(pair_queries, pair_docs) if pair_docs else [[] for _ in results]
    for scores, result in zip(tables, results, strict=True):
        start = 0
        for qid in chunk:
            head = run.doc_ids(qid, k)
            head_scores = [float(s) for s in scores[start:start + len(head)]]
            start += len(head)
            floor = min(head_scores, default=0.0)
            tail = [(doc, floor - rank) for rank, doc in enumerate(run.doc_ids(qid)[k:], 1)]
            result.add(qid, [*zip(head, head_scores, strict=True), *tail])


def detect_kind(name_or_path: str | Path) -> Literal["matryoshka", "pointwise"]:
    """``pointwise`` for a sequence-classification checkpoint or SEQ_CLS adapter, else ``matryoshka``."""
    path = Path(name_or_path)
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        task = json.loads(adapter_config.read_text(encoding="utf-8")).get("task_type")
        return "pointwise" if task == "SEQ_CLS" else "matryoshka"
    config_file = path / "config.json"
    if config_file.is_file():
        architectures = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or []
        if any(name.endswith("ForSequenceClassification") for name in architectures):
            return "pointwise"
    return "matryoshka"


def load_reranker(name_or_path: str | Path, *, kind: Kind = "auto", device: str | None = None,
                  dtype: str = "auto", **kwargs: Any) -> Reranker:
    """Load a reranker by model name or path.

    ``kind="auto"`` picks :class:`~nestrank.models.pointwise.PointwiseReranker` for a
    sequence-classification checkpoint or SEQ_CLS adapter (RankLLaMA layout) and
    ``MatryoshkaReranker`` otherwise (any Llama-family decoder, preset or checkpoint).
    Other keyword arguments go to the class's ``from_pretrained``.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown reranker kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "auto":
        kind = detect_kind(name_or_path)
    if kind == "pointwise":
        from nestrank.models.pointwise import PointwiseReranker

        return PointwiseReranker.from_pretrained(name_or_path, device=device, dtype=dtype, **kwargs)
    from nestrank.models.matryoshka import MatryoshkaReranker

    return MatryoshkaReranker.from_pretrained(name_or_path, device=device, dtype=dtype, **kwargs)
