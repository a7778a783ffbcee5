"""Shared pieces of the server tests: tiny models saved to disk, a loaded state, a real uvicorn server.

The reranker is a tiny random Llama (6 layers) saved as a Matryoshka checkpoint with a
``profiles.json`` (full, light, and a tuned ``balanced`` with weight and rerank depth); the
embedder a tiny random Llama base model (RepLLaMA settings). Both load by path, as the CLI
loads them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
torch = pytest.importorskip("torch")

from test_backbone import make_tiny_llama  # noqa: E402
from test_matryoshka import byte_tokenizer, tiny_llama  # noqa: E402

from nestrank.models import MatryoshkaReranker, Profile, write_profiles  # noqa: E402
from nestrank.serve import ServeSettings, parse_model_spec  # noqa: E402
from nestrank.serve.state import ServerState  # noqa: E402

QUERY = "why do cats purr"
DOCS = ["Cats purr when they are happy and relaxed.", "Dogs bark at strangers.",
        "Fish swim in schools to avoid predators, a long passage about the sea and its many inhabitants.",
        "Purring is a sound cats make.", "Bees make honey from nectar."]
PROFILES = {"balanced": Profile("balanced", "depth=5", rerank_depth=3, weight=0.5, ms_per_pair=1.0)}


def build_models(root: Path) -> dict[str, Path]:
    """Save the tiny reranker checkpoint (with profiles.json) and the tiny embedder under ``root``."""
    base = root / "base"
    tiny_llama().save_pretrained(base)
    byte_tokenizer().save_pretrained(base)
    reranker = MatryoshkaReranker.from_pretrained(str(base), dtype="float32", device="cpu", max_passage_tokens=48)
    ckpt = reranker.save_pretrained(root / "reranker")
    write_profiles(ckpt, PROFILES)
    embedder = make_tiny_llama(root / "embedder")
    return {"reranker": ckpt, "embedder": embedder}


def settings_for(paths: dict[str, Path], **overrides) -> ServeSettings:
    """Settings serving the tiny reranker as ``tiny`` and the embedder as ``emb``."""
    models = (parse_model_spec(f"tiny={paths['reranker']}"), parse_model_spec(f"emb={paths['embedder']}"))
    return ServeSettings(models=models, device="cpu", dtype="float32", **overrides)


@pytest.fixture(scope="session")
def model_paths(tmp_path_factory) -> dict[str, Path]:
    return build_models(tmp_path_factory.mktemp("serve-models"))


@pytest.fixture(scope="module")
def loaded(model_paths) -> Iterator[ServerState]:
    """A loaded, warmed server state (default settings), closed after the module."""
    torch.set_num_threads(1)
    state = ServerState(settings_for(model_paths)).load()
    yield state
    state.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """Run ``app`` with a real uvicorn server on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
