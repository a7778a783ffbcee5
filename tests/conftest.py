"""Shared test fixtures: tiny data sets and tiny random models written to temporary directories.

Directories shared by the whole session are only read by the tests; a test that writes into
a model directory gets its own (module-scoped fixtures, or the helpers in helpers.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import cli, randomise_heads, save_word_llama, write_beir


@pytest.fixture
def tiny_beir(tmp_path: Path) -> Path:
    """A tiny BEIR dataset directory: 5 documents, 3 queries, qrels for ``test`` and ``train``."""
    return write_beir(tmp_path / "tiny")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one thread is ~50x faster than two on a busy 2-core machine (thread hand-offs dominate)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """:func:`nestrank.models.tiny.tiny_llama` (6 layers) and the byte tokenizer, saved; read-only."""
    pytest.importorskip("transformers")
    from nestrank.models.tiny import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "base")


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_llama_dir, tmp_path_factory, one_torch_thread) -> Path:
    """A Matryoshka checkpoint of ``tiny_llama_dir`` with random score heads (one per module: tests may add files)."""
    return randomise_heads(tiny_llama_dir, tmp_path_factory.mktemp("tiny-checkpoint") / "ckpt", seed=3)


@pytest.fixture(scope="session")
def word_llama_dir(tmp_path_factory) -> Path:
    """A tiny random ``LlamaModel`` (2 layers) with a word-level tokenizer, saved; read-only."""
    pytest.importorskip("transformers")
    return save_word_llama(tmp_path_factory.mktemp("word-llama"))


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """``run_cli(*args)`` runs ``nestrank ARGS`` in-process and returns (exit code, stdout, stderr)."""
    return lambda *args: cli(capsys, monkeypatch, *args)


@pytest.fixture(scope="session")
def model_paths(tmp_path_factory) -> dict[str, Path]:
    """The server tests' tiny reranker checkpoint (with profiles.json) and tiny embedder, saved; read-only."""
    pytest.importorskip("fastapi")
    from serve_helpers import build_models

    return build_models(tmp_path_factory.mktemp("serve-models"))


@pytest.fixture(scope="module")
def loaded(model_paths, one_torch_thread):
    """A loaded, warmed server state (default settings) serving ``model_paths``, closed after the module."""
    from serve_helpers import settings_for

    from nestrank.serve.state import ServerState

    state = ServerState(settings_for(model_paths)).load()
    yield state
    state.close()
