"""Embeddings directories: sharded, resumable, crash-safe embedding files, and reading them back.

The corpus (in its id order) is cut into ``num_shards`` contiguous ranges. Each shard is
written as ``shard-XXXXX.npy`` (float16 or float32 rows, in the shard's id order) and
``shard-XXXXX.ids.txt`` (the document id of each row, one per line), both to temporary files
renamed into place (by :func:`nestrank.retrieve.encode.encode_shard`). With ``doc_mode =
"truncate"`` a row is a document cut at the encoder's passage length; with ``"maxp"`` a row is
one of a document's overlapping segments (``stride`` tokens apart), so a document has as many
rows as segments, all carrying its id. The shard is then recorded in ``manifest.json`` (model,
preset, dim, dtype, doc_mode, stride, passage_tokens, shard counts and SHA-256 checksums),
rewritten atomically under a file lock, so separate processes (``--shard-id i
--num-shards n`` on machines sharing a file system) can fill one directory. A shard counts
as done only when the manifest lists it and its files match the recorded count and
checksum: re-running skips done shards and redoes the rest, and a killed run never leaves
a shard that looks done but is not.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nestrank.data.corpus import Corpus
from nestrank.errors import ArtifactError, ConfigError, DataFormatError
from nestrank.files import atomic_write
from nestrank.integrity import (
    FULL_HASH_LIMIT,
    check_file,
    check_verify,
    file_sha256,
    ids_fingerprint,
    model_fingerprint,
    reading,
    sample_sha256,
)
from nestrank.retrieve.config import DOC_MODES
from nestrank.retrieve.manifest import EMBEDDINGS_FORMAT, EMBEDDINGS_KIND, MANIFEST, has_manifest, read_manifest

__all__ = ["DTYPES", "IDENTITY_FIELDS", "Embeddings", "ShardSpec", "check_dtype", "commit_shards", "current_manifest",
           "file_sha256", "ids_fingerprint", "pending_shards", "run_header", "shard_checksums", "shard_is_done",
           "shard_ranges"]

DTYPES = ("float16", "float32")
#: Manifest fields that must agree between runs writing into one output directory.
IDENTITY_FIELDS = ("model", "preset", "dtype", "num_docs", "num_shards", "ids_sha256")
#: How documents became rows, and the value a manifest written before these fields existed had.
DOC_FIELDS: dict[str, Any] = {"doc_mode": "truncate", "passage_tokens": None, "stride": None}


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


def shard_checksums(out_dir: str | Path, name: str) -> dict[str, Any]:
    """The checksum fields of a shard's manifest entry: sizes and SHA-256 of ``NAME.npy`` and ``NAME.ids.txt``
    (plus a sampled hash of a vectors file over 64 MiB, for the fast check; see :mod:`nestrank.integrity`)."""
    vectors, ids = Path(out_dir) / f"{name}.npy", Path(out_dir) / f"{name}.ids.txt"
    record = {"sha256": file_sha256(vectors), "size": vectors.stat().st_size,
              "ids_sha256": file_sha256(ids), "ids_size": ids.stat().st_size}
    if record["size"] > FULL_HASH_LIMIT:
        record["sample_sha256"] = sample_sha256(vectors)
    return record


# -- the manifest ---------------------------------------------------------------------------
def current_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    """The embeddings manifest of ``out_dir`` (see :func:`~nestrank.retrieve.manifest.read_manifest`),
    or ``None`` when nothing has been encoded there yet."""
    return read_manifest(out_dir, "embeddings") if has_manifest(out_dir) else None


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


def identity_mismatch(recorded: dict[str, Any], header: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first identity field on which a run's ``header`` contradicts ``recorded`` (a manifest or a
    shard's header): ``(field, recorded value, header value)``, or ``None`` when they agree.

    A field the header leaves ``None`` is not known yet and agrees with anything. The document
    fields (:data:`DOC_FIELDS`) are compared even when ``recorded`` lacks them (an older manifest:
    whole documents, passage length not recorded), so shards of one segmentation are never
    reused for another.
    """
    for field in IDENTITY_FIELDS + ("dim", "normalized", "model_fingerprint"):
        if header.get(field) is not None and field in recorded and recorded[field] != header[field]:
            return field, recorded[field], header[field]
    for field, default in DOC_FIELDS.items():
        had, has = recorded.get(field, default), header.get(field, default)
        if (has is not None or field != "passage_tokens") and had != has:
            return field, had, has
    return None


def _check_identity(out_dir: Path, manifest: dict[str, Any], header: dict[str, Any]) -> None:
    mismatch = identity_mismatch(manifest, header)
    if mismatch is not None:
        field, had, has = mismatch
        note = " (not recorded: encoded before nestrank recorded it)" if had is None and field not in manifest else ""
        raise ConfigError(
            f"{out_dir / MANIFEST}: holds embeddings with {field}={had!r}{note}, this run has {field}={has!r}; "
            "write to a new --out directory or delete the old one")


def commit_shards(out_dir: str | Path, header: dict[str, Any], entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Record finished shards in the manifest (atomically, under a lock); returns the new manifest.

    ``header`` holds the run's identity (model, preset, dtype, dim, normalized, doc_mode, stride,
    passage_tokens, num_docs, num_shards, ids_sha256); an existing manifest with another identity
    is a :class:`ConfigError`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir):
        manifest = current_manifest(out_dir)
        if manifest is None:
            manifest = {"kind": EMBEDDINGS_KIND, "format": EMBEDDINGS_FORMAT, **header, "shards": {}}
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


def check_dtype(dtype: str) -> np.dtype:
    """``dtype`` (one of :data:`DTYPES`) as a numpy dtype; :class:`ConfigError` otherwise."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return np.dtype(dtype)


def doc_fields(doc_mode: str = "truncate", stride: int | None = None, passage_tokens: int | None = None
               ) -> dict[str, Any]:
    """How documents become rows, checked: ``{"doc_mode", "stride", "passage_tokens"}``.

    ``doc_mode`` is ``truncate`` (one row per document, cut at the encoder's passage length) or
    ``maxp`` (one row per overlapping segment of ``passage_tokens`` tokens, ``stride`` tokens
    apart; default stride: half a passage). ``passage_tokens`` is the encoder's passage length
    (``None``: not known before the encoder is loaded).
    """
    if doc_mode not in DOC_MODES:
        raise ConfigError(f"doc_mode must be one of {', '.join(DOC_MODES)}, got {doc_mode!r}")
    for name, value in (("stride", stride), ("passage_tokens", passage_tokens)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if doc_mode == "truncate" and stride is not None:
        raise ConfigError(f"stride={stride} applies to doc_mode='maxp' only (truncate encodes one passage per "
                          "document); drop it or use doc_mode='maxp'")
    if doc_mode == "maxp" and stride is None:
        if passage_tokens is None:
            raise ConfigError("doc_mode='maxp' needs a stride when the encoder's passage length is not known")
        stride = max(1, passage_tokens // 2)
    return {"doc_mode": doc_mode, "stride": stride, "passage_tokens": passage_tokens}


def run_header(corpus: Corpus, *, num_shards: int, dtype: str, model: str | None, preset: str | None,
               dim: int | None = None, normalized: bool | None = None, doc_mode: str = "truncate",
               stride: int | None = None, passage_tokens: int | None = None) -> dict[str, Any]:
    """The identity fields of an encoding run, as stored in the manifest (see :func:`doc_fields`)."""
    from nestrank.models.presets import local_path

    check_dtype(dtype)
    try:
        fingerprint = None if model is None else model_fingerprint(local_path(model))
    except ConfigError:  # an unknown preset: loading the encoder will say so
        fingerprint = None
    return {"model": model, "preset": preset, "dim": dim, "dtype": dtype, "normalized": normalized,
            **doc_fields(doc_mode, stride, passage_tokens),
            "num_docs": len(corpus), "num_shards": num_shards, "ids_sha256": ids_fingerprint(corpus.ids),
            "model_fingerprint": fingerprint}


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
    if identity_mismatch(shard_header, header) is not None or not shard_is_done(out_dir, {"shards": {spec.name: entry}}, spec):
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
    manifest = current_manifest(out_dir)
    if manifest is not None:
        _check_identity(out_dir, manifest, header)
    return [spec for spec in specs
            if not shard_is_done(out_dir, manifest, spec, verify) and not _adopt(out_dir, header, spec)]


# -- reading ------------------------------------------------------------------------------
_ENTRY_KEYS = {"file", "ids", "count", "sha256", "ids_sha256"}


def _shard_specs(out_dir: Path, manifest: dict[str, Any]) -> list[ShardSpec]:
    """The shard ranges of a manifest, after checking its structure (:class:`ArtifactError` naming it when malformed)."""
    shards, counts = manifest.get("shards"), (manifest.get("num_docs"), manifest.get("num_shards"), manifest.get("dim"))
    problem = None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts) or counts[1] < 1:
        problem = "num_docs, num_shards and dim must be non-negative integers (num_shards at least 1)"
    elif not isinstance(shards, dict) or not all(isinstance(e, dict) and e.keys() >= _ENTRY_KEYS for e in shards.values()):
        problem = f"every shard entry must be an object with {', '.join(sorted(_ENTRY_KEYS))}"
    if problem is not None:
        raise ArtifactError(out_dir / MANIFEST, None, f"malformed embeddings manifest: {problem}",
                            "delete the directory and encode again")
    return shard_ranges(counts[0], counts[1])


class Embeddings:
    """A complete set of encoded shards, read shard by shard (memory-mapped).

    Rows are documents (``doc_mode`` ``truncate``) or documents' segments (``maxp``): the ids
    of a shard name each row's document, so a document may appear on several rows.
    Opening checks every shard's files against the checksums its manifest records
    (``verify``: ``fast``, the default, hashes files up to 64 MiB whole and samples larger
    ones; ``full`` hashes everything; ``none`` skips it; see :mod:`nestrank.integrity`).
    """

    def __init__(self, out_dir: str | Path, *, verify: str = "fast") -> None:
        self.dir = Path(out_dir)
        self.manifest = manifest = read_manifest(self.dir, "embeddings")
        check_verify(verify)
        specs = _shard_specs(self.dir, manifest)
        shards = manifest["shards"]
        names = [s.name for s in specs if s.name in shards]
        missing = [s.shard_id for s in specs if s.name not in shards]
        if missing:
            listed = ", ".join(map(str, missing[:10]))
            raise DataFormatError(self.dir / MANIFEST, None,
                                  f"{len(missing)} of {manifest['num_shards']} shards not encoded yet (shard ids {listed})",
                                  f"run `nestrank encode --out {self.dir} --num-shards {manifest['num_shards']}` "
                                  "(with --shard-id for each missing one) to finish")
        for name in names:
            self._verify_shard(name, verify)

    def _verify_shard(self, name: str, verify: str) -> None:
        entry = self.manifest["shards"][name]
        fix = f"delete {name}'s files and re-run `nestrank encode --out {self.dir}`"
        vectors = {key: entry[key] for key in ("size", "sha256", "sample_sha256") if key in entry}
        ids = {key.removeprefix("ids_"): entry[key] for key in ("ids_size", "ids_sha256") if key in entry}
        check_file(self.dir / entry["file"], vectors, verify, what="embeddings", fix=fix)
        check_file(self.dir / entry["ids"], ids, verify, what="embeddings", fix=fix)

    def check_corpus(self, corpus: Corpus) -> None:
        """Raise :class:`~nestrank.errors.ArtifactError` unless these embeddings were encoded from ``corpus``."""
        if self.manifest.get("ids_sha256") != ids_fingerprint(corpus.ids):
            raise ArtifactError(self.dir / MANIFEST, None, f"these embeddings were not encoded from the corpus given "
                                f"({self.num_docs} vs {len(corpus)} documents, or other ids)",
                                "encode this corpus first (`nestrank encode`), or give the corpus they were encoded from")

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.manifest["dim"])

    @property
    def num_docs(self) -> int:
        """Total number of documents."""
        return int(self.manifest["num_docs"])

    @property
    def num_vectors(self) -> int:
        """Total number of rows (one per document, or one per segment with ``doc_mode = "maxp"``)."""
        return sum(self.rows(name) for name in self.shard_names)

    @property
    def segmentation(self) -> dict[str, Any]:
        """``{"doc_mode", "stride", "passage_tokens"}``: how documents became rows (see :func:`doc_fields`)."""
        return {field: self.manifest.get(field, default) for field, default in DOC_FIELDS.items()}

    def rows(self, name: str) -> int:
        """Number of rows of shard ``name``."""
        entry = self.manifest["shards"][name]
        return int(entry.get("rows", entry["count"]))

    @property
    def shard_names(self) -> list[str]:
        """Shard names in shard-id order."""
        return [s.name for s in shard_ranges(self.num_docs, int(self.manifest["num_shards"]))]

    def shard(self, name: str) -> tuple[list[str], np.ndarray]:
        """``(row_ids, vectors)`` of one shard (the document id of each row); vectors are a read-only memory map."""
        entry = self.manifest["shards"][name]
        rows = self.rows(name)
        vec_path, ids_path = self.dir / entry["file"], self.dir / entry["ids"]
        for path in (vec_path, ids_path):
            if not path.is_file():
                raise DataFormatError(path, None, "embedding shard file missing",
                                      f"re-run `nestrank encode --out {self.dir}` to rebuild it")
        with reading(vec_path, "embedding shard", f"delete the shard's files and re-run `nestrank encode --out {self.dir}`"):
            vectors = np.load(vec_path, mmap_mode="r", allow_pickle=False)
            ids = ids_path.read_text(encoding="utf-8").splitlines()
        if vectors.shape != (rows, self.dim) or len(ids) != rows:
            raise DataFormatError(vec_path, None, f"shard has {vectors.shape} vectors and {len(ids)} ids, the "
                                  f"manifest says ({rows}, {self.dim})",
                                  f"delete the shard's files and re-run `nestrank encode --out {self.dir}`")
        return ids, vectors

    def __iter__(self) -> Iterator[tuple[list[str], np.ndarray]]:
        for name in self.shard_names:
            yield self.shard(name)

    def load_all(self) -> tuple[list[str], np.ndarray]:
        """All row ids and vectors (float32) concatenated in corpus order; for small corpora and tests."""
        ids: list[str] = []
        parts = []
        for shard_ids, vectors in self:
            ids.extend(shard_ids)
            parts.append(np.asarray(vectors, dtype=np.float32))
        return ids, np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
