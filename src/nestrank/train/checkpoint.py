"""Training checkpoints: one directory an encoder loads, plus the state needed to resume.

Layout of ``checkpoint-STEP/`` (and ``final/``)::

    adapter_config.json, adapter_model.safetensors   LoRA runs (PEFT layout; names the base model)
    config.json, model.safetensors                   full fine-tuning runs (transformers layout)
    tokenizer files                                  the tokenizer used in training
    nestrank.json                                    encoder settings (preset, pooling, lengths, base)
    trainer_state.json                               step, world size and the training config
    optimizer.pt                                     optimizer state (tensors only: loaded with weights_only)
    scheduler.json                                   learning-rate scheduler state

(The reranker trainer writes Matryoshka checkpoints instead: :mod:`nestrank.train.reranker`.)
:meth:`nestrank.models.dense.DenseEncoder.from_pretrained` loads the directory as an encoder
(it reads ``nestrank.json``, so the trained pooling, prefixes and lengths apply).
A checkpoint is written to a temporary directory and renamed into place, so a crash never
leaves a half checkpoint. Dropout is re-seeded from ``(seed, rank, step)`` at every step, so
no random state needs saving for a resumed run to repeat an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestrank.errors import ConfigError
from nestrank.files import atomic_dir
from nestrank.models.settings import SETTINGS_FILE
from nestrank.train.config import TrainConfig

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from nestrank.models.dense import DenseEncoder

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.json"
#: Settings that must not change between a checkpoint and the run resuming from it.
RESUME_KEYS = {"model": None, "lora": None, "data": None,
               "train": ("batch_size", "grad_accum_steps", "gradcache_chunk_size", "seed", "temperature")}


def _backbone(module: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    return accelerator.unwrap_model(module).backbone


def save_checkpoint(path: Path, accelerator: Accelerator, module: torch.nn.Module, encoder: DenseEncoder,
                    optimizer: torch.optim.Optimizer, scheduler: Any, config: TrainConfig, step: int) -> Path:
    """Write a checkpoint directory at ``path`` (collective: every process must call it)."""
    import torch

    accelerator.wait_for_everyone()
    state = accelerator.get_state_dict(module)  # gathers FSDP/DeepSpeed shards
    optimizer_state = optimizer.state_dict() if not _sharded(accelerator) else None
    if accelerator.is_main_process:
        weights = {k.removeprefix("backbone."): v for k, v in state.items()}
        with atomic_dir(path, STATE_FILE, "a training checkpoint") as tmp:
            backbone = _backbone(module, accelerator)
            # LoRA never trains embeddings; "auto" would look the base up on the hub (offline: a warning)
            extra = {"save_embedding_layers": False} if config.lora.enabled else {}
            backbone.save_pretrained(tmp, state_dict=weights, safe_serialization=True, **extra)
            encoder.tokenizer.save_pretrained(tmp)
            write_settings(tmp, config, encoder)
            if optimizer_state is not None:
                torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
            (tmp / SCHEDULER_FILE).write_text(json.dumps(scheduler.state_dict(), default=_plain), encoding="utf-8")
            (tmp / STATE_FILE).write_text(json.dumps({"step": step, "world_size": accelerator.num_processes,
                                                      "config": config.to_dict()}, indent=2), encoding="utf-8")
    accelerator.wait_for_everyone()
    return path


def write_settings(path: Path, config: TrainConfig, encoder: DenseEncoder) -> None:
    """Write ``nestrank.json``: the base model, encoder preset and settings (pooling, prefixes, lengths)."""
    import dataclasses

    settings = {"kind": "dense-encoder", "base_model": config.model.backbone, "preset": config.model.preset,
                "lora": config.lora.enabled, "encoder": dataclasses.asdict(encoder.config)}
    (path / SETTINGS_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")


def _plain(value: Any) -> Any:
    """JSON fallback for scheduler state: lambdas are not state (LambdaLR stores None for them)."""
    return None


def _sharded(accelerator: Accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def load_trainer_state(path: Path, accelerator: Accelerator, module: torch.nn.Module,
                       optimizer: torch.optim.Optimizer, scheduler: Any, config: TrainConfig) -> int:
    """Load weights, optimizer and scheduler state from checkpoint ``path``; returns the step to continue from."""
    import torch
    from safetensors.torch import load_file

    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise ConfigError(f"train.resume_from: {path} is not a training checkpoint (no {STATE_FILE}; "
                          "fix: point to a checkpoint-STEP directory written by the trainer)")
    state = json.loads(state_file.read_text(encoding="utf-8"))
    check_compatible(state["config"], config.to_dict(), path)
    backbone = _backbone(module, accelerator)
    if config.lora.enabled:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(backbone, load_file(path / "adapter_model.safetensors"))
        if getattr(result, "unexpected_keys", None):
            raise ConfigError(f"{path}: adapter weights do not fit the model ({result.unexpected_keys[:2]} ...)")
    else:
        backbone.load_state_dict(load_file(path / "model.safetensors"), strict=False)
    optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    scheduler.load_state_dict(json.loads((path / SCHEDULER_FILE).read_text(encoding="utf-8")))
    return int(state["step"])


def check_compatible(saved: dict[str, dict], current: dict[str, dict], path: Path,
                     keys_by_section: dict[str, tuple[str, ...] | None] = RESUME_KEYS) -> None:
    """Raise :class:`ConfigError` when a setting in ``keys_by_section`` (``None``: the whole section) changed."""
    for section, keys in keys_by_section.items():
        for key in keys or current[section]:
            if saved.get(section, {}).get(key) != current[section][key]:
                raise ConfigError(f"cannot resume from {path}: {section}.{key} was {saved.get(section, {}).get(key)!r} "
                                  f"there and is {current[section][key]!r} now (fix: use the checkpoint's settings)")


