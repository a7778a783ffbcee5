"""``nestrank encode``: sharded corpus encoding (local or Ray), and the dense/hybrid index builder.

``nestrank index --method dense|hybrid`` (in :mod:`nestrank.cli.retrieval`) calls
:func:`build_vector_index` here; everything heavy is imported inside the functions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from nestrank.cli import app
from nestrank.cli.common import CorpusOpt, DatasetOpt, open_dataset

ENGINES = ("local", "ray")


def recorded_model_name(model: str) -> str:
    """The model name to store in manifests: an absolute path for local files, else the name (preset, hub id)."""
    path = Path(model)
    return str(path.resolve()) if path.exists() else model


def encoder_spec(model: str, preset: str | None, batch_tokens: int | None, device: str | None):
    """An :class:`~nestrank.retrieve.encode.EncoderSpec` from CLI options (unset options are left to the encoder)."""
    from nestrank.retrieve.encode import EncoderSpec

    options: dict[str, Any] = {"show_progress": False}  # encode_corpus shows one bar over all documents
    if batch_tokens is not None:
        options["batch_tokens"] = batch_tokens
    if device is not None:
        options["device"] = device
    return EncoderSpec(recorded_model_name(model), preset, tuple(sorted(options.items())))


def run_encoding(corpus: Any, out: Path, *, model: str, preset: str | None, shard_id: int | None, num_shards: int,
                 dtype: str, batch_tokens: int | None, chunk_size: int, engine: str, actors: int | None,
                 gpus_per_actor: float | None, device: str | None, progress: bool) -> dict[str, Any]:
    """Encode ``corpus`` into ``out`` with the chosen engine; returns the embeddings manifest."""
    from nestrank.errors import ConfigError
    from nestrank.retrieve.encode import encode_corpus, encode_corpus_ray, pending_shards, read_manifest, run_header

    if engine not in ENGINES:
        raise ConfigError(f"unknown --engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    spec = encoder_spec(model, preset, batch_tokens, device)
    header = run_header(corpus, num_shards=num_shards, dtype=dtype, model=spec.model, preset=preset)
    if not pending_shards(corpus, out, header, None if shard_id is None else [shard_id]):
        return read_manifest(out)  # type: ignore[return-value]  (all done: no need to load the model)
    if engine == "ray":
        return encode_corpus_ray(corpus, spec, out, num_shards=num_shards,
                                 shard_ids=None if shard_id is None else [shard_id], dtype=dtype,
                                 chunk_size=chunk_size, model=spec.model, preset=preset, actors=actors,
                                 num_gpus_per_actor=gpus_per_actor)
    return encode_corpus(corpus, spec(), out, shard_id=shard_id, num_shards=num_shards, dtype=dtype,
                         chunk_size=chunk_size, model=spec.model, preset=preset, progress=progress)


@app.command("encode")
def encode_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Embeddings directory (shards + manifest.json); "
                                      "re-running resumes it.", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="Encoder: a preset (minilm-l6, smollm2-135m), a local "
                                       "model dir, GGUF file, LoRA adapter dir or hub id.", show_default=False)],
    dataset: DatasetOpt = None,
    corpus: CorpusOpt = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Encoder preset (repllama, minilm); default: "
                                               "the encoder's choice for the model.")] = None,
    shard_id: Annotated[int | None, typer.Option("--shard-id", help="Encode only this shard (0-based); default: "
                                                 "every shard not yet done.")] = None,
    num_shards: Annotated[int, typer.Option("--num-shards", help="Contiguous shards to cut the corpus into.")] = 1,
    dtype: Annotated[str, typer.Option("--dtype", help="Stored vector type: float16 or float32.")] = "float16",
    batch_tokens: Annotated[int | None, typer.Option("--batch-tokens", help="Token budget per encoder "
                                                     "batch.")] = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="Documents read and written per step.")] = 8192,
    engine: Annotated[str, typer.Option("--engine", help="local (this process) or ray (a Ray Data actor "
                                        "pool; connects to RAY_ADDRESS or starts a local Ray).")] = "local",
    actors: Annotated[int | None, typer.Option("--actors", help="Ray: encoder actors (default: one per GPU, "
                                               "else 1).")] = None,
    gpus_per_actor: Annotated[float | None, typer.Option("--gpus-per-actor", help="Ray: GPUs per actor "
                                                         "(default 1 when the cluster has GPUs).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="Local engine: torch device (default: CUDA "
                                               "when available).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Encode a corpus into sharded embeddings, e.g. `nestrank encode -d scifact -m minilm-l6 -o scifact.emb`."""
    start = time.perf_counter()
    docs = open_dataset(dataset, corpus=corpus).corpus
    manifest = run_encoding(docs, out, model=model, preset=preset, shard_id=shard_id, num_shards=num_shards,
                            dtype=dtype, batch_tokens=batch_tokens, chunk_size=chunk_size, engine=engine,
                            actors=actors, gpus_per_actor=gpus_per_actor, device=device, progress=progress)
    done = len(manifest["shards"])
    state = "complete" if manifest["complete"] else f"{done}/{manifest['num_shards']} shards done"
    typer.echo(f"encoded {manifest['num_docs']} documents ({state}, dim {manifest['dim']}, {manifest['dtype']}) "
               f"in {time.perf_counter() - start:.1f}s -> {out}", err=True)


def build_vector_index(method: str, out: Path, corpus_loader: Any, *, embeddings: Path | None, model: str | None,
                       preset: str | None, faiss_params: dict[str, Any], rrf_k: float, depth: int,
                       bm25_params: dict[str, Any], progress: bool) -> Any:
    """Build a ``dense`` or ``hybrid`` index for ``nestrank index``; encodes first when ``--model`` is given.

    Without ``--embeddings``, vectors go to ``OUT.emb`` next to the index (kept, so a re-run
    resumes instead of re-encoding). ``corpus_loader()`` returns the corpus when needed.
    """
    from nestrank.errors import ConfigError
    from nestrank.retrieve.dense_index import DenseIndex, HybridIndex, IndexConfig

    config = IndexConfig(**faiss_params)
    if embeddings is None and model is None:
        raise ConfigError(f"--method {method} needs --embeddings DIR (from `nestrank encode`) or --model NAME "
                          "(to encode the corpus first)")
    corpus = corpus_loader() if (model is not None or method == "hybrid") else None
    if model is not None:
        embeddings = embeddings or out.with_name(out.name + ".emb")
        run_encoding(corpus, embeddings, model=model, preset=preset, shard_id=None, num_shards=1, dtype="float16",
                     batch_tokens=None, chunk_size=8192, engine="local", actors=None, gpus_per_actor=None,
                     device=None, progress=progress)
    assert embeddings is not None
    if method == "dense":
        return DenseIndex.build(embeddings, out, config, progress=progress)
    return HybridIndex.build(corpus, embeddings, out, config, rrf_k=rrf_k, depth=depth, bm25_params=bm25_params,
                             progress=progress)
