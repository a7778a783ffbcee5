"""Choosing a Matryoshka reranker's profiles on validation queries (the paper's section 3.1.4, and beyond).

:func:`tune` scores the first stage's candidates of the validation queries once per width,
reading every exit depth of that width from the same pass
(:func:`nestrank.rerank.rerank_run_exits`; :func:`plan_passes` and :func:`rerank_configs` plan and
run such passes for any list of configurations), then evaluates the grid of exit depths x widths x
reranking depths x interpolation weights, measures the real cost of each configuration on
this machine (milliseconds per pair, timed on a fixed sample of pairs) and its analytic FLOPs,
and names the ``full``, ``balanced`` and ``light`` points of the quality/cost Pareto frontier
(:mod:`nestrank.pipeline.frontier`). It writes ``profiles.json`` (read by the reranker, so the
names work wherever a configuration string does), ``tune.csv`` and ``tune.png``.

Scores are cached in ``work_dir`` per width and chunk of queries, under a fingerprint of the
model, the candidates and the passage limits: an interrupted tuning resumes where it stopped,
and a changed model or first stage starts a fresh cache instead of reusing stale scores.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nestrank.data import Corpus, Qrels, Queries, Run
from nestrank.errors import ConfigError
from nestrank.integrity import CHECKSUMS_FILE, write_checksums
from nestrank.pipeline.frontier import (
    TunePoint,
    choose_profiles,
    default_tolerances,
    plot_points,
    shares_kept,
    write_points_csv,
)
from nestrank.pipeline.interpolate import WEIGHT_GRID, interpolate

__all__ = ["TuneGrid", "TuneResult", "default_grid", "plan_passes", "rerank_configs", "tune", "validation_queries"]

CHUNK_QUERIES = 16
VALIDATION_FILE = "validation_queries.txt"  # written by the trainers into the output and model directories
CSV_FILE = "tune.csv"
PNG_FILE = "tune.png"


@dataclass
class TuneGrid:
    """What :func:`tune` tries: exit ``depths`` x ``widths`` (compress values, ``""`` = full width) x
    ``rerank_depths`` x interpolation ``weights``."""

    depths: list[int]
    widths: list[str]
    rerank_depths: list[int] = field(default_factory=lambda: [10, 20, 30])
    weights: list[float] = field(default_factory=lambda: list(WEIGHT_GRID))

    def configs(self, num_layers: int) -> list[tuple[str, int, str]]:
        """``(width, depth, configuration string)`` for every valid pair (compression before the exit)."""
        from nestrank.models import parse_config

        out = []
        for width in self.widths:
            for depth in self.depths:
                parts = ([] if depth == num_layers else [f"depth={depth}"]) + ([f"compress={width}"] if width else [])
                config = ",".join(parts)
                try:
                    parse_config(config).validate(num_layers)
                except ConfigError:
                    continue  # a compression at or after this exit
                out.append((width, depth, config))
        return out


def plan_passes(configs: Iterable[str | None], num_layers: int) -> dict[str, list[int]]:
    """One reranking pass per width: ``{width: exit depths}`` scoring every configuration of ``configs``.

    The width is a configuration without its depth (``"full"``, ``"compress=8:0.5"``): give it as
    ``config`` and the depths as ``exits`` to :func:`nestrank.rerank.rerank_run_exits`, which
    scores them all at the cost of the deepest. Configurations of the same width share a pass.

    Raises:
        ConfigError: a configuration that does not fit a model of ``num_layers`` layers, or that
            has several exits.
    """
    from nestrank.models.matryoshka.config import MatryoshkaConfig, parse_config

    passes: dict[str, set[int]] = {}
    for config in configs:
        parsed = parse_config(config)
        if len(parsed.exits) > 1:
            raise ConfigError(f"plan_passes takes configurations of one exit each, got {config!r}")
        width = str(MatryoshkaConfig(compress=parsed.compress, passage_tokens=parsed.passage_tokens))
        passes.setdefault(width, set()).add(parsed.validate(num_layers)[-1])
    return {width: sorted(depths) for width, depths in passes.items()}


def rerank_configs(reranker: Any, run: Run, queries: Mapping[str, str], corpus: Corpus, configs: Sequence[str | None],
                   *, rerank_depth: int, batch_tokens: int | None = None, show_progress: bool = False
                   ) -> dict[str | None, Run]:
    """``{config: run reranked under it}`` for every configuration, in one pass per width (:func:`plan_passes`).

    The runs are those of one :func:`~nestrank.rerank.rerank_run` per configuration, at the cost
    of the deepest exit of each width.
    """
    from nestrank.rerank import rerank_run_exits

    passes = {width: rerank_run_exits(run, queries, corpus, reranker, exits, rerank_depth=rerank_depth,
                                      config=None if width == "full" else width, batch_tokens=batch_tokens,
                                      show_progress=show_progress)
              for width, exits in plan_passes(configs, reranker.num_layers).items()}
    out = {}
    for config in configs:
        ((width, (depth,)),) = plan_passes([config], reranker.num_layers).items()
        out[config] = passes[width][depth]
    return out


def default_grid(num_layers: int, trained_exits: Sequence[int] | None = None) -> TuneGrid:
    """Exits from a third of the depth to the last in steps of a sixth (or, given a checkpoint's
    ``trained_exits``, those of them from a third of the depth on: an untrained exit's head scores at
    chance); full width, 2x and 4x at a quarter, 2x at an eighth."""
    first = max(1, math.ceil(num_layers / 3))
    step = max(1, math.floor(num_layers / 6 + 0.5))
    if trained_exits:
        depths = sorted({d for d in trained_exits if d >= first} | {num_layers})
    else:
        depths = sorted({*range(first, num_layers + 1, step), num_layers})
    quarter = max(1, math.floor(num_layers / 4 + 0.5))
    eighth = max(1, quarter // 2)
    widths = list(dict.fromkeys(["", f"{quarter}:0.5", f"{quarter}:0.25", f"{eighth}:0.5"]))
    return TuneGrid(depths, widths)


@dataclass
class TuneResult:
    """Every point tried, the chosen ones by profile name, the files written and the first stage's quality."""

    points: list[TunePoint]
    chosen: dict[str, TunePoint]
    files: dict[str, Path]
    baseline: float
    metric: str

    @property
    def gain_kept(self) -> dict[str, float | None]:
        """The share of ``full``'s gain over the first stage that each chosen profile keeps (4 decimals)."""
        return shares_kept(self.chosen, self.baseline)


def tune(reranker: Any, candidates: Run, queries: Mapping[str, str], qrels: Qrels, corpus: Corpus, *,
         out_dir: str | Path, work_dir: str | Path, model_id: str, grid: TuneGrid | None = None,
         metric: str = "nDCG@10", tolerances: Mapping[str, float] | None = None, basis: str = "gain",
         timing_pairs: int = 32, norm: str = "minmax", show_progress: bool = False, log: Any = None) -> TuneResult:
    """Choose and write the profiles of ``reranker`` from ``candidates`` of validation ``queries``.

    Args:
        reranker: a :class:`~nestrank.models.MatryoshkaReranker`.
        candidates: first-stage runs of the validation queries (at least the largest reranking depth deep).
        queries, qrels: the validation queries and their judgements (never test ones).
        corpus: the documents of ``candidates``.
        out_dir: where ``profiles.json``, ``tune.csv`` and ``tune.png`` go (the model directory).
        work_dir: score and timing cache (resumable).
        model_id: identifies the model in the cache fingerprint (its path or name).
        grid: what to try (default :func:`default_grid`).
        tolerances: the share of full's gain over the first stage (``basis="gain"``, default 15% / 35%) or of
            its quality (``basis="quality"``, default 1% / 3%) that ``balanced`` and ``light`` may give up.
        timing_pairs: pairs timed per configuration; 0 = no timing (cost = relative FLOPs).
        log: a ``print``-like callable for progress lines.
    """
    from nestrank.evaluate import evaluate
    from nestrank.models import Profile, write_profiles
    from nestrank.pipeline.cost import flops_ratio, pair_shapes, run_pairs

    say = log or (lambda *_: None)
    grid = grid or default_grid(reranker.num_layers)
    _check_inputs(candidates, queries, qrels, grid)
    qids = sorted(q for q in candidates if q in qrels)
    candidates = Run({q: candidates[q] for q in qids}).top(max(grid.rerank_depths))
    qrels = Qrels({q: qrels[q] for q in qids})
    baseline = evaluate(candidates, qrels, [metric])[metric]
    cache = Path(work_dir) / _fingerprint(reranker, candidates, model_id)
    configs = grid.configs(reranker.num_layers)
    scores = _score_all(reranker, candidates, queries, corpus, configs, cache, say, show_progress)
    pairs = run_pairs(candidates, queries, corpus)
    shapes = pair_shapes(reranker, pairs)
    timings = _timings(reranker, pairs[:timing_pairs], [c for _, _, c in configs], cache, say) if timing_pairs else {}
    points = []
    for width, depth, config in configs:
        ratio = flops_ratio(reranker, config, shapes) or 1.0
        for rd in grid.rerank_depths:
            head = Run({q: [(d, scores[(width, depth)][q][d]) for d in candidates.doc_ids(q, rd)] for q in qids})
            for weight in grid.weights:
                quality = evaluate(interpolate(candidates, head, weight, rd, norm), qrels, [metric])[metric]
                ms = timings.get(config)
                points.append(TunePoint(config, rd, weight, round(quality, 5), round(ratio, 5), ms,
                                        round(rd * (ms if ms is not None else ratio), 5)))
    tolerances = dict(default_tolerances(basis) if tolerances is None else tolerances)
    chosen = choose_profiles(points, tolerances, basis=basis, baseline=baseline)
    out_dir = Path(out_dir)
    profiles = {name: Profile(name, p.config, p.rerank_depth, p.weight, p.flops_ratio, p.ms_per_pair,
                              {metric: p.quality}) for name, p in chosen.items()}
    cost_label = "reranking ms per query (measured)" if timings else "relative FLOPs per query (rerank depth x ratio)"
    tuning = {"metric": metric, "queries": len(qids), "baseline": round(baseline, 5), "cost": cost_label,
              "tolerances": tolerances, "tolerance_basis": basis,
              "gain_kept": shares_kept(chosen, baseline), "grid": grid.__dict__, "model": model_id, "timing_pairs": timing_pairs}
    files = {"profiles": write_profiles(out_dir, profiles, tuning),
             "csv": write_points_csv(points, chosen, out_dir / CSV_FILE),
             "png": plot_points(points, chosen, out_dir / PNG_FILE, metric=metric, cost_label=cost_label,
                                baseline=baseline, title=f"{model_id}: {len(qids)} validation queries")}
    if (Path(out_dir) / CHECKSUMS_FILE).is_file():  # a checkpoint that verifies itself: record the new files too
        write_checksums(out_dir)
    return TuneResult(points, chosen, files, baseline, metric)


def validation_queries(dataset: str | Path | None, model_dir: Path | None, file: Path | None, split: str = "train",
                       holdout: float = 0.1, seed: int = 0) -> tuple[Any, Queries, Qrels, str]:
    """The dataset and the validation queries and qrels to tune on, and where their ids came from.

    The ids come from ``file``, else the model directory's ``validation_queries.txt`` (the
    training queries its trainer held out), else a seeded ``holdout`` fraction of ``split``'s
    judged queries. Ids judged in the ``test`` split are refused.
    """
    from nestrank.data import Dataset
    from nestrank.data.download import resolve_dataset
    from nestrank.train.batches import holdout as carve

    if dataset is None:
        raise ConfigError("tune needs --dataset (the corpus, queries and qrels of the validation queries)")
    ds = Dataset.open(resolve_dataset(str(dataset)))
    judged = ds.qrels(split)
    if file is None and model_dir is not None and (model_dir / VALIDATION_FILE).is_file():
        file = model_dir / VALIDATION_FILE
    if file is not None:
        if not Path(file).is_file():
            raise ConfigError(f"validation query file {file} not found")
        ids = Path(file).read_text(encoding="utf-8").split()
        source = f"ids from {file}, judged in {split}"
    else:
        ids = sorted(carve(list(judged), holdout, seed))
        source = (f"a seeded {holdout:.0%} of the {split} queries (no {VALIDATION_FILE} in the model: if it trained "
                  "on them, pass --validation-queries)")
    if not ids:
        raise ConfigError(f"no validation queries ({source})")
    unjudged = [q for q in ids if q not in judged]
    if unjudged:
        raise ConfigError(f"{len(unjudged)} validation queries have no judgements in split {split!r}, e.g. "
                          f"{unjudged[0]!r} (fix: --split names the split they come from)")
    if "test" in ds.splits and split != "test":
        leaked = [q for q in ids if q in ds.qrels("test")]
        if leaked:
            raise ConfigError(f"{len(leaked)} validation queries are test queries, e.g. {leaked[0]!r}: tuning on "
                              "them would leak into every test figure")
    return ds, ds.queries.subset(set(ids)), Qrels({q: judged[q] for q in ids}), source


def _check_inputs(candidates: Run, queries: Mapping[str, str], qrels: Qrels, grid: TuneGrid) -> None:
    judged = [q for q in candidates if q in qrels]
    if not judged:
        raise ConfigError("tune: none of the candidate run's queries has judgements (fix: validation queries with qrels)")
    missing = [q for q in judged if q not in queries]
    if missing:
        raise ConfigError(f"tune: {len(missing)} candidate queries have no text, e.g. {missing[0]!r}")
    if not grid.depths or not grid.widths or not grid.rerank_depths or not grid.weights:
        raise ConfigError("tune: the grid needs at least one depth, width, reranking depth and weight")
    if any(rd < 1 for rd in grid.rerank_depths) or any(not 0 <= w <= 1 for w in grid.weights):
        raise ConfigError(f"tune: reranking depths must be >= 1 and weights in [0, 1], got {grid.rerank_depths} and "
                          f"{grid.weights}")


def _fingerprint(reranker: Any, candidates: Run, model_id: str) -> str:
    """A short hash of what the cached scores depend on: model files, candidates and passage limits."""
    digest = hashlib.sha256()
    digest.update(json.dumps([model_id, reranker.max_passage_tokens, reranker.max_query_tokens]).encode())
    model = Path(model_id)
    if model.is_dir():
        for path in sorted(p for p in model.rglob("*") if p.is_file() and p.suffix == ".safetensors"):
            stat = path.stat()
            digest.update(f"{path.relative_to(model)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    for qid in candidates:
        digest.update(f"{qid}\t{' '.join(candidates.doc_ids(qid))}\n".encode())
    return digest.hexdigest()[:16]


def _score_all(reranker: Any, candidates: Run, queries: Mapping[str, str], corpus: Corpus,
               configs: Sequence[tuple[str, int, str]], cache: Path, say: Any, show_progress: bool
               ) -> dict[tuple[str, int], dict[str, dict[str, float]]]:
    """``{(width, depth): {qid: {doc: score}}}``: one pass per width and chunk, cached as JSON."""
    from nestrank.files import atomic_write
    from nestrank.rerank import rerank_run_exits

    depth_of = max(len(candidates[q]) for q in candidates)
    widths: dict[str, list[int]] = {}
    for width, depth, _ in configs:
        widths.setdefault(width, []).append(depth)
    qids = list(candidates)
    scores: dict[tuple[str, int], dict[str, dict[str, float]]] = {}
    for width, depths in widths.items():
        folder = cache / ("full-width" if not width else "compress-" + width.replace(":", "_").replace(";", "+"))
        for start in range(0, len(qids), CHUNK_QUERIES):
            chunk = qids[start:start + CHUNK_QUERIES]
            path = folder / f"chunk-{start // CHUNK_QUERIES:05d}.json"
            if not path.is_file():
                clock = time.perf_counter()
                runs = rerank_run_exits(Run({q: candidates[q] for q in chunk}), queries, corpus, reranker, depths,
                                        rerank_depth=depth_of, config=f"compress={width}" if width else None,
                                        show_progress=show_progress)
                record = {str(d): {q: dict(runs[d][q][:len(candidates[q])]) for q in chunk} for d in depths}
                with atomic_write(path) as handle:
                    json.dump(record, handle)
                say(f"tune: width {width or 'full'}, queries {start + 1}-{start + len(chunk)} of {len(qids)} "
                    f"scored in {time.perf_counter() - clock:.1f}s")
            record = json.loads(path.read_text(encoding="utf-8"))
            for depth in depths:
                scores.setdefault((width, depth), {}).update(record[str(depth)])
    return scores


def _timings(reranker: Any, pairs: Sequence[tuple[str, Any]], configs: Sequence[str], cache: Path, say: Any
             ) -> dict[str, float]:
    """Measured milliseconds per pair of every configuration on ``pairs`` (best of two runs, after a warm-up)."""
    from nestrank.files import atomic_write

    path = cache / "timing.json"
    known: dict[str, float] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    queries = [q for q, _ in pairs]
    docs = [d for _, d in pairs]
    if any(c not in known for c in configs):
        reranker.score(queries[:4], docs[:4])  # warm-up: first-call allocations
    for config in configs:
        if config in known:
            continue
        best = math.inf
        for _ in range(2):
            clock = time.perf_counter()
            reranker.score(queries, docs, config=config or None)
            best = min(best, time.perf_counter() - clock)
        known[config] = round(1000 * best / len(pairs), 3)
        say(f"tune: {config or 'full'} {known[config]:.1f} ms/pair")
        with atomic_write(path) as handle:
            json.dump(known, handle, indent=1)
    return known
