"""The dense bi-encoder: texts -> L2-normalised vectors, scored by dot product.

:class:`DenseEncoder` wraps any backbone from :func:`~nestrank.models.backbone.load_backbone`
(``task="base"``) with an :class:`EncoderConfig`: pooling, query/passage prefixes, EOS
append, normalisation and max lengths. Two presets carry published settings:

- ``repllama`` (Ma et al. 2023): ``query: {q}</s>`` / ``passage: {title} {text}</s>``, the
  final EOS token's last-layer state, L2-normalised; query 32 / passage 196 tokens.
- ``minilm``: all-MiniLM-L6-v2 as sentence-transformers runs it: mean pooling, normalised,
  256 tokens.

Encoding tokenises every text once, sorts texts by token length and fills each batch up to a
token budget (``batch_tokens``), so short texts share big batches and padding stays small.
Results come back in input order, one float32 row per text.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nestrank.checks import check_texts
from nestrank.data.corpus import Document
from nestrank.errors import ArgumentTypeError, ConfigError, DataFormatError
from nestrank.models.backbone import check_special_tokens
from nestrank.models.batching import map_batches
from nestrank.models.pooling import POOLINGS, Pooling, pool
from nestrank.models.settings import SETTINGS_FILE, read_settings, verify_checkpoint

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TOKENIZE_CHUNK = 4096  # texts per tokenizer call


@dataclass(frozen=True)
class EncoderConfig:
    """How texts become vectors. Field defaults are RepLLaMA's settings."""

    pooling: Pooling = "eos"
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    append_eos: bool = True
    normalize: bool = True
    query_max_length: int = 32
    passage_max_length: int = 196

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}")
        if self.pooling == "eos" and not self.append_eos:
            raise ConfigError("pooling='eos' reads the appended EOS token (fix: set append_eos=True, "
                              "or use pooling='last')")
        minimum = 2 if self.append_eos else 1
        for name in ("query_max_length", "passage_max_length"):
            if getattr(self, name) < minimum:
                raise ConfigError(f"{name} must be >= {minimum}, got {getattr(self, name)}")


ENCODER_PRESETS: dict[str, EncoderConfig] = {
    "repllama": EncoderConfig(),
    "minilm": EncoderConfig(pooling="mean", query_prefix="", passage_prefix="", append_eos=False,
                            query_max_length=256, passage_max_length=256),
}

# The backbone each preset loads when no model is given.
DEFAULT_BACKBONES: dict[str, str] = {
    "repllama": "castorini/repllama-v1-7b-lora-passage",
    "minilm": "minilm-l6",
}


def encoder_config(preset: str, **overrides: Any) -> EncoderConfig:
    """A preset's :class:`EncoderConfig`, with fields replaced by ``overrides``."""
    if preset not in ENCODER_PRESETS:
        raise ConfigError(f"unknown encoder preset {preset!r}; choose one of {', '.join(ENCODER_PRESETS)}")
    fields = {f.name for f in dataclasses.fields(EncoderConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown encoder setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    return dataclasses.replace(ENCODER_PRESETS[preset], **overrides)


def trained_encoder_settings(name_or_path: str | Path) -> dict[str, Any]:
    """The ``nestrank.json`` a nestrank training checkpoint holds (``preset``, ``encoder`` fields), or ``{}``.

    :meth:`DenseEncoder.from_pretrained` applies it, so a checkpoint encodes with the pooling,
    prefixes and lengths it was trained with (written by :mod:`nestrank.train.checkpoint`).
    """
    settings = read_settings(name_or_path, "dense-encoder", model="dense-encoder", what="encoder") or {}
    if settings and not isinstance(settings.get("encoder"), dict):
        raise ConfigError(f"{Path(name_or_path) / SETTINGS_FILE}: malformed encoder settings ('encoder' must be an "
                          "object; fix: restore or delete the file)")
    return settings


CPU_BATCH_TOKENS = 4096
GPU_BATCH_TOKENS = 32768


class DenseEncoder:
    """Encode queries and passages into vectors whose dot product is the relevance score.

    Args:
        model: a ``task="base"`` backbone (``last_hidden_state`` output), possibly a PEFT model.
        tokenizer: its tokenizer (with a pad token; :func:`load_backbone` ensures one).
        config: pooling, prefixes, EOS, normalisation, max lengths (default: RepLLaMA's).
        batch_tokens: token budget per batch (padded length x batch size); a text longer
            than the budget is a batch of its own. Default: 4,096 on CPU (cache-sized
            batches: 1.2x faster than 16,384 for MiniLM on 2 cores here), 32,768 on GPUs.
        show_progress: show a progress bar while encoding.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: EncoderConfig | None = None,
                 *, batch_tokens: int | None = None, show_progress: bool = True) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or EncoderConfig()
        self.show_progress = show_progress
        if batch_tokens is None:
            batch_tokens = CPU_BATCH_TOKENS if self.device.type == "cpu" else GPU_BATCH_TOKENS
        self.batch_tokens = batch_tokens
        check_special_tokens(tokenizer, eos=self.config.append_eos)
        if batch_tokens < 1:
            raise ConfigError(f"batch_tokens must be >= 1, got {batch_tokens}")

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, preset: str | None = None, *, dtype: str = "auto",
                        device: str | None = None, merge_lora: bool = True, batch_tokens: int | None = None,
                        show_progress: bool = True, load_options: dict[str, Any] | None = None,
                        verify: str = "fast", **overrides: Any) -> DenseEncoder:
        """Load a backbone with :func:`load_backbone` and wrap it.

        ``preset`` defaults to ``minilm`` for the ``minilm-l6`` backbone and ``repllama``
        otherwise; ``overrides`` replace preset fields (e.g. ``passage_max_length=128``).
        ``load_options`` go to :func:`load_backbone` (e.g. ``{"base_model": ...}``). LoRA
        adapters are merged by default, since encoding never trains. A checkpoint nestrank
        wrote is checked against its ``checksums.json`` first (``verify``: ``fast``, ``full`` or
        ``none``; see :mod:`nestrank.integrity`).
        """
        from nestrank.models.backbone import load_backbone

        if not isinstance(name_or_path, str | Path):
            raise ArgumentTypeError(f"name_or_path must be a model name or path, got {type(name_or_path).__name__}")
        verify_checkpoint(name_or_path, verify, what="encoder checkpoint", base=(load_options or {}).get("base_model"))
        config = cls.config_for(name_or_path, preset, **overrides)
        model, tokenizer = load_backbone(name_or_path, task="base", dtype=dtype, device=device,
                                         merge_lora=merge_lora, **(load_options or {}))
        return cls(model, tokenizer, config, batch_tokens=batch_tokens, show_progress=show_progress)

    @staticmethod
    def config_for(name_or_path: str | Path, preset: str | None = None, **overrides: Any) -> EncoderConfig:
        """The :class:`EncoderConfig` :meth:`from_pretrained` would use, read without loading weights.

        ``preset`` defaults to the checkpoint's recorded one (:func:`trained_encoder_settings`),
        else ``minilm`` for the ``minilm-l6`` backbone and ``repllama`` otherwise; the
        checkpoint's recorded settings apply, then ``overrides``.
        """
        trained = trained_encoder_settings(name_or_path)
        preset = preset or trained.get("preset") or ("minilm" if str(name_or_path) == "minilm-l6" else "repllama")
        return encoder_config(preset, **{**trained.get("encoder", {}), **overrides})

    @classmethod
    def from_preset(cls, preset: str, model: str | Path | tuple[PreTrainedModel, PreTrainedTokenizerBase] | None = None,
                    **kwargs: Any) -> DenseEncoder:
        """An encoder with a preset's settings on ``model``.

        ``model`` is a ``(model, tokenizer)`` pair already loaded, a name for
        :meth:`from_pretrained`, or ``None`` for the preset's own backbone (``minilm-l6`` for
        ``minilm``; the public RepLLaMA adapter, which needs the Hugging Face hub, for
        ``repllama``). Other keyword arguments go to :meth:`from_pretrained` (or, for a pair,
        ``batch_tokens``/``show_progress`` to the constructor and the rest to the config).
        """
        if preset not in ENCODER_PRESETS:
            raise ConfigError(f"unknown encoder preset {preset!r}; choose one of {', '.join(ENCODER_PRESETS)}")
        if isinstance(model, tuple):
            options = {k: kwargs.pop(k) for k in ("batch_tokens", "show_progress") if k in kwargs}
            return cls(model[0], model[1], encoder_config(preset, **kwargs), **options)
        return cls.from_pretrained(model or DEFAULT_BACKBONES[preset], preset, **kwargs)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        config = self.model.config
        return int(getattr(config, "hidden_size", None) or self.model.get_input_embeddings().embedding_dim)

    @property
    def device(self) -> torch.device:
        """The device the model runs on."""
        return next(self.model.parameters()).device

    @property
    def passage_tokens(self) -> int:
        """The passage length in tokens (``config.passage_max_length``: prefix, title, text and special tokens)."""
        return self.config.passage_max_length

    @functools.cached_property
    def _passage_overhead(self) -> int:
        """Tokens every passage spends on its prefix and special tokens (BOS/CLS, SEP, the appended EOS)."""
        return len(self.tokenize([self.config.passage_prefix], 1 << 16)[0])

    def passage_segments(self, document: Document, stride: int) -> list[Document]:
        """``document`` as overlapping passages that each fit :attr:`passage_tokens`, ``stride`` tokens apart.

        MaxP's segments (:func:`nestrank.models.maxp.split_document` on this encoder's tokenizer):
        every segment repeats the title and keeps the document's id; a document that fits is
        one segment, itself.
        """
        from nestrank.models.maxp import split_document

        budget = self.passage_tokens - self._passage_overhead
        if budget < 1:
            raise ConfigError(f"passage_max_length={self.passage_tokens} leaves no room for text after the passage "
                              f"prefix and special tokens ({self._passage_overhead} tokens); raise it")
        return split_document(document, self.tokenizer, budget, stride)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Encode query texts: ``(len(texts), dim)`` float32, in input order."""
        texts = [_checked_text(t, i, "query") for i, t in enumerate(check_texts(texts, "texts", "query texts"))]
        return self._encode([self.config.query_prefix + t for t in texts], self.config.query_max_length, "query")

    def encode_passages(self, docs: Sequence[Document | str]) -> np.ndarray:
        """Encode passages (``Document``: ``title text``; or plain strings), in input order."""
        if isinstance(docs, str | Document | Mapping) or not isinstance(docs, Iterable):
            raise ArgumentTypeError(f"docs must be a list of documents or passage texts, got {type(docs).__name__}"
                                    + (" (fix: wrap it in a list)" if isinstance(docs, str | Document) else ""))
        texts = [_checked_text(d.full_text if isinstance(d, Document) else d, i, "passage", d)
                 for i, d in enumerate(docs)]
        return self._encode([self.config.passage_prefix + t for t in texts], self.config.passage_max_length,
                            "passage")

    # -- internals ----------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """Token ids of each text with special tokens, truncated to ``max_length`` (EOS included)."""
        eos = self.tokenizer.eos_token_id if self.config.append_eos else None
        limit = max_length - (eos is not None)
        ids: list[list[int]] = []
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            chunk = self.tokenizer(list(texts[start:start + TOKENIZE_CHUNK]), truncation=True, max_length=limit,
                                   return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            ids.extend(chunk if eos is None else [row if row and row[-1] == eos else row + [eos] for row in chunk])
        return ids

    def _encode(self, texts: list[str], max_length: int, unit: str) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = self.tokenize(texts, max_length)
        with torch.inference_mode(), tqdm(total=len(texts), desc=f"encoding {unit} texts", unit=unit,
                                          disable=not self.show_progress) as progress:
            return map_batches(lambda batch: self.embed_token_ids([ids[i] for i in batch]).cpu().numpy(),
                               [len(row) for row in ids], batch_tokens=self.batch_tokens,
                               on_batch_done=progress.update).astype(np.float32, copy=False)

    def embed_token_ids(self, rows: list[list[int]]) -> torch.Tensor:
        """Embed one batch of token-id rows from :meth:`tokenize` (padded here on the tokenizer's side).

        Runs with autograd when called outside ``torch.inference_mode`` (the trainer does), so
        training and inference share one forward, pooling and normalisation.
        """
        import torch

        width = max(len(row) for row in rows)
        input_ids = np.full((len(rows), width), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        left = self.tokenizer.padding_side == "left"
        for r, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            input_ids[r, span] = row
            mask[r, span] = 1
        device = self.device
        inputs: dict[str, Any] = {"input_ids": torch.from_numpy(input_ids).to(device),
                                  "attention_mask": torch.from_numpy(mask).to(device)}
        if left:  # positions count real tokens only, as they would without padding
            inputs["position_ids"] = (inputs["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
        if getattr(self.model.config, "use_cache", False):
            inputs["use_cache"] = False
        hidden = self.model(**inputs).last_hidden_state
        embeddings = pool(hidden, inputs["attention_mask"], self.config.pooling).to(torch.float32)
        if self.config.normalize:
            embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
        return embeddings


def _checked_text(text: object, position: int, what: str, item: object = None) -> str:
    """``text`` if it is a non-empty string; else a clear error naming the input."""
    name = f"{what} {position}" + (f" (id {item.id!r})" if isinstance(item, Document) else "")
    if not isinstance(text, str):
        raise DataFormatError(None, None, f"{name} is a {type(text).__name__}, not a string")
    if not text.strip():
        raise DataFormatError(None, None, f"{name} is empty", "remove empty texts before encoding")
    return text
