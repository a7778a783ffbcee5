"""The optimizer steps of a training run: how many, the AdamW schedule, and stable seeds."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from nestrank.data.groups import TrainingGroup
from nestrank.errors import ConfigError
from nestrank.train.batches import GroupBatcher
from nestrank.train.config import OptimConfig, TrainConfig

__all__ = ["hash_seed", "linear_warmup_decay", "optimizer_and_schedule", "plan_steps"]


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
