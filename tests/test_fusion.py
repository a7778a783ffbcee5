"""Run fusion: reciprocal-rank and normalised linear fusion."""

from __future__ import annotations

import math

import pytest

from nestrank.data import Run
from nestrank.errors import ConfigError
from nestrank.retrieve import fuse, linear_fusion, reciprocal_rank_fusion

A = Run({"q1": [("a", 10.0), ("b", 8.0), ("c", 4.0)], "q2": [("x", 1.0)]})
B = Run({"q1": [("c", 0.9), ("d", 0.5)], "q3": [("y", 3.0), ("z", 1.0)]})


def test_rrf_hand_computed() -> None:
    fused = reciprocal_rank_fusion([A, B], rrf_k=60)
    scores = dict(fused["q1"])
    assert scores["a"] == pytest.approx(1 / 61)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["d"] == pytest.approx(1 / 62)
    assert fused.doc_ids("q1") == ["c", "a", "d", "b"]  # b and d tie at 1/62: doc id descending
    assert set(fused) == {"q1", "q2", "q3"}  # union of queries
    assert fused.doc_ids("q3") == ["y", "z"]


def test_rrf_weights_and_depth() -> None:
    fused = reciprocal_rank_fusion([A, B], rrf_k=1, weights=[1.0, 0.0], k=2)
    assert fused.doc_ids("q1") == ["a", "b"]
    assert dict(fused["q1"])["a"] == pytest.approx(1 / 2)
    heavy_b = reciprocal_rank_fusion([A, B], weights=[0.1, 1.0])
    assert heavy_b.doc_ids("q1")[:2] == ["c", "d"]


def test_rrf_of_one_run_keeps_its_order() -> None:
    assert reciprocal_rank_fusion([A])["q1"][0][0] == "a"
    assert reciprocal_rank_fusion([A]).doc_ids("q1") == A.doc_ids("q1")


def test_linear_minmax_hand_computed() -> None:
    fused = linear_fusion([A, B], weights=[1.0, 2.0], norm="minmax")
    scores = dict(fused["q1"])
    # A: a=1, b=(8-4)/6, c=0; B: c=1, d=0; missing documents get 0
    assert scores["a"] == pytest.approx(1.0)
    assert scores["b"] == pytest.approx(4 / 6)
    assert scores["c"] == pytest.approx(0 + 2 * 1.0)
    assert scores["d"] == pytest.approx(0.0)
    assert fused.doc_ids("q1") == ["c", "a", "b", "d"]
    assert dict(fused["q2"]) == {"x": 1.0}  # a single result normalises to 1


def test_linear_zscore_hand_computed() -> None:
    fused = linear_fusion([A, B], norm="zscore")
    mean, std = 22 / 3, math.sqrt(((10 - 22 / 3) ** 2 + (8 - 22 / 3) ** 2 + (4 - 22 / 3) ** 2) / 3)
    z = {d: (s - mean) / std for d, s in A["q1"]}
    scores = dict(fused["q1"])
    assert scores["a"] == pytest.approx(z["a"] + -1.0)  # missing from B: B's lowest z-score (-1)
    assert scores["c"] == pytest.approx(z["c"] + 1.0)
    assert scores["d"] == pytest.approx(z["c"] + -1.0)  # missing from A: A's lowest z-score (c's)
    assert dict(fused["q2"]) == {"x": 0.0}


def test_fuse_dispatch_and_bad_input() -> None:
    assert fuse([A, B]).to_dict() == reciprocal_rank_fusion([A, B]).to_dict()
    assert fuse([A, B], "linear", norm="zscore").to_dict() == linear_fusion([A, B], norm="zscore").to_dict()
    with pytest.raises(ConfigError, match="unknown fusion method 'max'"):
        fuse([A, B], "max")
    with pytest.raises(ConfigError, match="at least one run"):
        fuse([])
    with pytest.raises(ConfigError, match="one weight per run"):
        fuse([A, B], weights=[1.0])
    with pytest.raises(ConfigError, match="not all 0"):
        fuse([A, B], weights=[0.0, 0.0])
    with pytest.raises(ConfigError, match="finite"):
        fuse([A, B], "linear", weights=[1.0, float("nan")])
    with pytest.raises(ConfigError, match="unknown score normalisation"):
        linear_fusion([A, B], norm="softmax")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="RRF k"):
        reciprocal_rank_fusion([A], rrf_k=-1)
    for method in ("rrf", "linear"):
        with pytest.raises(ConfigError, match="must be at least 1, got 0"):
            fuse([A, B], method, k=0)
        assert all(len(ranked) == 1 for ranked in fuse([A, B], method, k=1).values())
    with pytest.raises(TypeError):  # the old positional RRF constant fails loudly instead of meaning a cut
        reciprocal_rank_fusion([A], 60)
