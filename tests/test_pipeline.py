"""The pipeline: TOML settings, first stage -> reranker -> interpolation, costs, CLI; equal to the stages by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import HashEncoder, make_corpus, write_beir
from typer.testing import CliRunner

from nestrank.cli import app
from nestrank.cli import commands as _commands  # noqa: F401  (registers the commands)
from nestrank.data import Dataset, Qrels, Run
from nestrank.errors import ConfigError
from nestrank.evaluate import evaluate
from nestrank.models import MatryoshkaReranker, Profile, write_profiles
from nestrank.pipeline import (
    FirstStageSection,
    Pipeline,
    PipelineConfig,
    RerankerSection,
    RerankStage,
    choose_weight,
    interpolate,
    load_pipeline_config,
    read_meta,
)
from nestrank.rerank import rerank_run
from nestrank.retrieve import BM25Index


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return Dataset.open(write_beir(tmp_path_factory.mktemp("data") / "tiny"))


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    """A tiny Matryoshka checkpoint (random heads) with a profiles.json."""
    write_profiles(tiny_checkpoint, {"quick": Profile("quick", "depth=2,compress=1:0.5", rerank_depth=3, weight=0.4)})
    return tiny_checkpoint


def write_toml(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_output_equals_the_stages_run_by_hand(dataset, checkpoint):
    section = RerankerSection(model=str(checkpoint), profile="quick", dtype="float32", device="cpu")
    pipeline = Pipeline.from_config(PipelineConfig(reranker=section), corpus=dataset.corpus)
    result = pipeline.search(dataset.queries)

    first = BM25Index.build(dataset.corpus).search(dataset.queries, 100)
    reranker = MatryoshkaReranker.from_pretrained(str(checkpoint), dtype="float32", device="cpu")
    by_hand = interpolate(first, rerank_run(first, dataset.queries, dataset.corpus, reranker, rerank_depth=3,
                                            config="depth=2,compress=1:0.5", show_progress=False), 0.4, 3)
    assert list(result.run) == list(by_hand)
    for qid in by_hand:
        assert [d for d, _ in result.run[qid]] == [d for d, _ in by_hand[qid]]
        np.testing.assert_allclose([s for _, s in result.run[qid]], [s for _, s in by_hand[qid]], atol=1e-6)
    first_stats, rerank_stats = result.stages
    assert first_stats.name == "first_stage" and first_stats.queries == 3
    assert rerank_stats.pairs == sum(min(3, len(first[q])) for q in first)
    assert 0 < rerank_stats.flops_ratio < 1  # the quick profile is lighter than the full model
    assert {k: v for k, v in rerank_stats.details.items() if "flops" not in k} == {
        "profile": "quick", "config": "depth=2,compress=1:0.5", "rerank_depth": 3, "weight": 0.4, "norm": "minmax",
        "doc_mode": "truncate"}
    assert rerank_stats.details["flops"] / rerank_stats.details["full_flops"] == rerank_stats.flops_ratio


def test_explicit_settings_win_over_the_profile(dataset, checkpoint):
    reranker = MatryoshkaReranker.from_pretrained(str(checkpoint), dtype="float32", device="cpu")
    stage = RerankStage.from_reranker(reranker, RerankerSection(model="m", profile="quick", rerank_depth=5, weight=1.0))
    assert (stage.config, stage.rerank_depth, stage.weight) == ("depth=2,compress=1:0.5", 5, 1.0)
    full = RerankStage.from_reranker(reranker, RerankerSection(model="m", profile="full"))
    assert (full.config, full.rerank_depth, full.weight) == (None, 100, 1.0)
    with pytest.raises(ConfigError, match="'turbo' is not a profile.*full, light, quick"):
        RerankStage.from_reranker(reranker, RerankerSection(model="m", profile="turbo"))
    with pytest.raises(ConfigError, match="99"):
        RerankStage.from_reranker(reranker, RerankerSection(model="m", config="depth=99"))


def test_interpolation_keeps_the_tail_and_weight_one_is_the_reranker():
    first = Run({"q": [("a", 3.0), ("b", 2.0), ("c", 1.0), ("d", 0.5)]})
    reranked = Run({"q": [("b", 9.0), ("a", 1.0), ("c", 5.0)]})
    alone = interpolate(first, reranked, 1.0, 3)
    assert alone.doc_ids("q") == ["b", "c", "a", "d"]
    mixed = interpolate(first, reranked, 0.5, 2)  # only a and b are reranked; c and d keep their order below
    assert mixed.doc_ids("q") == ["b", "a", "c", "d"]
    qrels = Qrels({"q": {"a": 1}})
    weight, tried = choose_weight(first, reranked, qrels, 3, weights=[0.2, 1.0])
    assert weight == 0.2 and tried[0.2] > tried[1.0]
    with pytest.raises(ConfigError, match="weight"):
        interpolate(first, reranked, 1.5, 3)


def test_toml_settings_and_their_errors(tmp_path):
    path = write_toml(tmp_path / "p.toml", '[first_stage]\nmethod = "hybrid"\nindex = "x.idx"\nk = 50\n'
                                           '[reranker]\nmodel = "m"\nprofile = "light"\nweight = 0.6\n')
    config = load_pipeline_config(path)
    assert (config.first_stage.method, config.first_stage.k, config.reranker.weight) == ("hybrid", 50, 0.6)
    assert load_pipeline_config(path, {"reranker.weight": 0.2}).reranker.weight == 0.2
    cases = {
        '[first_stage]\nmetod = "bm25"\n': "unknown key first_stage.metod.*did you mean 'method'",
        '[first_stage]\nmethod = "splade"\n': "first_stage.method must be one of bm25, dense, hybrid",
        '[reranker]\nmodel = "m"\nprofile = "light"\nconfig = "depth=2"\n': "not both",
        '[reranker]\nmodel = "m"\nconfig = "depht=2"\n': "reranker.config",
        '[reranker]\nprofile = "light"\n': "no reranker.model",
        '[reranker]\nmodel = "m"\nweight = 2\n': "reranker.weight must lie in",
        '[first_stage]\nk = 0\n': "first_stage.k must be >= 1",
        '[rerank]\nmodel = "m"\n': "unknown section.*did you mean 'reranker'",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError, match=message) as info:
            load_pipeline_config(write_toml(tmp_path / "bad.toml", text))
        assert "bad.toml" in str(info.value)
    with pytest.raises(ConfigError, match="needs first_stage.index"):
        PipelineConfig(first_stage=FirstStageSection(method="dense")).validate()


def test_cli_run_writes_costs_that_evaluate_shows_and_ask_prints_titles(tmp_path, tiny_beir, checkpoint):
    pipeline = write_toml(tmp_path / "p.toml", f'[reranker]\nmodel = "{checkpoint}"\nprofile = "quick"\n'
                                               'dtype = "float32"\ndevice = "cpu"\n')
    runner = CliRunner()
    out = tmp_path / "p.run"
    result = runner.invoke(app, ["pipeline", "run", "--config", str(pipeline), "--dataset", str(tiny_beir),
                                 "--split", "test", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["queries"] == 2 and summary["pairs"] > 0 and 0 < summary["flops_ratio"] < 1
    meta = read_meta(out)
    assert meta["summary"]["pairs"] == summary["pairs"] and [s["name"] for s in meta["stages"]] == [
        "first_stage", "rerank"]
    assert evaluate(Run.read_trec(out), Dataset.open(tiny_beir).qrels("test"), ["nDCG@10"])["nDCG@10"] > 0
    shown = runner.invoke(app, ["evaluate", "--dataset", str(tiny_beir), "--split", "test", str(out)])
    assert shown.exit_code == 0 and "FLOPs" in shown.stdout and "ms/query" in shown.stdout, shown.output
    asked = runner.invoke(app, ["ask", "--pipeline", str(pipeline), "--dataset", str(tiny_beir), "why do cats purr"])
    assert asked.exit_code == 0 and "Cats" in asked.stdout, asked.output


def test_hybrid_first_stage_equals_the_hybrid_index_and_fuses_its_own_way(tmp_path):
    from nestrank.pipeline import FirstStage
    from nestrank.retrieve import build_vector_index
    from nestrank.retrieve.encode import encode_corpus
    from nestrank.retrieve.fusion import linear_fusion

    corpus = make_corpus(300)
    encode_corpus(corpus, HashEncoder(16), tmp_path / "emb", dtype="float32", model="hash-encoder", preset="test")
    index = build_vector_index("hybrid", tmp_path / "hyb", corpus, embeddings=tmp_path / "emb", rrf_k=30,
                               fusion_depth=50)
    queries = {"a": "text number 17 title", "b": corpus["d42"].full_text}
    encoder = HashEncoder(16)
    rrf = FirstStage.open(FirstStageSection(method="hybrid", index=str(tmp_path / "hyb"), rrf_k=30.0, fusion_depth=50,
                                            k=10), corpus)
    rrf.encoder = encoder
    assert rrf.search(queries).to_dict() == index.search(queries, k=10, encoder=encoder).to_dict()
    section = FirstStageSection(method="hybrid", index=str(tmp_path / "hyb"), fusion="linear", weights=[0.3, 0.7],
                                fusion_depth=50, k=10)
    linear = FirstStage(section, bm25=index.bm25, dense=index.dense, encoder=encoder)
    expected = linear_fusion([index.bm25.search(queries, 50), index.dense.search(queries, 50, encoder=encoder)],
                             weights=[0.3, 0.7], k=10)
    assert linear.search(queries).to_dict() == expected.to_dict()
    dense_only = FirstStage.open(FirstStageSection(method="dense", index=str(tmp_path / "hyb"), k=5), corpus)
    dense_only.encoder = encoder
    assert dense_only.search(queries).to_dict() == index.dense.search(queries, 5, encoder=encoder).to_dict()
    with pytest.raises(ConfigError, match="is a dense index.*point index to a hybrid index"):
        FirstStage.open(FirstStageSection(method="hybrid", index=str(tmp_path / "hyb" / "dense")), corpus)


def test_cli_sample_runs_the_same_queries_that_evaluate_scores_and_plots(tmp_path, tiny_beir):
    pipeline = write_toml(tmp_path / "bm25.toml", '[first_stage]\nmethod = "bm25"\n')
    runner = CliRunner()
    out = tmp_path / "bm25.run"
    ran = runner.invoke(app, ["pipeline", "run", "-c", str(pipeline), "-d", str(tiny_beir), "--sample", "1",
                              "--seed", "3", "--out", str(out), "--no-progress"])
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.stdout.strip().splitlines()[-1])["queries"] == 1
    png = tmp_path / "cost.png"
    shown = runner.invoke(app, ["evaluate", "-d", str(tiny_beir), "--sample", "1", "--seed", "3", str(out),
                                "--plot", str(png)])
    assert shown.exit_code == 0, shown.output
    assert "seeded sample 3 of 2" in shown.stdout and "note:" not in shown.output  # the sampled query is in the run
    assert png.stat().st_size > 1000
