"""Analytic matmul FLOPs (2 per multiply-add) of scoring one pair with the Matryoshka engine.

Per layer run at length L (hidden d, h query heads and g key/value heads of size e, MLP
width m): ``2Ld(2he + 2ge)`` projections + ``4hL^2e`` attention scores and weighted values
(the full square, as dense kernels compute it) + ``6Ldm`` gated MLP. With the attention-row
importance a compression layer adds its row ``2Ldge + 2dhe + 2hLe`` (the eager path reads it
from matrices it computes anyway). Each exit adds ``2d``. The embedding lookup, norms,
softmax and the LM head (never run) are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nestrank.models.matryoshka.config import MatryoshkaConfig


def pair_flops(model_config: Any, config: MatryoshkaConfig, exits: Sequence[int], *, fixed_len: int, passage_len: int,
               attention_row: bool) -> float:
    """FLOPs of one pair under ``config`` up to the deepest of ``exits``.

    ``model_config`` is the transformers config (``hidden_size``, ``intermediate_size``,
    ``num_attention_heads``, ``num_key_value_heads``, optional ``head_dim``); ``fixed_len`` the
    tokens that are never merged (query, template, prompt, special tokens); ``passage_len``
    the passage's tokens after truncation; ``attention_row`` counts the importance rows.
    """
    d, m = model_config.hidden_size, model_config.intermediate_size
    h, g = model_config.num_attention_heads, model_config.num_key_value_heads
    e = getattr(model_config, "head_dim", None) or d // h
    lengths = config.passage_lengths(passage_len)
    total, current = 0.0, passage_len
    for layer in range(1, exits[-1] + 1):
        length = fixed_len + current
        total += 2 * length * d * (2 * h * e + 2 * g * e) + 4 * h * length * length * e + 6 * length * d * m
        if layer in lengths:
            if attention_row:
                total += 2 * length * d * g * e + 2 * d * h * e + 2 * h * length * e
            current = lengths[layer]
    return total + 2 * d * len(exits)
