"""Hard-negative mining: never a positive, seed-deterministic, blended runs, CLI."""

from __future__ import annotations

import json

import pytest
from helpers import cli

from nestrank.data import Corpus, Document, Qrels, Run
from nestrank.data.groups import read_groups
from nestrank.errors import ConfigError
from nestrank.train.mining import MiningStats, blend_runs, mine_groups, mine_to_file, parse_rank_window


def _setup():
    corpus = Corpus.from_documents([Document(f"d{i}", f"text {i}", f"title {i}") for i in range(40)])
    queries = {"q1": "first", "q2": "second", "q3": "third", "q4": "no positive in corpus"}
    qrels = Qrels({"q1": {"d3": 1, "d5": 2, "d7": 0}, "q2": {"d0": 1}, "q3": {"d1": 1}, "q4": {"missing": 1}})
    run = Run({q: [(f"d{i}", 100.0 - i - 0.5 * int(q[1])) for i in range(40)] for q in ("q1", "q2", "q4")})
    return corpus, queries, qrels, run


def test_mining_never_returns_positives_and_respects_the_rank_window():
    corpus, queries, qrels, run = _setup()
    stats = MiningStats()
    groups = list(mine_groups(run, qrels, queries, corpus, rank_window=(2, 20), negatives=5, seed=0, stats=stats))
    assert [g.query_id for g in groups] == ["q1", "q2"]
    assert stats.not_in_run == ["q3"] and stats.no_positive == ["q4"]
    for g in groups:
        neg = {d.id for d in g.negatives}
        assert len(neg) == 5
        assert not neg & qrels.relevant(g.query_id)
        assert neg <= set(run.doc_ids(g.query_id)[2:20])
    q1 = groups[0]
    assert sorted(d.id for d in q1.positives) == ["d3", "d5"]


def test_grade_zero_documents_may_be_negatives():
    corpus, queries, qrels, run = _setup()
    (q1,) = [g for g in mine_groups(run, qrels, queries, corpus, rank_window=(0, 10), negatives=8) if g.query_id == "q1"]
    # top 10 minus the two positives leaves exactly 8 candidates, d7 (judged 0) among them
    assert "d7" in {d.id for d in q1.negatives}


def test_mining_is_seed_deterministic():
    corpus, queries, qrels, run = _setup()

    def ids(seed):
        return [[d.id for d in g.negatives] for g in mine_groups(run, qrels, queries, corpus, rank_window=(0, 40),
                                                                  negatives=4, seed=seed)]

    assert ids(1) == ids(1)
    assert ids(1) != ids(2)


def test_short_candidate_lists_are_reported():
    corpus, queries, qrels, run = _setup()
    stats = MiningStats()
    groups = list(mine_groups(run, qrels, queries, corpus, rank_window=(0, 4), negatives=15, stats=stats))
    assert stats.short == ["q1", "q2"]
    assert [d.id for d in groups[0].negatives] == ["d0", "d1", "d2"]  # top 4 minus the positive d3


def test_blend_and_write_roundtrip(tmp_path):
    corpus, queries, qrels, run = _setup()
    other = Run({q: [(f"d{39 - i}", float(40 - i)) for i in range(40)] for q in ("q1", "q2")})
    blended = blend_runs([run, other], weights=[1.0, 1.0])
    assert set(blended) == {"q1", "q2", "q4"}
    out = tmp_path / "groups.jsonl"
    stats = mine_to_file(out, [run, other], qrels, queries, corpus, rank_window=(0, 30), negatives=3, seed=0)
    back = list(read_groups(out))
    assert stats.groups == len(back) == 2
    assert all(len(g.negatives) == 3 and not {d.id for d in g.negatives} & qrels.relevant(g.query_id) for g in back)
    assert '"positive_passages"' in out.read_text().splitlines()[0]


@pytest.mark.parametrize("text", ["10", "a:b", "5:5", "-1:10", "20:10"])
def test_bad_rank_window(text):
    with pytest.raises(ConfigError, match="bad rank window"):
        parse_rank_window(text)


def test_parse_rank_window():
    assert parse_rank_window("10:100") == (10, 100)


def test_bad_inputs(tmp_path):
    corpus, queries, qrels, run = _setup()
    with pytest.raises(ConfigError, match="weights for 1 run"):
        blend_runs([run], weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match="negatives must be"):
        list(mine_groups(run, qrels, queries, corpus, negatives=0))
    unrelated = Run({"zz": [("d1", 1.0)]})
    with pytest.raises(ConfigError, match="no training group"):
        mine_to_file(tmp_path / "g.jsonl", [unrelated], qrels, queries, corpus)
    assert not (tmp_path / "g.jsonl").exists()


def test_mine_command(tiny_beir, tmp_path, monkeypatch, capsys):
    run_a, run_b = tmp_path / "a.run", tmp_path / "b.run"
    Run({"q3": [("d5", 9.0), ("d1", 8.0), ("d2", 7.0), ("d3", 6.0)]}).write_trec(run_a)
    Run({"q3": [("d4", 9.0), ("d5", 8.0), ("d3", 7.0)]}).write_trec(run_b)
    out = tmp_path / "groups.jsonl"
    code, stdout, err = cli(capsys, monkeypatch, "mine", "--dataset", tiny_beir, "--split", "train", "--run", run_a,
                             "--run", run_b, "--weights", "1,1", "--rank-window", "0:10", "--negatives", "2", "--out", out)
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["groups"] == 1
    (group,) = read_groups(out)
    assert group.query_id == "q3" and [d.id for d in group.positives] == ["d5"]
    assert len(group.negatives) == 2 and "d5" not in {d.id for d in group.negatives}
    code, _, err = cli(capsys, monkeypatch, "mine", "--dataset", tiny_beir, "--split", "train", "--run", run_a,
                        "--weights", "1,1", "--out", out)
    assert code == 2 and "--weights has 2 values for 1 --run" in err
    code, _, err = cli(capsys, monkeypatch, "mine", "--dataset", tiny_beir, "--run", run_a, "--rank-window", "9",
                        "--out", out)
    assert code == 2 and "bad rank window" in err


def test_mine_command_deprecated_depth_and_unknown_query(tiny_beir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "a.run"
    Run({"q3": [("d5", 9.0), ("d1", 8.0), ("d2", 7.0), ("d3", 6.0)]}).write_trec(run)
    common = ["mine", "--dataset", tiny_beir, "--split", "train", "--run", run, "--negatives", "2"]
    code, stdout, err = cli(capsys, monkeypatch, *common, "--rank-window", "1:3", "--out", tmp_path / "new.jsonl")
    assert code == 0, err
    assert "deprecated" not in err
    code, old_stdout, err = cli(capsys, monkeypatch, *common, "--depth", "1:3", "--out", tmp_path / "old.jsonl")
    assert code == 0, err
    assert "warning: --depth is deprecated and will be removed; use --rank-window" in err.splitlines()
    assert (tmp_path / "old.jsonl").read_text() == (tmp_path / "new.jsonl").read_text()
    assert [d.id for d in next(read_groups(tmp_path / "new.jsonl")).negatives] == ["d1", "d2"]  # ranks 2..3
    code, _, err = cli(capsys, monkeypatch, *common, "--depth", "1:3", "--rank-window", "0:3", "--out", tmp_path / "x")
    assert code == 2 and "give --rank-window only" in err
    code, help_text, _ = cli(capsys, monkeypatch, "mine", "--help")
    assert "--rank-window" in help_text and "--depth" not in help_text
    # A queries file without a judged query: a one-line nestrank error (it was a KeyError the CLI caught).
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "why do cats purr"}\n')
    code, _, err = cli(capsys, monkeypatch, *common, "--queries", tmp_path / "queries.jsonl", "--out", tmp_path / "y")
    assert code == 2 and err.startswith("error: unknown query id 'q3'")


def test_mine_python_depth_is_a_deprecated_name_of_rank_window(tmp_path):
    corpus, queries, qrels, run = _setup()
    new = mine_to_file(tmp_path / "new.jsonl", [run], qrels, queries, corpus, rank_window=(2, 12), negatives=3)
    with pytest.warns(DeprecationWarning, match="use rank_window"):
        old = mine_to_file(tmp_path / "old.jsonl", [run], qrels, queries, corpus, depth=(2, 12), negatives=3)
    assert old == new and (tmp_path / "old.jsonl").read_text() == (tmp_path / "new.jsonl").read_text()
    with pytest.raises(ConfigError, match="give rank_window only"):
        mine_to_file(tmp_path / "x.jsonl", [run], qrels, queries, corpus, rank_window=(0, 5), depth=(2, 12))
