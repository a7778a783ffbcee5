"""Atomic file and directory writing: a crash never leaves a half-written file behind.

A write goes to a temporary sibling of its target (``.NAME.XXXXXXXX.tmp``, a file or a
directory) that is renamed over the target only once complete. The writer holds an
exclusive ``flock`` on the temporary while it exists, so a sibling that nobody holds is
the leftover of a killed writer: the next write of the same target removes it
(:func:`remove_stale_temps`), and :func:`check_output` does so when a command starts.
:func:`check_output` also checks, before any work, that the target can be written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

#: The random part of ``tempfile``'s names: 8 characters of this alphabet.
_RANDOM = "[a-z0-9_]{8}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_name(name: str) -> re.Pattern[str]:
    """The names of the temporaries nestrank writes next to a target called ``name`` (and nothing else)."""
    return re.compile(rf"\.{re.escape(name)}\.{_RANDOM}\.(tmp|old)")


def _lock(fd: int) -> bool:
    """Take ``fd``'s exclusive lock without waiting; ``False`` when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def _locked_temp(target: Path, suffix: str = ".tmp", directory: bool = False) -> tuple[Path, int]:
    """A new temporary file (or directory) next to ``target`` and an open descriptor holding its lock.

    A cleaner may remove the temporary between its creation and the lock: then the name no
    longer leads to the locked inode, and another one is made.
    """
    while True:
        if directory:
            path = tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        else:
            fd, path = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
        if _lock(fd):
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return Path(path), fd
        os.close(fd)


def remove_stale_temps(target: str | Path) -> list[Path]:
    """Remove the temporaries that killed writers of ``target`` left next to it; returns them.

    Only names nestrank gives its own temporaries of ``target`` (``.NAME.XXXXXXXX.tmp`` and
    ``.NAME.XXXXXXXX.old``) are considered, and only those no live writer holds locked.
    """
    target = Path(target)
    pattern = _temp_name(target.name)
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(target.parent) if pattern.fullmatch(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        is_dir = entry.is_dir(follow_symlinks=False)
        try:
            fd = os.open(entry.path, os.O_RDONLY | (os.O_DIRECTORY if is_dir else 0) | os.O_NOFOLLOW)
        except OSError:
            continue  # gone meanwhile, or not ours to open
        try:
            if _lock(fd):  # no live writer holds it
                if is_dir:
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                removed.append(Path(entry.path))
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to ``path``; rename it over ``path`` only on success.

    On any exception the temporary file is removed and ``path`` keeps its old content.
    Temporaries of ``path`` left by killed writers are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp, fd = _locked_temp(path)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
    if "b" in mode:
        encoding = None
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(tmp, path)  # before the descriptor (and its lock) is released
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _check_replaceable(out: Path, marker: str, what: str) -> None:
    """Refuse an existing ``out`` that is neither empty nor ``what`` (a directory holding ``marker``)."""
    from nestrank.errors import ConfigError

    if out.exists() and not (out.is_dir() and ((out / marker).is_file() or not any(out.iterdir()))):
        raise ConfigError(f"{out} exists and is not {what}; refusing to overwrite it (choose another output "
                          "path or remove it)")


@contextlib.contextmanager
def atomic_dir(out: str | Path, marker: str, what: str) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``out``; move it to ``out`` on success.

    An existing ``out`` is replaced only if it is empty or holds ``marker`` (the file that
    makes it ``what``, e.g. an index's manifest); any other existing path is refused, so a
    typo cannot wipe a user's folder. On error the temporary directory is removed and
    ``out`` is left as it was. Temporaries of ``out`` left by killed writers are removed first.
    """
    out = Path(out)
    _check_replaceable(out, marker, what)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    staging, fd = _locked_temp(out, directory=True)
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it owner-only; give it a normal folder's mode
    try:
        yield staging
        if out.exists():
            old, old_fd = _locked_temp(out, ".old", directory=True)
            try:
                out.rename(old / out.name)
                staging.rename(out)
                shutil.rmtree(old, ignore_errors=True)
            finally:
                os.close(old_fd)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def check_output(path: str | Path, *, directory: bool = False, marker: str | None = None, what: str | None = None,
                 option: str = "--out") -> Path:
    """Check, before any work, that ``path`` can be written; returns it. Creates nothing.

    ``directory=False``: ``path`` is a file (an existing directory there is refused).
    ``directory=True``: ``path`` is a directory; with ``marker``, one that is replaced as a
    whole (:func:`atomic_dir`: it must be new, empty or hold ``marker``, i.e. be ``what``),
    else one written in place (it must be writable). Either way the nearest existing parent
    must be a writable directory. Temporaries of ``path`` left by killed writers are removed.

    Raises:
        ConfigError: naming ``option``, the path and the fix.
    """
    from nestrank.errors import ConfigError

    path = Path(path).expanduser()
    if path.exists() or path.is_symlink():
        if not directory and path.is_dir():
            raise ConfigError(f"{option} {path} is a directory, but a file is written there (fix: give a file "
                              f"path, e.g. {path / 'out.run'})")
        if directory and not path.is_dir():
            raise ConfigError(f"{option} {path} is a file, but a directory is written there (fix: give a new or "
                              "existing directory path)")
        if directory and marker is not None:
            _check_replaceable(path, marker, what or "an output directory")
        elif directory and not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{option} {path}: cannot write in this directory (permission denied or read-only; "
                              "fix: choose a writable location)")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is a file, not a directory (fix: choose a path under a "
                          "directory)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot write in {parent} (permission denied or read-only; fix: "
                          "choose a writable location)")
    remove_stale_temps(path)
    return path
