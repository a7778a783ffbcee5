"""Corpus encoding at scale: sharded, resumable, crash-safe embedding files.

The corpus (in its id order) is cut into ``num_shards`` contiguous ranges. Each shard is
written as ``shard-XXXXX.npy`` (float16 or float32 rows, in the shard's id order) and
``shard-XXXXX.ids.txt`` (one document id per line), both to temporary files renamed into
place. The shard is then recorded in ``manifest.json`` (model, preset, dim, dtype, shard
counts and SHA-256 checksums), rewritten atomically under a file lock, so separate
processes (``--shard-id i --num-shards n`` on machines sharing a file system) can fill
one directory. A shard counts as done only when the manifest lists it and its files match
the recorded count and checksum: re-running skips done shards and redoes the rest, and a
killed run never leaves a shard that looks done but is not.

Vectors are streamed: documents are fetched ``chunk_size`` at a time from the corpus and
written into a memory-mapped ``.npy``, so a shard never has to fit in RAM.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nestrank.data.corpus import Corpus, Document
from nestrank.errors import ConfigError, DataFormatError
from nestrank.files import atomic_write

MANIFEST = "manifest.json"
KIND = "nestrank-embeddings"
FORMAT_VERSION = 1
DTYPES = ("float16", "float32")
#: Manifest fields that must agree between runs writing into one output directory.
IDENTITY_FIELDS = ("model", "preset", "dtype", "num_docs", "num_shards", "ids_sha256")


class PassageEncoder(Protocol):
    """What :func:`encode_corpus` needs from an encoder (``DenseEncoder`` fits)."""

    dim: int

    def encode_passages(self, docs: Sequence[Document | str]) -> np.ndarray:
        """One float32 row per document, in input order."""
        ...


@dataclass(frozen=True)
class ShardSpec:
    """Where one shard starts and ends in the corpus's id order, and its file names."""

    shard_id: int
    start: int
    end: int

    @property
    def name(self) -> str:
        """``shard-XXXXX`` (the stem of the shard's files)."""
        return f"shard-{self.shard_id:05d}"

    @property
    def count(self) -> int:
        """Number of documents in the shard."""
        return self.end - self.start


def shard_ranges(num_docs: int, num_shards: int) -> list[ShardSpec]:
    """Split ``num_docs`` documents into ``num_shards`` contiguous ranges of near-equal size."""
    if num_shards < 1:
        raise ConfigError(f"num_shards must be >= 1, got {num_shards}")
    bounds = [(i * num_docs) // num_shards for i in range(num_shards + 1)]
    return [ShardSpec(i, bounds[i], bounds[i + 1]) for i in range(num_shards)]


def ids_fingerprint(ids: Sequence[str]) -> str:
    """SHA-256 of the document ids in order: identifies the corpus a set of shards came from."""
    digest = hashlib.sha256()
    for doc_id in ids:
        digest.update(doc_id.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# -- the manifest ---------------------------------------------------------------------------
def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    """The embeddings manifest of ``out_dir``, or ``None`` when there is none yet."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, exc.lineno, f"bad JSON ({exc.msg})", "delete the directory and encode again") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise DataFormatError(path, None, "not a nestrank embeddings manifest",
                              "point at a directory written by `nestrank encode`")
    return manifest


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` (POSIX ``flock``) while the manifest changes."""
    import fcntl

    with (out_dir / ".manifest.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_identity(out_dir: Path, manifest: dict[str, Any], header: dict[str, Any]) -> None:
    for field in IDENTITY_FIELDS + ("dim", "normalized"):
        if field in header and field in manifest and header[field] is not None and manifest[field] != header[field]:
            raise ConfigError(
                f"{out_dir / MANIFEST}: holds embeddings with {field}={manifest[field]!r}, this run has "
                f"{field}={header[field]!r}; write to a new --out directory or delete the old one")


def commit_shards(out_dir: str | Path, header: dict[str, Any], entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Record finished shards in the manifest (atomically, under a lock); returns the new manifest.

    ``header`` holds the run's identity (model, preset, dtype, dim, normalized, num_docs,
    num_shards, ids_sha256); an existing manifest with another identity is a :class:`ConfigError`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir):
        manifest = read_manifest(out_dir)
        if manifest is None:
            manifest = {"kind": KIND, "format": FORMAT_VERSION, **header, "shards": {}}
        _check_identity(out_dir, manifest, header)
        for key, value in header.items():
            if manifest.get(key) is None:
                manifest[key] = value
        for entry in entries:
            manifest["shards"][entry["name"]] = entry
        manifest["complete"] = len(manifest["shards"]) == manifest["num_shards"]
        with atomic_write(out_dir / MANIFEST) as handle:
            json.dump(manifest, handle, indent=1)
            handle.write("\n")
    return manifest


def shard_is_done(out_dir: str | Path, manifest: dict[str, Any] | None, spec: ShardSpec, verify: bool = True) -> bool:
    """True when the manifest lists ``spec`` and its files exist with the recorded count (and checksums)."""
    if manifest is None:
        return False
    entry = manifest.get("shards", {}).get(spec.name)
    if not entry or entry.get("count") != spec.count or entry.get("start") != spec.start:
        return False
    out_dir = Path(out_dir)
    vectors, ids = out_dir / entry["file"], out_dir / entry["ids"]
    if not (vectors.is_file() and ids.is_file()):
        return False
    if not verify:
        return True
    return file_sha256(vectors) == entry["sha256"] and file_sha256(ids) == entry["ids_sha256"]


# -- encoding -------------------------------------------------------------------------------
def encoder_normalizes(encoder: object) -> bool | None:
    """Whether ``encoder`` L2-normalises its vectors: its ``normalize`` or ``config.normalize``, else ``None``."""
    value = getattr(encoder, "normalize", getattr(getattr(encoder, "config", None), "normalize", None))
    return value if isinstance(value, bool) else None


def _check_dtype(dtype: str) -> np.dtype:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return np.dtype(dtype)


def _remove_stale_temps(out_dir: Path, spec: ShardSpec) -> None:
    for stale in out_dir.glob(f".{spec.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _fsync_replace(tmp: Path, final: Path) -> None:
    with tmp.open("rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)


def encode_shard(corpus: Corpus, encoder: PassageEncoder, out_dir: str | Path, spec: ShardSpec, *,
                 header: dict[str, Any], dtype: str = "float16", chunk_size: int = 8192,
                 on_chunk: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Encode one shard's documents and write its files atomically; returns its manifest entry.

    Writes ``shard-XXXXX.npy``, ``shard-XXXXX.ids.txt`` and last ``shard-XXXXX.json`` (the
    entry with the run's ``header``, so a shard copied from another directory can be
    verified and adopted). Does not touch the manifest (see :func:`commit_shards`).
    ``on_chunk(n)`` is called after each chunk of ``n`` documents (for progress bars).
    """
    np_dtype = _check_dtype(dtype)
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
        "file": f"{spec.name}.npy", "ids": f"{spec.name}.ids.txt",
        "sha256": file_sha256(out_dir / f"{spec.name}.npy"), "ids_sha256": file_sha256(out_dir / f"{spec.name}.ids.txt"),
    }
    with atomic_write(out_dir / f"{spec.name}.json") as handle:
        json.dump({"header": {**header, "dim": dim}, "entry": entry}, handle, indent=1)
    return entry


def run_header(corpus: Corpus, *, num_shards: int, dtype: str, model: str | None, preset: str | None,
               dim: int | None = None, normalized: bool | None = None) -> dict[str, Any]:
    """The identity fields of an encoding run, as stored in the manifest."""
    _check_dtype(dtype)
    return {"model": model, "preset": preset, "dim": dim, "dtype": dtype, "normalized": normalized,
            "num_docs": len(corpus), "num_shards": num_shards, "ids_sha256": ids_fingerprint(corpus.ids)}


def _adopt(out_dir: Path, header: dict[str, Any], spec: ShardSpec) -> bool:
    """Record a finished shard missing from the manifest (its sidecar and files verified); True if adopted."""
    sidecar = out_dir / f"{spec.name}.json"
    if not sidecar.is_file():
        return False
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        shard_header, entry = record["header"], record["entry"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return False
    same = all(header.get(f) is None or shard_header.get(f) == header[f] for f in IDENTITY_FIELDS + ("dim", "normalized"))
    if not same or not shard_is_done(out_dir, {"shards": {spec.name: entry}}, spec):
        return False
    commit_shards(out_dir, shard_header, [entry])
    return True


def pending_shards(corpus: Corpus, out_dir: str | Path, header: dict[str, Any],
                   shard_ids: Sequence[int] | None = None, verify: bool = True) -> list[ShardSpec]:
    """The shards (of ``shard_ids``, default all) not yet done in ``out_dir``; checks the identity first.

    A shard absent from the manifest whose files and ``shard-XXXXX.json`` sidecar are present
    and verify (e.g. copied from another machine's output) is recorded as done, not redone.
    """
    out_dir = Path(out_dir)
    specs = shard_ranges(len(corpus), header["num_shards"])
    if shard_ids is not None:
        for shard_id in shard_ids:
            if not 0 <= shard_id < header["num_shards"]:
                raise ConfigError(f"shard id {shard_id} is out of range for {header['num_shards']} shards "
                                  f"(valid: 0..{header['num_shards'] - 1})")
        specs = [specs[i] for i in shard_ids]
    manifest = read_manifest(out_dir)
    if manifest is not None:
        _check_identity(out_dir, manifest, header)
    return [spec for spec in specs
            if not shard_is_done(out_dir, manifest, spec, verify) and not _adopt(out_dir, header, spec)]


def encode_corpus(corpus: Corpus, encoder: PassageEncoder, out_dir: str | Path, *, shard_id: int | None = None,
                  num_shards: int = 1, dtype: str = "float16", chunk_size: int = 8192,
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
    manifest = read_manifest(out_dir)
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


# -- reading --------------------------------------------------------------------------------
class Embeddings:
    """A complete set of encoded shards, read shard by shard (memory-mapped)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)
        manifest = read_manifest(self.dir)
        if manifest is None:
            raise DataFormatError(self.dir / MANIFEST, None, "no embeddings manifest",
                                  "run `nestrank encode --out DIR` first")
        self.manifest = manifest
        missing = [s.shard_id for s in shard_ranges(manifest["num_docs"], manifest["num_shards"])
                   if s.name not in manifest["shards"]]
        if missing:
            listed = ", ".join(map(str, missing[:10]))
            raise DataFormatError(self.dir / MANIFEST, None,
                                  f"{len(missing)} of {manifest['num_shards']} shards not encoded yet (shard ids {listed})",
                                  f"run `nestrank encode --out {self.dir} --num-shards {manifest['num_shards']}` "
                                  "(with --shard-id for each missing one) to finish")

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.manifest["dim"])

    @property
    def num_docs(self) -> int:
        """Total number of documents."""
        return int(self.manifest["num_docs"])

    @property
    def shard_names(self) -> list[str]:
        """Shard names in shard-id order."""
        return [s.name for s in shard_ranges(self.num_docs, int(self.manifest["num_shards"]))]

    def shard(self, name: str) -> tuple[list[str], np.ndarray]:
        """``(doc_ids, vectors)`` of one shard; vectors are a read-only memory map."""
        entry = self.manifest["shards"][name]
        vec_path, ids_path = self.dir / entry["file"], self.dir / entry["ids"]
        for path in (vec_path, ids_path):
            if not path.is_file():
                raise DataFormatError(path, None, "embedding shard file missing",
                                      f"re-run `nestrank encode --out {self.dir}` to rebuild it")
        vectors = np.load(vec_path, mmap_mode="r", allow_pickle=False)
        ids = ids_path.read_text(encoding="utf-8").splitlines()
        if vectors.shape != (entry["count"], self.dim) or len(ids) != entry["count"]:
            raise DataFormatError(vec_path, None, f"shard has {vectors.shape} vectors and {len(ids)} ids, the "
                                  f"manifest says ({entry['count']}, {self.dim})",
                                  f"delete the shard's files and re-run `nestrank encode --out {self.dir}`")
        return ids, vectors

    def __iter__(self) -> Iterator[tuple[list[str], np.ndarray]]:
        for name in self.shard_names:
            yield self.shard(name)

    def load_all(self) -> tuple[list[str], np.ndarray]:
        """All ids and vectors (float32) concatenated in corpus order; for small corpora and tests."""
        ids: list[str] = []
        parts = []
        for shard_ids, vectors in self:
            ids.extend(shard_ids)
            parts.append(np.asarray(vectors, dtype=np.float32))
        return ids, np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)


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
                      num_shards: int, shard_ids: Sequence[int] | None = None, dtype: str = "float16",
                      chunk_size: int = 8192, model: str | None = None, preset: str | None = None,
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
    manifest = read_manifest(out_dir)
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
