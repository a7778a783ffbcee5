"""One multi-stage pipeline: first stage -> reranker (at a chosen cost) -> interpolation -> Run, with its costs.

Build one from a TOML file or in Python::

    from nestrank.pipeline import Pipeline

    pipeline = Pipeline.from_config("pipelines/scifact-hybrid-light.toml", dataset="../shared/data/scifact")
    result = pipeline.search(queries)               # a PipelineResult
    result.run                                      # the final Run
    result.summary()                                # per-stage wall time, pairs scored, FLOPs ratio
    pipeline.ask("what causes scurvy")              # ranked hits with titles, for one ad-hoc query

:meth:`PipelineResult.write` writes the run as a TREC file and its costs next to it
(``RUN.meta.json``), which ``nestrank evaluate`` shows as cost columns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nestrank.checks import check_k, check_text_mapping
from nestrank.data import Corpus, Run
from nestrank.errors import ArgumentTypeError, ConfigError
from nestrank.pipeline.config import PipelineConfig, load_pipeline_config
from nestrank.pipeline.first_stage import FirstStage
from nestrank.pipeline.rerank_stage import RerankStage
from nestrank.pipeline.stats import StageStats

__all__ = ["META_SUFFIX", "Hit", "Pipeline", "PipelineResult", "StageStats", "meta_path", "read_meta"]

META_SUFFIX = ".meta.json"


@dataclass
class PipelineResult:
    """The final run, the first stage's candidates and every stage's :class:`StageStats`."""

    run: Run
    candidates: Run
    stages: list[StageStats]
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Totals over the stages: ``queries``, ``seconds``, ``ms_per_query``, ``pairs``, ``pairs_per_s``, ``flops_ratio``."""
        queries = len(self.run)
        seconds = sum(stage.seconds for stage in self.stages)
        rerank = [stage for stage in self.stages if stage.pairs]
        pairs = sum(stage.pairs for stage in rerank)
        rerank_seconds = sum(stage.seconds for stage in rerank)
        ratio = next((stage.flops_ratio for stage in rerank if stage.flops_ratio is not None), None)
        return {"queries": queries, "seconds": round(seconds, 3),
                "ms_per_query": round(1000 * seconds / queries, 2) if queries else None,
                "pairs": pairs, "pairs_per_s": round(pairs / rerank_seconds, 2) if rerank_seconds else None,
                "flops_ratio": None if ratio is None else round(ratio, 4)}

    def to_dict(self) -> dict[str, Any]:
        """Summary, stages and pipeline settings as plain data (the ``RUN.meta.json`` content)."""
        return {"summary": self.summary(), "stages": [asdict(stage) for stage in self.stages],
                "pipeline": self.config}

    def write(self, path: str | Path, tag: str = "nestrank-pipeline") -> Path:
        """Write the run (TREC) to ``path`` and its costs to ``path + ".meta.json"``; returns ``path``."""
        from nestrank.files import atomic_write

        path = Path(path)
        self.run.write_trec(path, tag=tag)
        with atomic_write(meta_path(path)) as handle:
            handle.write(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


@dataclass
class Hit:
    """One ranked document of :meth:`Pipeline.ask`."""

    doc_id: str
    score: float
    title: str
    text: str


class Pipeline:
    """A first stage, an optional :class:`RerankStage` and the corpus they read.

    Build it with :meth:`from_config`, or from loaded parts.
    """

    def __init__(self, first_stage: FirstStage, corpus: Corpus, rerank: RerankStage | None = None,
                 config: PipelineConfig | None = None) -> None:
        self.first_stage = first_stage
        self.corpus = corpus
        self.rerank = rerank
        self.config = config or PipelineConfig(first_stage=first_stage.section)

    @classmethod
    def from_config(cls, config: PipelineConfig | str | Path, *, dataset: str | Path | None = None,
                    corpus: Corpus | None = None, overrides: dict[str, Any] | None = None,
                    progress: bool = False) -> Pipeline:
        """Load the index and reranker a pipeline config names.

        ``config`` is a :class:`PipelineConfig` or a TOML path (with ``overrides``,
        ``{"section.key": value}``). The corpus is ``corpus``, else the one of ``dataset``,
        else of the file's ``data.dataset``.
        """
        if not isinstance(config, PipelineConfig):
            config = load_pipeline_config(config, overrides)
        config.validate()
        corpus = corpus if corpus is not None else _open_corpus(dataset or config.data.dataset)
        first = FirstStage.open(config.first_stage, corpus, progress=progress)
        rerank = RerankStage.load(config.reranker) if config.reranker.model else None
        return cls(first, corpus, rerank, config)

    def search(self, queries: Mapping[str, str], *, show_progress: bool = False) -> PipelineResult:
        """Run every stage over ``{query_id: text}``; returns the final run with the costs of each stage."""
        check_text_mapping(queries, "queries", "{query_id: text}", "for one query, use ask(text)")
        if not queries:
            raise ConfigError("the pipeline got no queries")
        clock = time.perf_counter()
        candidates = self.first_stage.search(queries)
        stages = [StageStats("first_stage", time.perf_counter() - clock, len(queries),
                             details={"method": self.first_stage.section.method, "k": self.first_stage.section.k})]
        run = candidates
        if self.rerank is not None:
            run, stats = self.rerank.apply(candidates, queries, self.corpus, show_progress=show_progress)
            stages.append(stats)
        return PipelineResult(run, candidates, stages, self.config.to_dict())

    def ask(self, query: str, k: int = 10) -> list[Hit]:
        """The top ``k`` documents for one ad-hoc query, with their titles and texts."""
        if not isinstance(query, str):
            raise ArgumentTypeError(f"query must be one query string, got {type(query).__name__} (for several "
                                    "queries, use search({query_id: text}))")
        if not query.strip():
            raise ConfigError("ask() needs a non-empty query string")
        check_k(k)
        result = self.search({"q": query})
        hits = []
        for doc_id, score in result.run["q"][:k]:
            doc = self.corpus[doc_id]
            hits.append(Hit(doc_id, score, doc.title, doc.text))
        return hits


def meta_path(run_path: str | Path) -> Path:
    """Where the costs of the run written at ``run_path`` are kept (``RUN.meta.json``)."""
    run_path = Path(run_path)
    return run_path.with_name(run_path.name + META_SUFFIX)


def read_meta(run_path: str | Path) -> dict[str, Any] | None:
    """The costs recorded next to a run file by :meth:`PipelineResult.write`, or ``None`` when there are none."""
    path = meta_path(run_path)
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}) (fix: run the pipeline again or delete the file)") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("summary"), dict):
        raise ConfigError(f"{path}: no 'summary' object (fix: run the pipeline again or delete the file)")
    return meta


def _open_corpus(dataset: str | Path | None) -> Corpus:
    if dataset is None:
        raise ConfigError("the pipeline needs documents: give a dataset (--dataset, or data.dataset in the file)")
    from nestrank.data import Dataset
    from nestrank.data.download import resolve_dataset

    return Dataset.open(resolve_dataset(str(dataset))).corpus
