"""Hard-negative mining: training groups from first-stage runs.

For each judged query, negatives are sampled from a rank window (``rank_window``) of a run (or of a blend
of runs, fused as the RepLLaMA paper blends BM25 and CoCondenser), leaving out every
document judged relevant (grade >= 1). Sampling is seeded per query (``seed`` and query
id), so the result does not depend on query order or on which other queries are mined.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nestrank.data import Corpus, Qrels, Run
from nestrank.data.groups import TrainingGroup, write_groups
from nestrank.errors import ConfigError

#: The default rank window: the top 100 of the run.
RANK_WINDOW = (0, 100)


@dataclass
class MiningStats:
    """What a mining pass did: groups made and queries skipped (with reasons)."""

    groups: int = 0
    no_positive: list[str] = field(default_factory=list)
    not_in_run: list[str] = field(default_factory=list)
    short: list[str] = field(default_factory=list)  # fewer candidates than negatives asked for

    def summary(self) -> str:
        """A one-line human summary."""
        return (f"{self.groups} groups; skipped {len(self.no_positive)} queries without a positive in the corpus "
                f"and {len(self.not_in_run)} missing from the run; {len(self.short)} got fewer negatives than asked")


def parse_rank_window(text: str) -> tuple[int, int]:
    """Parse a rank window ``"START:END"`` (e.g. ``"10:100"``) into ``(start, end)``.

    Candidates are the run's documents at 1-based ranks ``START+1 .. END`` (the Python
    slice ``[START:END]``): ``"0:100"`` is the top 100, ``"10:100"`` skips the top 10.
    """
    start_text, sep, end_text = text.partition(":")
    try:
        start, end = int(start_text), int(end_text)
    except ValueError:
        start = end = -1
    if not sep or start < 0 or end <= start:
        raise ConfigError(f"bad rank window {text!r}: write START:END with 0 <= START < END, e.g. 10:100 "
                          "(ranks START+1..END of the run)")
    return start, end


def _rank_window(rank_window: tuple[int, int], depth: tuple[int, int] | None, function: str) -> tuple[int, int]:
    """``rank_window``, or the value given under its deprecated name ``depth``."""
    if depth is None:
        return rank_window
    if rank_window != RANK_WINDOW:
        raise ConfigError(f"{function}: give rank_window only (depth is its deprecated name)")
    warnings.warn(f"{function}(depth=...) is deprecated; use rank_window=...", DeprecationWarning, stacklevel=3)
    return depth


def blend_runs(runs: Sequence[Run], weights: Sequence[float] | None = None, k: int | None = None) -> Run:
    """One run from several: reciprocal-rank fusion (weighted when ``weights`` is given) cut to the top ``k``;
    one run is returned as is."""
    if not runs:
        raise ConfigError("give at least one run to mine negatives from")
    if len(runs) == 1:
        if weights is not None and len(weights) != 1:
            raise ConfigError(f"{len(weights)} weights for 1 run: give one weight per run")
        return runs[0]
    from nestrank.retrieve.fusion import fuse

    return fuse(list(runs), method="rrf", weights=weights, k=k)


def sample_negatives(ranked: Sequence[str], positives: set[str], rank_window: tuple[int, int], count: int,
                     rng: random.Random) -> list[str]:
    """Up to ``count`` documents drawn without replacement from ``ranked[start:end]`` minus ``positives``.

    The sample keeps the run's rank order (best first).
    """
    start, end = rank_window
    candidates = [doc for doc in ranked[start:end] if doc not in positives]
    if len(candidates) <= count:
        return candidates
    chosen = sorted(rng.sample(range(len(candidates)), count))
    return [candidates[i] for i in chosen]


def mine_groups(run: Run, qrels: Qrels, queries: Mapping[str, str], corpus: Corpus, *,
                rank_window: tuple[int, int] = RANK_WINDOW, negatives: int = 15, seed: int = 0,
                stats: MiningStats | None = None, depth: tuple[int, int] | None = None) -> Iterator[TrainingGroup]:
    """Yield one :class:`TrainingGroup` per judged query that has a positive in the corpus and appears in ``run``.

    Positives are all documents judged >= 1 (and present in the corpus); negatives are
    :func:`sample_negatives` from the run's ``rank_window`` with a per-query seed
    ``f"{seed}:{query_id}"``. Pass a :class:`MiningStats` to collect the skipped queries.
    ``depth`` is the deprecated name of ``rank_window``.
    """
    rank_window = _rank_window(rank_window, depth, "mine_groups")
    if negatives < 1:
        raise ConfigError(f"negatives must be >= 1, got {negatives}")
    stats = stats if stats is not None else MiningStats()
    for qid in qrels:
        relevant = qrels.relevant(qid)
        positive_ids = sorted(d for d in relevant if d in corpus)
        if not positive_ids:
            stats.no_positive.append(qid)
            continue
        if qid not in run:
            stats.not_in_run.append(qid)
            continue
        rng = random.Random(f"{seed}:{qid}")
        negative_ids = sample_negatives(run.doc_ids(qid), relevant, rank_window, negatives, rng)
        if len(negative_ids) < negatives:
            stats.short.append(qid)
        stats.groups += 1
        yield TrainingGroup(queries[qid], corpus.get_many(positive_ids), corpus.get_many(negative_ids), qid)


def mine_to_file(out: str | Path, runs: Sequence[Run], qrels: Qrels, queries: Mapping[str, str], corpus: Corpus, *,
                 weights: Sequence[float] | None = None, rank_window: tuple[int, int] = RANK_WINDOW,
                 negatives: int = 15, seed: int = 0, fmt: str = "tevatron-passages",
                 depth: tuple[int, int] | None = None) -> MiningStats:
    """Blend ``runs``, mine groups for every judged query and write them to ``out`` atomically (``fmt``: a group format).

    ``depth`` is the deprecated name of ``rank_window``.
    """
    rank_window = _rank_window(rank_window, depth, "mine_to_file")
    stats = MiningStats()
    blended = blend_runs(runs, weights, k=rank_window[1])
    for source in runs:
        source.check_ids(corpus=corpus)
    write_groups(out, mine_groups(blended, qrels, queries, corpus, rank_window=rank_window, negatives=negatives,
                                  seed=seed, stats=stats), fmt=fmt)
    if stats.groups == 0:
        Path(out).unlink()
        raise ConfigError(f"no training group could be made ({stats.summary()}); check that the run and the qrels "
                          "come from the same dataset and split")
    return stats
