"""A backbone made trainable: LoRA adapters (peft) and activation checkpointing, shared by every trainer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from nestrank.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

    from nestrank.train.config import TrainConfig


def enable_gradient_checkpointing(model: torch.nn.Module, context_fn: Callable | None = None) -> None:
    """Non-reentrant activation checkpointing of every decoder layer (works with frozen inputs, i.e. LoRA, and DDP).

    ``context_fn`` goes to ``torch.utils.checkpoint.checkpoint`` (contexts for the forward and
    the recomputation).
    """
    model.config.use_cache = False
    kwargs: dict[str, Any] = {"use_reentrant": False, **({"context_fn": context_fn} if context_fn else {})}
    enable = getattr(model, "activation_checkpointing_enable", None)  # newer transformers renamed the method
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def check_lora_targets(model: torch.nn.Module, targets: Sequence[str], backbone: str) -> None:
    """Raise :class:`ConfigError` when a ``lora.target_modules`` name matches no module of ``model``."""
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(name.split(".")[-1] == t for name in names)]
    if missing:
        raise ConfigError(f"lora.target_modules {missing} match no module of {backbone!r} "
                          "(fix: use the model's module names, e.g. q_proj, v_proj for Llama)")


def add_lora(model: torch.nn.Module, config: TrainConfig, task_type: str, **options: Any) -> PeftModel:
    """Wrap ``model`` in fresh LoRA adapters from ``config.lora`` (``task_type`` and ``options`` go to peft's ``LoraConfig``)."""
    from peft import LoraConfig, get_peft_model

    lo = config.lora
    check_lora_targets(model, lo.target_modules, config.model.backbone)
    peft_model = get_peft_model(model, LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                                                  target_modules=list(lo.target_modules), task_type=task_type,
                                                  **options))
    return finish_lora(peft_model, config)


def finish_lora(peft_model: PeftModel, config: TrainConfig) -> PeftModel:
    """``peft_model`` with :class:`~nestrank.train.dropout.FastDropout` LoRA dropout when ``lora.fast_dropout``."""
    if config.lora.fast_dropout:
        from nestrank.train.dropout import use_fast_dropout

        use_fast_dropout(peft_model)
    return peft_model
