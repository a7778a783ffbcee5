"""Tuning profiles: the Pareto frontier, the named choices, resumable scoring, profiles.json, CLI."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import write_beir
from typer.testing import CliRunner

import nestrank.pipeline.tune as tune_module
from nestrank.cli import app
from nestrank.cli import commands as _commands  # noqa: F401  (registers the commands)
from nestrank.data import Dataset, Run
from nestrank.errors import ConfigError
from nestrank.models import MatryoshkaReranker, read_profiles
from nestrank.pipeline.frontier import (
    TunePoint,
    choose_profiles,
    gain_kept,
    pareto_frontier,
    plot_lines,
    write_rows_csv,
)
from nestrank.pipeline.tune import TuneGrid, default_grid, plan_passes, tune
from nestrank.rerank import rerank_run, rerank_run_exits
from nestrank.retrieve import BM25Index


def point(cost: float, quality: float, config: str = "") -> TunePoint:
    return TunePoint(config or f"c{cost}", 20, 0.5, quality, cost / 10, cost / 20, cost)


def test_frontier_drops_dominated_points():
    points = [point(10, 0.80), point(5, 0.79), point(6, 0.70), point(2, 0.60), point(5, 0.75), point(12, 0.80)]
    assert [(p.cost, p.quality) for p in pareto_frontier(points)] == [(2, 0.60), (5, 0.79), (10, 0.80)]


def test_choices_on_a_synthetic_grid_are_the_known_answer():
    # quality rises with cost; full = 0.800 at cost 10; 1% below is 0.792, 3% below 0.776
    points = [point(10, 0.800), point(8, 0.795), point(6, 0.791), point(4, 0.780), point(3, 0.775), point(1, 0.5),
              point(7, 0.700)]
    chosen = choose_profiles(points, basis="quality")
    assert (chosen["full"].cost, chosen["balanced"].cost, chosen["light"].cost) == (8 + 2, 8, 4)
    assert choose_profiles(points, {"balanced": 0.0}, basis="quality")["balanced"].cost == 10
    with pytest.raises(ConfigError, match="tolerance"):
        choose_profiles(points, {"light": 1.5}, basis="quality")
    with pytest.raises(ConfigError, match="basis"):
        choose_profiles(points, basis="ndcg")


def test_gain_tolerances_are_shares_of_the_gain_over_the_first_stage():
    # first stage 0.700, full 0.800: a gain of 0.100. Keeping 85% needs 0.785, keeping 65% needs 0.765.
    points = [point(10, 0.800), point(8, 0.795), point(6, 0.784), point(4, 0.780), point(3, 0.765), point(1, 0.71)]
    chosen = choose_profiles(points, baseline=0.700)
    assert (chosen["full"].cost, chosen["balanced"].cost, chosen["light"].cost) == (10, 8, 3)
    # the quality basis reads the same tolerances as shares of 0.800: far looser here
    assert choose_profiles(points, {"light": 0.35}, basis="quality")["light"].cost == 1
    with pytest.raises(ConfigError, match="baseline"):
        choose_profiles(points)
    # a reranker that gains nothing: no point may give up quality, so every profile is the best point
    worse = choose_profiles([point(10, 0.60), point(5, 0.59)], baseline=0.700)
    assert worse["light"].cost == worse["balanced"].cost == 10
    assert gain_kept(point(3, 0.765), chosen["full"], 0.700) == pytest.approx(0.65)
    assert gain_kept(point(3, 0.765), point(10, 0.6), 0.700) is None


def test_default_grid_scales_with_the_depth():
    grid = default_grid(30)
    assert grid.depths == [10, 15, 20, 25, 30]
    assert grid.widths == ["", "8:0.5", "8:0.25", "4:0.5"]
    assert [c for _, _, c in grid.configs(30)][:2] == ["depth=10", "depth=15"]
    assert "depth=10,compress=8:0.5" in [c for _, _, c in grid.configs(30)]
    assert default_grid(6).depths == [2, 3, 4, 5, 6]


def test_the_default_grid_tries_only_the_exits_training_reached():
    assert default_grid(30, trained_exits=(10, 15, 20, 30)).depths == [10, 15, 20, 30]
    assert default_grid(30, trained_exits=(5, 10, 30)).depths == [10, 30]  # still from a third of the depth
    assert default_grid(30, trained_exits=None).depths == [10, 15, 20, 25, 30]


def test_plan_passes_scores_every_configuration_in_one_pass_per_width(tmp_path, tiny_checkpoint, monkeypatch):
    passes = plan_passes(["depth=4,compress=2:0.5", None, "depth=3", "compress=2:0.5", "depth=3", "full"], 6)
    assert passes == {"compress=2:0.5": [4, 6], "full": [3, 6]}
    with pytest.raises(ConfigError, match="exit layer 7 is out of range"):
        plan_passes(["depth=7"], 6)
    with pytest.raises(ConfigError, match="at or after the exit layer"):
        plan_passes(["depth=2,compress=2:0.5"], 6)
    with pytest.raises(ConfigError, match="one exit each"):
        plan_passes(["exits=2;4"], 6)
    # rerank_configs: one pass per width, and each configuration's run is the one it gives alone
    ds = Dataset.open(write_beir(tmp_path / "data"))
    reranker = MatryoshkaReranker.from_pretrained(str(tiny_checkpoint), dtype="float32", device="cpu")
    candidates = BM25Index.build(ds.corpus).search(ds.queries, 5)
    configs = ["depth=4,compress=2:0.5", None, "depth=3", "compress=2:0.5"]
    passes = []
    monkeypatch.setattr("nestrank.rerank.rerank_run_exits",
                        lambda *a, **kw: passes.append(kw["config"]) or rerank_run_exits(*a, **kw))
    runs = tune_module.rerank_configs(reranker, candidates, ds.queries, ds.corpus, configs, rerank_depth=5)
    assert len(passes) == 2 and set(passes) == {"compress=2:0.5", None} and list(runs) == configs
    for config in configs:
        alone = rerank_run(candidates, ds.queries, ds.corpus, reranker, rerank_depth=5, config=config,
                           show_progress=False)
        for q in alone:
            assert runs[config].doc_ids(q) == alone.doc_ids(q)
            assert [s for _, s in runs[config][q]] == pytest.approx([s for _, s in alone[q]], abs=1e-5)


def test_rows_go_to_a_csv_and_lines_to_a_plot(tmp_path):
    rows = [{"model": "comp", "depth": 2, "ndcg@10": 0.5}, {"model": "comp", "depth": 4, "ndcg@10": 0.6}]
    path = write_rows_csv(rows, tmp_path / "sweep" / "s.csv")
    assert path.read_text() == "model,depth,ndcg@10\ncomp,2,0.5\ncomp,4,0.6\n"
    with pytest.raises(ConfigError, match="no rows"):
        write_rows_csv([], tmp_path / "empty.csv")
    png = plot_lines({"comp, full width": [(0.5, 0.5, "2"), (1.0, 0.6, "4")]}, tmp_path / "s.png", metric="nDCG@10",
                     cost_label="relative FLOPs", title="sweep", baseline=0.4, baseline_label="BM25")
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 1000


def test_tune_writes_profiles_csv_and_plot_and_resumes_from_its_cache(tmp_path, tiny_checkpoint, monkeypatch):
    ds = Dataset.open(write_beir(tmp_path / "data"))
    reranker = MatryoshkaReranker.from_pretrained(str(tiny_checkpoint), dtype="float32", device="cpu")
    candidates = BM25Index.build(ds.corpus).search(ds.queries, 5)
    grid = TuneGrid([2, 4, 6], ["", "2:0.5"], [2, 5], [0.5, 1.0])
    args = dict(out_dir=tmp_path / "out", work_dir=tmp_path / "work", model_id=str(tiny_checkpoint), grid=grid,
                timing_pairs=4)
    result = tune(reranker, candidates, ds.queries, ds.qrels("test"), ds.corpus, **args)
    assert sorted(result.chosen) == ["balanced", "full", "light"]
    assert len(result.points) == 5 * 2 * 2  # depth=2,compress=2:0.5 is invalid: 5 configurations
    profiles = read_profiles(tmp_path / "out", reranker.num_layers)
    assert profiles["light"].config == result.chosen["light"].config
    assert profiles["light"].ms_per_pair is not None and profiles["light"].quality
    rows = list(csv.DictReader((tmp_path / "out" / "tune.csv").open()))
    assert len(rows) == 20 and sum(int(r["frontier"]) for r in rows) >= 1
    assert (tmp_path / "out" / "tune.png").stat().st_size > 1000
    tuning = json.loads((tmp_path / "out" / "profiles.json").read_text())["tuning"]
    assert tuning["queries"] == 2 and tuning["metric"] == "nDCG@10"
    assert tuning["tolerance_basis"] == "gain" and tuning["tolerances"] == {"balanced": 0.15, "light": 0.35}
    assert set(tuning["gain_kept"]) == {"full", "balanced", "light"}
    assert tuning["gain_kept"]["full"] in (None, 1.0)

    def no_scoring(*_, **__):
        raise AssertionError("a resumed tuning must reuse its cached scores")

    monkeypatch.setattr("nestrank.rerank.rerank_run_exits", no_scoring)
    again = tune(reranker, candidates, ds.queries, ds.qrels("test"), ds.corpus, **args)
    assert again.points == result.points
    other = Run({q: [("d2", 2.0), ("d3", 1.0)] for q in candidates})  # a fresh cache: scoring runs (and fails)
    with pytest.raises(AssertionError, match="cached scores"):
        tune(reranker, other, ds.queries, ds.qrels("test"), ds.corpus, **args)


def test_cli_tune_uses_the_model_validation_file_and_refuses_test(tmp_path, tiny_checkpoint):
    data = write_beir(tmp_path / "data")
    (tiny_checkpoint / tune_module.VALIDATION_FILE).write_text("q3\n")
    runner = CliRunner()
    out = tmp_path / "profiles"
    common = ["tune", "--model", str(tiny_checkpoint), "--dataset", str(data), "--depths", "3,6", "--widths", "full,2:0.5",
              "--rerank-depths", "3", "--weights", "0.5,1", "--timing-pairs", "0"]
    result = runner.invoke(app, [*common, "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary["profiles"]) == {"full", "balanced", "light"}
    assert "gain_kept" in summary["profiles"]["light"]
    by_quality = runner.invoke(app, [*common, "--out", str(out), "--tolerance-of", "quality", "--light", "0.05"])
    assert by_quality.exit_code == 0, by_quality.output
    tuning = json.loads((out / "profiles.json").read_text())["tuning"]
    assert tuning["tolerance_basis"] == "quality" and tuning["tolerances"] == {"balanced": 0.01, "light": 0.05}
    unknown = runner.invoke(app, [*common, "--out", str(out), "--tolerance-of", "ndcg"])
    assert unknown.exit_code != 0 and "basis" in str(unknown.exception)
    assert "ids from" in result.output and "validation_queries.txt" in result.output
    refused = runner.invoke(app, [*common, "--out", str(out), "--split", "test"])
    assert refused.exit_code != 0 and "leak" in str(refused.exception)
    (tiny_checkpoint / tune_module.VALIDATION_FILE).write_text("q1\n")  # a test query
    leaked = runner.invoke(app, [*common, "--out", str(out), "--split", "test"])
    assert leaked.exit_code != 0
    (tiny_checkpoint / tune_module.VALIDATION_FILE).unlink()
