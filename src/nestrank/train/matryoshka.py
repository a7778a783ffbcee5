"""Training of the Matryoshka reranker: contrastive, cascaded self-distillation and compensation stages.

One optimizer step = ``grad_accum_steps`` micro-batches of ``batch_size`` queries, each with
its group of ``group_size`` passages (1 positive + hard negatives; no in-batch negatives);
the loop is :class:`~nestrank.train.loop.Trainer`'s. Each step's structures are planned from
``(seed, step)`` (:func:`~nestrank.train.students.plan_step`): full-width exits read from one
pass, and compressed widths, each a pass of its own that forks from the full-width pass after
its first merge (:meth:`~nestrank.models.matryoshka.MatryoshkaReranker.forward_passes`: layers
the passes share run, and backpropagate, once). The loss is
:func:`~nestrank.train.losses.distillation.cascaded_self_distillation` (Eq. 9):

- ``contrastive``: hard-label group cross-entropy of every structure (no KL);
  LoRA on the backbone + the score heads train.
- ``distill``: the same plus the KL terms (``reranker.distill_from``); same trainables.
- ``compensate``: the distilled checkpoint (``reranker.init``, its LoRA merged) is frozen and
  a :class:`~nestrank.models.matryoshka.compensation.FactorizedCompensation` (V-/H-LoRA) trains
  (with the heads' weights if ``compensation_heads``). With ``compensation_teachers =
  "compensated"`` the teachers are the compensated full-width exits (trained too); with
  ``"frozen"`` they come from the model without the compensation, under ``no_grad``.

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
from nestrank.train.backbone import add_lora, enable_gradient_checkpointing, finish_lora
from nestrank.train.batches import ContrastiveBatch
from nestrank.train.checkpoint import load_adapter_weights
from nestrank.train.config import TrainConfig
from nestrank.train.loop import RerankerTrainer
from nestrank.train.losses.distillation import StudentScores, cascaded_self_distillation
from nestrank.train.students import StepPlan, Student, plan_step, student_options

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from peft import PeftModel

    from nestrank.models import MatryoshkaConfig, MatryoshkaReranker
    from nestrank.models.matryoshka.inputs import EncodedPair

__all__ = ["MatryoshkaTrainer", "build_reranker", "scoring_module", "trainable_heads"]


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
            peft_model = finish_lora(PeftModel.from_pretrained(model, adapter, is_trainable=True), config)
        else:
            peft_model = add_lora(model, config, "CAUSAL_LM")
        params = [p for p in peft_model.parameters() if p.requires_grad] + trainable_heads(reranker)
    else:
        reranker.heads.requires_grad_(False)
        settings = CompensationSettings(r=r.compensation_r, alpha=r.compensation_alpha,
                                        targets=tuple(lo.target_modules), factors=tuple(r.compensation_factors))
        compensation = FactorizedCompensation(reranker.decoder.layers, settings).float()
        reranker.set_compensation(compensation)
        if m.gradient_checkpointing:  # recomputed layers must see the adapters their forward saw
            enable_gradient_checkpointing(model, context_fn=compensation.checkpoint_contexts)
        params = list(compensation.parameters()) + (trainable_heads(reranker) if r.compensation_heads else [])
    model.train()
    return reranker, peft_model, params


def trainable_heads(reranker: MatryoshkaReranker) -> list[torch.nn.Parameter]:
    """The heads in fp32 with trainable weights; their biases stay fixed.

    Group losses are shift-invariant per group, so a head's bias gets no gradient (only rounding
    noise, which Adam would turn into lr-sized random steps).
    """
    reranker.heads.float().requires_grad_(False)
    return [head.weight.requires_grad_(True) for head in reranker.heads.values()]


def scoring_module(reranker: MatryoshkaReranker) -> torch.nn.Module:
    """A module running :meth:`MatryoshkaReranker.forward_passes` with autograd.

    ``module(ids, layouts, passage_lengths, passes)`` takes ``(config, exits)`` passes over one
    batch and returns one ``(B, len(exits))`` table per pass, layers the passes share computed
    once: all passes of a micro-batch go through one call, as DDP expects one forward per
    backward. It owns the backbone, the heads and the compensation (when set), so DDP can wrap it.
    """
    import torch

    class ScoringModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = reranker.model
            self.heads = reranker.heads
            if reranker.compensation is not None:
                self.compensation = reranker.compensation

        def forward(self, ids: torch.Tensor, layouts: list, lengths: list[int], passes: list[tuple]
                    ) -> list[torch.Tensor]:
            return reranker.forward_passes(ids, layouts, lengths, passes)

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
        self.plan: StepPlan = StepPlan((), (), ())  # this step's structures and passes
        self._options: list[Student] = []  # every student a step can sample
        self._trained_exits: set[int] = set()  # exits whose heads this run trained
        self._pairs: dict[tuple[str, str], EncodedPair] = {}  # tokenized pairs, reused across steps

    @property
    def students(self) -> list[Student]:
        """This step's students."""
        return self.plan.students

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
        plan_step(cfg.reranker, self.teachers, self._options, cfg.train.seed, 0)  # fails early: too few students
        return scoring_module(reranker), params

    def start_step(self, step: int) -> None:
        """Sample the step's students and plan its passes."""
        self.plan = plan_step(self.config.reranker, self.teachers, self._options, self.config.train.seed, step)

    def batch_loss(self, batch: ContrastiveBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The stage's loss on one micro-batch: the step's passes in one module call (shared layers run once).

        With frozen teachers (``compensate``), the teachers are read in a pass of their own,
        without the compensation and without gradients.
        """
        import torch

        from nestrank.models import MatryoshkaConfig, parse_config

        r, t, plan = self.config.reranker, self.config.train, self.plan
        inputs = self._inputs(batch)
        by_exit: dict[int, torch.Tensor] = {}
        if plan.frozen:
            with torch.no_grad(), self._without_compensation():
                (by_exit,) = self._scores(batch, inputs, [MatryoshkaConfig(plan.frozen)])
        passes = ([MatryoshkaConfig(plan.full)] if plan.full else []) + \
            [MatryoshkaConfig(exits, parse_config(f"compress={w}").compress) for w, exits in plan.widths]
        outputs = self._scores(batch, inputs, passes)
        if plan.full:
            by_exit.update(outputs[0])
        widths = {w: output for (w, _), output in zip(plan.widths, outputs[1 if plan.full else 0:], strict=True)}
        if self._peft_model is not None or r.compensation_heads:  # the heads of every exit read here train
            self._trained_exits.update(plan.full, *(exits for _, exits in plan.widths))
        scored = [StudentScores(s.depth, widths[s.compress][s.depth] if s.compress else by_exit[s.depth], s.name,
                                full_width=not s.compress) for s in plan.students]
        loss = cascaded_self_distillation({layer: by_exit[layer] for layer in self.teachers}, scored,
                                          temperature=t.temperature, distill_temperature=r.distill_temperature,
                                          distill=r.stage != "contrastive", distill_from=r.distill_from)
        return loss.total, loss.parts

    def log_fields(self) -> dict[str, Any]:
        """The step's students."""
        return {"students": [s.name for s in self.students]}

    def save_model(self, path: Path, state: Any) -> None:
        """A Matryoshka checkpoint directory with ``lora/``."""
        from nestrank.models.matryoshka.checkpoint import LORA_DIR

        reranker = self.reranker
        assert reranker is not None
        if self._trained_exits:
            reranker.trained_exits = tuple(sorted(self._trained_exits | set(reranker.trained_exits or ())))
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

    def _inputs(self, batch: ContrastiveBatch) -> tuple[torch.Tensor, list, list[int]]:
        """The batch's pairs as :meth:`forward_passes` inputs; each pair is tokenized once per run."""
        reranker = self.reranker
        assert reranker is not None
        size = self.config.data.group_size
        pairs = []
        for index, doc in enumerate(batch.passages):
            query = batch.queries[index // size]
            key = (query, doc.full_text)
            if key not in self._pairs:
                self._pairs[key] = reranker.encode(query, doc)
            pairs.append(self._pairs[key])
        return reranker.batch_inputs(pairs)

    def _scores(self, batch: ContrastiveBatch, inputs: tuple, configs: Sequence[MatryoshkaConfig]
                ) -> list[dict[int, torch.Tensor]]:
        """``{exit: (B, G) scores}`` of one pass per config over the batch, in one module call."""
        reranker = self.reranker
        assert reranker is not None and self.module is not None
        passes = [(config, config.validate(reranker.num_layers)) for config in configs]
        with self.accelerator.autocast():
            tables = self.module(*inputs, passes)
        size = self.config.data.group_size
        return [{layer: table[:, i].view(len(batch.queries), size) for i, layer in enumerate(exits)}
                for table, (_, exits) in zip(tables, passes, strict=True)]

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
