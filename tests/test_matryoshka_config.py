"""MatryoshkaConfig: parsing, validation, lengths and compression factors."""

from __future__ import annotations

import pytest

from nestrank.errors import ConfigError
from nestrank.models.matryoshka.config import Compression, MatryoshkaConfig, parse_config


def test_parse_depth_and_compress():
    config = parse_config("depth=16, compress=8:0.5")
    assert config.exits == (16,)
    assert config.depth == 16
    assert config.compress == (Compression(8, ratio=0.5),)
    assert str(config) == "depth=16,compress=8:0.5"


@pytest.mark.parametrize("spec", ["compress=8:0.5;16:0.25,depth=20", "compress=8:0.5,compress=16:0.25,depth=20"])
def test_two_compression_forms_agree(spec):
    config = parse_config(spec)
    assert config.compress == (Compression(8, ratio=0.5), Compression(16, ratio=0.25))
    assert parse_config(str(config)) == config


@pytest.mark.parametrize("spec", [None, "", "full", "  "])
def test_full_model(spec):
    assert parse_config(spec).is_full


def test_exits_and_value_passthrough():
    config = parse_config("exits=30;8;16")
    assert config.exits == (8, 16, 30)
    assert parse_config(config) is config
    assert str(config) == "exits=8;16;30"


def test_lengths_form_matches_paper_semantics():
    config = parse_config("lengths=1:200;9:100;13:100;17:40,depth=20")
    assert config.passage_tokens == 200
    assert config.compress == (Compression(8, length=100), Compression(16, length=40))
    assert config.passage_lengths(200) == {8: 100, 16: 40}
    assert config.passage_lengths(60) == {8: 60, 16: 40}
    assert parse_config(str(config)) == config
    assert MatryoshkaConfig.from_lengths({1: 200, 9: 100, 17: 40}, depth=20) == config


def test_ratio_targets_and_factors():
    config = parse_config("compress=8:0.5;16:0.25")
    assert config.passage_lengths(224) == {8: 112, 16: 56}
    assert config.factors(224) == {8: 2, 16: 2}
    assert config.nominal_factors() == {8: 2, 16: 2}
    assert config.passage_lengths(7) == {8: 4, 16: 2}  # halves round up
    assert config.factors(7) == {8: 2, 16: 2}
    assert parse_config("compress=4:0.25").factors(100) == {4: 4}
    assert parse_config("compress=4:0.3").nominal_factors() == {4: 4}
    assert parse_config("compress=4:1").factors(50) == {4: 1}


def test_validate_against_model():
    assert parse_config("depth=16").validate(30) == (16,)
    assert parse_config(None).validate(30) == (30,)
    with pytest.raises(ConfigError, match="out of range.*30 layers"):
        parse_config("depth=31").validate(30)
    with pytest.raises(ConfigError, match="at or after the exit layer 6"):
        parse_config("compress=6:0.5").validate(6)


@pytest.mark.parametrize("spec, message", [
    ("depth=0", "positive integer"),
    ("depth=x", "not an integer"),
    ("depth", "key=value"),
    ("width=3", "unknown key 'width'"),
    ("compress=8", "LAYER:RATIO"),
    ("compress=8:1.5", r"outside \(0, 1\]"),
    ("compress=8:0", r"outside \(0, 1\]"),
    ("compress=8:nan", "not finite"),
    ("compress=8:abc", "not a number"),
    ("compress=8:0.25;16:0.5", "non-increasing"),
    ("compress=16:0.5;8:0.25", "distinct and increasing"),
    ("compress=16:0.5,depth=16", "at or after the exit layer 16"),
    ("compress=8:0.5,lengths=9:100", "cannot mix"),
    ("lengths=1:100;9:200", "non-increasing"),
    ("lengths=9:100,depth=4", "after the exit layer 4"),
    ("lengths=9:100;9:50", "given twice"),
    ("depth=4,depth=4", "given twice"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(spec)


def test_bad_types():
    with pytest.raises(ConfigError, match="string or MatryoshkaConfig"):
        parse_config(16)
    with pytest.raises(ConfigError, match="exactly one of ratio or length"):
        MatryoshkaConfig(compress=(Compression(3),))
    with pytest.raises(ConfigError, match="nominal factors need ratio steps"):
        parse_config("lengths=5:10").nominal_factors()


def test_config_is_immutable_and_hashable():
    config = parse_config("depth=16")
    with pytest.raises(AttributeError):
        config.exits = (3,)
    assert hash(config) == hash(parse_config("depth=16"))
