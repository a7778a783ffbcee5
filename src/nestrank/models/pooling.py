"""Pooling: one vector per sequence from a model's hidden states.

Every method reads the attention mask, so it is correct whether the batch was padded on the
left or on the right:

- ``last``: the state of the last real (non-padding) token; what decoder bi-encoders use.
- ``eos``: the same position, for encoders that append an EOS token to every input
  (RepLLaMA); :class:`~nestrank.models.dense.DenseEncoder` checks that EOS is appended.
- ``cls``: the state of the first real token (BERT's ``[CLS]``).
- ``mean``: the mean of the real tokens' states (sentence-transformers' default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from nestrank.errors import ConfigError

if TYPE_CHECKING:
    import torch

Pooling = Literal["last", "eos", "cls", "mean"]
POOLINGS: tuple[str, ...] = ("last", "eos", "cls", "mean")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last real token of each row (left or right padding), shape ``(batch,)``."""
    import torch

    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.to(positions.dtype)).argmax(dim=1)


def first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the first real token of each row (left or right padding), shape ``(batch,)``."""
    return attention_mask.argmax(dim=1)  # argmax returns the first maximal position


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, method: Pooling) -> torch.Tensor:
    """Pool ``hidden`` ``(batch, seq, dim)`` to ``(batch, dim)`` with ``method`` (see module doc).

    ``mean`` is computed in float32 whatever the model's dtype.
    """
    import torch

    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if method in ("last", "eos"):
        return hidden[rows, last_token_index(attention_mask)]
    if method == "cls":
        return hidden[rows, first_token_index(attention_mask)]
    if method == "mean":
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        total = (hidden.to(torch.float32) * mask).sum(dim=1)
        return total / mask.sum(dim=1).clamp(min=1e-9)
    raise ConfigError(f"unknown pooling {method!r}; choose one of {', '.join(POOLINGS)}")
