"""Training checkpoints: one directory the trained model loads from, plus the state needed to resume.

Every trainer writes ``checkpoint-STEP/`` (and ``final/``) as its model's files plus::

    trainer_state.json   step, world size and the training config
    optimizer.pt         optimizer state (tensors only: loaded with weights_only; not under FSDP/DeepSpeed)
    scheduler.json       learning-rate scheduler state
    checksums.json       size and SHA-256 of every file (:mod:`nestrank.integrity`), checked on resume and load

The model's files are the trainer's (:meth:`nestrank.train.loop.Trainer.save_model`): a
:class:`~nestrank.models.dense.DenseEncoder` directory (:mod:`nestrank.train.retriever`), a
Matryoshka checkpoint (:mod:`nestrank.train.matryoshka`) or a RankLLaMA adapter
(:mod:`nestrank.train.pointwise`). A checkpoint is written to a temporary directory and
renamed into place, so a crash never leaves a half checkpoint. Dropout is re-seeded from
``(seed, rank, step)`` at every step, so no random state needs saving for a resumed run to
repeat an uninterrupted one. A run without ``train.resume_from`` resumes from
:func:`latest_checkpoint`: the newest ``checkpoint-STEP`` in its output directory written
with the same configuration, so re-running an interrupted command continues it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestrank.errors import ArtifactError, ConfigError
from nestrank.files import atomic_dir
from nestrank.integrity import read_checksums, reading, verify_checksums, write_checksums
from nestrank.train.config import LEGACY_VALUES, TrainConfig

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from peft import PeftModel

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: Settings that must not change between a checkpoint and the run resuming from it.
RESUME_KEYS = {"model": None, "lora": None, "data": None,
               "train": ("batch_size", "grad_accum_steps", "gradcache_chunk_size", "seed", "temperature")}
#: The same for the reranker trainers: the whole ``[reranker]`` section as well.
RERANKER_RESUME_KEYS = {**RESUME_KEYS, "reranker": None}

SaveModel = Callable[[Path, Any], None]
#: The fix for a damaged training checkpoint.
RESUME_ELSEWHERE = "resume from another checkpoint-STEP directory, or train from the start"


def save_checkpoint(path: Path, accelerator: Accelerator, optimizer: torch.optim.Optimizer, scheduler: Any,
                    config: TrainConfig, step: int, save_model: SaveModel,
                    gather: Callable[[], Any] = lambda: None) -> Path:
    """Write a checkpoint directory at ``path`` (collective: every process must call it).

    ``gather()`` runs on every process (e.g. to collect FSDP/DeepSpeed weight shards);
    ``save_model(directory, gathered)`` writes the model's files, on the main process only.
    """
    import torch

    accelerator.wait_for_everyone()
    model_state = gather()
    optimizer_state = optimizer.state_dict() if not is_sharded(accelerator) else None
    if accelerator.is_main_process:
        with atomic_dir(path, STATE_FILE, "a training checkpoint") as tmp:
            save_model(tmp, model_state)
            if optimizer_state is not None:
                torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
            (tmp / SCHEDULER_FILE).write_text(json.dumps(scheduler.state_dict(), default=_plain), encoding="utf-8")
            (tmp / STATE_FILE).write_text(json.dumps({"step": step, "world_size": accelerator.num_processes,
                                                      "config": config.to_dict()}, indent=2), encoding="utf-8")
            write_checksums(tmp, {"step": step, **_base_record(tmp, config.model.backbone)})
    accelerator.wait_for_everyone()
    return path


def _base_record(directory: Path, backbone: str) -> dict[str, Any]:
    """The base model and its fingerprint, unless the model's own files already recorded theirs (a Matryoshka
    checkpoint's ``save_pretrained``)."""
    from nestrank.models.settings import local_fingerprint

    recorded = (read_checksums(directory) or {}).get("built_from", {})
    return {} if "base_model" in recorded else {"base_model": backbone, "base_fingerprint": local_fingerprint(backbone)}


def _plain(value: Any) -> Any:
    """JSON fallback for scheduler state: lambdas are not state (LambdaLR stores None for them)."""
    return None


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether ``accelerator`` shards the model (FSDP or DeepSpeed)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def load_checkpoint(path: Path, config: TrainConfig, optimizer: torch.optim.Optimizer, scheduler: Any,
                    load_model: Callable[[Path], None],
                    keys_by_section: dict[str, tuple[str, ...] | None] = RESUME_KEYS) -> int:
    """Resume from checkpoint ``path``: check its settings, then ``load_model(path)``, optimizer and scheduler.

    Returns the step to continue from. A setting in ``keys_by_section`` that differs from
    ``config`` raises :class:`ConfigError` (see :func:`check_compatible`); a damaged or
    incomplete checkpoint (files against ``checksums.json``, unreadable state) raises
    :class:`~nestrank.errors.ArtifactError` naming the file.
    """
    import torch

    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise ConfigError(f"train.resume_from: {path} is not a training checkpoint (no {STATE_FILE}; "
                          "fix: point to a checkpoint-STEP directory written by the trainer)")
    verify_checksums(path, what="training checkpoint", fix=RESUME_ELSEWHERE)
    with reading(state_file, "trainer state", RESUME_ELSEWHERE):
        state = json.loads(state_file.read_text(encoding="utf-8"))
        saved_config, step = state["config"], int(state["step"])
    if not isinstance(saved_config, dict):
        raise ArtifactError(state_file, None, "'config' is not an object", RESUME_ELSEWHERE)
    check_compatible(saved_config, config.to_dict(), path, keys_by_section)
    with reading(path, "model weights", RESUME_ELSEWHERE):
        load_model(path)
    with reading(path / OPTIMIZER_FILE, "optimizer state", RESUME_ELSEWHERE):
        optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    with reading(path / SCHEDULER_FILE, "scheduler state", RESUME_ELSEWHERE):
        scheduler.load_state_dict(json.loads((path / SCHEDULER_FILE).read_text(encoding="utf-8")))
    return step


def latest_checkpoint(output_dir: Path, config: TrainConfig) -> Path | None:
    """The newest ``checkpoint-STEP`` in ``output_dir`` written with ``config`` (``resume_from`` aside), or ``None``.

    Checkpoints of any other configuration are ignored: the run starts over and replaces them.
    """
    current = _without_resume(config.to_dict())
    found = []
    for path in output_dir.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if not step.isdigit() or not (path / STATE_FILE).is_file():
            continue
        try:
            saved = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))["config"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _without_resume(saved) == current:
            found.append((int(step), path))
    return max(found)[1] if found else None


def _without_resume(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "train": {k: v for k, v in config.get("train", {}).items() if k != "resume_from"}}


def load_adapter_weights(peft_model: PeftModel, adapter_dir: Path, checkpoint: Path) -> None:
    """Load ``adapter_dir``'s ``adapter_model.safetensors`` into ``peft_model`` (resume); refuses weights that do not fit."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    with reading(adapter_dir / ADAPTER_WEIGHTS, "adapter weights", RESUME_ELSEWHERE):
        result = set_peft_model_state_dict(peft_model, load_file(adapter_dir / ADAPTER_WEIGHTS))
    if getattr(result, "unexpected_keys", None):
        raise ConfigError(f"{checkpoint}: adapter weights do not fit the model ({result.unexpected_keys[:2]} ...)")


def check_compatible(saved: dict[str, dict], current: dict[str, dict], path: Path,
                     keys_by_section: dict[str, tuple[str, ...] | None] = RESUME_KEYS) -> None:
    """Raise :class:`ConfigError` when a setting in ``keys_by_section`` (``None``: the whole section) changed.

    A key the checkpoint predates counts as its legacy value (:data:`~nestrank.train.config.LEGACY_VALUES`).
    """
    changed = changed_setting(saved, current, keys_by_section)
    if changed is not None:
        raise ConfigError(f"cannot resume from {path}: {changed} (fix: use the checkpoint's settings)")


def changed_setting(saved: dict[str, dict], current: dict[str, dict],
                    keys_by_section: dict[str, tuple[str, ...] | None] = RESUME_KEYS, ignore: tuple[str, ...] = ()
                    ) -> str | None:
    """The first setting in ``keys_by_section`` (``None``: the whole section) that differs between two configs'
    ``to_dict()``, as ``"section.key was X there and is Y now"``; ``None`` when none does.

    ``ignore`` lists ``"section.key"`` names left out. A key ``saved`` predates counts as its
    legacy value (:data:`~nestrank.train.config.LEGACY_VALUES`).
    """
    for section, keys in keys_by_section.items():
        for key in keys or current[section]:
            if f"{section}.{key}" in ignore:
                continue
            was = saved.get(section, {}).get(key, LEGACY_VALUES.get((section, key)))
            if was != current[section][key]:
                return f"{section}.{key} was {was!r} there and is {current[section][key]!r} now"
    return None
