"""Factorized compensation for the Matryoshka reranker: V-LoRA per layer, H-LoRA per compression factor.

Matryoshka Re-Ranker, section 3.3. After distillation the model is frozen and two families of
low-rank adapters are trained on its linear layers (``q_proj``, ``v_proj``, ... of each
decoder layer):

- **V-LoRA** (vertical): one part per layer ``l``, ``(A_l, B_l)`` for each target module of
  layer ``l``; it compensates for exiting early.
- **H-LoRA** (horizontal): one adapter per compression factor ``k`` (2, 4, 8, ...), with a
  part for every layer; it compensates for the merged, shorter sequence.

For any configuration, layer ``l`` runs with ``V-LoRA_l + H-LoRA_{k_l}``, where ``k_l`` is the
compression factor in effect at layer ``l``: the factor of the last merge applied before
layer ``l`` runs (none before the first compression; merges happen after a layer, so a merge
after layer 8 makes ``k`` apply from layer 9). A target linear layer computes::

    y = W x + (alpha / r) * (B_l A_l x + B_{k_l, l} A_{k_l, l} x)

Nothing is merged into ``W``: the low-rank terms are added by forward hooks, chosen per layer
and per batch row at run time (rows of one batch can be at different factors, e.g. a short
passage that needed no merge), so every configuration is served by the same weights without
re-merging. The factor actually applied to a row (``ceil(current / target)``) can differ from
the nominal one for short passages; it is mapped to the nearest trained factor (ties go to the
larger). ``B`` starts at zero, so an untrained compensation changes nothing.

Hooks also cover the attention row that token merging reads before layer ``l`` runs (its
``q_proj``/``k_proj`` calls), so importance is computed with the same adapted weights the layer
applies. State-dict keys: ``v.{layer}_{module}.lora_A`` / ``.lora_B`` and
``h.{k}_{layer}_{module}.lora_A`` / ``.lora_B``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from nestrank.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["CompensationSettings", "FactorizedCompensation"]

DEFAULT_TARGETS = ("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class CompensationSettings:
    """Shape of a factorized compensation: rank, scaling, target modules, layers and factors."""

    r: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = DEFAULT_TARGETS
    layers: tuple[int, ...] = ()
    factors: tuple[int, ...] = (2, 4, 8)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        checks = [
            (isinstance(self.r, int) and self.r >= 1, f"r must be a positive integer, got {self.r!r}"),
            (self.alpha > 0, f"alpha must be positive, got {self.alpha!r}"),
            (bool(self.targets), "targets must name at least one linear module, e.g. q_proj"),
            (all(isinstance(k, int) and k >= 2 for k in self.factors),
             f"factors must be integers >= 2 (1 means no compression), got {list(self.factors)}"),
            (len(set(self.factors)) == len(self.factors), f"factors repeat: {list(self.factors)}"),
            (all(isinstance(n, int) and n >= 1 for n in self.layers), f"layers are 1-based, got {list(self.layers)}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"compensation settings: {message}")

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> CompensationSettings:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"compensation settings: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class FactorizedCompensation(torch.nn.Module):
    """V-LoRA per layer + H-LoRA per compression factor on a Llama-family decoder's layers.

    Args:
        layers: the decoder layers (``model.model.layers``); layer ``i`` (1-based) is ``layers[i - 1]``.
        settings: rank, alpha, targets, factors; ``settings.layers`` empty means every layer.

    Use :meth:`attach` once to install the hooks and :meth:`active` around the work of one
    layer (the reranker engine does both). Parameters live in ``self.v`` and ``self.h``
    (``ModuleDict`` keyed ``"{layer}_{module}"`` and ``"{k}_{layer}_{module}"``).
    """

    def __init__(self, layers: Sequence[nn.Module], settings: CompensationSettings) -> None:
        super().__init__()
        if not settings.layers:
            settings = dataclasses.replace(settings, layers=tuple(range(1, len(layers) + 1)))
        if max(settings.layers) > len(layers):
            raise ConfigError(f"compensation settings: layer {max(settings.layers)} does not exist in a "
                              f"{len(layers)}-layer model")
        self.settings = settings
        self.num_layers = len(layers)
        self.v = torch.nn.ModuleDict()
        self.h = torch.nn.ModuleDict()
        self._linears: dict[tuple[int, str], nn.Linear] = {}
        for layer in settings.layers:
            found = {name.rsplit(".", 1)[-1]: module for name, module in layers[layer - 1].named_modules()
                     if isinstance(module, torch.nn.Linear)}
            missing = [t for t in settings.targets if t not in found]
            if missing:
                raise ConfigError(f"compensation settings: layer {layer} has no linear module named "
                                  f"{', '.join(missing)} (it has {', '.join(sorted(found))})")
            for target in settings.targets:
                linear = found[target]
                self._linears[(layer, target)] = linear
                self.v[_key(layer, target)] = _LowRank(linear, settings.r)
                for k in settings.factors:
                    self.h[_key(k, layer, target)] = _LowRank(linear, settings.r)
        self._dropout = torch.nn.Dropout(settings.dropout)
        self._active: tuple[int, list[int] | None] | None = None
        self._handles: list = []

    # ------------------------------------------------------------------ wiring

    def attach(self) -> FactorizedCompensation:
        """Install the forward hooks on the target linear layers (idempotent)."""
        if not self._handles:
            for (layer, target), linear in self._linears.items():
                self._handles.append(linear.register_forward_hook(self._hook(layer, target)))
        return self

    def detach(self) -> None:
        """Remove the hooks: the model runs as if there were no compensation."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def resolve_factor(self, k: int) -> int | None:
        """The trained factor used for an applied factor ``k`` (``None`` for 1: no H-LoRA)."""
        if k <= 1 or not self.settings.factors:
            return None
        return min(self.settings.factors, key=lambda f: (abs(f - k), -f))

    @contextmanager
    def active(self, layer: int, factors: Sequence[int]) -> Iterator[None]:
        """Apply ``V-LoRA_layer + H-LoRA_{k}`` to the hooked modules of ``layer``, ``k = factors[row]`` per row."""
        resolved = [self.resolve_factor(k) for k in factors]
        self._active = (layer, resolved)
        try:
            yield
        finally:
            self._active = None

    def checkpoint_contexts(self) -> tuple[AbstractContextManager, AbstractContextManager]:
        """``context_fn`` for non-reentrant activation checkpointing (``torch.utils.checkpoint``).

        Called when a checkpointed layer runs forward: its recomputation in the backward pass
        then runs with the adapters that were active then (:meth:`active` has exited by then).
        """
        return nullcontext(), self._restored(self._active)

    @contextmanager
    def _restored(self, active: tuple[int, list[int | None]] | None) -> Iterator[None]:
        previous, self._active = self._active, active
        try:
            yield
        finally:
            self._active = previous

    def _hook(self, layer: int, target: str):
        def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if self._active is None or self._active[0] != layer:
                return None
            x = self._dropout(args[0])
            delta = self.v[_key(layer, target)](x)
            factors = self._active[1]
            for k in sorted({f for f in factors if f is not None}):
                part = self.h[_key(k, layer, target)]
                if all(f == k for f in factors):
                    delta = delta + part(x)
                else:
                    rows = torch.tensor([i for i, f in enumerate(factors) if f == k], device=x.device)
                    delta = delta.index_add(0, rows, part(x.index_select(0, rows)))
            return output + (self.settings.scale * delta).to(output.dtype)

        return hook

    # ------------------------------------------------------------------ explicit merge (for checks and export)

    def merged_delta(self, layer: int, target: str, factor: int) -> torch.Tensor:
        """``scale * (B_l A_l + B_{k,l} A_{k,l})``: the weight delta layer ``layer`` gets at applied factor ``factor``."""
        delta = self.v[_key(layer, target)].weight_delta()
        k = self.resolve_factor(factor)
        if k is not None:
            delta = delta + self.h[_key(k, layer, target)].weight_delta()
        return self.settings.scale * delta

    def trainable(self, parts: Iterable[str] = ("v", "h")) -> list[torch.nn.Parameter]:
        """Parameters of the chosen families (``v``, ``h``)."""
        return [p for name in parts for p in getattr(self, name).parameters()]


class _LowRank(torch.nn.Module):
    """``x -> B A x`` with ``A`` (r, in) Kaiming-uniform and ``B`` (out, r) zero, like LoRA."""

    def __init__(self, linear: nn.Linear, r: int) -> None:
        super().__init__()
        weight = linear.weight
        self.lora_A = torch.nn.Parameter(torch.empty(r, weight.shape[1], dtype=weight.dtype, device=weight.device))
        self.lora_B = torch.nn.Parameter(torch.zeros(weight.shape[0], r, dtype=weight.dtype, device=weight.device))
        torch.nn.init.kaiming_uniform_(self.lora_A, a=5 ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.lora_A.dtype) @ self.lora_A.T) @ self.lora_B.T

    def weight_delta(self) -> torch.Tensor:
        return self.lora_B @ self.lora_A


def _key(*parts: object) -> str:
    return "_".join(str(p) for p in parts)
