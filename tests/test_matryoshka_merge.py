"""Token merging: group selection, exact lengths, weighted sums, positions and re-packing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nestrank.models.matryoshka.token_merge import RowLayout, merge_rows, plan_merges, segment_ids


def test_lowest_attention_groups_merge_first():
    importance = np.array([0.30, 0.20, 0.01, 0.02, 0.10, 0.15, 0.05, 0.01])
    # groups of 2: totals 0.50, 0.03, 0.25, 0.06 -> the two lowest are (2, 4) and (6, 8)
    assert plan_merges(importance, 2, 6) == [(2, 4), (6, 8)]
    assert plan_merges(importance, 2, 7) == [(2, 4)]
    assert plan_merges(importance, 2, 8) == []


def test_partial_group_hits_the_exact_length():
    importance = np.array([0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.5])
    # groups of 3: (0,3) total 0.3, (3,6) 2.7, (6,7) 0.5; 7 -> 4 needs 3 merges: (0,3) gives 2, then 1 more
    # from the next lowest group with >= 2 tokens: (3,6), only its first two tokens.
    assert plan_merges(importance, 3, 4) == [(0, 3), (3, 5)]


@pytest.mark.parametrize("length", [1, 2, 5, 17, 64, 223])
def test_every_reachable_target_is_hit_exactly(length):
    rng = np.random.default_rng(length)
    importance = rng.random(length)
    for target in range(1, length + 1):
        k = math.ceil(length / target)
        spans = plan_merges(importance, k, target)
        assert length - sum(end - start - 1 for start, end in spans) == target
        assert all(end - start <= k for start, end in spans)
        flat = [i for start, end in spans for i in range(start, end)]
        assert len(flat) == len(set(flat))


def test_unreachable_target_is_an_error():
    with pytest.raises(ValueError, match="minimum 5"):
        plan_merges(np.ones(10), 2, 4)


def test_segment_ids_map_tokens_to_merged_slots():
    layout = RowLayout(start=2, length=6, total=10)
    ids = segment_ids(layout, [(0, 3), (4, 6)])
    assert ids.tolist() == [0, 1, 2, 2, 2, 3, 4, 4, 5, 6]


def test_merged_state_is_the_attention_weighted_sum():
    # One row: 2 query tokens, a passage of 4, 1 prompt token; no padding.
    hidden = torch.arange(7 * 2, dtype=torch.float32).reshape(1, 7, 2)
    positions = torch.arange(7)[None]
    importance = np.array([[0.05, 0.05, 0.1, 0.3, 0.2, 0.2, 0.1]])
    layout = RowLayout(start=2, length=4, total=7)
    merged, new_positions, layouts = merge_rows(hidden, positions, [layout], [[(0, 2)]], importance)
    expected = (0.1 * hidden[0, 2] + 0.3 * hidden[0, 3]) / 0.4  # weights renormalised in the group
    assert merged.shape == (1, 6, 2)
    torch.testing.assert_close(merged[0, 2], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(merged[0, [0, 1, 3, 4, 5]], hidden[0, [0, 1, 4, 5, 6]], rtol=0, atol=0)
    assert new_positions.tolist() == [[0, 1, 2, 4, 5, 6]]
    assert layouts == [RowLayout(start=2, length=3, total=6)]


def test_zero_importance_group_averages():
    hidden = torch.tensor([[[1.0], [3.0], [5.0]]])
    merged, _, _ = merge_rows(hidden, torch.arange(3)[None], [RowLayout(0, 3, 3)], [[(0, 3)]], np.zeros((1, 3)))
    assert merged[0, 0, 0].item() == pytest.approx(3.0)


def test_rows_shrink_differently_and_are_repacked_left_padded():
    # Row 0: 6 real tokens (passage 1..4), row 1: 4 real tokens after 2 pads (passage 1..2).
    hidden = torch.randn(2, 6, 3)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]])
    importance = np.full((2, 6), 0.1)
    layouts = [RowLayout(1, 4, 6), RowLayout(1, 2, 4)]
    merged, new_positions, new_layouts = merge_rows(hidden, positions, layouts, [[(0, 2), (2, 4)], []], importance)
    assert merged.shape == (2, 4, 3)
    # Row 0 lost 2 tokens and fills the new width; row 1 is unchanged, now without padding.
    torch.testing.assert_close(merged[0, 1], (hidden[0, 1] + hidden[0, 2]) / 2)
    torch.testing.assert_close(merged[0, 2], (hidden[0, 3] + hidden[0, 4]) / 2)
    torch.testing.assert_close(merged[1], hidden[1, 2:])
    assert new_positions.tolist() == [[0, 1, 3, 5], [0, 1, 2, 3]]
    assert new_layouts == [RowLayout(1, 2, 4), RowLayout(1, 2, 4)]
