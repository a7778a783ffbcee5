"""The training loop every nestrank trainer runs (retriever, Matryoshka reranker, pointwise reranker).

One optimizer step = ``train.grad_accum_steps`` micro-batches of the global batch (each
process takes its slice, :class:`~nestrank.train.batches.GroupBatcher`). :class:`Trainer`
owns what the trainers share: the validation hold-out (``validation_queries.txt``) and the
step plan, AdamW with a linear warmup/decay schedule, dropout re-seeded per step, gradient
sync and accumulation, clipping, the log (``train_log.jsonl``, one JSON line per logged
step), the progress bar, checkpoints (:mod:`nestrank.train.checkpoint`) and resuming (from
``train.resume_from``, else from the newest checkpoint of the same configuration in the
output directory, so re-running an interrupted command continues it). A
trainer subclasses it and supplies its model (:meth:`Trainer.setup`), the loss of a
micro-batch (:meth:`Trainer.batch_loss`, or the whole :meth:`Trainer.micro_step` when it
runs its own backward) and its model's files in a checkpoint (:meth:`Trainer.save_model`,
:meth:`Trainer.load_model`).

Launch with ``python``/``nestrank train ...`` (one process), or with ``torchrun`` or
``accelerate launch`` for several; ``accelerator`` defaults to ``accelerate.Accelerator``
configured from the environment.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestrank.data.groups import TrainingGroup, read_groups
from nestrank.errors import ConfigError
from nestrank.models.cpu_dtype import warn_slow_cpu_bf16
from nestrank.train.batches import ContrastiveBatch, holdout
from nestrank.train.checkpoint import (
    RERANKER_RESUME_KEYS,
    RESUME_KEYS,
    is_sharded,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from nestrank.train.config import DEFAULT_TEMPERATURE, TrainConfig
from nestrank.train.schedule import hash_seed, optimizer_and_schedule, plan_steps
from nestrank.train.validation import BEST_DIR, BEST_FILE, best_so_far, group_mrr, validation_batch

if TYPE_CHECKING:
    import numpy as np
    import torch
    from accelerate import Accelerator

__all__ = ["LOG_FILE", "VALIDATION_FILE", "VALIDATION_LOG", "RerankerTrainer", "Trainer", "TrainResult", "load_groups"]

LOG_FILE = "train_log.jsonl"
VALIDATION_FILE = "validation_queries.txt"
VALIDATION_LOG = "validation_log.jsonl"  # one record per validation (train.eval_every)
#: A micro-batch's loss (a float, for the log) and its named parts.
MicroLoss = tuple[float, dict[str, float]]


@dataclass
class TrainResult:
    """What a trainer produced: the final checkpoint, steps done, the last loss and the checkpoint it resumed from."""

    checkpoint: Path
    steps: int
    loss: float
    seconds: float
    resumed_from: Path | None = None
    best: Path | None = None  # with train.eval_every: the checkpoint of the best validation figure
    best_validation: float | None = None


def load_groups(config: TrainConfig, output_dir: Path | None = None) -> list[TrainingGroup]:
    """Read the training groups and drop the validation hold-out (whose ids go to ``validation_queries.txt``)."""
    return split_groups(config, output_dir)[0]


def split_groups(config: TrainConfig, output_dir: Path | None = None) -> tuple[list[TrainingGroup], list[TrainingGroup]]:
    """The training groups and the held-out ones (``data.validation_fraction``; ids to ``validation_queries.txt``)."""
    groups = list(read_groups(config.data.train_groups))
    d = config.data
    if d.validation_fraction <= 0:
        return groups, []
    ids = [g.query_id for g in groups]
    if any(i is None for i in ids):
        raise ConfigError(f"data.validation_fraction needs query ids, but {config.data.train_groups} has groups "
                          "without one (fix: use Tevatron groups with query_id, or set validation_fraction = 0)")
    held = holdout(ids, d.validation_fraction, d.validation_seed)  # type: ignore[arg-type]
    if output_dir is not None:
        from nestrank.files import atomic_write

        with atomic_write(output_dir / VALIDATION_FILE) as handle:
            handle.writelines(f"{qid}\n" for qid in sorted(held))
    return [g for g in groups if g.query_id not in held], [g for g in groups if g.query_id in held]


def _cut_log(path: Path, step: int) -> None:
    """Keep the log records of steps up to ``step`` (all gone for a fresh run), so a resumed run logs each step once."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    from nestrank.files import atomic_write

    with atomic_write(path) as handle:
        handle.writelines(kept)


class Trainer:
    """The training loop; subclasses supply the model, the loss and the model's checkpoint files.

    Build it from a :class:`TrainConfig` and call :meth:`train`. Hooks: :meth:`setup`
    (required), :meth:`batch_loss` or :meth:`micro_step`, :meth:`save_model` and
    :meth:`load_model` (required); optionally :meth:`validate`, :meth:`check_distributed`,
    :meth:`start_step`, :meth:`summarize`, :meth:`log_fields`, :meth:`gather_model_state`
    and :meth:`finish`.
    """

    #: Settings that must not change between a checkpoint and the run resuming from it.
    resume_keys: dict[str, tuple[str, ...] | None] = RESUME_KEYS
    #: Options of DDP (``accelerate.utils.DistributedDataParallelKwargs``), e.g. ``find_unused_parameters``.
    ddp_options: dict[str, Any] = {}
    #: The progress bar's label.
    label = "train"
    #: ``train.temperature`` when the config leaves it at 0.
    default_temperature = DEFAULT_TEMPERATURE["retriever"]

    def __init__(self, config: TrainConfig, accelerator: Accelerator | None = None, progress: bool = True) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.config = self.validate(config)
        bf16 = config.model.dtype == "bfloat16"
        if bf16 and not torch.cuda.is_available():  # full fine-tuning keeps fp32 weights: only autocast is bf16
            warn_slow_cpu_bf16()
        handlers = [DistributedDataParallelKwargs(**self.ddp_options)] if self.ddp_options else []
        # cpu=True on machines without CUDA, so torchrun on CPU becomes gloo DDP rather than one process
        self.accelerator = accelerator or Accelerator(mixed_precision="bf16" if bf16 else "no",
                                                      cpu=not torch.cuda.is_available(), kwargs_handlers=handlers)
        self.progress = progress
        self.output_dir = Path(config.train.output_dir)
        self.module: torch.nn.Module | None = None  # the prepared (DDP-wrapped) module, once train() has set it up
        self.check_distributed()

    # ----------------------------------------------------------------- hooks

    def validate(self, config: TrainConfig) -> TrainConfig:
        """Check ``config`` for this trainer (raise :class:`ConfigError`); returns it, temperature 0 resolved."""
        return self.resolve_defaults(config).validate()

    def resolve_defaults(self, config: TrainConfig) -> TrainConfig:
        """A copy of ``config`` with ``train.temperature = 0`` replaced by :attr:`default_temperature`."""
        if config.train.temperature:
            return config
        config = copy.deepcopy(config)
        config.train.temperature = self.default_temperature
        return config

    def check_distributed(self) -> None:
        """Raise :class:`ConfigError` when the trainer cannot run under :attr:`accelerator`'s distributed setup."""

    def setup(self, device: str) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
        """Load the model on ``device``; returns the module to train (DDP wraps it) and its trainable parameters."""
        raise NotImplementedError

    def start_step(self, step: int) -> None:
        """Called before the micro-batches of optimizer step ``step`` (0-based)."""

    def batch_loss(self, batch: ContrastiveBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one micro-batch (to backpropagate) and its named parts (floats, for the log)."""
        raise NotImplementedError(f"{type(self).__name__} computes no batch loss: it overrides micro_step")

    def micro_step(self, batch: ContrastiveBatch, last: bool) -> MicroLoss:
        """Forward and backward of one micro-batch (``last``: the step's last, whose backward syncs gradients)."""
        with self.sync_gradients(last):
            loss, parts = self.batch_loss(batch)
            self.accelerator.backward(loss / self.config.train.grad_accum_steps)
        return float(loss.detach()), parts

    def summarize(self, losses: list[MicroLoss]) -> tuple[float, dict[str, Any]]:
        """The step's loss and the fields logged after it: the mean over micro-batches and processes, with its parts."""
        import torch

        acc, accum = self.accelerator, self.config.train.grad_accum_steps
        parts: dict[str, float] = {}
        for _, micro_parts in losses:
            for key, value in micro_parts.items():
                parts[key] = parts.get(key, 0.0) + value / accum
        # every process holds an equal share of the batch: the mean over processes is the global batch's loss
        total = sum(loss for loss, _ in losses) / len(losses)
        means = acc.reduce(torch.tensor([total, *parts.values()], device=acc.device), "mean")
        return float(means[0]), {"parts": dict(zip(parts, means[1:].tolist(), strict=True))}

    def log_fields(self) -> dict[str, Any]:
        """Fields of the step's log record after ``lr``."""
        return {}

    def gather_model_state(self) -> Any:
        """Called on every process before a checkpoint is written; its result goes to :meth:`save_model`."""
        return None

    def save_model(self, path: Path, state: Any) -> None:
        """Write the model's files into checkpoint directory ``path`` (main process only)."""
        raise NotImplementedError

    def load_model(self, path: Path) -> None:
        """Load the trained weights of checkpoint ``path`` into the model (resume)."""
        raise NotImplementedError

    def validation_scores(self, batch: ContrastiveBatch) -> dict[str, np.ndarray]:
        """``{name: (queries, group) scores}`` of the held-out pairs (``train.eval_every``), computed without dropout."""
        raise NotImplementedError(f"{type(self).__name__} does not validate during training (set train.eval_every = 0)")

    def finish(self) -> None:
        """Called after the final checkpoint: leave the trained model ready to use."""

    # ----------------------------------------------------------------- the loop

    def train(self) -> TrainResult:
        """Run the training loop to the end (or ``max_steps``); returns the final checkpoint."""
        import torch

        acc, cfg = self.accelerator, self.config
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        groups, held = split_groups(cfg, self.output_dir if acc.is_main_process else None)
        batcher, steps_per_epoch, total = plan_steps(cfg, groups)
        held_batch = validation_batch(cfg, held) if t.eval_every else None
        best: tuple[float, int] | None = None

        torch.manual_seed(t.seed)
        module, params = self.setup(str(acc.device))
        optimizer, scheduler = optimizer_and_schedule(params, t, total)
        self.module, optimizer = acc.prepare(module, optimizer)

        step = 0
        resume = Path(t.resume_from) if t.resume_from else latest_checkpoint(self.output_dir, cfg)
        if resume is not None:
            step = load_checkpoint(resume, cfg, optimizer, scheduler, self.load_model, self.resume_keys)
            best = best_so_far(self.output_dir, step)
        if acc.is_main_process:
            _cut_log(self.output_dir / LOG_FILE, step)
            _cut_log(self.output_dir / VALIDATION_LOG, step)

        bar = self._progress_bar(total, step)
        start_time, start_cpu, loss = time.perf_counter(), time.process_time(), float("nan")
        while step < total:
            epoch, first = divmod(step, steps_per_epoch)
            torch.manual_seed(hash_seed(t.seed, acc.process_index, step))  # dropout: same masks after a resume
            self.start_step(step)
            losses = []
            for micro in range(t.grad_accum_steps):
                batch = batcher.batch(epoch, first * t.grad_accum_steps + micro, acc.process_index, acc.num_processes)
                losses.append(self.micro_step(batch, micro == t.grad_accum_steps - 1))
            grad_norm = float(acc.clip_grad_norm_(params, t.max_grad_norm or math.inf))  # the norm before clipping
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss, fields = self.summarize(losses)
            if step % t.log_every == 0 or step == total:
                self._log({"step": step, "epoch": epoch, "loss": loss, **fields, "grad_norm": grad_norm, "lr": lr,
                           **self.log_fields(), "seconds": round(time.perf_counter() - start_time, 3),
                           "cpu_seconds": round(time.process_time() - start_cpu, 3)})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            if t.save_every and step % t.save_every == 0 and step < total:
                self._save(self.output_dir / f"checkpoint-{step}", optimizer, scheduler, step)
            if held_batch is not None and (step % t.eval_every == 0 or step == total):
                best = self._validate(held_batch, step, best, optimizer, scheduler)
        if bar is not None:
            bar.close()
        final = self._save(self.output_dir / "final", optimizer, scheduler, step)
        self.finish()
        acc.wait_for_everyone()
        return TrainResult(final, step, loss, time.perf_counter() - start_time, resumed_from=resume,
                           best=None if best is None else self.output_dir / BEST_DIR,
                           best_validation=None if best is None else best[0])

    def _validate(self, batch: ContrastiveBatch, step: int, best: tuple[float, int] | None, optimizer: Any,
                  scheduler: Any) -> tuple[float, int] | None:
        """Score the held-out pairs, log their MRR and keep the best step's checkpoint in ``best/``."""
        assert self.module is not None
        self.module.eval()
        try:
            with self.accelerator.autocast():  # bf16 runs: the fp32 heads meet bf16 states as in training
                scores = self.validation_scores(batch)
        finally:
            self.module.train()
        figures = {f"mrr.{name}" if name else "mrr": group_mrr(table) for name, table in scores.items()}
        figure = sum(figures.values()) / len(figures)
        self._log({"step": step, "validation": {"mrr_mean": figure, **figures}, "queries": len(batch.queries)},
                  VALIDATION_LOG)
        if best is not None and figure <= best[0]:
            return best
        self._save(self.output_dir / BEST_DIR, optimizer, scheduler, step)
        if self.accelerator.is_main_process:
            from nestrank.files import atomic_write

            with atomic_write(self.output_dir / BEST_DIR / BEST_FILE) as handle:
                handle.write(json.dumps({"step": step, "mrr_mean": figure, **figures}) + "\n")
        return figure, step

    def sync_gradients(self, last: bool) -> contextlib.AbstractContextManager:
        """The context of a micro-batch's forward and backward: DDP all-reduces gradients only in the ``last``."""
        return contextlib.nullcontext() if last else self.accelerator.no_sync(self.module)

    def _save(self, path: Path, optimizer: torch.optim.Optimizer, scheduler: Any, step: int) -> Path:
        return save_checkpoint(path, self.accelerator, optimizer, scheduler, self.config, step, self.save_model,
                               self.gather_model_state)

    def _progress_bar(self, total: int, initial: int) -> Any:
        if not (self.progress and self.accelerator.is_main_process):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=self.label, unit="step", dynamic_ncols=True)

    def _log(self, record: dict[str, Any], name: str = LOG_FILE) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.output_dir / name, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


class RerankerTrainer(Trainer):
    """What the reranker trainers share: the ``[reranker]`` section (checked, and fixed for a resume), one process or DDP.

    Subclasses: :class:`~nestrank.train.matryoshka.MatryoshkaTrainer`,
    :class:`~nestrank.train.pointwise.PointwiseTrainer`; after :meth:`train`, :attr:`reranker`
    is the trained reranker (in eval mode).
    """

    resume_keys = RERANKER_RESUME_KEYS
    default_temperature = DEFAULT_TEMPERATURE["reranker"]
    # a step may leave parameters without gradients (the Matryoshka trainer's unsampled students): DDP must allow it
    ddp_options = {"find_unused_parameters": True}

    def __init__(self, config: TrainConfig, accelerator: Accelerator | None = None, progress: bool = True) -> None:
        super().__init__(config, accelerator, progress)
        self.reranker: Any = None  # the trained reranker, once train() has run
        self._peft_model: Any = None  # the PEFT model whose adapters train, if any

    def validate(self, config: TrainConfig) -> TrainConfig:
        """The ``[reranker]`` section as well (:meth:`TrainConfig.validate_reranker`); temperature 0 means 1.0."""
        return self.resolve_defaults(config).validate_reranker()

    def validation_scores(self, batch: ContrastiveBatch) -> dict[str, np.ndarray]:
        """The reranker's scores of the held-out pairs: ``{"": full model}`` (Matryoshka: per ``train.eval_configs``, ``"full"`` for ``""``)."""
        configs = self.config.train.eval_configs or [""]
        queries = [q for q in batch.queries for _ in range(len(batch.passages) // len(batch.queries))]
        shape = (len(batch.queries), -1)
        return {"" if configs == [""] else config or "full": self.reranker.score(queries, batch.passages,
                                                                                  config=config or None).reshape(shape)
                for config in configs}

    def check_distributed(self) -> None:
        """One process or DDP only."""
        if is_sharded(self.accelerator):
            raise ConfigError("the reranker trainer runs on one process or DDP (fix: launch without FSDP/DeepSpeed)")
