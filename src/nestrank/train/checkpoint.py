"""Training checkpoints: one directory the trained model loads from, plus the state needed to resume.

Every trainer writes ``checkpoint-STEP/`` (and ``final/``) as its model's files plus::

    trainer_state.json   step, world size and the training config
    optimizer.pt         optimizer state (tensors only: loaded with weights_only; not under FSDP/DeepSpeed)
    scheduler.json       learning-rate scheduler state

The model's files are the trainer's (:meth:`nestrank.train.loop.Trainer.save_model`): a
:class:`~nestrank.models.dense.DenseEncoder` directory (:mod:`nestrank.train.retriever`), a
Matryoshka checkpoint (:mod:`nestrank.train.matryoshka`) or a RankLLaMA adapter
(:mod:`nestrank.train.pointwise`). A checkpoint is written to a temporary directory and
renamed into place, so a crash never leaves a half checkpoint. Dropout is re-seeded from
``(seed, rank, step)`` at every step, so no random state needs saving for a resumed run to
repeat an uninterrupted one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestrank.errors import ConfigError
from nestrank.files import atomic_dir
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
    accelerator.wait_for_everyone()
    return path


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
    ``config`` raises :class:`ConfigError` (see :func:`check_compatible`).
    """
    import torch

    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise ConfigError(f"train.resume_from: {path} is not a training checkpoint (no {STATE_FILE}; "
                          "fix: point to a checkpoint-STEP directory written by the trainer)")
    state = json.loads(state_file.read_text(encoding="utf-8"))
    check_compatible(state["config"], config.to_dict(), path, keys_by_section)
    load_model(path)
    optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    scheduler.load_state_dict(json.loads((path / SCHEDULER_FILE).read_text(encoding="utf-8")))
    return int(state["step"])


def load_adapter_weights(peft_model: PeftModel, adapter_dir: Path, checkpoint: Path) -> None:
    """Load ``adapter_dir``'s ``adapter_model.safetensors`` into ``peft_model`` (resume); refuses weights that do not fit."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(peft_model, load_file(adapter_dir / ADAPTER_WEIGHTS))
    if getattr(result, "unexpected_keys", None):
        raise ConfigError(f"{checkpoint}: adapter weights do not fit the model ({result.unexpected_keys[:2]} ...)")


def check_compatible(saved: dict[str, dict], current: dict[str, dict], path: Path,
                     keys_by_section: dict[str, tuple[str, ...] | None] = RESUME_KEYS) -> None:
    """Raise :class:`ConfigError` when a setting in ``keys_by_section`` (``None``: the whole section) changed.

    A key the checkpoint predates counts as its legacy value (:data:`~nestrank.train.config.LEGACY_VALUES`).
    """
    for section, keys in keys_by_section.items():
        for key in keys or current[section]:
            was = saved.get(section, {}).get(key, LEGACY_VALUES.get((section, key)))
            if was != current[section][key]:
                raise ConfigError(f"cannot resume from {path}: {section}.{key} was {was!r} there and is "
                                  f"{current[section][key]!r} now (fix: use the checkpoint's settings)")
