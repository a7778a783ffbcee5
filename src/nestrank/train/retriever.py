"""Contrastive training of a dense retriever (RepLLaMA recipe) with LoRA or full fine-tuning.

One optimizer step = ``grad_accum_steps`` contrastive batches. For each batch every process
embeds its slice of queries and passages (through the same tokenisation and pooling as
:class:`~nestrank.models.dense.DenseEncoder`), the embeddings of all processes are gathered
so every query sees every passage of the global batch as a negative, and the InfoNCE loss
is backpropagated, optionally with GradCache chunking (:mod:`nestrank.train.gradcache`).

Launch with ``python``/``nestrank train retriever`` (one process), or with ``torchrun`` or
``accelerate launch`` (DDP, FSDP, DeepSpeed via an accelerate config) for several.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestrank.data.groups import TrainingGroup, read_groups
from nestrank.errors import ConfigError
from nestrank.train.batches import ContrastiveBatch, GroupBatcher, holdout
from nestrank.train.checkpoint import load_trainer_state, save_checkpoint
from nestrank.train.config import OptimConfig, TrainConfig
from nestrank.train.gradcache import contrastive_backward

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from nestrank.models.dense import DenseEncoder

LOG_FILE = "train_log.jsonl"
VALIDATION_FILE = "validation_queries.txt"


@dataclass
class TrainResult:
    """What :func:`train_retriever` produced: the final checkpoint, steps done and the last logged loss."""

    checkpoint: Path
    steps: int
    loss: float
    seconds: float


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
        from peft import LoraConfig, get_peft_model

        lo = config.lora
        check_lora_targets(model, lo.target_modules, m.backbone)
        model = get_peft_model(model, LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                                                 target_modules=list(lo.target_modules),
                                                 task_type="FEATURE_EXTRACTION"))
    else:
        model.requires_grad_(True)
    model.train()
    encoder.model = model
    return encoder


def enable_gradient_checkpointing(model: torch.nn.Module, context_fn: Callable | None = None) -> None:
    """Non-reentrant activation checkpointing of every decoder layer (works with frozen inputs, i.e. LoRA, and DDP).

    ``context_fn`` goes to ``torch.utils.checkpoint.checkpoint`` (contexts for the forward and
    the recomputation).
    """
    model.config.use_cache = False
    kwargs: dict[str, Any] = {"use_reentrant": False, **({"context_fn": context_fn} if context_fn else {})}
    enable = getattr(model, "activation_checkpointing_enable", None)  # newer transformers renamed the method
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def check_lora_targets(model: torch.nn.Module, targets: Sequence[str], backbone: str) -> None:
    """Raise :class:`ConfigError` when a ``lora.target_modules`` name matches no module of ``model``."""
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(name.split(".")[-1] == t for name in names)]
    if missing:
        raise ConfigError(f"lora.target_modules {missing} match no module of {backbone!r} "
                          "(fix: use the model's module names, e.g. q_proj, v_proj for Llama)")


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


def tokenize_batch(encoder: DenseEncoder, batch: ContrastiveBatch) -> tuple[list[list[int]], list[list[int]]]:
    """Token-id rows of a batch's queries and passages, with the encoder's prefixes, EOS and max lengths."""
    c = encoder.config
    queries = encoder.tokenize([c.query_prefix + q for q in batch.queries], c.query_max_length)
    passages = encoder.tokenize([c.passage_prefix + p.full_text for p in batch.passages], c.passage_max_length)
    return queries, passages


def load_groups(config: TrainConfig, output_dir: Path | None = None) -> list[TrainingGroup]:
    """Read the training groups and drop the validation hold-out (whose ids go to ``validation_queries.txt``)."""
    groups = list(read_groups(config.data.train_groups))
    d = config.data
    if d.validation_fraction > 0:
        ids = [g.query_id for g in groups]
        if any(i is None for i in ids):
            raise ConfigError(f"data.validation_fraction needs query ids, but {config.data.train_groups} has groups "
                              "without one (fix: use Tevatron groups with query_id, or set validation_fraction = 0)")
        held = holdout(ids, d.validation_fraction, d.validation_seed)  # type: ignore[arg-type]
        groups = [g for g in groups if g.query_id not in held]
        if output_dir is not None:
            from nestrank.files import atomic_write

            with atomic_write(output_dir / VALIDATION_FILE) as handle:
                handle.writelines(f"{qid}\n" for qid in sorted(held))
    return groups


def plan_steps(config: TrainConfig, groups: list[TrainingGroup]) -> tuple[GroupBatcher, int, int]:
    """The batcher of a run over ``groups``, its optimizer steps per epoch and its total steps (``max_steps`` applied)."""
    t = config.train
    batcher = GroupBatcher(groups, t.batch_size, config.data.group_size, t.seed)
    steps_per_epoch = batcher.batches_per_epoch // t.grad_accum_steps
    if steps_per_epoch == 0:
        raise ConfigError(f"{batcher.batches_per_epoch} batches per epoch are fewer than train.grad_accum_steps "
                          f"{t.grad_accum_steps} (fix: lower grad_accum_steps or batch_size)")
    total = steps_per_epoch * t.epochs
    return batcher, steps_per_epoch, min(total, t.max_steps) if t.max_steps else total


def optimizer_and_schedule(params: list, train: OptimConfig, total: int) -> tuple[Any, Any]:
    """AdamW over ``params`` and its LambdaLR: linear warmup over ``warmup_ratio`` of ``total`` steps, then linear decay."""
    import torch

    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay)
    schedule = linear_warmup_decay(total, math.ceil(total * train.warmup_ratio))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def linear_warmup_decay(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The learning-rate factor at a step: linear 0 -> 1 over ``warmup_steps``, then linear 1 -> 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def hash_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across runs and platforms."""
    import numpy as np

    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


class RetrieverTrainer:
    """Trains a :class:`~nestrank.models.dense.DenseEncoder` contrastively; see the module docstring.

    Build it from a :class:`TrainConfig` and call :meth:`train`. ``accelerator`` defaults to
    ``accelerate.Accelerator`` configured from the environment (torchrun / accelerate launch).
    """

    def __init__(self, config: TrainConfig, accelerator: Accelerator | None = None,
                 progress: bool = True) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        self.config = config.validate()
        bf16 = config.model.dtype == "bfloat16"
        # cpu=True on machines without CUDA, so torchrun on CPU becomes gloo DDP rather than one process
        self.accelerator = accelerator or Accelerator(mixed_precision="bf16" if bf16 else "no",
                                                      cpu=not torch.cuda.is_available())
        self.progress = progress
        self.encoder: DenseEncoder | None = None  # the trained encoder, once train() has run
        self.output_dir = Path(config.train.output_dir)
        acc = self.accelerator
        sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        if sharded and config.train.resume_from:
            raise ConfigError("train.resume_from is not supported under FSDP/DeepSpeed yet (fix: resume with DDP, "
                              "or restart from the saved weights as a new backbone)")
        if acc.distributed_type == DistributedType.DEEPSPEED and config.train.gradcache_chunk_size:
            raise ConfigError("GradCache (train.gradcache_chunk_size > 0) does not work with DeepSpeed's engine-driven "
                              "backward (fix: set it to 0, or use FSDP)")

    def train(self) -> TrainResult:
        """Run the training loop to the end (or ``max_steps``); returns the final checkpoint."""
        import torch

        acc, cfg = self.accelerator, self.config
        t, d = cfg.train, cfg.data
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        groups = load_groups(cfg, self.output_dir if acc.is_main_process else None)
        batcher, steps_per_epoch, total = plan_steps(cfg, groups)

        torch.manual_seed(t.seed)
        encoder = self.encoder = build_encoder(cfg, device=str(acc.device))
        module = embedding_module(encoder)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer, scheduler = optimizer_and_schedule(params, t, total)
        module, optimizer = acc.prepare(module, optimizer)

        step = 0
        if t.resume_from:
            step = load_trainer_state(Path(t.resume_from), acc, module, optimizer, scheduler, cfg)
        elif acc.is_main_process:
            (self.output_dir / LOG_FILE).unlink(missing_ok=True)

        def embed(rows: list[list[int]]) -> torch.Tensor:
            with acc.autocast():
                return module(rows)

        bar = self._progress_bar(total, step)
        start_time, start_cpu, loss = time.perf_counter(), time.process_time(), float("nan")
        while step < total:
            epoch, first = divmod(step, steps_per_epoch)
            torch.manual_seed(hash_seed(t.seed, acc.process_index, step))  # dropout: same masks after a resume
            losses = []
            for micro in range(t.grad_accum_steps):
                batch = batcher.batch(epoch, first * t.grad_accum_steps + micro, acc.process_index, acc.num_processes)
                queries, passages = tokenize_batch(encoder, batch)
                last_micro = micro == t.grad_accum_steps - 1
                losses.append(contrastive_backward(
                    embed, queries, passages, d.group_size, t.temperature,
                    chunk_size=t.gradcache_chunk_size, loss_scale=1.0 / t.grad_accum_steps,
                    backward=acc.backward,
                    sync=lambda last, lm=last_micro: self._sync(module, last and lm)))
            grad_norm = float(acc.clip_grad_norm_(params, t.max_grad_norm or math.inf))  # the norm before clipping
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss = sum(losses) / len(losses)
            if step % t.log_every == 0 or step == total:
                self._log({"step": step, "epoch": epoch, "loss": loss, "grad_norm": grad_norm, "lr": lr,
                           "seconds": round(time.perf_counter() - start_time, 3),
                           "cpu_seconds": round(time.process_time() - start_cpu, 3)})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            if t.save_every and step % t.save_every == 0 and step < total:
                save_checkpoint(self.output_dir / f"checkpoint-{step}", acc, module, encoder, optimizer, scheduler,
                                cfg, step)
        if bar is not None:
            bar.close()
        final = self.output_dir / "final"
        save_checkpoint(final, acc, module, encoder, optimizer, scheduler, cfg, step)
        acc.wait_for_everyone()
        return TrainResult(final, step, loss, time.perf_counter() - start_time)

    def _sync(self, module: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if last else self.accelerator.no_sync(module)

    def _progress_bar(self, total: int, initial: int) -> Any:
        if not (self.progress and self.accelerator.is_main_process):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc="train retriever", unit="step", dynamic_ncols=True)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.output_dir / LOG_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def train_retriever(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train a retriever from ``config`` (see :class:`RetrieverTrainer`); returns the final checkpoint."""
    return RetrieverTrainer(config, progress=progress).train()
