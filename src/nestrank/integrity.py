"""Artifacts that verify themselves: file checksums and the fingerprint of what an artifact was built from.

Every directory nestrank writes as an artifact (BM25, dense and hybrid indexes; Matryoshka,
pointwise, retriever and training checkpoints) ends with ``checksums.json``::

    {"kind": "nestrank-checksums", "format": 1,
     "built_from": {"corpus_ids_sha256": "...", "num_docs": 5183, ...},
     "files": {"manifest.json": {"size": 239, "sha256": "..."},
               "shard-00000.faiss": {"size": 805306368, "sha256": "...", "sample_sha256": "..."}}}

:func:`write_checksums` writes it (one call, e.g. after copying a model directory);
:func:`verify_checksums` checks it when the artifact is loaded. ``verify="fast"`` (the
default) compares every file's size and, for files up to :data:`FULL_HASH_LIMIT` (64 MiB),
its whole SHA-256; a larger file is checked by the hash of :data:`SAMPLE_BLOCKS` blocks spread
over it (so damage between the blocks of a very large file needs ``"full"``, which hashes
every byte). ``"none"`` skips the check. An artifact without ``checksums.json`` (written by
an older nestrank) still loads, with a one-line warning. Embeddings directories keep the same
records per shard in their manifest (:mod:`nestrank.retrieve.embeddings`).

Damaged files of third-party formats (safetensors, FAISS, numpy, torch) raise their own
errors; :func:`reading` turns those into an :class:`~nestrank.errors.ArtifactError` naming
the file and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import tokenize  # numpy parses .npy headers with it
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from nestrank.errors import ArtifactError, ConfigError, NestrankError
from nestrank.files import atomic_write

CHECKSUMS_FILE = "checksums.json"
CHECKSUMS_KIND = "nestrank-checksums"
CHECKSUMS_FORMAT = 1
#: Files up to this size are hashed whole by the default ("fast") check.
FULL_HASH_LIMIT = 64 << 20
#: Larger files: the hash of this many blocks of SAMPLE_BLOCK_SIZE bytes, evenly spread (first and last included).
SAMPLE_BLOCKS = 64
SAMPLE_BLOCK_SIZE = 64 << 10
Verify = Literal["fast", "full", "none"]
VERIFY_MODES: tuple[str, ...] = ("fast", "full", "none")
#: What the weights of a model directory are stored in (for :func:`model_fingerprint`).
MODEL_FILES = (".safetensors", ".gguf", ".bin", ".pt")
MODEL_CONFIGS = ("config.json", "adapter_config.json")

log = logging.getLogger("nestrank")
_warned: set[str] = set()


# -- hashing ---------------------------------------------------------------------------------
def ids_fingerprint(ids: Sequence[str]) -> str:
    """SHA-256 of document ids in order: identifies the corpus an index or embeddings were built from."""
    digest = hashlib.sha256()
    for doc_id in ids:
        digest.update(doc_id.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def sample_sha256(path: str | Path) -> str:
    """SHA-256 of a file's size and :data:`SAMPLE_BLOCKS` blocks spread evenly over it (the whole file when small)."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    with path.open("rb") as handle:
        if size <= SAMPLE_BLOCKS * SAMPLE_BLOCK_SIZE:
            digest.update(handle.read())
            return digest.hexdigest()
        for i in range(SAMPLE_BLOCKS):
            handle.seek(i * (size - SAMPLE_BLOCK_SIZE) // (SAMPLE_BLOCKS - 1))
            digest.update(handle.read(SAMPLE_BLOCK_SIZE))
    return digest.hexdigest()


def file_record(path: str | Path) -> dict[str, Any]:
    """``{"size", "sha256"}`` of a file, plus ``"sample_sha256"`` when it is larger than :data:`FULL_HASH_LIMIT`."""
    size = Path(path).stat().st_size
    record: dict[str, Any] = {"size": size, "sha256": file_sha256(path)}
    if size > FULL_HASH_LIMIT:
        record["sample_sha256"] = sample_sha256(path)
    return record


def check_verify(verify: object) -> str:
    """``verify`` when it is one of :data:`VERIFY_MODES`; else :class:`ConfigError`."""
    if verify not in VERIFY_MODES:
        raise ConfigError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    return verify  # type: ignore[return-value]


def check_file(path: str | Path, record: Mapping[str, Any], verify: str = "fast", *, what: str, fix: str) -> None:
    """Raise :class:`ArtifactError` naming ``path`` unless it matches ``record`` (see :func:`file_record`).

    ``"fast"`` hashes the whole file up to :data:`FULL_HASH_LIMIT` bytes and samples larger ones
    (whole when no sample hash is recorded); ``"full"`` always hashes the whole file.
    """
    path = Path(path)
    if check_verify(verify) == "none":
        return
    if not path.is_file():
        raise ArtifactError(path, None, f"missing from the {what} (its checksums list it)", fix)
    size = path.stat().st_size
    if "size" in record and size != record["size"]:
        raise ArtifactError(path, None, f"is {size} bytes, its checksum record says {record['size']}: the {what} "
                            "is truncated or was changed since it was written", fix)
    sampled = verify == "fast" and size > FULL_HASH_LIMIT and "sample_sha256" in record
    key = "sample_sha256" if sampled else "sha256"
    if key in record and (sample_sha256(path) if sampled else file_sha256(path)) != record[key]:
        raise ArtifactError(path, None, f"content differs from its checksum: the {what} is damaged or was changed "
                            "since it was written", fix)


# -- checksums.json --------------------------------------------------------------------------
def _artifact_files(directory: Path) -> Iterator[Path]:
    """Every regular file under ``directory``, sorted, leaving out ``checksums.json`` and hidden files (locks, temps)."""
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if not name.startswith(".") and path != directory / CHECKSUMS_FILE and path.is_file():
                yield path


def write_checksums(directory: str | Path, built_from: Mapping[str, Any] | None = None) -> Path:
    """Record the size and SHA-256 of every file under ``directory`` in ``directory/checksums.json``; returns its path.

    ``built_from`` (the corpus fingerprint, model, settings...) is stored with them, merged
    over what an existing ``checksums.json`` records, so calling this again after adding files
    (a trainer adding ``lora/``, a packaging script copying a checkpoint) keeps the
    fingerprint. Written atomically.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory: nothing to record checksums of")
    previous = _read_record(directory) if (directory / CHECKSUMS_FILE).is_file() else None
    merged = {**((previous or {}).get("built_from") or {}), **(built_from or {})}
    files = {path.relative_to(directory).as_posix(): file_record(path) for path in _artifact_files(directory)}
    record = {"kind": CHECKSUMS_KIND, "format": CHECKSUMS_FORMAT, "built_from": merged, "files": files}
    with atomic_write(directory / CHECKSUMS_FILE) as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
        handle.write("\n")
    return directory / CHECKSUMS_FILE


def _read_record(directory: Path, fix: str = "write it again with nestrank.integrity.write_checksums") -> dict:
    path = directory / CHECKSUMS_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(path, None, f"unreadable checksum record ({type(exc).__name__}: {exc})", fix) from None
    files = record.get("files") if isinstance(record, dict) else None
    built_from = record.get("built_from", {}) if isinstance(record, dict) else None
    if (not isinstance(files, dict) or not isinstance(built_from, dict) or record.get("kind") != CHECKSUMS_KIND
            or not all(isinstance(r, dict) for r in files.values())):
        raise ArtifactError(path, None, "not a nestrank checksum record", fix)
    if not isinstance(record.get("format"), int) or record["format"] > CHECKSUMS_FORMAT:
        raise ArtifactError(path, None, f"checksum format {record.get('format')!r} is newer than this nestrank reads",
                            f"upgrade nestrank, or {fix}")
    return {**record, "built_from": built_from}


def read_checksums(directory: str | Path) -> dict[str, Any] | None:
    """The parsed ``checksums.json`` of ``directory``, or ``None`` when it has none."""
    directory = Path(directory)
    return _read_record(directory) if (directory / CHECKSUMS_FILE).is_file() else None


def verify_checksums(directory: str | Path, verify: str = "fast", *, what: str, fix: str,
                     legacy_warning: bool = True) -> dict[str, Any] | None:
    """Check every file ``directory/checksums.json`` lists; returns its ``built_from`` (``None`` without a record).

    ``verify="none"`` checks no file but still returns the recorded ``built_from``.

    Raises :class:`ArtifactError` naming the first file that is missing, of another size or
    of other content (``what`` names the artifact in the message, ``fix`` says what to do).
    A directory without ``checksums.json`` is an artifact of an older nestrank: it is not
    verified, and (``legacy_warning``) a one-line warning says so, once per directory.
    """
    directory = Path(directory)
    check_verify(verify)
    record = _read_record(directory, fix) if (directory / CHECKSUMS_FILE).exists() else None
    if verify == "none":
        return None if record is None else dict(record["built_from"])
    if record is None:
        resolved = directory.resolve()
        if legacy_warning and not any(Path(key) in resolved.parents for key in _warned):  # one per artifact
            warn_once(str(resolved), f"warning: {directory} has no {CHECKSUMS_FILE} (a {what} written by "
                      f"an older nestrank): its files are not verified (fix: {fix}, or record them with "
                      "nestrank.integrity.write_checksums)")
        return None
    for name, file in record["files"].items():
        target = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(directory / CHECKSUMS_FILE, None, f"lists a file outside the {what}: {name!r}", fix)
        check_file(target, file, verify, what=what, fix=fix)
    return dict(record["built_from"])


def warn_once(key: str, message: str) -> None:
    """Log ``message`` as a warning on the ``nestrank`` logger, once per ``key`` in this process (one line on stderr)."""
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def check_built_from(built_from: Mapping[str, Any] | None, key: str, actual: object, *, where: str | Path,
                     problem: str, fix: str) -> None:
    """Raise :class:`ArtifactError` when ``built_from`` records ``key`` with a value other than ``actual``.

    Nothing is checked when either side is unknown (``None``: an older artifact, a hub model).
    """
    recorded = None if built_from is None else built_from.get(key)
    if recorded is not None and actual is not None and recorded != actual:
        raise ArtifactError(where, None, problem, fix)


# -- reading third-party formats ---------------------------------------------------------------
def format_errors() -> tuple[type[BaseException], ...]:
    """The exception types a damaged file of a third-party format raises (numpy, FAISS, safetensors, torch, JSON)."""
    errors: list[type[BaseException]] = [OSError, ValueError, EOFError, RuntimeError, KeyError, IndexError,
                                         OverflowError, pickle.UnpicklingError, SyntaxError, tokenize.TokenError]
    with contextlib.suppress(ImportError):
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    return tuple(errors)


@contextlib.contextmanager
def reading(path: str | Path, what: str, fix: str, also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Turn the errors a damaged file raises inside the block (safetensors, FAISS ``RuntimeError``, numpy, torch,
    JSON...; and ``also``) into an :class:`ArtifactError` naming ``path``; nestrank's own errors pass through."""
    try:
        yield
    except NestrankError:
        raise
    except Exception as exc:
        if not isinstance(exc, format_errors() + also):
            raise
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ArtifactError(path, None, f"cannot read the {what} ({type(exc).__name__}{': ' + detail if detail else ''})",
                            fix) from exc


# -- models ------------------------------------------------------------------------------------
def model_fingerprint(path: str | Path | None) -> str | None:
    """A content fingerprint of a model file or directory on this machine (its weight and config files: names and
    sampled hashes); ``None`` when ``path`` is ``None``, does not exist (a hub id) or holds no such file.

    Cheap: at most :data:`SAMPLE_BLOCKS` blocks are read per file.
    """
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix in MODEL_FILES or p.name in MODEL_CONFIGS))
    else:
        return None
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{sample_sha256(file)}\n".encode())
    return digest.hexdigest()
