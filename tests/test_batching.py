"""Token-budget batching, input-order restoration and the OOM back-off runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nestrank.errors import ConfigError
from nestrank.models.batching import OOMBackoff, map_batches, restore_order, token_budget_batches


def test_batches_respect_budget_and_cover_every_item_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=200).tolist()
    batches = token_budget_batches(lengths, batch_tokens=1000, max_batch_size=8)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(200))
    for batch in batches:
        assert max(lengths[i] for i in batch) * len(batch) <= 1000
        assert len(batch) <= 8
    # Sorted longest first across the whole sequence of batches.
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_batches_are_packed_greedily():
    assert token_budget_batches([10, 10, 10, 10, 10], batch_tokens=20) == [[0, 1], [2, 3], [4]]
    assert token_budget_batches([5, 50, 5], batch_tokens=60) == [[1], [0, 2]]
    assert token_budget_batches([1] * 5, batch_tokens=100, max_batch_size=2) == [[0, 1], [2, 3], [4]]


def test_item_longer_than_budget_gets_its_own_batch():
    assert token_budget_batches([500, 3, 3], batch_tokens=100) == [[0], [1, 2]]


@pytest.mark.parametrize(("tokens", "size", "lengths"), [(0, None, [1]), (10, 0, [1]), (10, None, [-1])])
def test_bad_batching_arguments_are_rejected(tokens, size, lengths):
    with pytest.raises(ConfigError):
        token_budget_batches(lengths, tokens, size)


def test_map_batches_restores_input_order():
    lengths = [3, 9, 1, 7, 7, 2]
    seen = []

    def fn(batch):
        seen.append(list(batch))
        return np.array([lengths[i] * 10 + i for i in batch], dtype=np.float32)

    out = map_batches(fn, lengths, batch_tokens=14, on_batch_done=lambda n: None)
    np.testing.assert_array_equal(out, [30, 91, 12, 73, 74, 25])
    assert len(seen) > 1  # really batched, not one call


def test_restore_order_handles_two_dimensional_outputs_and_checks_coverage():
    out = restore_order([[2, 0], [1]], [np.array([[2, 2], [0, 0]]), np.array([[1, 1]])], 3)
    np.testing.assert_array_equal(out, [[0, 0], [1, 1], [2, 2]])
    with pytest.raises(ValueError, match="exactly once"):
        restore_order([[0, 0]], [np.zeros(2)], 2)


def test_map_batches_rejects_empty_input():
    with pytest.raises(ConfigError, match="no sequences"):
        map_batches(lambda b: np.zeros(len(b)), [], batch_tokens=10)


class FakeGPU:
    """Raises torch.cuda.OutOfMemoryError for batches above ``capacity`` items.

    A legitimate mock: this machine has no GPU, so the OOM path is driven by a fake
    function raising the exact exception type CUDA raises.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.calls: list[int] = []

    def __call__(self, batch: list[int]) -> np.ndarray:
        self.calls.append(len(batch))
        if len(batch) > self.capacity:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        return np.asarray(batch, dtype=np.float32) * 2


def test_oom_halves_the_batch_and_keeps_order():
    """No GPU here: FakeGPU raises torch.cuda.OutOfMemoryError above 3 items."""
    gpu = FakeGPU(capacity=3)
    out = OOMBackoff().run(gpu, list(range(10)))
    np.testing.assert_array_equal(out, np.arange(10) * 2)
    # 10 fails, its first half (5) fails, then halves of at most 3 items; the second half
    # of 5 is cut to the learned cap of 3 without being tried whole.
    assert gpu.calls == [10, 5, 3, 2, 3, 2]


def test_oom_cap_persists_for_later_batches():
    """No GPU here: after one OOM, later batches start at the learned cap, not at full size."""
    gpu = FakeGPU(capacity=4)
    lengths = [10] * 16
    out = map_batches(gpu, lengths, batch_tokens=80)  # two batches of 8
    np.testing.assert_array_equal(out, np.arange(16) * 2)
    assert gpu.calls.count(8) == 1  # the second batch of 8 was never tried whole


def test_oom_on_a_single_item_reraises_with_advice():
    """No GPU here: a fake function that always raises torch.cuda.OutOfMemoryError."""
    gpu = FakeGPU(capacity=0)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="single sequence") as info:
        OOMBackoff().run(gpu, [0, 1, 2, 3])
    assert isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)
    assert gpu.calls == [4, 2, 1]


def test_other_errors_are_not_swallowed():
    def boom(batch):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        OOMBackoff().run(boom, [0, 1])
