"""Reproductions as data: conditions run, scored against their expected figures, with clear file errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from nestrank.cli import app
from nestrank.cli import commands as _commands  # noqa: F401  (registers the commands)
from nestrank.errors import ConfigError
from nestrank.reproduce import load_conditions, reproduce

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"


@pytest.mark.skipif(not SCIFACT.is_dir(), reason="needs ../shared/data/scifact")
def test_the_bm25_conditions_reproduce_their_figures(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the conditions name pipelines/ relative to the repository
    conditions = [c for c in load_conditions(ROOT / "reproductions" / "scifact.toml") if c.name.startswith("bm25")]
    outcomes = reproduce(conditions, dataset=str(SCIFACT), out=tmp_path)
    assert [(o.condition.name, o.got, o.ok) for o in outcomes] == [("bm25", 0.6863, True),
                                                                   ("bm25-recall", 0.9127, True)]
    assert outcomes[0].ran and not outcomes[1].ran  # the second condition reuses the first one's run


def test_a_figure_off_its_expectation_fails_the_command(tmp_path, tiny_beir):
    run = tmp_path / "fixed.run"
    run.write_text("q1 Q0 d2 1 3.0 x\nq1 Q0 d1 2 2.0 x\nq2 Q0 d4 1 1.0 x\n")
    file = tmp_path / "r.toml"
    file.write_text(f'[[condition]]\nname = "fixed"\ncommands = []\nrun = "{run}"\nexpected = 0.99\n')
    result = CliRunner().invoke(app, ["reproduce", str(file), "--dataset", str(tiny_beir)])
    assert result.exit_code == 1 and "no (±0.0005)" in result.stdout, result.output
    listed = CliRunner().invoke(app, ["reproduce", str(file), "--list"])
    assert listed.exit_code == 0 and "fixed: nDCG@10 0.99" in listed.stdout


def test_a_sampled_condition_is_scored_on_its_sample_only(tmp_path, tiny_beir):
    from nestrank.data import Dataset
    from nestrank.data.queries import sample_ids

    judged = Dataset.open(tiny_beir).qrels("test")
    chosen = sample_ids(judged, 1, 0)[0]
    run = tmp_path / "one.run"  # perfect on the sampled query, nothing for the others
    run.write_text("".join(f"{chosen} Q0 {doc} {rank} {10 - rank} x\n"
                           for rank, doc in enumerate(sorted(judged[chosen], key=lambda d: -judged[chosen][d]), 1)))
    file = tmp_path / "r.toml"
    file.write_text(f'[[condition]]\nname = "one"\ncommands = []\nrun = "{run}"\nexpected = 1.0\nsample = 1\n'
                    f'[[condition]]\nname = "all"\ncommands = []\nrun = "{run}"\nexpected = {1 / len(judged)}\n'
                    f'tolerance = 0.001\n')
    outcomes = reproduce(load_conditions(file), dataset=str(tiny_beir), out=tmp_path)
    assert [(o.condition.name, o.ok) for o in outcomes] == [("one", True), ("all", True)], outcomes


@pytest.mark.parametrize(("text", "message"), [
    ("", "no \\[\\[condition\\]\\] entries"),
    ('[[condition]]\nname = "a"\ncommands = []\nrun = "x"\n', "missing expected"),
    ('[[condition]]\nname = "a"\ncommands = []\nrun = "x"\nexpected = 1\ncolour = 1\n', "unknown key"),
    ('[[condition]]\nname = "a"\ncommands = "nestrank"\nrun = "x"\nexpected = 1\n', "commands must be a list"),
    ('[[condition]]\nname = "a"\ncommands = []\nrun = "x"\nexpected = 1\n' * 2, "appears twice"),
])
def test_malformed_reproduction_files(tmp_path, text, message):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_conditions(path)
    assert "r.toml" in str(info.value)
