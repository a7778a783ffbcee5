"""Find a dataset on disk, or download a public BEIR dataset once and cache it.

:func:`resolve_dataset` takes what a user passes as ``--dataset``: an existing directory is
used as is; a BEIR dataset name (``scifact``, ``nfcorpus``, ``cqadupstack/android``, ...) is
looked up in ``$NESTRANK_DATA`` and the cache dir (``${XDG_CACHE_HOME:-~/.cache}/nestrank/datasets``)
and downloaded when missing, into ``$NESTRANK_DATA`` when set, else into the cache dir.

A download goes to a temporary file, is verified as a zip, extracted into a temporary
directory and renamed into place only when complete: a failed or interrupted download never
leaves a half-made dataset directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from nestrank.errors import ConfigError, NestrankError

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"
BEIR_DATASETS = (
    "arguana", "climate-fever", "cqadupstack", "dbpedia-entity", "fever", "fiqa", "hotpotqa", "msmarco",
    "nfcorpus", "nq", "quora", "scidocs", "scifact", "trec-covid", "webis-touche2020",
)
_CHUNK = 1 << 20


class DownloadError(NestrankError):
    """A dataset could not be downloaded (server unreachable, HTTP error, corrupt zip)."""


def cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/nestrank/datasets``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "nestrank" / "datasets"


def data_roots() -> list[Path]:
    """Where named datasets are looked for, in order: ``$NESTRANK_DATA`` (if set), the cache dir."""
    roots = [Path(os.environ["NESTRANK_DATA"]).expanduser()] if os.environ.get("NESTRANK_DATA") else []
    return [*roots, cache_dir()]


def resolve_dataset(name_or_dir: str | Path, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """The directory of a dataset given as a directory or a BEIR dataset name.

    A missing named dataset is downloaded from ``$NESTRANK_BEIR_URL`` (default: the public
    BEIR server) into the first of :func:`data_roots`. Raises :class:`ConfigError` for an
    unknown name and :class:`DownloadError` when the download fails.
    """
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ConfigError(f"{path} is a file, not a dataset directory (fix: pass --dataset DIR with corpus.jsonl, "
                          "queries.jsonl and qrels/, or give the files with --corpus/--queries/--qrels)")
    name = str(name_or_dir)
    base, _, sub = name.partition("/")
    if base not in BEIR_DATASETS or (sub and base != "cqadupstack"):
        if path.suffix or os.sep in name or name.startswith((".", "~")):
            raise ConfigError(f"dataset directory {name!r} not found (fix: pass --dataset DIR with an existing "
                              "BEIR directory: corpus.jsonl, queries.jsonl, qrels/)")
        raise ConfigError(f"{name!r} is neither a directory nor a known BEIR dataset name "
                          f"({', '.join(BEIR_DATASETS)}) (fix: pass --dataset DIR with a BEIR directory)")
    roots = data_roots()
    target = next((root / base for root in roots if (root / base).is_dir()), None)
    if target is None:
        target = download_beir(base, roots[0], progress=progress, timeout=timeout)
    if sub:
        target = target / sub
        if not target.is_dir():
            raise ConfigError(f"{name!r}: no sub-dataset {sub!r} in {target.parent} (fix: pick one of "
                              f"{', '.join(sorted(p.name for p in target.parent.iterdir() if p.is_dir()))})")
    return target


def download_beir(name: str, root: str | Path, *, base_url: str | None = None, progress: bool = True,
                  timeout: float = 60.0) -> Path:
    """Download ``<base_url>/<name>.zip`` and install it as ``root/name``; returns that directory.

    ``base_url`` defaults to ``$NESTRANK_BEIR_URL``, else the public BEIR server. Everything
    happens in a hidden temporary directory under ``root`` that is removed on any failure.
    """
    base_url = (base_url or os.environ.get("NESTRANK_BEIR_URL") or BEIR_URL).rstrip("/")
    url = f"{base_url}/{name}.zip"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}.download.") as tmp:
        archive = Path(tmp) / f"{name}.zip"
        _fetch(url, archive, progress=progress, timeout=timeout)
        extracted = Path(tmp) / "extracted"
        _extract(archive, extracted, url)
        source = _dataset_root(extracted, name, url)
        try:
            os.rename(source, target)
        except OSError:
            if not target.is_dir():  # not a concurrent download finishing first
                raise
    return target


def _fetch(url: str, dest: Path, *, progress: bool, timeout: float) -> None:
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    fix = "check the dataset name and $NESTRANK_BEIR_URL, or download the dataset yourself and pass --dataset DIR"
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"downloading {url} failed: HTTP {exc.code} {exc.reason} (fix: {fix})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot reach {url}: {reason} (fix: {fix})") from None
    with response:
        total = int(response.headers.get("Content-Length") or 0) or None
        received = 0
        with dest.open("wb") as out, Progress(*Progress.get_default_columns()[:-1], DownloadColumn(),
                                              TransferSpeedColumn(), disable=not progress, transient=True) as bar:
            task = bar.add_task(f"downloading {dest.name}", total=total)
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(task, advance=len(chunk))
            except OSError as exc:
                raise DownloadError(f"download of {url} broke off after {received} bytes: {exc} (fix: {fix})") from None
    if total is not None and received != total:
        raise DownloadError(f"download of {url} is truncated: {received} of {total} bytes (fix: try again)")


def _extract(archive: Path, dest: Path, url: str) -> None:
    """Verify the zip (readable, CRCs, safe member names) and extract it into ``dest``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise DownloadError(f"{url}: member {bad!r} of the zip is corrupt (fix: download it again)")
            for member in zf.namelist():
                parts = PurePosixPath(member).parts
                if member.startswith("/") or ".." in parts:
                    raise DownloadError(f"{url}: unsafe path {member!r} in the zip (fix: use a trusted BEIR zip)")
            zf.extractall(dest)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise DownloadError(f"{url} is not a valid zip file ({exc}) (fix: check $NESTRANK_BEIR_URL, or download "
                            "the dataset yourself and pass --dataset DIR)") from None


def _dataset_root(extracted: Path, name: str, url: str) -> Path:
    """The extracted directory holding the dataset (BEIR zips hold one ``<name>/`` folder)."""
    candidates = [extracted / name, extracted]
    entries = [p for p in extracted.iterdir() if p.is_dir() and not p.name.startswith(("__", "."))]
    if len(entries) == 1:
        candidates.insert(1, entries[0])
    for candidate in candidates:
        if candidate.is_dir() and ((candidate / "corpus.jsonl").is_file() or any(candidate.glob("*/corpus.jsonl"))):
            if candidate == extracted:  # files at the top of the zip: move them into their own folder
                moved = extracted.parent / name
                shutil.move(str(extracted), moved)
                return moved
            return candidate
    raise DownloadError(f"{url}: the zip holds no BEIR dataset (no corpus.jsonl) "
                        "(fix: pass --dataset DIR with corpus.jsonl, queries.jsonl and qrels/)")
