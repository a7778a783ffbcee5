"""The served models behind one interface each: rerankers (Matryoshka or pointwise) and embedders.

An engine turns a request into scheduler items (:meth:`RerankEngine.prepare`: token lengths,
what was truncated) and runs one packed batch on the worker thread (:meth:`RerankEngine.run`).
Rerank batches go through the reranker's public ``score`` with the batch's configuration, so
served scores are exactly the library's; embedding batches through
:meth:`~nestrank.models.DenseEncoder.embed_token_ids` on the rows tokenized at admission.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nestrank.errors import ConfigError
from nestrank.models import DenseEncoder, MatryoshkaReranker, Profile, Reranker
from nestrank.serve.settings import ModelSpec, ServeSettings

__all__ = ["EmbedEngine", "Prepared", "QueryTooLong", "RerankEngine", "load_engine"]


class QueryTooLong(ConfigError):
    """The query has more tokens than the reranker reads; it is refused, never cut."""


@dataclass(frozen=True)
class Prepared:
    """A request's items for the scheduler: one payload and token length each, and what was cut."""

    key: Hashable
    payloads: list[Any]
    lengths: list[int]
    truncated: int
    limit: int | None

    @property
    def tokens(self) -> int:
        """Tokens of all items (usage, admission)."""
        return int(sum(self.lengths))


class RerankEngine:
    """A served reranker: Matryoshka (profiles, per-request configuration) or pointwise (one configuration)."""

    task = "rerank"

    def __init__(self, name: str, reranker: Reranker, max_tokens_per_doc: int | None = None) -> None:
        self.name = name
        self.reranker = reranker
        self.matryoshka = isinstance(reranker, MatryoshkaReranker)
        model_limit = reranker.max_passage_tokens if self.matryoshka else reranker.max_length
        self.max_tokens_per_doc = model_limit if max_tokens_per_doc is None else min(model_limit, max_tokens_per_doc)

    @property
    def kind(self) -> str:
        """``matryoshka`` or ``pointwise``."""
        return "matryoshka" if self.matryoshka else "pointwise"

    @property
    def profiles(self) -> dict[str, Profile]:
        """The model's named configurations (a pointwise model has only ``full``)."""
        return self.reranker.profiles if self.matryoshka else {"full": Profile("full", "")}

    @property
    def max_query_tokens(self) -> int | None:
        """Queries longer than this are refused (the engine would cut them)."""
        return self.reranker.max_query_tokens if self.matryoshka else None

    def resolve(self, spec: Any) -> Any:
        """A profile name or configuration string -> the scheduler key (``None`` for pointwise ``full``).

        Raises:
            ConfigError: unknown profile, bad configuration, or any configuration but ``full``
                for a pointwise model.
        """
        if self.matryoshka:
            config = self.reranker.resolve_config(spec)
            config.validate(self.reranker.num_layers)
            return config
        if spec in (None, "", "full"):
            return None
        raise ConfigError(f"model {self.name!r} is a pointwise reranker: it has no run-time configuration, only "
                          "the 'full' profile")

    def prepare(self, query: str, documents: Sequence[str], config: Any, max_tokens_per_doc: int | None) -> Prepared:
        """Token lengths of every (query, document) pair under ``config`` and the per-document cap.

        Raises:
            QueryTooLong: the query is longer than the model reads (it is never cut silently).
        """
        limit = self.max_tokens_per_doc if max_tokens_per_doc is None else min(max_tokens_per_doc,
                                                                               self.max_tokens_per_doc)
        tokenizer = self.reranker.tokenizer
        if self.max_query_tokens is not None:
            query_len = len(tokenizer(query, add_special_tokens=False)["input_ids"])
            if query_len > self.max_query_tokens:
                raise QueryTooLong(f"the query has {query_len} tokens; model {self.name!r} reads at most "
                                  f"{self.max_query_tokens} (shorten it)")
        if not self.matryoshka:
            from nestrank.data import Document

            lengths = [len(ids) for ids in self.reranker.encode([query] * len(documents),
                                                                [Document(str(i), d) for i, d in enumerate(documents)])]
            return Prepared(None, [(query, d) for d in documents], lengths, 0, None)
        if limit < self.reranker.max_passage_tokens:
            cap = limit if config.passage_tokens is None else min(limit, config.passage_tokens)
            config = dataclasses.replace(config, passage_tokens=cap)
        effective = self.reranker.max_passage_tokens if config.passage_tokens is None else min(
            config.passage_tokens, self.reranker.max_passage_tokens)
        lengths, truncated = [], 0
        for doc in documents:
            pair = self.reranker.encode(query, doc, config)
            lengths.append(len(pair.ids))
            if pair.passage_len == effective and len(tokenizer(doc, add_special_tokens=False)["input_ids"]) > effective:
                truncated += 1
        return Prepared(config, [(query, d) for d in documents], lengths, truncated, effective)

    def run(self, key: Any, payloads: list[tuple[str, str]]) -> np.ndarray:
        """Scores of one batch (worker thread): the reranker's ``score`` with the batch's configuration."""
        queries = [q for q, _ in payloads]
        docs = [d for _, d in payloads]
        return self.reranker.score(queries, docs, config=key, batch_tokens=10**9)

    def flops_ratio(self, config: Any, query_len: int, passage_len: int, prompt_len: int) -> float:
        """Estimated FLOPs of ``config`` over the full model's for a pair of those lengths (1.0 for pointwise)."""
        if not self.matryoshka:
            return 1.0
        full = self.reranker.flops(None, query_len, passage_len, prompt_len)
        return float(self.reranker.flops(config, query_len, passage_len, prompt_len) / full)

    def pair_lengths(self, query: str, document: str, config: Any) -> tuple[int, int, int]:
        """(query, passage, other) token counts of one pair under ``config`` (for FLOPs estimates)."""
        if not self.matryoshka:
            return 0, 0, 0
        pair = self.reranker.encode(query, document, config)
        query_len = min(len(self.reranker.tokenizer(query, add_special_tokens=False)["input_ids"]),
                        self.reranker.max_query_tokens)
        return query_len, pair.passage_len, len(pair.ids) - pair.passage_len - query_len

    def describe(self) -> dict[str, Any]:
        """Capabilities, limits and profiles, for ``/v1/models`` and ``/info``."""
        profiles = {name: {k: v for k, v in p.to_dict().items() if k != "quality"} for name, p in self.profiles.items()}
        limits = {"max_tokens_per_doc": self.max_tokens_per_doc, "max_query_tokens": self.max_query_tokens}
        if self.matryoshka:
            limits["num_layers"] = self.reranker.num_layers
        return {"task": self.task, "kind": self.kind, "capabilities": ["rerank", "score"], "limits": limits,
                "profiles": profiles}


#: Scheduler key of embedding rows: query and passage rows, once tokenized, share batches.
EMBED_KEY = "rows"


class EmbedEngine:
    """A served dense encoder (OpenAI ``/v1/embeddings``, TEI ``/embed``)."""

    task = "embed"
    kind = "dense"

    def __init__(self, name: str, encoder: DenseEncoder) -> None:
        self.name = name
        self.encoder = encoder
        self.max_tokens = encoder.config.passage_max_length

    def prepare(self, texts: Sequence[str], input_type: str, truncate: bool) -> Prepared:
        """Token rows of ``texts`` (queries or passages get the encoder's prefixes), cut to the model's limit.

        Raises:
            ConfigError: a text is longer than the limit and ``truncate`` is false.
        """
        config = self.encoder.config
        if input_type == "query":
            prefix, limit = config.query_prefix, config.query_max_length
        else:
            prefix, limit = config.passage_prefix, config.passage_max_length
        prefixed = [prefix + t for t in texts]
        rows = self.encoder.tokenize(prefixed, limit + 1)
        long = [i for i, row in enumerate(rows) if len(row) > limit]
        if long and not truncate:
            raise ConfigError(f"input {long[0]} has more than {limit} tokens, the model's limit (fix: shorten it or "
                              "set truncate=true)")
        if long:
            cut = self.encoder.tokenize([prefixed[i] for i in long], limit)
            for i, row in zip(long, cut, strict=True):
                rows[i] = row
        return Prepared(EMBED_KEY, rows, [len(r) for r in rows], len(long), limit)

    def run(self, key: Any, rows: list[list[int]]) -> np.ndarray:
        """Embeddings of one batch of token rows (worker thread)."""
        import torch

        with torch.inference_mode():
            return self.encoder.embed_token_ids(rows).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        """Capabilities and limits, for ``/v1/models`` and ``/info``."""
        return {"task": self.task, "kind": self.kind, "capabilities": ["embed"],
                "limits": {"max_input_tokens": self.max_tokens, "dimensions": self.encoder.dim}, "profiles": {}}


Engine = RerankEngine | EmbedEngine


def load_engine(spec: ModelSpec, settings: ServeSettings) -> Engine:
    """Load one model for serving (a preset, a model directory or a checkpoint)."""
    if spec.task == "embed":
        encoder = DenseEncoder.from_pretrained(spec.source, device=settings.device, dtype=settings.dtype,
                                               show_progress=False)
        return EmbedEngine(spec.name, encoder)
    from nestrank.rerank import load_reranker

    reranker = load_reranker(spec.source, device=settings.device, dtype=settings.dtype)
    return RerankEngine(spec.name, reranker, settings.max_tokens_per_doc)


def warm(engine: Engine) -> list[tuple[Any, list[Any], list[int]]]:
    """One small item per key to run before the server reports ready: ``(key, payloads, lengths)``."""
    if isinstance(engine, EmbedEngine):
        prepared = engine.prepare(["warm up"], "passage", True)
        return [(prepared.key, prepared.payloads, prepared.lengths)]
    items = []
    for key in dict.fromkeys(engine.resolve(name) for name in engine.profiles):
        prepared = engine.prepare("warm up", ["a short passage to warm the model up"], key, None)
        items.append((prepared.key, prepared.payloads, prepared.lengths))
    return items
