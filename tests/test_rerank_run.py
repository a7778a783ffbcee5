"""Reranking runs: rerank_run (top-k, tails, errors, batching across queries) and `nestrank rerank`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import pair_tokenizer, save_rankllama_layout, save_seq_cls

from nestrank.data import Corpus, Document, Run
from nestrank.errors import ConfigError
from nestrank.models.reranker import Reranker, RerankInputError
from nestrank.rerank import detect_kind, load_reranker, rerank_run

CORPUS = Corpus.from_documents([Document(f"d{i}", f"text {i} " + "word " * i) for i in range(1, 9)])
QUERIES = {"q1": "first", "q2": "second"}


class LengthReranker(Reranker):
    """Scores a document by its text length; records every score() call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str], object, int | None]] = []

    def score(self, queries, documents, *, config=None, batch_tokens=None, show_progress=False):
        query_list, docs = self.pairs(queries, documents)
        self.calls.append((query_list, [d.id for d in docs], config, batch_tokens))
        return np.array([len(d.text) for d in docs], dtype=np.float32)


def first_stage() -> Run:
    # q1: d1 best ... d6 worst; q2: d8, d2, d7
    return Run({"q1": [(f"d{i}", 10.0 - i) for i in range(1, 7)], "q2": [("d8", 3.0), ("d2", 2.0), ("d7", 1.0)]})


def test_top_k_is_reranked_and_the_tail_keeps_first_stage_order_below():
    out = rerank_run(first_stage(), QUERIES, CORPUS, LengthReranker(), rerank_depth=3, show_progress=False)
    assert out.doc_ids("q1") == ["d3", "d2", "d1", "d4", "d5", "d6"]
    q1 = dict(out["q1"])
    assert q1["d1"] == len(CORPUS["d1"].text)  # reranked: the reranker's score
    assert max(q1["d4"], q1["d5"], q1["d6"]) < min(q1["d1"], q1["d2"], q1["d3"])
    assert out.doc_ids("q2") == ["d8", "d7", "d2"]


def test_pairs_are_batched_across_queries_and_arguments_passed_through():
    reranker = LengthReranker()
    rerank_run(first_stage(), QUERIES, CORPUS, reranker, rerank_depth=4, config="cfg", batch_tokens=77,
               show_progress=False)
    assert len(reranker.calls) == 1  # both queries in one score() call
    queries, ids, config, budget = reranker.calls[0]
    assert queries == ["first"] * 4 + ["second"] * 3
    assert ids == ["d1", "d2", "d3", "d4", "d8", "d2", "d7"]
    assert (config, budget) == ("cfg", 77)
    reranker = LengthReranker()
    rerank_run(first_stage(), QUERIES, CORPUS, reranker, rerank_depth=4, pairs_per_call=2, show_progress=False)
    assert len(reranker.calls) == 2


def test_progress_bar_over_queries(capsys):
    rerank_run(first_stage(), QUERIES, CORPUS, LengthReranker(), rerank_depth=2, show_progress=True)
    assert "2/2" in capsys.readouterr().err


def test_errors_name_the_missing_query_or_document():
    with pytest.raises(RerankInputError, match="'q2'"):
        rerank_run(first_stage(), {"q1": "x"}, CORPUS, LengthReranker(), show_progress=False)
    run = Run({"q1": [("d1", 2.0), ("ghost", 1.0), ("d2", 0.5)]})
    with pytest.raises(RerankInputError, match="query 'q1'.*'ghost'"):
        rerank_run(run, QUERIES, CORPUS, LengthReranker(), show_progress=False)
    # a missing document below k is never fetched, so it is no error
    out = rerank_run(run, QUERIES, CORPUS, LengthReranker(), rerank_depth=1, show_progress=False)
    assert out.doc_ids("q1") == ["d1", "ghost", "d2"]
    with pytest.raises(ConfigError, match="at least 1"):
        rerank_run(first_stage(), QUERIES, CORPUS, LengthReranker(), rerank_depth=0)
    with pytest.raises(RerankInputError, match="no queries"):
        rerank_run(Run(), QUERIES, CORPUS, LengthReranker())


def test_load_reranker_detects_the_kind(tmp_path):
    seq_cls = save_seq_cls(tmp_path / "seqcls")
    _, adapter = save_rankllama_layout(tmp_path / "rl")
    assert detect_kind(seq_cls) == "pointwise" and detect_kind(adapter) == "pointwise"
    assert detect_kind("smollm2-135m") == "matryoshka"
    assert type(load_reranker(seq_cls, device="cpu")).__name__ == "PointwiseReranker"
    with pytest.raises(ConfigError, match="unknown reranker kind"):
        load_reranker(seq_cls, kind="listwise")  # type: ignore[arg-type]


def run_cli(monkeypatch, args: list[str]) -> int:
    from nestrank.cli import main

    monkeypatch.setattr(sys, "argv", ["nestrank", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_reranks_a_run_with_a_pointwise_model(tiny_beir, tmp_path, monkeypatch, capsys):
    model = save_seq_cls(tmp_path / "model")
    run_file = tmp_path / "bm25.run"
    Run({"q1": [("d1", 3.0), ("d2", 2.0), ("d3", 1.0)], "q2": [("d4", 2.0), ("d5", 1.0)]}).write_trec(run_file)
    out = tmp_path / "reranked.run"
    code = run_cli(monkeypatch, ["rerank", "--dataset", str(tiny_beir), "--split", "test", "--run", str(run_file),
                                 "--model", str(model), "--kind", "pointwise", "--rerank-depth", "2", "--out", str(out),
                                 "--batch-tokens", "64", "--device", "cpu", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    reranked = Run.read_trec(out)
    assert set(reranked) == {"q1", "q2"}
    assert reranked.doc_ids("q1")[2] == "d3"  # the tail stays below the reranked top 2
    from nestrank.models.pointwise import PointwiseReranker

    expected = PointwiseReranker.from_pretrained(model, device="cpu").score("why do cats purr",
                                                                            Corpus.open(tiny_beir / "corpus.jsonl")
                                                                            .get_many(["d1", "d2"]))
    q1 = dict(reranked["q1"])
    np.testing.assert_allclose([q1["d1"], q1["d2"]], expected, rtol=1e-5)
    assert "reranked 4 pairs of 2 queries" in capsys.readouterr().err


def test_cli_with_explicit_files_and_bad_inputs(tiny_beir, tmp_path, monkeypatch, capsys):
    model = save_seq_cls(tmp_path / "model")
    run_file = tmp_path / "first.run"
    Run({"q3": [("d5", 1.0), ("d1", 0.5)]}).write_trec(run_file)
    out = tmp_path / "out.run"
    common = ["rerank", "--run", str(run_file), "--model", str(model), "--out", str(out), "--no-progress",
              "--device", "cpu"]
    explicit = ["--corpus", str(tiny_beir / "corpus.jsonl"), "--queries", str(tiny_beir / "queries.jsonl")]
    assert run_cli(monkeypatch, [*common, *explicit]) == 0
    assert Run.read_trec(out).doc_ids("q3") != []
    out.unlink()
    # q3 is judged in train, not test: a clear error naming it, and no output file.
    assert run_cli(monkeypatch, [*common, "--dataset", str(tiny_beir), "--split", "test"]) == 2
    assert "'q3'" in capsys.readouterr().err and not out.exists()
    assert run_cli(monkeypatch, [*common, *explicit, "--config", "depth=2"]) == 2
    assert "no run-time configuration" in capsys.readouterr().err
    assert run_cli(monkeypatch, [*common[:4], str(tmp_path / "nope"), *common[5:], *explicit]) == 2
    assert "not found" in capsys.readouterr().err


def test_quality_benchmark_runs_end_to_end_on_a_tiny_model(tiny_beir, capsys):
    import importlib.util

    path = Path(__file__).parents[1] / "bench" / "rerank_quality.py"
    spec = importlib.util.spec_from_file_location("rerank_quality", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.sample_queries(["b", "a", "c", "d"], 2, seed=0) == bench.sample_queries(["d", "c", "b", "a"], 2, 0)
    summary = bench.main(["--dataset", str(tiny_beir), "--model", "tiny", "--queries", "5", "--depth", "3"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == summary
    assert summary["queries"] == 2 and summary["depth"] == 3 and 0 < summary["pairs"] <= 6  # q1, q2 judged in test
    assert summary["light"]["config"] == "depth=2,compress=1:0.5" and summary["full"]["config"] == "full"
    assert 0.0 <= summary["full"]["ndcg@10"] <= 1.0 and 0.0 <= summary["bm25"]["ndcg@10"] <= 1.0


def test_cli_reranks_with_the_matryoshka_engine_and_a_config(tiny_beir, tmp_path, monkeypatch, capsys):
    from nestrank.models.matryoshka import MatryoshkaReranker
    from nestrank.models.tiny import save_tiny_llama

    model = save_tiny_llama(tmp_path / "tiny-causal", pair_tokenizer(), layers=4)
    assert detect_kind(model) == "matryoshka"
    run_file = tmp_path / "first.run"
    Run({"q1": [("d1", 3.0), ("d2", 2.0), ("d3", 1.0)], "q2": [("d4", 1.0), ("d2", 0.5)]}).write_trec(run_file)
    out = tmp_path / "light.run"
    args = ["rerank", "--dataset", str(tiny_beir), "--run", str(run_file), "--model", str(model), "--out", str(out),
            "--no-progress", "--device", "cpu", "--dtype", "float32", "--rerank-depth", "3"]
    assert run_cli(monkeypatch, [*args, "--config", "depth=2,compress=1:0.5"]) == 0, capsys.readouterr().err
    reranker = MatryoshkaReranker.from_pretrained(model, device="cpu", dtype="float32")
    docs = Corpus.open(tiny_beir / "corpus.jsonl").get_many(["d4", "d2"])
    expected = reranker.score("where do birds go in winter", docs, config="depth=2,compress=1:0.5")
    q2 = dict(Run.read_trec(out)["q2"])
    np.testing.assert_allclose([q2["d4"], q2["d2"]], expected, rtol=1e-5)
    out.unlink()
    assert run_cli(monkeypatch, [*args, "--config", "depth=9"]) == 2
    assert "depth" in capsys.readouterr().err and not out.exists()


def test_several_exits_in_one_pass_equal_one_rerank_per_exit():
    from nestrank.models.matryoshka import MatryoshkaReranker
    from nestrank.models.tiny import byte_tokenizer, tiny_llama
    from nestrank.rerank import rerank_run_exits

    reranker = MatryoshkaReranker(tiny_llama(), byte_tokenizer(), max_passage_tokens=48)
    run = first_stage()
    calls: list[list[int]] = []
    score_exits = reranker.score_exits
    reranker.score_exits = lambda *a, **kw: calls.append(a[2]) or score_exits(*a, **kw)  # type: ignore[method-assign]
    runs = rerank_run_exits(run, QUERIES, CORPUS, reranker, [6, 2, 4], rerank_depth=4, config="compress=1:0.5",
                            pairs_per_call=3, show_progress=False)
    assert list(runs) == [2, 4, 6] and calls == [[2, 4, 6], [2, 4, 6]]  # one pass per chunk serves every exit
    for layer, reranked in runs.items():
        single = rerank_run(run, QUERIES, CORPUS, reranker, rerank_depth=4, config=f"depth={layer},compress=1:0.5",
                            show_progress=False)
        assert reranked.doc_ids("q1") == single.doc_ids("q1") and reranked.doc_ids("q2") == single.doc_ids("q2")
        for qid in run:
            np.testing.assert_allclose([s for _, s in reranked[qid]], [s for _, s in single[qid]], rtol=1e-5)
        assert reranked.doc_ids("q1")[4:] == ["d5", "d6"]  # the tail keeps first-stage order below
    with pytest.raises(ConfigError, match="at least one exit"):
        rerank_run_exits(run, QUERIES, CORPUS, reranker, [], show_progress=False)
    with pytest.raises(ConfigError):
        rerank_run_exits(run, QUERIES, CORPUS, reranker, [2], config="compress=4:0.5", show_progress=False)


def test_deprecated_k_is_an_alias_of_rerank_depth():
    with pytest.warns(DeprecationWarning, match="rerank_depth="):
        old = rerank_run(first_stage(), QUERIES, CORPUS, LengthReranker(), k=3, show_progress=False)
    new = rerank_run(first_stage(), QUERIES, CORPUS, LengthReranker(), rerank_depth=3, show_progress=False)
    assert old.doc_ids("q1") == new.doc_ids("q1") == ["d3", "d2", "d1", "d4", "d5", "d6"]
    with pytest.raises(ConfigError, match="pass rerank_depth= only"):
        rerank_run(first_stage(), QUERIES, CORPUS, LengthReranker(), k=3, rerank_depth=3)


def test_cli_keeps_k_as_a_deprecated_alias(tiny_beir, tmp_path, monkeypatch, capsys):
    model = save_seq_cls(tmp_path / "model")
    run_file = tmp_path / "bm25.run"
    Run({"q1": [("d1", 3.0), ("d2", 2.0), ("d3", 1.0)]}).write_trec(run_file)
    args = ["rerank", "--dataset", str(tiny_beir), "--run", str(run_file), "--model", str(model), "--out",
            str(tmp_path / "out.run"), "--device", "cpu", "--no-progress"]
    assert run_cli(monkeypatch, [*args, "-k", "2"]) == 0
    err = capsys.readouterr().err
    assert "--k is deprecated; use --rerank-depth" in err and "reranked 2 pairs of 1 queries" in err
    assert run_cli(monkeypatch, [*args, "--k", "2", "--rerank-depth", "2"]) == 2
    assert "give --rerank-depth only" in capsys.readouterr().err
    from typer.testing import CliRunner

    from nestrank.cli import app

    help_text = CliRunner().invoke(app, ["rerank", "--help"], env={"COLUMNS": "200"}).output
    assert "--rerank-depth" in help_text and "--k " not in help_text  # the alias is hidden


@pytest.mark.parametrize(("extra", "message"), [
    (["--config", "depth=x"], "depth 'x' in 'depth=x' is not an integer"),
    (["--config", "compress=8"], "bad compress entry"),
    (["--config", "turbo"], "unknown profile 'turbo' (this model has full, light"),
    (["--rerank-depth", "0"], "rerank_depth (first-stage candidates reranked per query) must be an integer of at"),
    (["-k", "-3"], "must be an integer of at least 1"),
    (["--kind", "listwise"], "unknown reranker kind 'listwise'"),
])
def test_cli_rejects_bad_options_fast_without_loading_the_model(tiny_beir, tmp_path, monkeypatch, capsys, extra,
                                                                 message):
    import time

    def never(*args, **kwargs):
        raise AssertionError("the model must not load for a bad option")

    monkeypatch.setattr("nestrank.rerank.load_reranker", never)
    monkeypatch.setattr("nestrank.models.backbone.load_backbone", never)
    run_file = tmp_path / "bm25.run"
    Run({"q1": [("d1", 3.0)]}).write_trec(run_file)
    start = time.perf_counter()
    code = run_cli(monkeypatch, ["rerank", "--dataset", str(tiny_beir), "--run", str(run_file), "--model",
                                 "smollm2-135m", "--out", str(tmp_path / "out.run"), *extra])
    assert time.perf_counter() - start < 3.0
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "out.run").exists()


def test_cli_checks_profiles_and_layers_from_the_model_directory(tiny_beir, tmp_path, monkeypatch, capsys):
    """Profile names come from the directory's profiles.json and layers from config.json; no weights are read."""
    from nestrank.models.matryoshka.profiles import Profile, write_profiles
    from nestrank.models.tiny import tiny_llama

    loads: list[str] = []
    monkeypatch.setattr("nestrank.rerank.load_reranker", lambda model, **kw: loads.append(model) or LengthReranker())
    model = tmp_path / "model"  # a model directory without weights: only what the checks read
    model.mkdir()
    tiny_llama(layers=2).config.save_pretrained(model)
    write_profiles(model, {"fast": Profile("fast", "depth=1")})
    run_file = tmp_path / "bm25.run"
    Run({"q1": [("d1", 3.0), ("d2", 1.0)]}).write_trec(run_file)
    args = ["rerank", "--dataset", str(tiny_beir), "--run", str(run_file), "--model", str(model), "--out",
            str(tmp_path / "out.run"), "--no-progress"]
    for bad, message in (("depth=3", "exit layer 3 is out of range: the model has 2 layers"),
                         ("balanced", "unknown profile 'balanced' (this model has fast, full, light")):
        assert run_cli(monkeypatch, [*args, "--config", bad]) == 2
        assert message in capsys.readouterr().err
    assert loads == []
    assert run_cli(monkeypatch, [*args, "--config", "fast"]) == 0, capsys.readouterr().err
    assert loads == [str(model)]
    seq_cls = save_seq_cls(tmp_path / "seqcls")
    assert run_cli(monkeypatch, [*args[:6], str(seq_cls), *args[7:], "--config", "light"]) == 2
    assert "no run-time configuration" in capsys.readouterr().err and loads == [str(model)]


def test_a_bad_config_fails_without_importing_torch(tiny_beir, tmp_path):
    import subprocess

    run_file = tmp_path / "bm25.run"
    Run({"q1": [("d1", 3.0)]}).write_trec(run_file)
    script = ("import sys; from nestrank.cli import main\n"
              "try:\n    main()\nexcept SystemExit as exc:\n    print(exc.code, 'torch' in sys.modules)\n")
    args = ["rerank", "--dataset", str(tiny_beir), "--run", str(run_file), "--model", "smollm2-135m",
            "--out", str(tmp_path / "out.run"), "--config", "depth=15,compress=8:2"]
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert "compression ratio 2 after layer 8 is outside (0, 1]" in done.stderr


def test_the_kind_of_a_checkpoint_is_read_from_its_settings_first(tmp_path):
    from nestrank.models.settings import detect_kind as model_kind

    assert detect_kind is model_kind  # one function for the CLI, the loaders and the library
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    for kind in ("matryoshka", "pointwise", "dense-encoder"):
        (checkpoint / "nestrank.json").write_text(json.dumps({"kind": kind}))
        assert detect_kind(checkpoint) == kind
    with pytest.raises(ConfigError, match="dense-encoder checkpoint, not a reranker"):
        load_reranker(checkpoint)
    (checkpoint / "nestrank.json").write_text(json.dumps({"kind": "listwise"}))
    with pytest.raises(ConfigError, match="nestrank.json: unknown checkpoint kind 'listwise'"):
        detect_kind(checkpoint)
