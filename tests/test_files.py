"""Atomic writes: complete or untouched, with ordinary permissions."""

import os
import stat

import pytest

from nestrank.files import atomic_write


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as handle:
        handle.write("half")
        raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]
    with atomic_write(path) as handle:
        handle.write("new")
    assert path.read_text() == "new"


def test_atomic_write_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "run.trec") as handle:
            handle.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run.trec").stat().st_mode) == 0o644
