"""Token-budget batching for cross-encoders, with an OOM back-off.

Sequences are sorted by length (longest first, so an out-of-memory error shows up on the
first batch) and packed greedily so that every batch's *padded* size, ``max_len * n``,
stays within ``batch_tokens`` and ``n <= max_batch_size``. A sequence longer than the whole
budget gets a batch of its own. :func:`map_batches` runs a function over such batches and
returns its per-item outputs in input order.

On ``torch.cuda.OutOfMemoryError`` a batch is split in half and each half retried, down to
single items; once a batch of ``n`` failed, later batches are capped at ``n // 2`` items so
the error is not hit again on every batch. A single item that does not fit re-raises the
error with a message saying what to lower.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from nestrank.errors import ConfigError

BatchFn = Callable[[list[int]], np.ndarray]


def token_budget_batches(lengths: Sequence[int], batch_tokens: int, max_batch_size: int | None = None) -> list[list[int]]:
    """Group item indices into batches sorted by length, longest first.

    Each batch satisfies ``max(lengths[i] for i in batch) * len(batch) <= batch_tokens``
    (except a single item longer than the budget, alone in its batch) and
    ``len(batch) <= max_batch_size``. Ties in length keep input order.
    """
    if batch_tokens < 1:
        raise ConfigError(f"batch_tokens must be a positive integer, got {batch_tokens}")
    if max_batch_size is not None and max_batch_size < 1:
        raise ConfigError(f"max_batch_size must be a positive integer, got {max_batch_size}")
    if any(length < 0 for length in lengths):
        raise ConfigError("sequence lengths must be non-negative")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if current:
            # Sorted longest first, so a batch's padded length is its first item's length.
            full = max_batch_size is not None and len(current) >= max_batch_size
            if full or max(lengths[current[0]], 1) * (len(current) + 1) > batch_tokens:
                batches.append(current)
                current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def restore_order(batches: Sequence[Sequence[int]], outputs: Sequence[np.ndarray], total: int) -> np.ndarray:
    """Put per-batch outputs (first axis = batch items) back in input order."""
    indices = np.fromiter((i for batch in batches for i in batch), dtype=np.int64)
    if len(indices) != total or len(np.unique(indices)) != total:
        raise ValueError(f"batches must cover each of the {total} items exactly once")
    stacked = np.concatenate([np.asarray(out) for out in outputs], axis=0)
    if stacked.shape[0] != total:
        raise ValueError(f"batch outputs hold {stacked.shape[0]} items, expected {total}")
    result = np.empty_like(stacked)
    result[indices] = stacked
    return result


class OOMBackoff:
    """Runs batches, halving any batch that raises ``torch.cuda.OutOfMemoryError``.

    ``max_items`` is the cap learned from failures (``None`` until the first one); it
    persists across calls of :meth:`run`, so reuse one instance for one scoring job.
    """

    def __init__(self) -> None:
        self.max_items: int | None = None

    def run(self, fn: BatchFn, batch: list[int]) -> np.ndarray:
        """``fn(batch)``, split into halves (recursively) while it runs out of GPU memory."""
        import torch

        if self.max_items is not None and len(batch) > self.max_items:
            return self._split(fn, batch, self.max_items)
        try:
            return np.asarray(fn(batch))
        except torch.cuda.OutOfMemoryError as exc:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(batch) == 1:
                raise torch.cuda.OutOfMemoryError(
                    "out of GPU memory on a batch of a single sequence: lower the maximum sequence length, "
                    "use a smaller dtype (bf16) or a larger GPU"
                ) from exc
            half = (len(batch) + 1) // 2
            self.max_items = half if self.max_items is None else min(self.max_items, half)
            return self._split(fn, batch, half)

    def _split(self, fn: BatchFn, batch: list[int], size: int) -> np.ndarray:
        parts = [self.run(fn, batch[start:start + size]) for start in range(0, len(batch), size)]
        return np.concatenate(parts, axis=0)


def map_batches(
    fn: BatchFn,
    lengths: Sequence[int],
    *,
    batch_tokens: int,
    max_batch_size: int | None = None,
    on_batch_done: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Apply ``fn`` to token-budget batches of item indices; outputs come back in input order.

    ``fn`` takes a list of indices and returns an array whose first axis has one entry per
    index. ``on_batch_done(n)`` is called after each batch with its size (for progress bars).
    """
    if len(lengths) == 0:
        raise ConfigError("nothing to batch: no sequences given")
    batches = token_budget_batches(lengths, batch_tokens, max_batch_size)
    backoff = OOMBackoff()
    outputs = []
    for batch in batches:
        outputs.append(backoff.run(fn, batch))
        if on_batch_done is not None:
            on_batch_done(len(batch))
    return restore_order(batches, outputs, len(lengths))
