"""The Matryoshka reranker's three training stages, trained in sequence from one recipe.

The SciFact recipe (docs/training.md) trains, each stage in its own directory:

1. ``contrastive``: teachers and students on the hard-label group loss (LoRA + score heads);
2. ``distill``: the same with the students distilled from the teachers (the shipped recipe);
3. ``compensate``: the V-/H-LoRA compensation of the compressed widths, on top of ``distill``'s
   final checkpoint (``reranker.init``).

:func:`plan_stages` builds each stage's :class:`~nestrank.train.config.TrainConfig` from one
recipe: ``reranker.stage`` set, ``train.output_dir = out_dir/<name>`` and ``reranker.init``
chained: ``compensate`` always starts from this plan's ``distill``; with ``init`` (an earlier
plan's ``out_dir``), ``contrastive`` and ``distill`` continue from its final checkpoints of the
same names (e.g. with a longer ``data.passage_max_length``). :func:`train_stages` trains the
planned stages in that order and reuses a stage whose ``final/`` exists, so re-running a plan
after an interruption trains only what is missing (a stage cut off mid-way resumes from its
newest checkpoint, :mod:`nestrank.train.checkpoint`). A finished stage trained with settings a
resume would refuse (model, LoRA, data, reranker, batch and seed; paths aside) is an error,
not silently reused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestrank.errors import ConfigError
from nestrank.train.checkpoint import RERANKER_RESUME_KEYS, STATE_FILE, changed_setting
from nestrank.train.config import TrainConfig, config_from_dict, load_config

if TYPE_CHECKING:
    from nestrank.train.loop import TrainResult

__all__ = ["STAGES", "StagePlan", "is_trained", "plan_stages", "train_stages"]

#: The stages, in training order (``reranker.stage`` values).
STAGES = ("contrastive", "distill", "compensate")
#: Settings that say where things are, not what was trained: a reused stage may differ in them.
PATH_KEYS = ("data.train_groups", "reranker.init")


@dataclass(frozen=True)
class StagePlan:
    """One stage of a plan: its ``reranker.stage`` and the full config it trains with."""

    stage: str
    config: TrainConfig

    @property
    def directory(self) -> Path:
        """The stage's output directory (``train.output_dir``)."""
        return Path(self.config.train.output_dir)

    @property
    def final(self) -> Path:
        """The stage's final checkpoint, written when it finishes."""
        return self.directory / "final"

    def is_trained(self) -> bool:
        """Whether the stage has finished (its ``final/`` is complete)."""
        return is_trained(self.directory)


def is_trained(stage_dir: str | Path) -> bool:
    """Whether ``stage_dir`` holds a finished stage: a ``final/`` checkpoint (written whole, then renamed into place)."""
    return (Path(stage_dir) / "final" / STATE_FILE).is_file()


def plan_stages(recipe: str | Path | TrainConfig, out_dir: str | Path, stages: Iterable[str] = STAGES, *,
                overrides: Mapping[str, object] | None = None, init: str | Path | None = None,
                names: Mapping[str, str] | None = None) -> dict[str, StagePlan]:
    """Each stage's config, in training order: ``{stage: StagePlan}``.

    Args:
        recipe: a TOML recipe (e.g. ``recipes/scifact-smollm2-matryoshka.toml``) or a config.
        out_dir: stage ``s`` trains in ``out_dir/<names[s]>``.
        stages: which of :data:`STAGES` to plan (any order; trained in :data:`STAGES` order).
        overrides: ``{"section.key": value}`` applied to every stage (see :func:`~nestrank.train.config.load_config`).
        init: an earlier plan's ``out_dir``: ``contrastive`` and ``distill`` start from its
            ``<name>/final`` (which must be trained).
        names: directory names by stage (default: the stage names).

    Raises:
        ConfigError: an unknown stage name, an ``init`` without the planned stages trained, or a
            recipe the stage settings make invalid.
    """
    wanted = list(dict.fromkeys(stages))
    unknown = [s for s in wanted if s not in STAGES]
    if unknown or not wanted:
        raise ConfigError(f"unknown training stage {', '.join(map(repr, unknown))} (choose from {', '.join(STAGES)})"
                          if unknown else f"no training stage given (choose from {', '.join(STAGES)})")
    dirs = {stage: stage for stage in STAGES} | dict(names or {})
    out = Path(out_dir)
    ordered = [s for s in STAGES if s in wanted]
    if init is not None:
        missing = [dirs[s] for s in ordered if s != "compensate" and not is_trained(Path(init) / dirs[s])]
        if missing:
            raise ConfigError(f"init {init}: no trained {' or '.join(missing)} (fix: point init to an earlier out_dir "
                              f"whose {' and '.join(f'{m}/final' for m in missing)} exist)")
    plans = {}
    for stage in ordered:
        extra: dict[str, object] = {"train.output_dir": str(out / dirs[stage]), "reranker.stage": stage}
        if stage == "compensate":
            extra["reranker.init"] = str(out / dirs["distill"] / "final")
        elif init is not None:
            extra["reranker.init"] = str(Path(init) / dirs[stage] / "final")
        plans[stage] = StagePlan(stage, _config(recipe, {**(overrides or {}), **extra}))
    return plans


def train_stages(recipe: str | Path | TrainConfig, out_dir: str | Path, stages: Iterable[str] = STAGES, *,
                 overrides: Mapping[str, object] | None = None, init: str | Path | None = None,
                 names: Mapping[str, str] | None = None, progress: bool = True,
                 on_trained: Callable[[StagePlan, TrainResult], Any] | None = None) -> dict[str, Path]:
    """Train the planned stages (:func:`plan_stages`) in order; returns ``{stage: final checkpoint}``.

    A stage whose ``final/`` exists is reused (its settings checked against the plan's);
    ``on_trained(plan, result)`` is called after each stage that trained.

    Raises:
        ConfigError: as :func:`plan_stages`; a finished stage trained with other settings;
            ``compensate`` without a trained ``distill`` to start from.
    """
    from nestrank.train.reranker import train_reranker

    finals = {}
    for stage, plan in plan_stages(recipe, out_dir, stages, overrides=overrides, init=init, names=names).items():
        if plan.is_trained():
            _check_reusable(plan)
        else:
            if stage == "compensate" and not is_trained(Path(plan.config.reranker.init).parent):
                raise ConfigError(f"stage compensate starts from distill's final checkpoint {plan.config.reranker.init},"
                                  " which does not exist (fix: train distill first, e.g. include it in stages)")
            result = train_reranker(plan.config, progress=progress)
            if on_trained is not None:
                on_trained(plan, result)
        finals[stage] = plan.final
    return finals


def _config(recipe: str | Path | TrainConfig, overrides: dict[str, object]) -> TrainConfig:
    """``recipe`` (a TOML file or a config) with ``{"section.key": value}`` overrides applied, validated."""
    if isinstance(recipe, TrainConfig):
        return config_from_dict(recipe.to_dict(), "recipe", overrides)
    return load_config(recipe, overrides)


def _check_reusable(plan: StagePlan) -> None:
    """Refuse a finished stage whose settings differ from the plan's where a resume would refuse them."""
    state = plan.final / STATE_FILE
    try:
        saved = json.loads(state.read_text(encoding="utf-8"))["config"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"stage {plan.stage}: {state} is unreadable ({type(exc).__name__}) (fix: delete "
                          f"{plan.directory} to train the stage again)") from None
    changed = changed_setting(saved, plan.config.to_dict(), RERANKER_RESUME_KEYS, ignore=PATH_KEYS)
    if changed is not None:
        raise ConfigError(f"stage {plan.stage}: {plan.final} is finished but was trained with other settings: "
                          f"{changed} (fix: another out_dir, or delete {plan.directory} to train it again)")
