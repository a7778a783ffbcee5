"""Profiles: named Matryoshka configurations read from a model directory's profiles.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import DOCS, QUERY, randomise_heads, truncated

from nestrank.errors import ConfigError
from nestrank.models.matryoshka import MatryoshkaReranker
from nestrank.models.matryoshka.profiles import PROFILES_FILE, Profile, default_profiles, read_profiles, write_profiles
from nestrank.models.tiny import byte_tokenizer, tiny_llama


def test_default_profiles_follow_the_paper_light_point():
    assert default_profiles(30)["light"].config == "depth=15,compress=8:0.5"
    assert default_profiles(32)["light"].config == "depth=16,compress=8:0.5"
    assert default_profiles(6)["light"].config == "depth=3,compress=2:0.5"
    assert default_profiles(30)["full"].config == ""


def test_write_then_read_round_trip(tmp_path):
    chosen = {"full": Profile("full", "", rerank_depth=20, weight=0.5, flops_ratio=1.0, quality={"nDCG@10": 0.8}),
              "balanced": Profile("balanced", "depth=5", rerank_depth=20, weight=0.4, flops_ratio=0.8)}
    write_profiles(tmp_path, chosen, tuning={"tolerance": 0.01})
    data = json.loads((tmp_path / PROFILES_FILE).read_text())
    assert data["tuning"] == {"tolerance": 0.01}
    assert data["profiles"]["balanced"] == {"config": "depth=5", "rerank_depth": 20, "weight": 0.4, "flops_ratio": 0.8}
    read = read_profiles(tmp_path, 6)
    assert read["full"] == chosen["full"] and read["balanced"] == chosen["balanced"]
    assert read["light"] == default_profiles(6)["light"]  # the default stays where the file has none


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ('{"profiles": []}', "'profiles' object"),
    ('{"profiles": {"x": {"weight": 0.5}}}', "needs a 'config' string"),
    ('{"profiles": {"x": {"config": "depth=99"}}}', "99"),
    ('{"profiles": {"x": {"config": "depth=2", "colour": 1}}}', "unknown field"),
    ('{"profiles": {"x": {"config": "depth=2", "weight": 3}}}', "weight must lie in"),
    ('{"profiles": {"9x": {"config": "depth=2"}}}', "must start with a letter"),
])
def test_malformed_files_name_the_file(tmp_path, content, message):
    (tmp_path / PROFILES_FILE).write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        read_profiles(tmp_path, 6)
    assert PROFILES_FILE in str(info.value)


def test_profile_names_work_where_configuration_strings_do(tiny_llama_dir, tmp_path):
    ckpt = randomise_heads(tiny_llama_dir, tmp_path / "ckpt", seed=1)
    write_profiles(ckpt, {"fast": Profile("fast", "depth=2,compress=1:0.5")})
    loaded = MatryoshkaReranker.from_pretrained(str(ckpt), dtype="float32", device="cpu")
    assert sorted(loaded.profiles) == ["fast", "full", "light"]
    np.testing.assert_array_equal(loaded.score(QUERY, DOCS, config="fast"),
                                  loaded.score(QUERY, DOCS, config="depth=2,compress=1:0.5"))
    np.testing.assert_array_equal(loaded.score(QUERY, DOCS, config="light"),
                                  loaded.score(QUERY, DOCS, config="depth=3,compress=2:0.5"))
    assert loaded.flops("fast", 5, 20, 10) == loaded.flops("depth=2,compress=1:0.5", 5, 20, 10)
    with pytest.raises(ConfigError, match="unknown profile 'turbo'.*fast, full, light"):
        loaded.score(QUERY, DOCS, config="turbo")


def test_a_two_layer_model_gets_a_light_profile_without_compression():
    """Half of 2 layers is 1: no layer comes before the exit to compress after, so light only exits early."""
    assert default_profiles(2)["light"].config == "depth=1"
    reranker = MatryoshkaReranker(truncated(tiny_llama(), 2), byte_tokenizer())
    assert reranker.score(QUERY, DOCS, config="light").shape == (len(DOCS),)

