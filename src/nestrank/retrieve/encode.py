"""Encoding a corpus into an embeddings directory: locally, on a Ray actor pool, or as ``nestrank encode`` does.

:func:`run_encoding` is what ``nestrank encode`` calls: it loads the encoder only when a
shard is pending and runs the local engine (:func:`encode_corpus`) or the Ray engine
(:func:`encode_corpus_ray`). Both write the files described in
:mod:`nestrank.retrieve.embeddings`, so a run can be resumed by either.

Vectors are streamed: documents are fetched ``chunk_size`` at a time from the corpus and
written into a memory-mapped ``.npy``, so a shard never has to fit in RAM.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nestrank.data.corpus import Corpus, Document
from nestrank.errors import ConfigError, DataFormatError
from nestrank.files import atomic_write
from nestrank.retrieve.config import EMBEDDING_DTYPE, ENCODE_CHUNK_SIZE
from nestrank.retrieve.embeddings import (
    ShardSpec,
    check_dtype,
    commit_shards,
    current_manifest,
    pending_shards,
    run_header,
    shard_checksums,
)

ENGINES = ("local", "ray")


class PassageEncoder(Protocol):
    """What :func:`encode_corpus` needs from an encoder (``DenseEncoder`` fits)."""

    dim: int

    def encode_passages(self, docs: Sequence[Document | str]) -> np.ndarray:
        """One float32 row per document, in input order."""
        ...


# -- encoding -------------------------------------------------------------------------------
def encoder_normalizes(encoder: object) -> bool | None:
    """Whether ``encoder`` L2-normalises its vectors: its ``normalize`` or ``config.normalize``, else ``None``."""
    value = getattr(encoder, "normalize", getattr(getattr(encoder, "config", None), "normalize", None))
    return value if isinstance(value, bool) else None


def _remove_stale_temps(out_dir: Path, spec: ShardSpec) -> None:
    for stale in out_dir.glob(f".{spec.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _fsync_replace(tmp: Path, final: Path) -> None:
    with tmp.open("rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)


def encode_shard(corpus: Corpus, encoder: PassageEncoder, out_dir: str | Path, spec: ShardSpec, *,
                 header: dict[str, Any], dtype: str = EMBEDDING_DTYPE, chunk_size: int = ENCODE_CHUNK_SIZE,
                 on_chunk: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Encode one shard's documents and write its files atomically; returns its manifest entry.

    Writes ``shard-XXXXX.npy``, ``shard-XXXXX.ids.txt`` and last ``shard-XXXXX.json`` (the
    entry with the run's ``header``, so a shard copied from another directory can be
    verified and adopted). Does not touch the manifest (see :func:`commit_shards`).
    ``on_chunk(n)`` is called after each chunk of ``n`` documents (for progress bars).
    """
    np_dtype = check_dtype(dtype)
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out_dir, spec)
    ids = corpus.ids[spec.start:spec.end]
    bad = next((d for d in ids if "\n" in d or "\r" in d), None)
    if bad is not None:
        raise DataFormatError(corpus.path, None, f"document id {bad!r} contains a line break",
                              "use ids without line breaks")
    dim = int(encoder.dim)
    vec_tmp = out_dir / f".{spec.name}.npy.{os.getpid()}.tmp"
    ids_tmp = out_dir / f".{spec.name}.ids.{os.getpid()}.tmp"
    try:
        if spec.count == 0:
            np.save(vec_tmp, np.zeros((0, dim), dtype=np_dtype), allow_pickle=False)
        else:
            rows = np.lib.format.open_memmap(vec_tmp, mode="w+", dtype=np_dtype, shape=(spec.count, dim))
            for offset in range(0, spec.count, chunk_size):
                chunk_ids = ids[offset:offset + chunk_size]
                vectors = np.asarray(encoder.encode_passages(corpus.get_many(chunk_ids)))
                if vectors.shape != (len(chunk_ids), dim):
                    raise ConfigError(f"encoder returned shape {vectors.shape} for {len(chunk_ids)} documents, "
                                      f"expected ({len(chunk_ids)}, {dim}) (its dim)")
                with np.errstate(over="ignore"):
                    converted = vectors.astype(np_dtype)
                if not np.isfinite(converted).all():
                    raise ConfigError(f"{spec.name}: non-finite embedding values in {dtype} (documents "
                                      f"{chunk_ids[0]!r}..{chunk_ids[-1]!r}); normalise the vectors or use float32")
                rows[offset:offset + len(chunk_ids)] = converted
                if on_chunk is not None:
                    on_chunk(len(chunk_ids))
            rows.flush()
            del rows
        with ids_tmp.open("w", encoding="utf-8") as handle:
            handle.writelines(f"{doc_id}\n" for doc_id in ids)
        _fsync_replace(vec_tmp, out_dir / f"{spec.name}.npy")
        _fsync_replace(ids_tmp, out_dir / f"{spec.name}.ids.txt")
    finally:
        for tmp in (vec_tmp, ids_tmp):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    entry = {
        "name": spec.name, "shard_id": spec.shard_id, "start": spec.start, "end": spec.end, "count": spec.count,
        "file": f"{spec.name}.npy", "ids": f"{spec.name}.ids.txt", **shard_checksums(out_dir, spec.name),
    }
    with atomic_write(out_dir / f"{spec.name}.json") as handle:
        json.dump({"header": {**header, "dim": dim}, "entry": entry}, handle, indent=1)
    return entry


def encode_corpus(corpus: Corpus, encoder: PassageEncoder, out_dir: str | Path, *, shard_id: int | None = None,
                  num_shards: int = 1, dtype: str = EMBEDDING_DTYPE, chunk_size: int = ENCODE_CHUNK_SIZE,
                  model: str | None = None, preset: str | None = None, normalized: bool | None = None,
                  progress: bool = False) -> dict[str, Any]:
    """Encode ``corpus`` into sharded embedding files under ``out_dir``; returns the manifest.

    ``shard_id=None`` encodes every shard not yet done; an integer encodes only that shard
    (one process per shard, e.g. one per machine or GPU). ``model``/``preset`` are recorded
    so indexes built from these files can encode queries with the same encoder;
    ``normalized`` defaults to :func:`encoder_normalizes`.
    """
    out_dir = Path(out_dir)
    if normalized is None:
        normalized = encoder_normalizes(encoder)
    header = run_header(corpus, num_shards=num_shards, dtype=dtype, model=model, preset=preset,
                        dim=int(encoder.dim), normalized=normalized)
    todo = pending_shards(corpus, out_dir, header, None if shard_id is None else [shard_id])
    manifest = current_manifest(out_dir)
    bar = _progress_bar(sum(spec.count for spec in todo), progress)
    try:
        for spec in todo:
            entry = encode_shard(corpus, encoder, out_dir, spec, header=header, dtype=dtype, chunk_size=chunk_size,
                                 on_chunk=bar.update)
            manifest = commit_shards(out_dir, header, [entry])
    finally:
        bar.close()
    assert manifest is not None  # either it existed with every requested shard done, or we committed one
    return manifest


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="encoding", unit="doc", disable=not enabled)


# -- the Ray engine ------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderSpec:
    """A picklable recipe for a ``DenseEncoder``, built once inside each worker."""

    model: str
    preset: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def __call__(self) -> PassageEncoder:
        """Load the encoder (``DenseEncoder.from_pretrained(model, preset=..., **options)``)."""
        from nestrank.models.dense import DenseEncoder

        return DenseEncoder.from_pretrained(self.model, preset=self.preset, **dict(self.options))


class _RayShardWorker:
    """A Ray Data actor: holds one encoder and encodes whole shards with :func:`encode_shard`."""

    def __init__(self, corpus: Corpus, encoder_factory: Callable[[], PassageEncoder], out_dir: str,
                 header: dict[str, Any], chunk_size: int) -> None:
        self.corpus = corpus
        self.encoder = encoder_factory()
        self.out_dir = out_dir
        self.header = {**header, "dim": int(self.encoder.dim), "normalized": encoder_normalizes(self.encoder)}
        self.chunk_size = chunk_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = []
        for shard_id, start, end in zip(batch["shard_id"], batch["start"], batch["end"], strict=True):
            spec = ShardSpec(int(shard_id), int(start), int(end))
            entry = encode_shard(self.corpus, self.encoder, self.out_dir, spec, header=self.header,
                                 dtype=self.header["dtype"], chunk_size=self.chunk_size)
            records.append(json.dumps({"header": self.header, "entry": entry}))
        return {"record": np.asarray(records, dtype=object)}


def encode_corpus_ray(corpus: Corpus, encoder_factory: Callable[[], PassageEncoder], out_dir: str | Path, *,
                      num_shards: int, shard_ids: Sequence[int] | None = None, dtype: str = EMBEDDING_DTYPE,
                      chunk_size: int = ENCODE_CHUNK_SIZE, model: str | None = None, preset: str | None = None,
                      actors: int | None = None, num_gpus_per_actor: float | None = None) -> dict[str, Any]:
    """Encode the pending shards on Ray Data (an actor pool); same files and manifest as :func:`encode_corpus`.

    Each pending shard is one row of a ``ray.data`` dataset; ``map_batches`` runs a pool of
    ``actors`` actors (default: one per GPU in the cluster, else 1), each holding an encoder
    from ``encoder_factory`` (e.g. :class:`EncoderSpec`) and ``num_gpus_per_actor`` GPUs
    (default 1 when the cluster has GPUs). Workers write shard files into ``out_dir`` (a
    file system every node sees); the driver records each finished shard in the manifest.
    Connects to the running cluster (``ray.init()``) unless Ray is already initialised.
    """
    import ray

    out_dir = Path(out_dir)
    header = run_header(corpus, num_shards=num_shards, dtype=dtype, model=model, preset=preset)
    todo = pending_shards(corpus, out_dir, header, shard_ids)
    manifest = current_manifest(out_dir)
    if not todo:
        assert manifest is not None
        return manifest
    if not ray.is_initialized():
        ray.init()
    gpus = float(ray.cluster_resources().get("GPU", 0))
    num_gpus = (1.0 if gpus else 0.0) if num_gpus_per_actor is None else num_gpus_per_actor
    pool = min(actors or max(1, int(gpus)), len(todo))
    rows = [{"shard_id": s.shard_id, "start": s.start, "end": s.end} for s in todo]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        _RayShardWorker, batch_size=1, concurrency=pool, num_gpus=num_gpus,
        fn_constructor_kwargs={"corpus": corpus, "encoder_factory": encoder_factory, "out_dir": str(out_dir),
                               "header": header, "chunk_size": chunk_size})
    for row in dataset.iter_rows():
        record = json.loads(row["record"])
        manifest = commit_shards(out_dir, record["header"], [record["entry"]])
    assert manifest is not None
    return manifest


# -- what `nestrank encode` does ------------------------------------------------------------
def recorded_model_name(model: str) -> str:
    """The model name to store in manifests: an absolute path for local files, else the name (preset, hub id)."""
    path = Path(model)
    return str(path.resolve()) if path.exists() else model


def run_encoding(corpus: Corpus, out: str | Path, model: str, *, preset: str | None = None,
                 shard_id: int | None = None, num_shards: int = 1, dtype: str = EMBEDDING_DTYPE,
                 batch_tokens: int | None = None, chunk_size: int = ENCODE_CHUNK_SIZE, engine: str = "local",
                 actors: int | None = None, gpus_per_actor: float | None = None, device: str | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Encode ``corpus`` into the embeddings directory ``out`` with the dense encoder ``model``; returns the manifest.

    ``model`` is a preset name, a local model directory, GGUF file, LoRA adapter directory or
    hub id (a local path is recorded as an absolute path). The encoder
    (``DenseEncoder.from_pretrained(model, preset=..., batch_tokens=..., device=...)``; unset
    options are left to it) is loaded only when a shard of ``shard_id`` (default: all) is
    pending, so a finished directory returns at once. ``engine="local"`` encodes in this
    process (:func:`encode_corpus`); ``"ray"`` on a Ray actor pool (:func:`encode_corpus_ray`
    with ``actors`` and ``gpus_per_actor``).
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    options: dict[str, Any] = {"show_progress": False}  # encode_corpus shows one bar over all documents
    if batch_tokens is not None:
        options["batch_tokens"] = batch_tokens
    if device is not None:
        options["device"] = device
    spec = EncoderSpec(recorded_model_name(model), preset, tuple(sorted(options.items())))
    shard_ids = None if shard_id is None else [shard_id]
    header = run_header(corpus, num_shards=num_shards, dtype=dtype, model=spec.model, preset=preset)
    if not pending_shards(corpus, out, header, shard_ids):
        return current_manifest(out)  # type: ignore[return-value]  (all done: no need to load the model)
    if engine == "ray":
        return encode_corpus_ray(corpus, spec, out, num_shards=num_shards, shard_ids=shard_ids, dtype=dtype,
                                 chunk_size=chunk_size, model=spec.model, preset=preset, actors=actors,
                                 num_gpus_per_actor=gpus_per_actor)
    return encode_corpus(corpus, spec(), out, shard_id=shard_id, num_shards=num_shards, dtype=dtype,
                         chunk_size=chunk_size, model=spec.model, preset=preset, progress=progress)
