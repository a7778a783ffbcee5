"""The Matryoshka reranker's input: one pair's token ids with its passage span, and left-padded batches.

Input of one pair (template and prompt are configurable)::

    [BOS] A: {query}\\nB: {passage}\\n{prompt}

The pieces are tokenized separately (a slot keeps the space that precedes it, BPE style), so
the passage's token span is known exactly; only passage tokens are ever merged. The passage
is truncated to the reranker's limit and the query to ``max_query_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from nestrank.errors import ConfigError
from nestrank.models.matryoshka.token_merge import RowLayout

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

DEFAULT_TEMPLATE = "A: {query}\nB: {passage}\n"
DEFAULT_PROMPT = "Predict whether passage B contains an answer to query A."


@dataclass(frozen=True, slots=True)
class EncodedPair:
    """Token ids of one pair and where its passage is: ``ids[passage_start:passage_start + passage_len]``."""

    ids: list[int]
    passage_start: int
    passage_len: int


@dataclass(frozen=True)
class PairFormat:
    """How a pair becomes tokens: the tokenizer, template, prompt and query limit (checked on creation)."""

    tokenizer: PreTrainedTokenizerBase
    template: str = DEFAULT_TEMPLATE
    prompt: str = DEFAULT_PROMPT
    max_query_tokens: int = 64

    def __post_init__(self) -> None:
        template = self.template
        if template.count("{query}") != 1 or template.count("{passage}") != 1:
            raise ConfigError(f"template must contain {{query}} and {{passage}} exactly once, got {template!r}")
        if template.index("{query}") > template.index("{passage}"):
            raise ConfigError("template must put {query} before {passage}")
        check_positive("max_query_tokens", self.max_query_tokens)

    def encode(self, query: str, passage: str, passage_limit: int) -> EncodedPair:
        """Token ids of (``query``, ``passage``), the passage cut to ``passage_limit`` tokens."""
        before, after = self.template.split("{passage}")
        head, middle = before.split("{query}")
        # A space before a slot belongs to the slot's first token (BPE style): "B:" + " Paris".
        head, query = _move_space(head, query)
        middle, passage = _move_space(middle, passage)
        query_ids = self._tokens(query)[: self.max_query_tokens]
        prefix = self.prefix_ids + self._tokens(head) + query_ids + self._tokens(middle)
        passage_ids = self._tokens(passage)[:passage_limit]
        suffix = self._tokens(after + self.prompt)
        return EncodedPair(prefix + passage_ids + suffix, len(prefix), len(passage_ids))

    @cached_property
    def prefix_ids(self) -> list[int]:
        """The special tokens the tokenizer puts before a text (e.g. Llama's BOS); often none."""
        plain = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return list(full[:start])
        return []

    def _tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def batch_inputs(pairs: Sequence[EncodedPair], pad_id: int | None, device: torch.device
                 ) -> tuple[torch.Tensor, list[RowLayout], list[int]]:
    """Left-padded ids of encoded pairs on ``device``, their layouts and passage lengths."""
    import torch

    width = max(len(p.ids) for p in pairs)
    ids = torch.full((len(pairs), width), 0 if pad_id is None else pad_id, dtype=torch.long)
    for row, pair in enumerate(pairs):
        ids[row, width - len(pair.ids):] = torch.tensor(pair.ids)
    layouts = [RowLayout(p.passage_start, p.passage_len, len(p.ids)) for p in pairs]
    return ids.to(device), layouts, [p.passage_len for p in pairs]


def check_positive(name: str, value: object) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _move_space(text: str, slot: str) -> tuple[str, str]:
    return (text[:-1], " " + slot) if text.endswith(" ") else (text, slot)
