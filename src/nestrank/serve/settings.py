"""Settings of a nestrank server: which models it serves, its limits and its search pipeline.

:class:`ServeSettings` is a plain value (no FastAPI import), so the CLI, the Ray Serve
deployment and tests build it the same way. Models are given as ``NAME=PATH_OR_PRESET``
(:func:`parse_model_spec`); ``NAME=embed:PATH`` or ``NAME=rerank:PATH`` force the task, which
is otherwise detected (:func:`detect_task`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nestrank.errors import ConfigError

Task = Literal["rerank", "embed"]
API_KEY_ENV = "NESTRANK_API_KEY"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: Presets that are embedders; every other preset is a reranker backbone.
EMBED_PRESETS = frozenset({"minilm-l6"})


@dataclass(frozen=True)
class ModelSpec:
    """One served model: the name clients send in ``model``, where it loads from, and its task."""

    name: str
    source: str
    task: Task


@dataclass(frozen=True)
class ServeSettings:
    """Everything :func:`nestrank.serve.create_app` needs.

    Attributes:
        models: served models (at least one).
        api_key: a Bearer key every API route requires (``None``: open). ``/health``,
            ``/ready`` and ``/metrics`` stay open.
        max_batch_tokens: padded tokens (longest pair x pairs) of one forward batch.
        max_batch_size: pairs (or texts) per forward batch (``None``: only the token budget).
        max_queued_tokens: tokens waiting per model before requests get 429.
        max_docs_per_request: documents (or texts) one request may send (413 beyond).
        max_tokens_per_doc: the server's cap on passage tokens (``None``: the model's).
        max_body_bytes: request bodies larger than this get 413.
        default_profile: the profile a request without a cost choice runs (``full``).
        timeout_ms: a request's deadline; items still queued after it are dropped (504).
        device / dtype: where and how models load (``None``/``auto``: CUDA when available).
        index / corpus / search_model: the ``/search`` pipeline: a built index, the corpus it
            was built from (titles and text) and the reranker name that reranks it (optional).
        search_rerank_depth: candidates the search reranker rescores when the request does
            not say (and its profile has no ``rerank_depth``).
        warmup: run every model (and profile) once before reporting ready.
    """

    models: tuple[ModelSpec, ...]
    api_key: str | None = None
    max_batch_tokens: int = 8192
    max_batch_size: int | None = None
    max_queued_tokens: int = 262144
    max_docs_per_request: int = 1000
    max_tokens_per_doc: int | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    default_profile: str = "full"
    timeout_ms: int = 60000
    device: str | None = None
    dtype: str = "auto"
    index: str | None = None
    corpus: str | None = None
    search_model: str | None = None
    search_rerank_depth: int = 20
    warmup: bool = True

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("serve needs at least one model (fix: --model NAME=PATH_OR_PRESET)")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ConfigError(f"model names must be unique, got {', '.join(names)}")
        for name in ("max_batch_tokens", "max_queued_tokens", "max_docs_per_request", "max_body_bytes", "timeout_ms",
                     "search_rerank_depth"):
            _positive(name, getattr(self, name))
        for name in ("max_batch_size", "max_tokens_per_doc"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.max_queued_tokens < self.max_batch_tokens:
            raise ConfigError(f"max_queued_tokens ({self.max_queued_tokens}) must be at least max_batch_tokens "
                              f"({self.max_batch_tokens})")
        if (self.index is None) != (self.corpus is None):
            raise ConfigError("/search needs both --index and --corpus (the corpus the index was built from)")
        if self.search_model is not None:
            found = [m for m in self.models if m.name == self.search_model]
            if not found or found[0].task != "rerank":
                raise ConfigError(f"--search-model {self.search_model!r} is not a served reranker "
                                  f"(served: {', '.join(names)})")

    @property
    def api_key_or_env(self) -> str | None:
        """The API key: ``api_key``, else ``$NESTRANK_API_KEY``, else ``None``."""
        return self.api_key or os.environ.get(API_KEY_ENV) or None


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def parse_model_spec(spec: str) -> ModelSpec:
    """``NAME=PATH_OR_PRESET`` (optionally ``NAME=embed:PATH`` / ``NAME=rerank:PATH``) -> :class:`ModelSpec`.

    Raises:
        ConfigError: no ``=``, a bad name (letters, digits, ``.``, ``_``, ``-``; no ``:``, which
            separates a profile in ``name:profile`` aliases) or an empty source.
    """
    name, sep, source = spec.partition("=")
    name, source = name.strip(), source.strip()
    if not sep or not source:
        raise ConfigError(f"--model {spec!r}: expected NAME=PATH_OR_PRESET (e.g. rerank=smollm2-135m)")
    if not _NAME.match(name):
        raise ConfigError(f"--model {spec!r}: the name {name!r} must start with a letter or digit and hold only "
                          "letters, digits, '.', '_' and '-' (':' separates a profile in model aliases)")
    task: Task | None = None
    for prefix in ("embed", "rerank"):
        if source.startswith(prefix + ":"):
            task, source = prefix, source[len(prefix) + 1:]  # type: ignore[assignment]
    return ModelSpec(name, source, task or detect_task(source))


def detect_task(source: str) -> Task:
    """``embed`` for the MiniLM preset, a dense-encoder checkpoint or a non-generative backbone; else ``rerank``.

    A directory's ``nestrank.json`` ``kind`` decides first, then ``config.json``'s
    ``architectures``: ``*ForCausalLM`` and ``*ForSequenceClassification`` are rerankers
    (Matryoshka and pointwise), anything else (``BertModel``, ``LlamaModel``) an embedder.
    """
    if source in EMBED_PRESETS:
        return "embed"
    path = Path(source)
    settings = _read_json(path / "nestrank.json")
    if settings.get("kind") == "dense-encoder":
        return "embed"
    if settings.get("kind") in ("matryoshka", "pointwise"):
        return "rerank"
    architectures = _read_json(path / "config.json").get("architectures") or []
    if architectures and not any(a.endswith(("ForCausalLM", "ForSequenceClassification")) for a in architectures):
        return "embed"
    return "rerank"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
