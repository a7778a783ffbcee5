"""Shared pieces of the server tests: tiny models saved to disk, settings, a real uvicorn server.

The fixtures built from them (``model_paths``, ``loaded``) are in conftest.py.

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

from helpers import save_word_llama

from nestrank.models import MatryoshkaReranker, Profile, write_profiles
from nestrank.models.tiny import save_tiny_llama
from nestrank.serve import ServeSettings, parse_model_spec

QUERY = "why do cats purr"
DOCS = ["Cats purr when they are happy and relaxed.", "Dogs bark at strangers.",
        "Fish swim in schools to avoid predators, a long passage about the sea and its many inhabitants.",
        "Purring is a sound cats make.", "Bees make honey from nectar."]
PROFILES = {"balanced": Profile("balanced", "depth=5", rerank_depth=3, weight=0.5, ms_per_pair=1.0)}


def build_models(root: Path) -> dict[str, Path]:
    """Save the tiny reranker checkpoint (with profiles.json) and the tiny embedder under ``root``."""
    base = save_tiny_llama(root / "base")
    reranker = MatryoshkaReranker.from_pretrained(str(base), dtype="float32", device="cpu", max_passage_tokens=48)
    ckpt = reranker.save_pretrained(root / "reranker")
    write_profiles(ckpt, PROFILES)
    embedder = save_word_llama(root / "embedder")
    return {"reranker": ckpt, "embedder": embedder}


def settings_for(paths: dict[str, Path], **overrides) -> ServeSettings:
    """Settings serving the tiny reranker as ``tiny`` and the embedder as ``emb``."""
    models = (parse_model_spec(f"tiny={paths['reranker']}"), parse_model_spec(f"emb={paths['embedder']}"))
    return ServeSettings(models=models, device="cpu", dtype="float32", **overrides)


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
