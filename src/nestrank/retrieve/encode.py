"""Encoding a corpus into an embeddings directory: locally, on a Ray actor pool, or as ``nestrank encode`` does.

:func:`run_encoding` is what ``nestrank encode`` calls: it loads the encoder only when a
shard is pending and runs the local engine (:func:`encode_corpus`) or the Ray engine
(:func:`encode_corpus_ray`). Both write the files described in
:mod:`nestrank.retrieve.embeddings`, so a run can be resumed by either.

Vectors are streamed: documents are fetched ``chunk_size`` at a time from the corpus, encoded
(with ``doc_mode = "maxp"``: split into segments first, every segment its own row) and
appended to the shard's files, so a shard never has to fit in RAM.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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
    """What :func:`encode_corpus` needs from an encoder (``DenseEncoder`` fits).

    With ``doc_mode = "maxp"`` the encoder also splits documents: ``passage_segments(document,
    stride)`` returns its overlapping passages (``DenseEncoder.passage_segments``), and
    ``passage_tokens`` (its passage length), when it has one, is recorded in the manifest.
    """

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


def encoder_passage_tokens(encoder: object) -> int | None:
    """The encoder's passage length in tokens (its ``passage_tokens``), or ``None`` when it has none."""
    value = getattr(encoder, "passage_tokens", None)
    return value if isinstance(value, int) else None


def _splitter(encoder: PassageEncoder, header: dict[str, Any]) -> Callable[[Document], list[Document]] | None:
    """How ``encoder`` turns one document into rows under ``header``'s doc_mode (``None``: one row, the document)."""
    expected, actual = header.get("passage_tokens"), encoder_passage_tokens(encoder)
    if expected is not None and actual != expected:
        raise ConfigError(f"the encoder's passage length is {actual} tokens, the embeddings record passage_tokens="
                          f"{expected}; load the encoder with passage_max_length={expected}")
    if header.get("doc_mode", "truncate") == "truncate":
        return None
    split = getattr(encoder, "passage_segments", None)
    if split is None:
        raise ConfigError(f"doc_mode='maxp' needs an encoder that splits documents into passages "
                          f"(passage_segments(document, stride)); {type(encoder).__name__} has none")
    stride = int(header["stride"])
    return lambda document: split(document, stride)


def _npy_from_raw(raw: Path, final: Path, dtype: np.dtype, rows: int, dim: int) -> None:
    """Write ``final`` as a ``.npy`` of shape ``(rows, dim)`` whose data are the bytes of ``raw``."""
    with final.open("wb") as out, raw.open("rb") as data:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, dim)}
        np.lib.format.write_array_header_1_0(out, header)
        shutil.copyfileobj(data, out, 1 << 22)


def encode_shard(corpus: Corpus, encoder: PassageEncoder, out_dir: str | Path, spec: ShardSpec, *,
                 header: dict[str, Any], dtype: str = EMBEDDING_DTYPE, chunk_size: int = ENCODE_CHUNK_SIZE,
                 on_chunk: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Encode one shard's documents and write its files atomically; returns its manifest entry.

    Writes ``shard-XXXXX.npy``, ``shard-XXXXX.ids.txt`` and last ``shard-XXXXX.json`` (the
    entry with the run's ``header``, so a shard copied from another directory can be
    verified and adopted). ``header["doc_mode"]`` says what a row is: a document
    (``truncate``) or one of its segments (``maxp``, ``header["stride"]`` tokens apart, cut by
    the encoder's ``passage_segments``); the entry's ``count`` is the shard's documents,
    ``rows`` its vectors. Does not touch the manifest (see :func:`commit_shards`).
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
    split = _splitter(encoder, header)
    raw_tmp = out_dir / f".{spec.name}.npy.{os.getpid()}.tmp"  # the rows, streamed; then the .npy around them
    vec_tmp = out_dir / f".{spec.name}.npy.{os.getpid()}.final.tmp"
    ids_tmp = out_dir / f".{spec.name}.ids.{os.getpid()}.tmp"
    rows = 0
    try:
        with raw_tmp.open("wb") as raw, ids_tmp.open("w", encoding="utf-8") as id_lines:
            for offset in range(0, spec.count, chunk_size):
                chunk_ids = ids[offset:offset + chunk_size]
                docs = corpus.get_many(chunk_ids)
                pieces = docs if split is None else [piece for doc in docs for piece in split(doc)]
                vectors = np.asarray(encoder.encode_passages(pieces))
                if vectors.shape != (len(pieces), dim):
                    raise ConfigError(f"encoder returned shape {vectors.shape} for {len(pieces)} passages, "
                                      f"expected ({len(pieces)}, {dim}) (its dim)")
                with np.errstate(over="ignore"):
                    converted = vectors.astype(np_dtype)
                if not np.isfinite(converted).all():
                    raise ConfigError(f"{spec.name}: non-finite embedding values in {dtype} (documents "
                                      f"{chunk_ids[0]!r}..{chunk_ids[-1]!r}); normalise the vectors or use float32")
                raw.write(np.ascontiguousarray(converted).tobytes())
                id_lines.writelines(f"{piece.id}\n" for piece in pieces)
                rows += len(pieces)
                if on_chunk is not None:
                    on_chunk(len(chunk_ids))
        _npy_from_raw(raw_tmp, vec_tmp, np_dtype, rows, dim)
        _fsync_replace(vec_tmp, out_dir / f"{spec.name}.npy")
        _fsync_replace(ids_tmp, out_dir / f"{spec.name}.ids.txt")
    finally:
        for tmp in (vec_tmp, raw_tmp, ids_tmp):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    entry = {
        "name": spec.name, "shard_id": spec.shard_id, "start": spec.start, "end": spec.end, "count": spec.count,
        "rows": rows, "file": f"{spec.name}.npy", "ids": f"{spec.name}.ids.txt", **shard_checksums(out_dir, spec.name),
    }
    with atomic_write(out_dir / f"{spec.name}.json") as handle:
        json.dump({"header": {**header, "dim": dim}, "entry": entry}, handle, indent=1)
    return entry


def encode_corpus(corpus: Corpus, encoder: PassageEncoder, out_dir: str | Path, *, shard_id: int | None = None,
                  num_shards: int = 1, dtype: str = EMBEDDING_DTYPE, chunk_size: int = ENCODE_CHUNK_SIZE,
                  model: str | None = None, preset: str | None = None, normalized: bool | None = None,
                  doc_mode: str = "truncate", stride: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Encode ``corpus`` into sharded embedding files under ``out_dir``; returns the manifest.

    ``shard_id=None`` encodes every shard not yet done; an integer encodes only that shard
    (one process per shard, e.g. one per machine or GPU). ``model``/``preset`` are recorded
    so indexes built from these files can encode queries with the same encoder;
    ``normalized`` defaults to :func:`encoder_normalizes`. ``doc_mode="maxp"`` encodes every
    document as overlapping segments of the encoder's passage length, ``stride`` tokens apart
    (default: half a passage), one row each (see :mod:`nestrank.retrieve.embeddings`).
    """
    out_dir = Path(out_dir)
    if normalized is None:
        normalized = encoder_normalizes(encoder)
    header = run_header(corpus, num_shards=num_shards, dtype=dtype, model=model, preset=preset,
                        dim=int(encoder.dim), normalized=normalized, doc_mode=doc_mode, stride=stride,
                        passage_tokens=encoder_passage_tokens(encoder))
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

    def passage_tokens(self) -> int:
        """The passage length the encoder will have, read without loading it (``DenseEncoder.config_for``)."""
        import dataclasses

        from nestrank.models.dense import DenseEncoder, EncoderConfig

        fields = {f.name for f in dataclasses.fields(EncoderConfig)}
        overrides = {key: value for key, value in self.options if key in fields}
        return DenseEncoder.config_for(self.model, self.preset, **overrides).passage_max_length


class _RayShardWorker:
    """A Ray Data actor: holds one encoder and encodes whole shards with :func:`encode_shard`."""

    def __init__(self, corpus: Corpus, encoder_factory: Callable[[], PassageEncoder], out_dir: str,
                 header: dict[str, Any], chunk_size: int) -> None:
        self.corpus = corpus
        self.encoder = encoder_factory()
        self.out_dir = out_dir
        self.header = {**header, "dim": int(self.encoder.dim), "normalized": encoder_normalizes(self.encoder),
                       "passage_tokens": header.get("passage_tokens") or encoder_passage_tokens(self.encoder)}
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
                      doc_mode: str = "truncate", stride: int | None = None, passage_tokens: int | None = None,
                      actors: int | None = None, num_gpus_per_actor: float | None = None) -> dict[str, Any]:
    """Encode the pending shards on Ray Data (an actor pool); same files and manifest as :func:`encode_corpus`.

    ``doc_mode`` and ``stride`` as for :func:`encode_corpus`; ``passage_tokens`` (the encoders'
    passage length) defaults to an :class:`EncoderSpec` factory's, else to what the workers'
    encoders report.

    Each pending shard is one row of a ``ray.data`` dataset; ``map_batches`` runs a pool of
    ``actors`` actors (default: one per GPU in the cluster, else 1), each holding an encoder
    from ``encoder_factory`` (e.g. :class:`EncoderSpec`) and ``num_gpus_per_actor`` GPUs
    (default 1 when the cluster has GPUs). Workers write shard files into ``out_dir`` (a
    file system every node sees); the driver records each finished shard in the manifest.
    Connects to the running cluster (``ray.init()``) unless Ray is already initialised.
    """
    import ray

    out_dir = Path(out_dir)
    if passage_tokens is None and isinstance(encoder_factory, EncoderSpec):
        passage_tokens = encoder_factory.passage_tokens()
    header = run_header(corpus, num_shards=num_shards, dtype=dtype, model=model, preset=preset, doc_mode=doc_mode,
                        stride=stride, passage_tokens=passage_tokens)
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
                 doc_mode: str = "truncate", stride: int | None = None, passage_tokens: int | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Encode ``corpus`` into the embeddings directory ``out`` with the dense encoder ``model``; returns the manifest.

    ``model`` is a preset name, a local model directory, GGUF file, LoRA adapter directory or
    hub id (a local path is recorded as an absolute path). The encoder
    (``DenseEncoder.from_pretrained(model, preset=..., batch_tokens=..., device=...)``; unset
    options are left to it) is loaded only when a shard of ``shard_id`` (default: all) is
    pending, so a finished directory returns at once. ``engine="local"`` encodes in this
    process (:func:`encode_corpus`); ``"ray"`` on a Ray actor pool (:func:`encode_corpus_ray`
    with ``actors`` and ``gpus_per_actor``). ``passage_tokens`` sets the encoder's passage length
    (``passage_max_length``; default: the encoder's); ``doc_mode`` is ``truncate`` (each document
    cut at that length) or ``maxp`` (overlapping segments ``stride`` tokens apart, default half
    a passage, one row each). All three are part of the directory's identity: a directory
    encoded with other values is refused, never mixed.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    options: dict[str, Any] = {"show_progress": False}  # encode_corpus shows one bar over all documents
    if batch_tokens is not None:
        options["batch_tokens"] = batch_tokens
    if device is not None:
        options["device"] = device
    if passage_tokens is not None:
        options["passage_max_length"] = passage_tokens
    spec = EncoderSpec(recorded_model_name(model), preset, tuple(sorted(options.items())))
    shard_ids = None if shard_id is None else [shard_id]
    doc = {"doc_mode": doc_mode, "stride": stride}
    header = run_header(corpus, num_shards=num_shards, dtype=dtype, model=spec.model, preset=preset,
                        passage_tokens=spec.passage_tokens(), **doc)
    if not pending_shards(corpus, out, header, shard_ids):
        return current_manifest(out)  # type: ignore[return-value]  (all done: no need to load the model)
    if engine == "ray":
        return encode_corpus_ray(corpus, spec, out, num_shards=num_shards, shard_ids=shard_ids, dtype=dtype,
                                 chunk_size=chunk_size, model=spec.model, preset=preset, actors=actors,
                                 num_gpus_per_actor=gpus_per_actor, **doc)
    return encode_corpus(corpus, spec(), out, shard_id=shard_id, num_shards=num_shards, dtype=dtype,
                         chunk_size=chunk_size, model=spec.model, preset=preset, progress=progress, **doc)
