"""Training of the Matryoshka reranker: contrastive, cascaded self-distillation and compensation stages.

One optimizer step = ``grad_accum_steps`` micro-batches of ``batch_size`` queries, each with
its group of ``group_size`` passages (1 positive + hard negatives; no in-batch negatives).
Each step samples ``reranker.students_per_step`` students (a depth and a width) from
``(seed, step)``. Per micro-batch, one *teacher pass* reads every teacher exit (full width)
and the exits of the full-width students; each compressed student gets its own pass. The
loss is :func:`~nestrank.train.reranker_losses.cascaded_self_distillation` (Eq. 9):

- ``contrastive``: hard-label group cross-entropy of every teacher and student (no KL);
  LoRA on the backbone + the score heads train.
- ``distill``: the same plus each student's KL to its super-teachers; same trainables.
- ``compensate``: the distilled checkpoint (``reranker.init``, its LoRA merged) is frozen and
  only a :class:`~nestrank.models.compensation.FactorizedCompensation` (V-/H-LoRA) trains.
  Teacher scores come from the model *without* the compensation, under ``no_grad`` (fixed
  targets); students run with it.

``reranker.kind = "pointwise"`` trains a RankLLaMA-style pointwise reranker through the same
loop instead (:mod:`nestrank.train.pointwise`); :func:`train_reranker` picks the trainer.

Checkpoints (``checkpoint-STEP/``, ``final/``) are Matryoshka checkpoint directories that
:meth:`~nestrank.models.matryoshka.MatryoshkaReranker.from_pretrained` loads in one call::

    nestrank.json, heads.safetensors [, compensation.safetensors]   reranker.save_pretrained
    lora/adapter_config.json, lora/adapter_model.safetensors       the distillation LoRA (PEFT)
    trainer_state.json, optimizer.pt, scheduler.json               for train.resume_from
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nestrank.errors import ConfigError
from nestrank.files import atomic_dir
from nestrank.train.batches import ContrastiveBatch
from nestrank.train.checkpoint import OPTIMIZER_FILE, RESUME_KEYS, SCHEDULER_FILE, STATE_FILE, check_compatible
from nestrank.train.config import RerankerConfig, TrainConfig
from nestrank.train.retriever import (
    LOG_FILE,
    TrainResult,
    check_lora_targets,
    enable_gradient_checkpointing,
    hash_seed,
    load_groups,
    optimizer_and_schedule,
    plan_steps,
)

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from peft import PeftModel

    from nestrank.models.matryoshka import MatryoshkaReranker
    from nestrank.models.matryoshka.config import MatryoshkaConfig
    from nestrank.train.reranker_losses import DistillationLoss

__all__ = ["RerankerTrainer", "Student", "build_reranker", "load_adapter_weights", "sample_students", "scoring_module",
           "student_options", "train_reranker"]

#: Settings that must not change between a checkpoint and the run resuming from it.
RERANKER_RESUME_KEYS = {**RESUME_KEYS, "reranker": None}
_STUDENT_STREAM = 2**32 - 1  # keeps the student sampler's random stream apart from the batcher's


@dataclass(frozen=True)
class Student:
    """A sub-structure of the reranker: exit layer ``depth`` and width ``compress`` (``""`` = full width)."""

    depth: int
    compress: str = ""

    @property
    def name(self) -> str:
        """Its Matryoshka config string, e.g. ``depth=15,compress=8:0.5``."""
        return f"depth={self.depth}" + (f",compress={self.compress}" if self.compress else "")


def student_options(config: RerankerConfig, teachers: Sequence[int]) -> list[Student]:
    """Every student a step can sample: a depth and a width that compresses before it.

    A full-width student at a teacher's depth is left out (it would be that teacher).
    """
    from nestrank.models.matryoshka.config import parse_config

    options = []
    for depth in sorted(set(config.student_depths)):
        for compress in dict.fromkeys(config.student_compress):
            steps = parse_config(f"compress={compress}" if compress else None).compress
            if (steps and steps[-1].layer >= depth) or (not compress and depth in teachers):
                continue
            options.append(Student(depth, compress))
    return options


def sample_students(options: Sequence[Student], count: int, seed: int, step: int) -> list[Student]:
    """``count`` distinct students for ``step``: a depth uniformly, then a width uniformly among that depth's options.

    A pure function of ``(seed, step)``, so a resumed run samples what an uninterrupted one did.
    """
    if count > len(options):
        raise ConfigError(f"reranker.students_per_step {count} exceeds the {len(options)} distinct students the "
                          "depths and widths allow (fix: lower it, or add student_depths / student_compress)")
    rng = np.random.default_rng([seed, step, _STUDENT_STREAM])
    depths = sorted({s.depth for s in options})
    chosen: list[Student] = []
    while len(chosen) < count:
        depth = depths[int(rng.integers(len(depths)))]
        widths = [s for s in options if s.depth == depth]
        pick = widths[int(rng.integers(len(widths)))]
        if pick not in chosen:
            chosen.append(pick)
    return chosen


def build_reranker(config: TrainConfig, device: str | None = None
                   ) -> tuple[MatryoshkaReranker, PeftModel | None, list[torch.nn.Parameter]]:
    """Load the reranker for ``config.reranker.stage``; returns it, its PEFT model (LoRA stages) and the trainable parameters.

    LoRA stages add LoRA to the backbone (or continue ``init``'s ``lora/`` adapter) and train
    it with the score heads' weights (kept in fp32; biases stay fixed). ``compensate`` loads
    ``init`` with its LoRA merged, freezes everything and attaches a fresh V-/H-LoRA
    compensation (fp32).
    """
    from nestrank.models.matryoshka import MatryoshkaReranker
    from nestrank.models.matryoshka.checkpoint import LORA_DIR
    from nestrank.models.matryoshka.compensation import CompensationSettings, FactorizedCompensation
    from nestrank.models.settings import SETTINGS_FILE

    m, d, r, lo = config.model, config.data, config.reranker, config.lora
    init = Path(r.init) if r.init else None
    if init is not None and not (init / SETTINGS_FILE).is_file():
        raise ConfigError(f"reranker.init: {init} is not a Matryoshka checkpoint (no {SETTINGS_FILE}) (fix: point to a "
                          "directory written by `nestrank train reranker`, e.g. out/distill/final)")
    lora_stage = r.stage != "compensate"
    reranker = MatryoshkaReranker.from_pretrained(
        init or m.backbone, dtype="bfloat16" if m.dtype == "bfloat16" else "float32", device=device,
        merge_lora=not lora_stage, max_passage_tokens=d.passage_max_length, max_query_tokens=d.query_max_length)
    if reranker.compensation is not None:
        raise ConfigError(f"reranker.init: {init} already has a compensation (fix: start from the distilled checkpoint, "
                          "or continue a compensation run with train.resume_from)")
    model = reranker.model
    model.requires_grad_(False)
    peft_model = None
    if lora_stage:
        from peft import LoraConfig, PeftModel, get_peft_model

        if m.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        adapter = None if init is None else init / LORA_DIR
        if adapter is not None and adapter.is_dir():
            peft_model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
        else:
            check_lora_targets(model, lo.target_modules, m.backbone)
            peft_model = get_peft_model(model, LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                                                          target_modules=list(lo.target_modules),
                                                          task_type="CAUSAL_LM"))
        # Group losses are shift-invariant per group, so a head's bias gets no gradient (only rounding
        # noise, which Adam would turn into lr-sized random steps): the weights train, the biases stay.
        reranker.heads.float().requires_grad_(False)
        heads = [head.weight.requires_grad_(True) for head in reranker.heads.values()]
        params = [p for p in peft_model.parameters() if p.requires_grad] + heads
    else:
        reranker.heads.requires_grad_(False)
        settings = CompensationSettings(r=r.compensation_r, alpha=r.compensation_alpha,
                                        targets=tuple(lo.target_modules), factors=tuple(r.compensation_factors))
        compensation = FactorizedCompensation(reranker.decoder.layers, settings).float()
        reranker.set_compensation(compensation)
        if m.gradient_checkpointing:  # recomputed layers must see the adapters their forward saw
            enable_gradient_checkpointing(model, context_fn=compensation.checkpoint_contexts)
        params = list(compensation.parameters())
    model.train()
    return reranker, peft_model, params


def scoring_module(reranker: MatryoshkaReranker) -> torch.nn.Module:
    """A module running :meth:`MatryoshkaReranker.forward_batch` on several passes, with autograd.

    ``module(passes)`` takes ``(ids, layouts, passage_lengths, config, exits)`` tuples and
    returns one ``(B, len(exits))`` table per pass: all passes of a micro-batch go through one
    call, as DDP expects one forward per backward. It owns the backbone, the heads and the
    compensation (when set), so DDP can wrap it.
    """
    import torch

    class ScoringModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = reranker.model
            self.heads = reranker.heads
            if reranker.compensation is not None:
                self.compensation = reranker.compensation

        def forward(self, passes: list[tuple]) -> list[torch.Tensor]:
            return [reranker.forward_batch(ids, layouts, config, exits, lengths)
                    for ids, layouts, lengths, config, exits in passes]

    return ScoringModule()


class RerankerTrainer:
    """Trains a :class:`~nestrank.models.matryoshka.MatryoshkaReranker`; see the module docstring.

    Build it from a :class:`TrainConfig` and call :meth:`train`; afterwards :attr:`reranker`
    is the trained reranker (in eval mode).
    """

    def __init__(self, config: TrainConfig, accelerator: Accelerator | None = None, progress: bool = True) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, DistributedType

        self.config = config.validate_reranker()
        bf16 = config.model.dtype == "bfloat16"
        # unsampled students leave some heads without gradients in a step: DDP must allow unused parameters
        self.accelerator = accelerator or Accelerator(
            mixed_precision="bf16" if bf16 else "no", cpu=not torch.cuda.is_available(),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        if self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise ConfigError("the reranker trainer runs on one process or DDP (fix: launch without FSDP/DeepSpeed)")
        self.progress = progress
        self.output_dir = Path(config.train.output_dir)
        self.reranker: MatryoshkaReranker | None = None  # the trained reranker, once train() has run
        self.teachers: list[int] = []
        self.module: torch.nn.Module | None = None
        self._peft_model: PeftModel | None = None

    def train(self) -> TrainResult:
        """Run the training loop to the end (or ``max_steps``); returns the final checkpoint."""
        import torch

        acc, cfg = self.accelerator, self.config
        t, r = cfg.train, cfg.reranker
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        groups = load_groups(cfg, self.output_dir if acc.is_main_process else None)
        batcher, steps_per_epoch, total = plan_steps(cfg, groups)

        torch.manual_seed(t.seed)
        module, params, options = self._setup(str(acc.device))
        optimizer, scheduler = optimizer_and_schedule(params, t, total)
        self.module, optimizer = acc.prepare(module, optimizer)

        step = 0
        if t.resume_from:
            step = self._resume(Path(t.resume_from), optimizer, scheduler)
        elif acc.is_main_process:
            (self.output_dir / LOG_FILE).unlink(missing_ok=True)

        bar = self._progress_bar(total, step)
        start_time, start_cpu, loss = time.perf_counter(), time.process_time(), float("nan")
        while step < total:
            epoch, first = divmod(step, steps_per_epoch)
            torch.manual_seed(hash_seed(t.seed, acc.process_index, step))  # dropout: same masks after a resume
            students = sample_students(options, r.students_per_step, t.seed, step) if options else []
            losses: list[float] = []
            parts: dict[str, float] = {}
            for micro in range(t.grad_accum_steps):
                batch = batcher.batch(epoch, first * t.grad_accum_steps + micro, acc.process_index, acc.num_processes)
                with self._sync(micro == t.grad_accum_steps - 1):
                    result = self.batch_loss(batch, students)
                    acc.backward(result.total / t.grad_accum_steps)
                losses.append(float(result.total.detach()))
                for key, value in result.parts.items():
                    parts[key] = parts.get(key, 0.0) + value / t.grad_accum_steps
            grad_norm = float(acc.clip_grad_norm_(params, t.max_grad_norm or math.inf))  # the norm before clipping
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            # every process holds an equal share of the batch: the mean over processes is the global batch's loss
            means = acc.reduce(torch.tensor([sum(losses) / len(losses), *parts.values()], device=acc.device), "mean")
            loss, parts = float(means[0]), dict(zip(parts, means[1:].tolist(), strict=True))
            if step % t.log_every == 0 or step == total:
                self._log({"step": step, "epoch": epoch, "loss": loss, "parts": parts, "grad_norm": grad_norm,
                           "lr": lr, "students": [s.name for s in students],
                           "seconds": round(time.perf_counter() - start_time, 3),
                           "cpu_seconds": round(time.process_time() - start_cpu, 3)})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            if t.save_every and step % t.save_every == 0 and step < total:
                self._save(self.output_dir / f"checkpoint-{step}", optimizer, scheduler, step)
        if bar is not None:
            bar.close()
        final = self.output_dir / "final"
        self._save(final, optimizer, scheduler, step)
        self._finish()
        acc.wait_for_everyone()
        return TrainResult(final, step, loss, time.perf_counter() - start_time)

    def batch_loss(self, batch: ContrastiveBatch, students: Sequence[Student]) -> DistillationLoss:
        """The stage's loss on one micro-batch: one teacher pass, plus one pass per compressed student.

        In ``compensate`` the teacher pass runs without the compensation and without
        gradients, and the full-width students get a pass of their own (with it).
        """
        import torch

        from nestrank.models.matryoshka.config import MatryoshkaConfig, parse_config
        from nestrank.train.reranker_losses import StudentScores, cascaded_self_distillation

        r, t = self.config.reranker, self.config.train
        compensate = r.stage == "compensate"
        full_width = sorted({s.depth for s in students if not s.compress})
        teacher_exits = tuple(sorted(set(self.teachers) | (set() if compensate else set(full_width))))
        if compensate:
            with torch.no_grad(), self._without_compensation():
                (by_exit,) = self._scores(batch, [MatryoshkaConfig(teacher_exits)])
            trained = [MatryoshkaConfig(tuple(full_width))] if full_width else []
        else:
            by_exit, trained = {}, [MatryoshkaConfig(teacher_exits)]
        compressed = [s for s in students if s.compress]
        outputs = self._scores(batch, trained + [parse_config(s.name) for s in compressed])
        for output in outputs[:len(trained)]:
            by_exit.update(output)
        widths = {s: output[s.depth] for s, output in zip(compressed, outputs[len(trained):], strict=True)}
        scored = [StudentScores(s.depth, widths[s] if s.compress else by_exit[s.depth], s.name) for s in students]
        teachers = {layer: by_exit[layer] for layer in self.teachers}
        return cascaded_self_distillation(teachers, scored, temperature=t.temperature,
                                          distill_temperature=r.distill_temperature, distill=r.stage != "contrastive")

    # ----------------------------------------------------------------- internals

    def _setup(self, device: str) -> tuple[torch.nn.Module, list[torch.nn.Parameter], list[Student]]:
        """Load the model for the stage: the module to train, its trainable parameters and the student options."""
        cfg = self.config
        reranker, self._peft_model, params = build_reranker(cfg, device=device)
        self.reranker = reranker
        self.teachers = self._teachers(reranker.num_layers)
        options = student_options(cfg.reranker, self.teachers)
        sample_students(options, cfg.reranker.students_per_step, cfg.train.seed, 0)  # fails early: too few options
        return scoring_module(reranker), params, options

    def _finish(self) -> None:
        """Leave the trained reranker ready to score, as a reload of the final checkpoint would be."""
        reranker = self.reranker
        assert reranker is not None
        reranker.model.eval()
        reranker.heads.to(reranker.model.get_output_embeddings().weight.dtype)  # score outside autocast

    def _teachers(self, num_layers: int) -> list[int]:
        r = self.config.reranker
        teachers = sorted(r.teachers) or [num_layers]
        if teachers[-1] > num_layers:
            raise ConfigError(f"reranker.teachers: layer {teachers[-1]} does not exist, the model has {num_layers} "
                              f"layers (fix: use layers 1..{num_layers})")
        deep = [n for n in r.student_depths if n > teachers[-1]]
        if deep:
            raise ConfigError(f"reranker.student_depths {deep} are deeper than the deepest teacher {teachers[-1]}: "
                              "such students would learn from no teacher (fix: add a deeper teacher or drop them)")
        return teachers

    def _scores(self, batch: ContrastiveBatch, configs: Sequence[MatryoshkaConfig]) -> list[dict[int, torch.Tensor]]:
        """``{exit: (B, G) scores}`` of one pass per config over the batch's pairs, in one module call."""
        reranker = self.reranker
        assert reranker is not None
        size = self.config.data.group_size
        queries = [q for q in batch.queries for _ in range(size)]
        passes, exits = [], []
        for config in configs:
            pairs = [reranker.encode(q, doc, config) for q, doc in zip(queries, batch.passages, strict=True)]
            exits.append(config.validate(reranker.num_layers))
            passes.append((*reranker.batch_inputs(pairs), config, exits[-1]))
        with self.accelerator.autocast():
            tables = self.module(passes)
        return [{layer: table[:, i].view(len(batch.queries), size) for i, layer in enumerate(layers)}
                for table, layers in zip(tables, exits, strict=True)]

    @contextlib.contextmanager
    def _without_compensation(self) -> Iterator[None]:
        reranker = self.reranker
        assert reranker is not None
        compensation = reranker.compensation
        reranker.set_compensation(None)
        try:
            yield
        finally:
            reranker.set_compensation(compensation)

    def _sync(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if last else self.accelerator.no_sync(self.module)

    def _save(self, path: Path, optimizer: torch.optim.Optimizer, scheduler: Any, step: int) -> Path:
        """Write a checkpoint directory atomically (built aside, renamed into place); main process only."""
        import torch

        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            with atomic_dir(path, STATE_FILE, "a training checkpoint") as tmp:
                self._save_model(tmp)
                torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
                (tmp / SCHEDULER_FILE).write_text(json.dumps(scheduler.state_dict(), default=lambda _: None),
                                                  encoding="utf-8")
                (tmp / STATE_FILE).write_text(json.dumps({"step": step, "world_size": acc.num_processes,
                                                          "config": self.config.to_dict()}, indent=2),
                                              encoding="utf-8")
        acc.wait_for_everyone()
        return path

    def _save_model(self, path: Path) -> None:
        """The reranker's files of a checkpoint: a Matryoshka checkpoint directory with ``lora/``."""
        from nestrank.models.matryoshka.checkpoint import LORA_DIR

        reranker = self.reranker
        assert reranker is not None
        reranker.save_pretrained(path)
        if self._peft_model is not None:
            self._peft_model.save_pretrained(path / LORA_DIR, safe_serialization=True, save_embedding_layers=False)
        elif (Path(self.config.reranker.init) / LORA_DIR).is_dir():  # compensate: keep the distilled LoRA
            shutil.copytree(Path(self.config.reranker.init) / LORA_DIR, path / LORA_DIR)

    def _resume(self, path: Path, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
        """Load weights (LoRA, heads, compensation), optimizer and scheduler from ``path``; returns its step."""
        import torch

        state_file = path / STATE_FILE
        if not state_file.is_file():
            raise ConfigError(f"train.resume_from: {path} is not a training checkpoint (no {STATE_FILE}; "
                              "fix: point to a checkpoint-STEP directory written by the trainer)")
        state = json.loads(state_file.read_text(encoding="utf-8"))
        check_compatible(state["config"], self.config.to_dict(), path, RERANKER_RESUME_KEYS)
        self._load_model(path)
        optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
        scheduler.load_state_dict(json.loads((path / SCHEDULER_FILE).read_text(encoding="utf-8")))
        return int(state["step"])

    def _load_model(self, path: Path) -> None:
        """Load the trained weights of checkpoint ``path`` (LoRA, heads, compensation) into the model."""
        from safetensors.torch import load_file

        from nestrank.models.matryoshka.checkpoint import COMPENSATION_FILE, HEADS_FILE, LORA_DIR

        reranker = self.reranker
        assert reranker is not None
        if self._peft_model is not None:
            load_adapter_weights(self._peft_model, path / LORA_DIR, path)
        heads = load_file(path / HEADS_FILE)
        reranker.heads.load_state_dict({k.removeprefix("heads."): v for k, v in heads.items()})
        if reranker.compensation is not None:
            reranker.compensation.load_state_dict(load_file(path / COMPENSATION_FILE))

    def _progress_bar(self, total: int, initial: int) -> Any:
        if not (self.progress and self.accelerator.is_main_process):
            return None
        from tqdm.auto import tqdm

        r = self.config.reranker
        label = "pointwise" if r.kind == "pointwise" else r.stage
        return tqdm(total=total, initial=initial, desc=f"train reranker ({label})", unit="step",
                    dynamic_ncols=True)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.output_dir / LOG_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def load_adapter_weights(peft_model: PeftModel, adapter_dir: Path, checkpoint: Path) -> None:
    """Load ``adapter_dir``'s ``adapter_model.safetensors`` into ``peft_model`` (resume); refuses weights that do not fit."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(peft_model, load_file(adapter_dir / "adapter_model.safetensors"))
    if getattr(result, "unexpected_keys", None):
        raise ConfigError(f"{checkpoint}: adapter weights do not fit the model ({result.unexpected_keys[:2]} ...)")


def train_reranker(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train the reranker ``config`` describes; returns the final checkpoint.

    :class:`RerankerTrainer` for ``reranker.kind = "matryoshka"``,
    :class:`~nestrank.train.pointwise.PointwiseTrainer` for ``"pointwise"``.
    """
    if config.reranker.kind == "pointwise":
        from nestrank.train.pointwise import PointwiseTrainer

        return PointwiseTrainer(config, progress=progress).train()
    return RerankerTrainer(config, progress=progress).train()
