"""Configuration of the retriever and reranker trainers, read from TOML and validated.

A config file has up to five sections; every key is optional except ``data.train_groups``
and ``train.output_dir``::

    [model]   backbone, preset, dtype, gradient_checkpointing, attn_implementation
    [lora]    enabled, r, alpha, dropout, target_modules, fast_dropout
    [data]    train_groups, query_max_length, passage_max_length, group_size,
              validation_fraction, validation_seed
    [train]   output_dir, batch_size, grad_accum_steps, gradcache_chunk_size, epochs,
              max_steps, learning_rate, weight_decay, warmup_ratio, max_grad_norm,
              temperature, seed, log_every, save_every, resume_from, threads,
              eval_every, eval_queries, eval_group_size, eval_configs, eval_pool
    [reranker] kind, stage, init, teachers, student_depths, student_compress, students_per_step, exits,
              distill_from, distill_temperature, compensation_r, compensation_alpha, compensation_factors,
              compensation_teachers, compensation_heads (the reranker trainers only)

Unknown sections or keys, wrong types and out-of-range values raise
:class:`~nestrank.errors.ConfigError` naming the file, the key and the fix. Relative paths
in the file are taken relative to the current directory (where you run the command).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nestrank.errors import ConfigError
from nestrank.tomlconfig import apply_overrides, build_sections, parse_overrides  # noqa: F401 (parse_overrides: part of this API)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The paper's (RepLLaMA) LoRA targets: attention q, v, o and the MLP projections.
REPLLAMA_LORA_TARGETS = ("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TRAIN_DTYPES = ("float32", "bfloat16")


@dataclass
class ModelConfig:
    """The backbone and how it runs.

    ``backbone``: a preset (``smollm2-135m``), local directory, GGUF file or hub id (see
    :func:`nestrank.models.load_backbone`). ``preset``: the :class:`~nestrank.models.dense.DenseEncoder`
    preset (pooling, prefixes, EOS, normalisation), e.g. ``repllama``. ``dtype``: weights and
    compute dtype, ``float32`` or ``bfloat16`` (bf16 autocast on GPUs).
    """

    backbone: str = "smollm2-135m"
    preset: str = "repllama"
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"


@dataclass
class LoraConfig:
    """LoRA adapters (peft); ``enabled = false`` fine-tunes every weight instead.

    ``fast_dropout``: draw the LoRA dropout masks of CPU tensors from numpy's SFC64
    (:mod:`nestrank.train.dropout`; same distribution, another random stream, a little cheaper
    than torch's); ``false`` keeps torch's dropout (the stream of runs before it).
    """

    enabled: bool = True
    r: int = 32
    alpha: int = 64
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: list(REPLLAMA_LORA_TARGETS))
    fast_dropout: bool = True


@dataclass
class DataConfig:
    """Training groups and the shapes of one contrastive batch.

    ``group_size`` passages per query: 1 positive + ``group_size - 1`` hard negatives.
    ``validation_fraction`` of the group queries (chosen with ``validation_seed``) are held
    out of training; their ids are written to ``validation_queries.txt`` in the output dir.
    """

    train_groups: str = ""
    query_max_length: int = 32
    passage_max_length: int = 196
    group_size: int = 16
    validation_fraction: float = 0.0
    validation_seed: int = 0


@dataclass
class OptimConfig:
    """Optimisation, logging and checkpoints.

    ``batch_size`` is the number of queries of one contrastive batch over *all* processes
    (each process takes ``batch_size / world_size``); ``grad_accum_steps`` batches make one
    optimizer step. ``gradcache_chunk_size`` (sequences, 0 = off) bounds activation memory
    without changing the loss. ``max_steps`` (0 = none) caps the optimizer steps.
    ``warmup_ratio`` of the steps warm the learning rate up linearly from 0, then it decays
    linearly to 0. ``save_every`` (0 = only at the end) writes ``checkpoint-STEP`` dirs.
    ``temperature`` 0: the trainer's default (retriever 0.01, rerankers 1.0). ``threads``: torch's
    threads (0 = its default). ``eval_every`` > 0 validates on held-out groups and keeps ``best/``
    (:mod:`nestrank.train.validation`; ``eval_queries``, ``eval_group_size``, ``eval_configs``;
    ``eval_pool``: retrievers rank each positive among every held-out passage instead of its group).
    """

    output_dir: str = ""
    batch_size: int = 128
    grad_accum_steps: int = 1
    gradcache_chunk_size: int = 0
    epochs: int = 1
    max_steps: int = 0
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    temperature: float = 0.0
    seed: int = 42
    log_every: int = 1
    save_every: int = 0
    resume_from: str = ""
    threads: int = 0
    eval_every: int = 0
    eval_queries: int = 0
    eval_group_size: int = 0
    eval_configs: list[str] = field(default_factory=list)
    eval_pool: bool = False


RERANKER_STAGES = ("contrastive", "distill", "compensate")
RERANKER_KINDS = ("matryoshka", "pointwise")
EXIT_MODES = ("all", "sampled")
DISTILL_SOURCES = ("nearest", "all")
COMPENSATION_TEACHERS = ("compensated", "frozen")
DEFAULT_TEMPERATURE = {"retriever": 0.01, "reranker": 1.0}  #: ``train.temperature`` when it is 0 (unset)
#: Values that reproduce runs from before a key existed (a checkpoint without the key ran with them).
LEGACY_VALUES = {("lora", "fast_dropout"): False, ("reranker", "exits"): "sampled", ("reranker", "distill_from"): "all",
                 ("reranker", "compensation_teachers"): "frozen", ("reranker", "compensation_heads"): False}


@dataclass
class RerankerConfig:
    """The reranker trainer (``nestrank train reranker``); see docs/training.md.

    ``kind``: ``matryoshka`` (a :class:`~nestrank.models.matryoshka.MatryoshkaReranker`, all keys
    below) or ``pointwise`` (a RankLLaMA-style
    :class:`~nestrank.models.pointwise.PointwiseReranker`: stage ``contrastive`` only, and none
    of the Matryoshka keys; ``students_per_step`` is not used).
    ``stage``: ``contrastive`` (hard-label group loss of teachers and students, LoRA + heads),
    ``distill`` (the same plus the KL terms of Eq. 9) or ``compensate`` (frozen distilled
    model, only the V-/H-LoRA compensation trains). ``init``: a Matryoshka checkpoint to start
    from (required for ``compensate``). ``teachers``: full-width exit layers read in one pass
    (empty: the last layer). Each step samples ``students_per_step`` students: a depth from
    ``student_depths`` and a width from ``student_compress`` (``compress=`` values such as
    ``"8:0.5"``; ``""`` is full width). ``distill_temperature`` divides scores in the KL terms
    (``train.temperature`` in the hard-label terms). ``compensation_r``/``_alpha``/``_factors``
    shape the V-/H-LoRA of the ``compensate`` stage (on ``lora.target_modules``).

    Paper fidelity (docs/training.md section 9; the second values reproduce earlier runs):
    ``exits`` ``all`` (every exit read each step; ``students_per_step`` samples widths) or
    ``sampled``; ``distill_from`` ``nearest`` (from the close super-architecture) or ``all``;
    ``compensation_teachers`` ``compensated`` (the full model trains) or ``frozen``;
    ``compensation_heads`` true or false.
    """

    kind: str = "matryoshka"
    stage: str = "distill"
    init: str = ""
    teachers: list[int] = field(default_factory=list)
    student_depths: list[int] = field(default_factory=list)
    student_compress: list[str] = field(default_factory=lambda: [""])
    students_per_step: int = 1
    exits: str = "all"
    distill_from: str = "nearest"
    distill_temperature: float = 1.0
    compensation_r: int = 8
    compensation_alpha: int = 16
    compensation_factors: list[int] = field(default_factory=lambda: [2, 4, 8])
    compensation_teachers: str = "compensated"
    compensation_heads: bool = True


@dataclass
class TrainConfig:
    """The whole trainer configuration (one dataclass per TOML section)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    reranker: RerankerConfig = field(default_factory=RerankerConfig)

    def validate(self, where: str = "config") -> TrainConfig:
        """Check values and relations between them; raise :class:`ConfigError` on the first problem."""
        m, lo, d, t = self.model, self.lora, self.data, self.train
        checks: list[tuple[bool, str, str]] = [
            (bool(d.train_groups), "data.train_groups", "is required: the training-group JSONL (e.g. from `nestrank mine`)"),
            (bool(t.output_dir), "train.output_dir", "is required: where checkpoints and the log go"),
            (m.dtype in TRAIN_DTYPES, "model.dtype", f"must be one of {', '.join(TRAIN_DTYPES)}, got {m.dtype!r}"),
            (bool(m.backbone), "model.backbone", "must name a model (preset, directory, GGUF file or hub id)"),
            (lo.r >= 1, "lora.r", f"must be >= 1, got {lo.r}"),
            (lo.alpha >= 1, "lora.alpha", f"must be >= 1, got {lo.alpha}"),
            (0.0 <= lo.dropout < 1.0, "lora.dropout", f"must be in [0, 1), got {lo.dropout}"),
            (bool(lo.target_modules) or not lo.enabled, "lora.target_modules", "must list at least one module name"),
            (d.query_max_length >= 2, "data.query_max_length", f"must be >= 2 tokens, got {d.query_max_length}"),
            (d.passage_max_length >= 2, "data.passage_max_length", f"must be >= 2 tokens, got {d.passage_max_length}"),
            (d.group_size >= 1, "data.group_size", f"must be >= 1 (1 positive + group_size-1 negatives), got {d.group_size}"),
            (0.0 <= d.validation_fraction < 1.0, "data.validation_fraction", f"must be in [0, 1), got {d.validation_fraction}"),
            (t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}"),
            (t.grad_accum_steps >= 1, "train.grad_accum_steps", f"must be >= 1, got {t.grad_accum_steps}"),
            (t.gradcache_chunk_size >= 0, "train.gradcache_chunk_size", f"must be >= 0 (0 = off), got {t.gradcache_chunk_size}"),
            (t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}"),
            (t.max_steps >= 0, "train.max_steps", f"must be >= 0 (0 = no cap), got {t.max_steps}"),
            (t.learning_rate > 0, "train.learning_rate", f"must be > 0, got {t.learning_rate}"),
            (t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}"),
            (0.0 <= t.warmup_ratio <= 1.0, "train.warmup_ratio", f"must be in [0, 1], got {t.warmup_ratio}"),
            (t.max_grad_norm >= 0, "train.max_grad_norm", f"must be >= 0 (0 = no clipping), got {t.max_grad_norm}"),
            (t.temperature >= 0, "train.temperature", f"must be > 0 (0 = the trainer's default), got {t.temperature}"),
            (t.threads >= 0, "train.threads", f"must be >= 0 (0 = torch's default), got {t.threads}"),
            (t.eval_every >= 0, "train.eval_every", f"must be >= 0 (0 = off), got {t.eval_every}"),
            (t.eval_queries >= 0, "train.eval_queries", f"must be >= 0 (0 = all held-out), got {t.eval_queries}"),
            (t.eval_group_size == 0 or t.eval_group_size >= 2, "train.eval_group_size",
             f"must be >= 2 (0 = data.group_size), got {t.eval_group_size}"),
            (t.eval_every == 0 or d.validation_fraction > 0, "train.eval_every",
             "needs held-out queries (fix: set data.validation_fraction > 0, e.g. 0.1)"),
            (t.log_every >= 1, "train.log_every", f"must be >= 1, got {t.log_every}"),
            (t.save_every >= 0, "train.save_every", f"must be >= 0 (0 = only at the end), got {t.save_every}"),
        ]
        for ok, key, problem in checks:
            if not ok:
                raise ConfigError(f"{where}: {key} {problem}")
        return self

    def validate_reranker(self, where: str = "config") -> TrainConfig:
        """Check the settings the reranker trainer needs (the ``[reranker]`` section and its relations).

        Layer numbers are checked against the model when it is loaded.
        """
        from nestrank.models import parse_config

        self.validate(where)
        r, m, lo = self.reranker, self.model, self.lora
        if self.train.eval_pool:
            raise ConfigError(f"{where}: train.eval_pool is for retrievers (a bi-encoder scores every held-out "
                              "passage from one encoding; a reranker would score queries x passages) (fix: remove it)")
        if r.kind not in RERANKER_KINDS:
            raise ConfigError(f"{where}: reranker.kind must be one of {', '.join(RERANKER_KINDS)}, got {r.kind!r}")
        if r.kind == "pointwise":
            return self._validate_pointwise(where)
        checks: list[tuple[bool, str, str]] = [
            (r.stage in RERANKER_STAGES, "reranker.stage", f"must be one of {', '.join(RERANKER_STAGES)}, got {r.stage!r}"),
            (r.stage != "compensate" or bool(r.init), "reranker.init",
             "is required for stage = \"compensate\" (fix: the distilled checkpoint, e.g. out/distill/final)"),
            (r.stage == "compensate" or lo.enabled, "lora.enabled",
             f"must be true for stage = {r.stage!r}: the reranker trains LoRA + score heads (full fine-tuning "
             "is not supported)"),
            (m.attn_implementation == "sdpa", "model.attn_implementation",
             f"must be sdpa for the Matryoshka engine, got {m.attn_implementation!r}"),
            (all(n >= 1 for n in r.teachers), "reranker.teachers", f"are 1-based layers, got {r.teachers}"),
            (len(set(r.teachers)) == len(r.teachers), "reranker.teachers", f"repeat a layer: {r.teachers}"),
            (all(n >= 1 for n in r.student_depths), "reranker.student_depths", f"are 1-based layers, got {r.student_depths}"),
            (self.data.group_size >= 2, "data.group_size",
             f"must be >= 2 for the reranker's group loss (1 positive + negatives), got {self.data.group_size}"),
            (r.students_per_step >= 0, "reranker.students_per_step", f"must be >= 0, got {r.students_per_step}"),
            (r.stage != "compensate" or r.students_per_step >= 1 or r.compensation_teachers == "compensated",
             "reranker.students_per_step",
             "must be >= 1 for stage = \"compensate\" with frozen teachers: only students train the compensation"),
            (r.students_per_step == 0 or bool(r.student_depths), "reranker.student_depths",
             "is empty but students_per_step > 0 (fix: list the exit layers students are sampled from, or set "
             "students_per_step = 0)"),
            (bool(r.student_compress), "reranker.student_compress", 'must list at least one width ("" = full width)'),
            (r.distill_temperature > 0, "reranker.distill_temperature", f"must be > 0, got {r.distill_temperature}"),
            *[(getattr(r, key) in choices, f"reranker.{key}", f"must be one of {', '.join(choices)}, got "
              f"{getattr(r, key)!r}") for key, choices in (("exits", EXIT_MODES), ("distill_from", DISTILL_SOURCES),
                                                            ("compensation_teachers", COMPENSATION_TEACHERS))],
            (r.compensation_r >= 1, "reranker.compensation_r", f"must be >= 1, got {r.compensation_r}"),
            (r.compensation_alpha >= 1, "reranker.compensation_alpha", f"must be >= 1, got {r.compensation_alpha}"),
            (all(k >= 2 for k in r.compensation_factors) and len(set(r.compensation_factors)) == len(r.compensation_factors),
             "reranker.compensation_factors", f"must be distinct integers >= 2, got {r.compensation_factors}"),
        ]
        for ok, key, problem in checks:
            if not ok:
                raise ConfigError(f"{where}: {key} {problem}")
        for option in r.student_compress:
            try:
                parsed = parse_config(f"compress={option}" if option else None)
            except ConfigError as exc:
                raise ConfigError(f"{where}: reranker.student_compress entry {option!r} is not a compress= value "
                                  f"({exc}) (fix: e.g. \"8:0.5\" or \"8:0.5;16:0.25\")") from None
            if parsed.compress and not any(parsed.compress[-1].layer < depth for depth in r.student_depths):
                raise ConfigError(f"{where}: reranker.student_compress entry {option!r} compresses after layer "
                                  f"{parsed.compress[-1].layer}, at or after every student depth {r.student_depths} "
                                  "(fix: compress earlier or add deeper student_depths)")
        return self

    def _validate_pointwise(self, where: str) -> TrainConfig:
        r, defaults = self.reranker, RerankerConfig()
        checks: list[tuple[bool, str, str]] = [
            (r.stage == "contrastive", "reranker.stage",
             f"must be \"contrastive\" for kind = \"pointwise\" (got {r.stage!r}): distillation and compensation "
             "are Matryoshka stages"),
            (not r.init, "reranker.init", "is not supported for kind = \"pointwise\" (fix: train from model.backbone, "
             "or resume with train.resume_from)"),
            (self.lora.enabled, "lora.enabled", "must be true: the pointwise trainer trains LoRA + the score head"),
            (self.data.group_size >= 2, "data.group_size",
             f"must be >= 2 for the group loss (1 positive + negatives), got {self.data.group_size}"),
            (not self.train.eval_configs, "train.eval_configs", "are Matryoshka configurations (fix: remove them)"),
        ]
        for key in [f.name for f in dataclasses.fields(RerankerConfig) if f.name not in ("kind", "stage", "init",
                                                                                        "students_per_step")]:
            checks.append((getattr(r, key) == getattr(defaults, key), f"reranker.{key}",
                           "is a Matryoshka setting (fix: remove it for kind = \"pointwise\")"))
        for ok, key, problem in checks:
            if not ok:
                raise ConfigError(f"{where}: {key} {problem}")
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The config as nested plain data (TOML/JSON-ready)."""
        return dataclasses.asdict(self)


def config_from_dict(data: dict[str, Any], where: str = "config", overrides: dict[str, Any] | None = None
                     ) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from nested ``{section: {key: value}}`` data, with ``overrides``
    (``{"section.key": value}``) replacing its values."""
    return build_sections(TrainConfig, apply_overrides(data, overrides, where), where).validate(where)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a TOML config file; ``overrides`` maps ``"section.key"`` to a value that replaces the file's."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (fix: check the path; recipes live in recipes/)")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))  # no newline translation: a bare CR is not TOML
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(data, str(path), overrides)
