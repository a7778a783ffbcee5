"""Reranking runs: the second stage of the pipeline (first-stage ``Run`` -> reranked ``Run``).

:func:`rerank_run` rescores the top ``rerank_depth`` documents of every query with a
:class:`~nestrank.models.reranker.Reranker`. Documents ranked below ``rerank_depth`` by the
first stage are kept, in their first-stage order, *below* every reranked document: they get
synthetic scores ``min(reranked) - 1``, ``min(reranked) - 2``, ... (so deeper metrics such as
R@1000 still see them, and no tail document can overtake a reranked one). Tail scores carry no
meaning beyond that order.

Pairs of several queries are scored in one :meth:`Reranker.score` call (about
``pairs_per_call`` pairs), so length-sorted batching packs them across queries.
:func:`rerank_run_exits` reranks with several exits of a Matryoshka reranker in one pass.
With ``journal=PATH`` both record every finished chunk's scores as they go, and a later call
with the same journal resumes where an interrupted one stopped, with an identical result
(:mod:`nestrank.journal`).
:func:`load_reranker` builds a reranker from a model name for the CLI and scripts;
:func:`check_reranker_config` checks a configuration for a model before it is loaded.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

from nestrank.checks import check_corpus_arg, check_text_mapping
from nestrank.data.corpus import Corpus, Document
from nestrank.data.run import Run
from nestrank.errors import ArgumentTypeError, ConfigError
from nestrank.journal import ScoreJournal, chunk_inputs
from nestrank.models.reranker import Reranker, RerankInputError
from nestrank.models.settings import detect_kind

if TYPE_CHECKING:
    from nestrank.models.matryoshka import MatryoshkaReranker

Kind = Literal["auto", "matryoshka", "pointwise"]
KINDS: tuple[str, ...] = ("auto", "matryoshka", "pointwise")
P = ParamSpec("P")
T = TypeVar("T")
#: Candidates per query reranked when the caller does not say.
DEFAULT_RERANK_DEPTH = 100
#: Said with a wrong argument: the usual slip is the order of run, queries and corpus.
ORDER = "(arguments in another order? the order is run, queries, corpus, reranker)"

__all__ = ["DEFAULT_RERANK_DEPTH", "check_rerank_depth", "check_reranker_config", "detect_kind", "load_reranker",
           "rerank_run", "rerank_run_exits"]


def _k_renamed(function: Callable[P, T]) -> Callable[P, T]:
    """Accept ``k=``, the deprecated name of ``rerank_depth=``, with a ``DeprecationWarning``."""
    @functools.wraps(function)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        if "k" in kwargs:
            if "rerank_depth" in kwargs:
                raise ConfigError("k= is the deprecated name of rerank_depth=: pass rerank_depth= only")
            warnings.warn("k= is deprecated: pass rerank_depth= (first-stage candidates reranked per query)",
                          DeprecationWarning, stacklevel=2)
            kwargs["rerank_depth"] = kwargs.pop("k")
        return function(*args, **kwargs)

    return call


@_k_renamed
def rerank_run(
    run: Run,
    queries: Mapping[str, str],
    corpus: Corpus,
    reranker: Reranker,
    *,
    rerank_depth: int = DEFAULT_RERANK_DEPTH,
    config: Any = None,
    batch_tokens: int | None = None,
    pairs_per_call: int = 512,
    show_progress: bool = True,
    journal: str | Path | None = None,
) -> Run:
    """Rerank the top ``rerank_depth`` documents of each query of ``run``; returns a new :class:`Run`.

    Args:
        run: first-stage results.
        queries: query id -> text for every query of ``run``.
        corpus: holds every document in the top ``rerank_depth`` (fetched with ``corpus.get_many``).
        reranker: any :class:`Reranker`.
        rerank_depth: first-stage candidates reranked per query; documents below it keep their
            first-stage order, below the reranked ones (see the module docstring).
        config: passed to ``reranker.score`` (a Matryoshka configuration or profile name).
        batch_tokens: padded-token budget of one forward batch (reranker default if ``None``).
        pairs_per_call: pairs gathered across queries before one ``score`` call.
        show_progress: a progress bar over queries (on stderr).
        journal: a file recording every finished chunk's scores (fsynced as they finish); a
            call with the same journal, run, queries, corpus, reranker and settings takes the
            finished chunks from it and returns what an uninterrupted call returns. Anything
            else that changed starts the journal over. The file is kept: delete it once the
            result is saved (:mod:`nestrank.journal`).

    ``k=`` is accepted as a deprecated alias of ``rerank_depth`` (with a ``DeprecationWarning``).

    Raises:
        RerankInputError: a run query missing from ``queries`` or a top-``rerank_depth``
            document missing from ``corpus`` (checked before any scoring).
        ConfigError: ``rerank_depth`` or ``pairs_per_call`` below 1.
    """
    if not isinstance(reranker, Reranker):
        raise ArgumentTypeError(f"reranker must be a nestrank Reranker (e.g. load_reranker(name)), got "
                                f"{type(reranker).__name__} {ORDER}")

    def score(pair_queries: list[str], pair_docs: list[Document]) -> list[Sequence[float]]:
        scores = reranker.score(pair_queries, pair_docs, config=config, batch_tokens=batch_tokens)
        if len(scores) != len(pair_docs) or getattr(scores, "ndim", 1) != 1:
            raise ConfigError(f"{type(reranker).__name__}.score must return one score per document "
                              "(request a single exit in config, or use rerank_run_exits)")
        return [scores]

    _check_arguments(run, queries, corpus, rerank_depth, pairs_per_call)
    settings = {"config": repr(config), "batch_tokens": batch_tokens, "outputs": "single"}
    with _journal(journal, reranker, settings, run, rerank_depth, pairs_per_call) as book:
        return _rerank(run, queries, corpus, score, 1, rerank_depth, pairs_per_call, show_progress, book)[0]


@_k_renamed
def rerank_run_exits(
    run: Run,
    queries: Mapping[str, str],
    corpus: Corpus,
    reranker: MatryoshkaReranker,
    exits: Sequence[int],
    *,
    rerank_depth: int = DEFAULT_RERANK_DEPTH,
    config: Any = None, batch_tokens: int | None = None,
    pairs_per_call: int = 512,
    show_progress: bool = True,
    journal: str | Path | None = None,
) -> dict[int, Run]:
    """Rerank with several exit layers of a Matryoshka reranker at the cost of the deepest: ``{layer: Run}``.

    Every batch runs once, up to the deepest of ``exits``, and each exit's head scores it
    (:meth:`MatryoshkaReranker.score_exits`); ``config``'s width steps apply to every exit, so
    ``exits=[10, 20, 30], config="compress=8:0.5"`` gives the same runs as three
    :func:`rerank_run` calls with ``depth=10/20/30,compress=8:0.5``. Arguments, the ranking of
    documents below ``rerank_depth``, the journal and errors are those of :func:`rerank_run`.
    """
    if not callable(getattr(reranker, "score_exits", None)):
        raise ArgumentTypeError(f"reranker must be a MatryoshkaReranker (it scores several exits), got "
                                f"{type(reranker).__name__}")
    if isinstance(exits, str) or not all(isinstance(e, int) and not isinstance(e, bool) for e in exits):
        raise ArgumentTypeError(f"exits must be a list of layer numbers, got {exits!r}")
    layers = sorted(set(exits))
    if not layers:
        raise ConfigError("rerank_run_exits needs at least one exit layer")

    def score(pair_queries: list[str], pair_docs: list[Document]) -> list[Sequence[float]]:
        table = reranker.score_exits(pair_queries, pair_docs, layers, config=config, batch_tokens=batch_tokens)
        return [table[layer] for layer in layers]

    _check_arguments(run, queries, corpus, rerank_depth, pairs_per_call)
    settings = {"config": repr(config), "batch_tokens": batch_tokens, "outputs": layers}
    with _journal(journal, reranker, settings, run, rerank_depth, pairs_per_call) as book:
        runs = _rerank(run, queries, corpus, score, len(layers), rerank_depth, pairs_per_call, show_progress, book)
    return dict(zip(layers, runs, strict=True))


def check_rerank_depth(rerank_depth: object) -> int:
    """``rerank_depth`` when it is a positive integer; else :class:`ConfigError`."""
    if isinstance(rerank_depth, bool) or not isinstance(rerank_depth, int) or rerank_depth < 1:
        raise ConfigError(f"rerank_depth (first-stage candidates reranked per query) must be an integer of at least "
                          f"1, got {rerank_depth!r}")
    return rerank_depth


ScoreFn = Callable[[list[str], list[Document]], list[Sequence[float]]]


def _rerank(run: Run, queries: Mapping[str, str], corpus: Corpus, score: ScoreFn, outputs: int, depth: int,
            pairs_per_call: int, show_progress: bool, journal: ScoreJournal | None) -> list[Run]:
    """Rerank ``run`` with ``score``, which returns ``outputs`` score lists per call: one Run per list."""
    _check_ids(run, queries, corpus, depth)
    results = [Run() for _ in range(outputs)]
    progress = None
    if show_progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(run), desc="reranking", unit="query")
    try:
        for chunk in _chunks(run, depth, pairs_per_call):
            _rerank_chunk(chunk, run, queries, corpus, score, depth, results, journal)
            if progress is not None:
                progress.update(len(chunk))
    finally:
        if progress is not None:
            progress.close()
    return results


def _chunks(run: Run, depth: int, pairs_per_call: int) -> list[list[str]]:
    """The queries scored together: consecutive queries until they hold ``pairs_per_call`` pairs (always cut alike)."""
    chunks: list[list[str]] = [[]]
    pending = 0
    for qid in run:
        chunks[-1].append(qid)
        pending += min(depth, len(run[qid]))
        if pending >= pairs_per_call:
            chunks.append([])
            pending = 0
    return [chunk for chunk in chunks if chunk]


def _check_arguments(run: Run, queries: Mapping[str, str], corpus: Corpus, depth: int, pairs_per_call: int) -> None:
    """Types and ranges of :func:`rerank_run`'s arguments, naming the one that is wrong (and the order)."""
    if not isinstance(run, Run):
        raise ArgumentTypeError(f"run must be a nestrank.data.Run (e.g. Run.read(path) or an index's search()), got "
                                f"{type(run).__name__} {ORDER}")
    check_text_mapping(queries, "queries", "{query_id: text}", ORDER.strip("()"))
    check_corpus_arg(corpus, hint=ORDER.strip("()"))
    check_rerank_depth(depth)
    if pairs_per_call < 1:
        raise ConfigError(f"pairs_per_call must be at least 1, got {pairs_per_call}")


@contextlib.contextmanager
def _journal(path: str | Path | None, reranker: Reranker, settings: dict[str, Any], run: Run, depth: int,
             pairs_per_call: int) -> Iterator[ScoreJournal | None]:
    """The journal at ``path`` for this call (``None`` without a path), checked against everything scores depend on.

    Checks the arguments first (:func:`_check_arguments`), journal or not.
    """
    if path is None:
        yield None
        return
    import hashlib
    import json

    from nestrank.journal import reranker_fingerprint

    digest = hashlib.sha256(json.dumps({"reranker": reranker_fingerprint(reranker), **settings}).encode())
    for chunk in _chunks(run, depth, pairs_per_call):
        digest.update(json.dumps([[qid, run.doc_ids(qid, depth)] for qid in chunk]).encode())
    with ScoreJournal(path, digest.hexdigest()) as journal:
        yield journal


def _check_ids(run: Run, queries: Mapping[str, str], corpus: Corpus, depth: int) -> None:
    if len(run) == 0:
        raise RerankInputError("the run has no queries to rerank")
    missing_queries = [qid for qid in run if qid not in queries]
    if missing_queries:
        shown = ", ".join(map(repr, missing_queries[:5]))
        raise RerankInputError(f"{len(missing_queries)} run quer{'y' if len(missing_queries) == 1 else 'ies'} "
                               f"not in the queries: {shown} (fix: pass the queries file or split the run was made "
                               "from)")
    for qid in run:
        missing = [doc for doc in run.doc_ids(qid, depth) if doc not in corpus]
        if missing:
            raise RerankInputError(f"query {qid!r}: {len(missing)} document(s) of the top {depth} not in the corpus: "
                                   f"{', '.join(map(repr, missing[:5]))} (fix: use the corpus the run was made "
                                   "from)")


def _rerank_chunk(chunk: list[str], run: Run, queries: Mapping[str, str], corpus: Corpus, score: ScoreFn,
                  depth: int, results: list[Run], journal: ScoreJournal | None) -> None:
    """Score the top-``depth`` pairs of several queries in one call and add their reranked lists to ``results``."""
    pair_queries: list[str] = []
    pair_docs: list[Document] = []
    for qid in chunk:
        docs = corpus.get_many(run.doc_ids(qid, depth))
        pair_queries.extend([queries[qid]] * len(docs))
        pair_docs.extend(docs)
    inputs = chunk_inputs(pair_queries, pair_docs) if journal is not None else ""
    tables = journal.get(inputs) if journal is not None else None
    if tables is None:
        tables = score(pair_queries, pair_docs) if pair_docs else [[] for _ in results]
        if journal is not None:
            journal.add(inputs, tables)
    for scores, result in zip(tables, results, strict=True):
        start = 0
        for qid in chunk:
            head = run.doc_ids(qid, depth)
            head_scores = [float(s) for s in scores[start:start + len(head)]]
            start += len(head)
            floor = min(head_scores, default=0.0)
            tail = [(doc, floor - rank) for rank, doc in enumerate(run.doc_ids(qid)[depth:], 1)]
            result.add(qid, [*zip(head, head_scores, strict=True), *tail])


def load_reranker(name_or_path: str | Path, *, kind: Kind = "auto", device: str | None = None,
                  dtype: str = "auto", **kwargs: Any) -> Reranker:
    """Load a reranker by model name or path.

    ``kind="auto"`` picks :class:`~nestrank.models.pointwise.PointwiseReranker` for a
    sequence-classification checkpoint or SEQ_CLS adapter (RankLLaMA layout) and
    ``MatryoshkaReranker`` otherwise (any Llama-family decoder, preset or checkpoint; see
    :func:`nestrank.models.settings.detect_kind`). Other keyword arguments go to the class's
    ``from_pretrained``.
    """
    if _reranker_kind(name_or_path, kind) == "pointwise":
        from nestrank.models.pointwise import PointwiseReranker

        return PointwiseReranker.from_pretrained(name_or_path, device=device, dtype=dtype, **kwargs)
    from nestrank.models.matryoshka import MatryoshkaReranker

    return MatryoshkaReranker.from_pretrained(name_or_path, device=device, dtype=dtype, **kwargs)


def check_reranker_config(name_or_path: str | Path, config: Any, *, kind: Kind = "auto") -> None:
    """Check ``config`` for the reranker :func:`load_reranker` would build, without loading it.

    A Matryoshka configuration string or profile name is parsed; profile names are looked up
    in the model directory's ``profiles.json`` (``full`` and ``light`` always exist) and, when
    a local ``config.json`` gives the layer count, the layers are checked too. A pointwise
    reranker takes no configuration.

    Raises:
        ConfigError: what scoring with ``config`` would raise once the model is loaded.
    """
    if _reranker_kind(name_or_path, kind) == "pointwise":
        from nestrank.models.pointwise import check_no_config

        check_no_config(config)
        return
    from nestrank.models.matryoshka.checkpoint import layer_count
    from nestrank.models.matryoshka.profiles import check_config
    from nestrank.models.presets import local_path

    path = local_path(name_or_path)
    check_config(config, path if path.is_dir() else None, layer_count(path))


def _reranker_kind(name_or_path: str | Path, kind: str) -> str:
    """``kind``, or for ``auto`` the kind of reranker ``name_or_path`` holds."""
    if kind not in KINDS:
        raise ConfigError(f"unknown reranker kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    found = detect_kind(name_or_path)
    if found not in KINDS:
        raise ConfigError(f"{name_or_path} is a {found} checkpoint, not a reranker (fix: pass a reranker checkpoint "
                          "or a causal LM backbone)")
    return found
