"""Training of the Matryoshka reranker: contrastive, cascaded self-distillation and compensation stages.

One optimizer step = ``grad_accum_steps`` micro-batches of ``batch_size`` queries, each with
its group of ``group_size`` passages (1 positive + hard negatives; no in-batch negatives);
the loop is :class:`~nestrank.train.loop.Trainer`'s. Each step samples
``reranker.students_per_step`` students (a depth and a width, :mod:`nestrank.train.students`)
from ``(seed, step)``. Per micro-batch, one *teacher pass* reads every teacher exit (full
width) and the exits of the full-width students; each compressed student gets its own pass.
The loss is :func:`~nestrank.train.losses.distillation.cascaded_self_distillation` (Eq. 9):

- ``contrastive``: hard-label group cross-entropy of every teacher and student (no KL);
  LoRA on the backbone + the score heads train.
- ``distill``: the same plus each student's KL to its super-teachers; same trainables.
- ``compensate``: the distilled checkpoint (``reranker.init``, its LoRA merged) is frozen and
  only a :class:`~nestrank.models.matryoshka.compensation.FactorizedCompensation` (V-/H-LoRA) trains.
  Teacher scores come from the model *without* the compensation, under ``no_grad`` (fixed
  targets); students run with it.

Checkpoints (``checkpoint-STEP/``, ``final/``) are Matryoshka checkpoint directories that
:meth:`~nestrank.models.matryoshka.MatryoshkaReranker.from_pretrained` loads in one call::

    nestrank.json, heads.safetensors [, compensation.safetensors]   reranker.save_pretrained
    lora/adapter_config.json, lora/adapter_model.safetensors       the distillation LoRA (PEFT)
    trainer_state.json, optimizer.pt, scheduler.json               for train.resume_from
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestrank.errors import ConfigError
from nestrank.train.backbone import add_lora, enable_gradient_checkpointing
from nestrank.train.batches import ContrastiveBatch
from nestrank.train.checkpoint import load_adapter_weights
from nestrank.train.config import TrainConfig
from nestrank.train.loop import RerankerTrainer
from nestrank.train.losses.distillation import StudentScores, cascaded_self_distillation
from nestrank.train.students import Student, sample_students, student_options

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from peft import PeftModel

    from nestrank.models import MatryoshkaConfig, MatryoshkaReranker

__all__ = ["MatryoshkaTrainer", "build_reranker", "scoring_module"]


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
        from peft import PeftModel

        if m.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        adapter = None if init is None else init / LORA_DIR
        if adapter is not None and adapter.is_dir():
            peft_model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
        else:
            peft_model = add_lora(model, config, "CAUSAL_LM")
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


class MatryoshkaTrainer(RerankerTrainer):
    """Trains a :class:`~nestrank.models.matryoshka.MatryoshkaReranker`; see the module docstring.

    Build it from a :class:`TrainConfig` and call :meth:`train`; afterwards :attr:`reranker`
    is the trained reranker (in eval mode).
    """

    reranker: MatryoshkaReranker | None
    _peft_model: PeftModel | None

    def __init__(self, config: TrainConfig, accelerator: Accelerator | None = None, progress: bool = True) -> None:
        super().__init__(config, accelerator, progress)
        self.teachers: list[int] = []  # full-width exits read in the teacher pass
        self.students: list[Student] = []  # this step's sampled students
        self._options: list[Student] = []  # every student a step can sample

    @property
    def label(self) -> str:  # type: ignore[override]
        """The progress bar's label."""
        return f"train reranker ({self.config.reranker.stage})"

    def setup(self, device: str) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
        """Load the model for the stage (:func:`build_reranker`); checks the teachers and students against it."""
        cfg = self.config
        reranker, self._peft_model, params = build_reranker(cfg, device=device)
        self.reranker = reranker
        self.teachers = self._teachers(reranker.num_layers)
        self._options = student_options(cfg.reranker, self.teachers)
        sample_students(self._options, cfg.reranker.students_per_step, cfg.train.seed, 0)  # fails early: too few
        return scoring_module(reranker), params

    def start_step(self, step: int) -> None:
        """Sample the step's students."""
        r, t = self.config.reranker, self.config.train
        self.students = sample_students(self._options, r.students_per_step, t.seed, step) if self._options else []

    def batch_loss(self, batch: ContrastiveBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The stage's loss on one micro-batch: one teacher pass, plus one pass per compressed student.

        In ``compensate`` the teacher pass runs without the compensation and without
        gradients, and the full-width students get a pass of their own (with it).
        """
        import torch

        from nestrank.models import MatryoshkaConfig, parse_config

        r, t, students = self.config.reranker, self.config.train, self.students
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
        loss = cascaded_self_distillation(teachers, scored, temperature=t.temperature,
                                          distill_temperature=r.distill_temperature, distill=r.stage != "contrastive")
        return loss.total, loss.parts

    def log_fields(self) -> dict[str, Any]:
        """The step's students."""
        return {"students": [s.name for s in self.students]}

    def save_model(self, path: Path, state: Any) -> None:
        """A Matryoshka checkpoint directory with ``lora/``."""
        from nestrank.models.matryoshka.checkpoint import LORA_DIR

        reranker = self.reranker
        assert reranker is not None
        reranker.save_pretrained(path)
        if self._peft_model is not None:
            self._peft_model.save_pretrained(path / LORA_DIR, safe_serialization=True, save_embedding_layers=False)
        elif (Path(self.config.reranker.init) / LORA_DIR).is_dir():  # compensate: keep the distilled LoRA
            shutil.copytree(Path(self.config.reranker.init) / LORA_DIR, path / LORA_DIR)

    def load_model(self, path: Path) -> None:
        """The trained weights of checkpoint ``path``: LoRA, heads, compensation."""
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

    def finish(self) -> None:
        """Leave the trained reranker ready to score, as a reload of the final checkpoint would be."""
        reranker = self.reranker
        assert reranker is not None
        reranker.model.eval()
        reranker.heads.to(reranker.model.get_output_embeddings().weight.dtype)  # score outside autocast

    # ----------------------------------------------------------------- internals

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
        assert reranker is not None and self.module is not None
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
