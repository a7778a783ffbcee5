"""Mis-typed and mis-pointed commands fail at once: usage text and the nearest option, exit 2, nothing loaded.

Usage errors are click's (through Typer); option ranges, output locations and model names
are checked before any expensive work, which is replaced here by a trap that fails the test.
"""

from __future__ import annotations

import importlib
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli as run_cli

from nestrank.errors import ConfigError

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
       "COLUMNS": "200"}
#: ``nestrank ARGS``, then whether torch was imported (a model load needs it), on stderr.
LAUNCH = ("import sys\nfrom nestrank.cli import main\ntry:\n    main()\nfinally:\n"
          "    sys.stderr.write(f\"\\ntorch imported: {'torch' in sys.modules}\\n\")\n")


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``nestrank ARGS`` in-process; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps the usage panel at the terminal width

    return lambda *args: run_cli(capsys, monkeypatch, *args)


@pytest.fixture
def no_work(monkeypatch):
    """Every expensive step a command could start raises: the checks must come first."""
    def trap(*args, **kwargs):
        raise AssertionError("expensive work started before the checks")

    targets = ("nestrank.rerank.load_reranker", "nestrank.retrieve.encode.run_encoding",
               "nestrank.retrieve.build.build_vector_index", "nestrank.retrieve.bm25.BM25Index.build",
               "nestrank.retrieve.index.open_index", "nestrank.train.retriever.train_retriever",
               "nestrank.pipeline.Pipeline.from_config", "nestrank.models.MatryoshkaReranker.from_pretrained",
               "nestrank.train.mining.mine_to_file", "nestrank.data.convert.convert")
    for module in ("nestrank.rerank", "nestrank.retrieve.encode", "nestrank.retrieve.build", "nestrank.retrieve.bm25",
                   "nestrank.retrieve.index", "nestrank.train.retriever", "nestrank.pipeline", "nestrank.models",
                   "nestrank.train.mining", "nestrank.data.convert"):
        importlib.import_module(module)  # first, so no module imports a trap by name while the traps are set
    for target in targets:
        monkeypatch.setattr(target, trap)


@pytest.mark.parametrize(("args", "message"), [
    (["index", "--datset", "DATA", "--out", "X"], "No such option: --datset. Did you mean --dataset?"),
    (["serch", "--index", "X"], "No such command 'serch'. Did you mean 'search'"),
    (["train", "retreiver"], "No such command 'retreiver'. Did you mean 'retriever'?"),
    (["pipeline", "run", "--confg", "p.toml", "--out", "X"], "No such option: --confg. Did you mean --config?"),
    (["rerank", "--run", "R", "--out", "X"], "Missing option '--model'"),
    (["search", "--index", "X", "--out", "Y", "--k", "abc"], "Invalid value for '--k'"),
    (["search", "--index", "X", "--out", "Y", "--threads", "-5"], "Invalid value for '--threads'"),
    (["encode", "--model", "M", "--out", "X", "--num-shards", "0"], "Invalid value for '--num-shards'"),
    (["mine", "--run", "R", "--out", "X", "--negatives", "0"], "Invalid value for '--negatives'"),
    (["index", "--out", "X", "--b", "7"], "Invalid value for '--b'"),
    (["evaluate", "R", "--alpha", "5"], "Invalid value for '--alpha'"),
    (["tune", "--model", "M", "--light", "2"], "Invalid value for '--light'"),
])
def test_usage_errors_print_the_usage_and_a_suggestion_and_exit_2(cli, no_work, args, message):
    code, out, err = cli(*args)
    assert code == 2
    assert "Usage: nestrank" in err and message in err
    assert "Traceback" not in err and out == ""


def test_a_hidden_deprecated_option_is_never_suggested(cli):
    code, _, err = cli("index", "--dept", "3", "--out", "X")
    assert code == 2 and "No such option: --dept" in err
    assert "--depth" not in err  # the deprecated alias of --fusion-depth stays hidden


@pytest.fixture
def places(tiny_beir, tmp_path):
    """An existing directory, an existing file, and a path whose parent is a file."""
    (tmp_path / "bm25.run").write_text("q1 Q0 d1 1 2.0 t\n")
    (tmp_path / "train.toml").write_text(f'[model]\nbackbone = "smollm2-135m"\n[data]\ntrain_groups = '
                                         f'"{tiny_beir / "corpus.jsonl"}"\n[train]\noutput_dir = "OUT"\n')
    (tmp_path / "pipe.toml").write_text('[first_stage]\nmethod = "bm25"\n[reranker]\nmodel = "smollm2-135m"\n')
    return {"DATA": tiny_beir, "RUN": tmp_path / "bm25.run", "DIR": tmp_path, "FILE": tmp_path / "bm25.run",
            "UNDER_FILE": tmp_path / "bm25.run" / "x", "TOML": tmp_path / "train.toml", "PIPE": tmp_path / "pipe.toml",
            "X": tmp_path / "x"}


def resolve(args: list[str], places: dict[str, Path]) -> list[str]:
    """The arguments with the placeholders of :func:`places` replaced (also inside ``--set`` values)."""
    return [str(places[a]) if a in places else a.replace("FILE", str(places["FILE"])).replace("=\"X\"", f'="{places["X"]}"')
            for a in args]


OUTPUT_CASES = [
    (["search", "--index", "DATA", "--dataset", "DATA", "--out", "DIR"], "is a directory, but a file"),
    (["fuse", "RUN", "--out", "DIR"], "is a directory, but a file"),
    (["mine", "--run", "RUN", "--dataset", "DATA", "--out", "UNDER_FILE"], "is a file, not a directory"),
    (["rerank", "--run", "RUN", "--dataset", "DATA", "--model", "smollm2-135m", "--out", "DIR"], "is a directory"),
    (["rerank", "--run", "RUN", "--dataset", "DATA", "--model", "smollm2-135m", "--out", "UNDER_FILE"],
     "is a file, not a directory"),
    (["data", "convert", "--kind", "run", "RUN", "DIR"], "DST"),
    (["index", "--dataset", "DATA", "--out", "FILE"], "is a file, but a directory"),
    (["index", "--dataset", "DATA", "--out", "DATA"], "exists and is not a nestrank index"),
    (["encode", "--dataset", "DATA", "--model", "minilm-l6", "--out", "FILE"], "is a file, but a directory"),
    (["pipeline", "run", "--config", "PIPE", "--dataset", "DATA", "--out", "DIR"], "is a directory"),
    (["tune", "--model", "smollm2-135m", "--dataset", "DATA", "--out", "FILE"], "is a file, but a directory"),
    (["train", "retriever", "--config", "TOML", "--set", "train.output_dir=\"FILE\""], "train.output_dir"),
]


@pytest.mark.parametrize(("args", "message"), OUTPUT_CASES)
def test_an_output_that_cannot_be_written_fails_before_any_work(cli, no_work, places, args, message):
    code, out, err = cli(*resolve(args, places))
    assert code == 2, err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(("args", "message"), [
    (["rerank", "--run", "RUN", "--dataset", "DATA", "--model", "smollm2-135m", "--out", "X", "--device", "gpu0"],
     "--device 'gpu0' is not a device"),
    (["rerank", "--run", "RUN", "--dataset", "DATA", "--model", "smollm2-135m", "--out", "X", "--dtype", "fp8"],
     "unknown dtype 'fp8'"),
    (["rerank", "--run", "RUN", "--dataset", "DATA", "--model", "no-such-model", "--out", "X"],
     "--model: unknown model preset 'no-such-model'"),
    (["encode", "--dataset", "DATA", "--model", "minilm-l6", "--out", "X", "--engine", "spark"], "unknown --engine"),
    (["index", "--dataset", "DATA", "--out", "X", "--method", "dense", "--index-type", "lsh"],
     "unknown --index-type 'lsh'"),
    (["index", "--dataset", "DATA", "--out", "X", "--method", "dense", "--model", "./missing-model"],
     "--model: model './missing-model' not found"),
    (["mine", "--run", "RUN", "--dataset", "DATA", "--out", "X", "--format", "msmarco"], "unknown --format"),
    (["tune", "--model", "smollm2-135m", "--dataset", "DATA", "--out", "X", "--depths", "10,0"],
     "--depths values must be >= 1"),
    (["tune", "--model", "smollm2-135m", "--dataset", "DATA", "--out", "X", "--weights", "0.5,3"],
     "--weights values must be in [0, 1]"),
    (["pipeline", "run", "--config", "PIPE", "--dataset", "DATA", "--out", "X", "--set", "reranker.config=depth=0"],
     "depth"),
    (["pipeline", "run", "--config", "PIPE", "--dataset", "DATA", "--out", "X", "--set", "reranker.model=nope"],
     "reranker.model: unknown model preset 'nope'"),
    (["train", "retriever", "--config", "TOML", "--set", "train.output_dir=\"X\"", "--set", "model.backbone=nope"],
     "model.backbone: unknown model preset 'nope'"),
    (["train", "retriever", "--config", "TOML", "--set", "train.output_dir=\"X\"", "--set",
      "data.train_groups=\"nowhere.jsonl\""], "data.train_groups nowhere.jsonl does not exist"),
])
def test_options_and_model_names_are_checked_before_any_work(cli, no_work, places, args, message):
    code, out, err = cli(*resolve(args, places))
    assert code == 2, err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not places["X"].exists()


def _timed(args: list[object], env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    clock = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCH, *map(str, args)], env=env or ENV, capture_output=True,
                          text=True, timeout=120)
    seconds = time.perf_counter() - clock
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done, seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def test_the_real_entry_point_fails_fast_without_loading_a_model(places, tmp_path):
    rerank = ["rerank", "--run", places["RUN"], "--dataset", places["DATA"], "--model", "smollm2-135m"]
    for args, message in (([*rerank, "--out", places["DIR"]], "is a directory, but a file"),
                          ([*rerank, "--out", tmp_path / "x.run", "--batch-tokens", "0"], "Invalid value"),
                          (["rerank", "--dataset", places["DATA"], "--modle", "m"], "Did you mean --model?")):
        done, seconds, cpu = _timed(args)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and "torch imported: False" in done.stderr
        assert cpu < 3.0, (args, seconds, cpu)  # CPU time: this machine's wall clock depends on its load


def test_an_unreachable_hub_id_fails_in_seconds_with_the_fix(tmp_path):
    env = {**ENV, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "hf")}  # port 9: refused
    env.pop("HF_HUB_OFFLINE", None)
    done, seconds, _ = _timed(["encode", "--corpus", tmp_path / "c.jsonl", "--model", "some-org/some-model",
                               "--out", tmp_path / "emb"], env)
    assert done.returncode == 2, done.stderr
    assert "'some-org/some-model' is a hub id, but the Hugging Face hub (http://127.0.0.1:9) cannot be reached" \
        in done.stderr and "fix: pass a local model directory or a preset" in done.stderr
    assert "torch imported: False" in done.stderr
    assert seconds < 30  # it took ~75 s of huggingface_hub retries before (1 s here on an idle machine)


def test_a_cached_hub_id_loads_offline_when_the_hub_is_unreachable(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from nestrank.models.availability import check_hub_access
    from nestrank.models.backbone import check_model_name

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ConfigError, match="cannot be reached from this machine and it is not in the local cache"):
        check_model_name("org/model")
    repo = tmp_path / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    check_hub_access("org/model")
    assert constants.HF_HUB_OFFLINE is True and os.environ["HF_HUB_OFFLINE"] == "1"  # the cache, no retries
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set and it is not in the local cache"):
        check_hub_access("org/other")
