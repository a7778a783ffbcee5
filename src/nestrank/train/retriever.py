"""Contrastive training of a dense retriever (RepLLaMA recipe) with LoRA or full fine-tuning.

One optimizer step = ``grad_accum_steps`` contrastive batches (the loop:
:class:`~nestrank.train.loop.Trainer`). For each batch every process embeds its slice of
queries and passages (through the same tokenisation and pooling as
:class:`~nestrank.models.dense.DenseEncoder`), the embeddings of all processes are gathered
so every query sees every passage of the global batch as a negative, and the InfoNCE loss
(:mod:`nestrank.train.losses.contrastive`) is backpropagated, optionally with GradCache
chunking (:mod:`nestrank.train.gradcache`).

Launch with ``python``/``nestrank train retriever`` (one process), or with ``torchrun`` or
``accelerate launch`` (DDP, FSDP, DeepSpeed via an accelerate config) for several.

Checkpoints (``checkpoint-STEP/``, ``final/``), which
:meth:`~nestrank.models.dense.DenseEncoder.from_pretrained` loads as an encoder (it reads
``nestrank.json``, so the trained pooling, prefixes and lengths apply)::

    adapter_config.json, adapter_model.safetensors   LoRA runs (PEFT layout; names the base model)
    config.json, model.safetensors                   full fine-tuning runs (transformers layout)
    tokenizer files                                  the tokenizer used in training
    nestrank.json                                    encoder settings (preset, pooling, lengths, base)
    trainer_state.json, optimizer.pt, scheduler.json for train.resume_from (:mod:`nestrank.train.checkpoint`)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestrank.errors import ConfigError
from nestrank.models.settings import SETTINGS_FILE
from nestrank.train.backbone import add_lora, enable_gradient_checkpointing
from nestrank.train.batches import ContrastiveBatch
from nestrank.train.checkpoint import is_sharded, load_adapter_weights
from nestrank.train.config import TrainConfig
from nestrank.train.gradcache import contrastive_backward
from nestrank.train.loop import MicroLoss, Trainer, TrainResult
from nestrank.train.validation import pool_table

if TYPE_CHECKING:
    import numpy as np
    import torch
    from accelerate import Accelerator

    from nestrank.models.dense import DenseEncoder

__all__ = ["RetrieverTrainer", "build_encoder", "embedding_module", "tokenize_batch", "train_retriever",
           "write_settings"]


def build_encoder(config: TrainConfig, device: str | None = None) -> DenseEncoder:
    """Load the backbone as a :class:`DenseEncoder`, add LoRA (or unfreeze all) and gradient checkpointing.

    With ``model.dtype = "bfloat16"`` a LoRA run keeps the frozen base in bf16 (adapters stay
    fp32); a full fine-tuning run keeps fp32 master weights and computes under bf16 autocast.
    """
    from nestrank.models.dense import DenseEncoder

    m, d = config.model, config.data
    weights_dtype = "bfloat16" if (m.dtype == "bfloat16" and config.lora.enabled) else "float32"
    encoder = DenseEncoder.from_pretrained(
        m.backbone, m.preset, dtype=weights_dtype, device=device, merge_lora=True, show_progress=False,
        load_options={"attn_implementation": m.attn_implementation},
        query_max_length=d.query_max_length, passage_max_length=d.passage_max_length)
    model = encoder.model
    if m.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if config.lora.enabled:
        model = add_lora(model, config, "FEATURE_EXTRACTION")
    else:
        model.requires_grad_(True)
    model.train()
    encoder.model = model
    return encoder


def embedding_module(encoder: DenseEncoder) -> torch.nn.Module:
    """A module mapping token-id rows to the encoder's embeddings, with autograd.

    It runs the encoder's own forward (padding, pooling, normalisation), so training and
    inference embed identically; it owns the backbone, so DDP/FSDP can wrap it.
    """
    import torch

    class EmbeddingModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = encoder.model

        def forward(self, rows: list[list[int]]) -> torch.Tensor:
            return encoder.embed_token_ids(rows)

    return EmbeddingModule()


def tokenize_batch(encoder: DenseEncoder, batch: ContrastiveBatch,
                   cache: dict[tuple[int, str], list[int]] | None = None) -> tuple[list[list[int]], list[list[int]]]:
    """Token-id rows of a batch's queries and passages, with the encoder's prefixes, EOS and max lengths.

    ``cache`` (``(max length, text with its prefix)`` -> ids) keeps the rows of texts seen
    before: every epoch draws from the same groups, so each text is tokenized once per run.
    """
    c = encoder.config
    cache = {} if cache is None else cache

    def rows(texts: list[str], max_length: int) -> list[list[int]]:
        new = list(dict.fromkeys(t for t in texts if (max_length, t) not in cache))
        cache.update(zip([(max_length, t) for t in new], encoder.tokenize(new, max_length) if new else [], strict=True))
        return [cache[(max_length, t)] for t in texts]

    queries = rows([c.query_prefix + q for q in batch.queries], c.query_max_length)
    passages = rows([c.passage_prefix + p.full_text for p in batch.passages], c.passage_max_length)
    return queries, passages


def write_settings(path: Path, config: TrainConfig, encoder: DenseEncoder) -> None:
    """Write ``nestrank.json``: the base model, encoder preset and settings (pooling, prefixes, lengths)."""
    import dataclasses

    settings = {"kind": "dense-encoder", "base_model": config.model.backbone, "preset": config.model.preset,
                "lora": config.lora.enabled, "encoder": dataclasses.asdict(encoder.config)}
    (path / SETTINGS_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")


class RetrieverTrainer(Trainer):
    """Trains a :class:`~nestrank.models.dense.DenseEncoder` contrastively; see the module docstring.

    Build it from a :class:`TrainConfig` and call :meth:`train`; afterwards :attr:`encoder`
    is the trained encoder.
    """

    label = "train retriever"

    def __init__(self, config: TrainConfig, accelerator: Accelerator | None = None, progress: bool = True) -> None:
        super().__init__(config, accelerator, progress)
        self.encoder: DenseEncoder | None = None  # the trained encoder, once train() has run
        self._tokens: dict[tuple[int, str], list[int]] = {}

    def check_distributed(self) -> None:
        """Resuming is DDP-only for now; GradCache's chunked backward does not fit DeepSpeed's engine."""
        from accelerate.utils import DistributedType

        if is_sharded(self.accelerator) and self.config.train.resume_from:
            raise ConfigError("train.resume_from is not supported under FSDP/DeepSpeed yet (fix: resume with DDP, "
                              "or restart from the saved weights as a new backbone)")
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED and self.config.train.gradcache_chunk_size:
            raise ConfigError("GradCache (train.gradcache_chunk_size > 0) does not work with DeepSpeed's engine-driven "
                              "backward (fix: set it to 0, or use FSDP)")

    def setup(self, device: str) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
        """The encoder (:func:`build_encoder`) as an embedding module, and its trainable parameters."""
        self.encoder = build_encoder(self.config, device=device)
        module = embedding_module(self.encoder)
        return module, [p for p in module.parameters() if p.requires_grad]

    def micro_step(self, batch: ContrastiveBatch, last: bool) -> MicroLoss:
        """InfoNCE of one contrastive batch over every process, backpropagated (GradCache when configured)."""
        t = self.config.train
        assert self.encoder is not None
        queries, passages = tokenize_batch(self.encoder, batch, self._tokens)
        loss = contrastive_backward(
            self._embed, queries, passages, self.config.data.group_size, t.temperature,
            chunk_size=t.gradcache_chunk_size, loss_scale=1.0 / t.grad_accum_steps, backward=self.accelerator.backward,
            sync=lambda is_last: self.sync_gradients(is_last and last))
        return loss, {}

    def validation_scores(self, batch: ContrastiveBatch) -> dict[str, np.ndarray]:
        """Each held-out query's similarity to the passages of its own group, ``{"": (queries, group)}``, or
        with ``train.eval_pool`` to every passage of the batch, ``{"pool": (queries, pool)}`` (:func:`pool_table`)."""
        assert self.encoder is not None
        queries = self.encoder.encode_queries(batch.queries)
        passages = self.encoder.encode_passages(batch.passages)
        if self.config.train.eval_pool:
            return {"pool": pool_table(queries, passages, batch)}
        grouped = passages.reshape(len(batch.queries), -1, queries.shape[1])
        return {"": (grouped @ queries[:, :, None])[:, :, 0]}

    def summarize(self, losses: list[MicroLoss]) -> tuple[float, dict[str, Any]]:
        """The mean over micro-batches: each is already the loss of the global batch (embeddings are gathered)."""
        return sum(loss for loss, _ in losses) / len(losses), {}

    def gather_model_state(self) -> dict[str, Any]:
        """The module's weights, gathered from FSDP/DeepSpeed shards (collective)."""
        return self.accelerator.get_state_dict(self.module)

    def save_model(self, path: Path, state: dict[str, Any]) -> None:
        """The backbone (adapter or full weights), the tokenizer and ``nestrank.json``."""
        assert self.encoder is not None
        weights = {k.removeprefix("backbone."): v for k, v in state.items()}
        # LoRA never trains embeddings; "auto" would look the base up on the hub (offline: a warning)
        extra = {"save_embedding_layers": False} if self.config.lora.enabled else {}
        self._backbone().save_pretrained(path, state_dict=weights, safe_serialization=True, **extra)
        self.encoder.tokenizer.save_pretrained(path)
        write_settings(path, self.config, self.encoder)

    def load_model(self, path: Path) -> None:
        """The adapter (LoRA runs) or the full weights of checkpoint ``path``."""
        from safetensors.torch import load_file

        if self.config.lora.enabled:
            load_adapter_weights(self._backbone(), path, path)
        else:
            self._backbone().load_state_dict(load_file(path / "model.safetensors"), strict=False)

    def _backbone(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.module).backbone

    def _embed(self, rows: list[list[int]]) -> torch.Tensor:
        assert self.module is not None
        with self.accelerator.autocast():
            return self.module(rows)


def train_retriever(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train a retriever from ``config`` (see :class:`RetrieverTrainer`); returns the final checkpoint."""
    return RetrieverTrainer(config, progress=progress).train()
