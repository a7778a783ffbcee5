"""Sharded, resumable corpus encoding (nestrank.retrieve.encode)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import HashEncoder, make_corpus, write_corpus_file

from nestrank.data import Corpus, Document
from nestrank.errors import ConfigError, DataFormatError
from nestrank.retrieve.embeddings import Embeddings, shard_ranges
from nestrank.retrieve.encode import encode_corpus
from nestrank.retrieve.manifest import read_manifest


def test_shard_ranges_are_contiguous_and_cover_everything():
    specs = shard_ranges(23, 4)
    assert [s.count for s in specs] == [5, 6, 6, 6]
    assert specs[0].start == 0 and specs[-1].end == 23
    assert all(a.end == b.start for a, b in zip(specs, specs[1:], strict=False))
    assert [s.name for s in specs][:2] == ["shard-00000", "shard-00001"]
    assert sum(s.count for s in shard_ranges(3, 5)) == 3  # more shards than documents: some empty
    with pytest.raises(ConfigError):
        shard_ranges(10, 0)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_encoded_shards_equal_direct_encoding(tmp_path, dtype):
    corpus, encoder = make_corpus(), HashEncoder()
    manifest = encode_corpus(corpus, encoder, tmp_path, num_shards=3, dtype=dtype, chunk_size=4, model="m", preset="p")
    assert manifest["complete"] and manifest["dim"] == 8 and manifest["dtype"] == dtype and manifest["normalized"]
    assert sorted(manifest["shards"]) == ["shard-00000", "shard-00001", "shard-00002"]
    ids, vectors = Embeddings(tmp_path).load_all()
    assert ids == corpus.ids
    expected = HashEncoder().encode_passages(list(corpus)).astype(dtype).astype(np.float32)
    np.testing.assert_array_equal(vectors, expected)
    assert np.load(tmp_path / "shard-00001.npy").dtype == np.dtype(dtype)


def test_separate_shard_runs_fill_one_directory(tmp_path):
    corpus = make_corpus()
    encode_corpus(corpus, HashEncoder(), tmp_path / "whole", num_shards=3)
    for shard_id in (2, 0):
        encode_corpus(corpus, HashEncoder(), tmp_path / "parts", shard_id=shard_id, num_shards=3)
    with pytest.raises(DataFormatError, match="shard ids 1"):
        Embeddings(tmp_path / "parts")
    assert not read_manifest(tmp_path / "parts")["complete"]
    encode_corpus(corpus, HashEncoder(), tmp_path / "parts", shard_id=1, num_shards=3)
    for name in ("shard-00000.npy", "shard-00001.npy", "shard-00002.npy", "shard-00001.ids.txt"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "parts" / name).read_bytes()


def test_rerun_skips_done_shards_and_redoes_a_corrupt_one(tmp_path):
    corpus = make_corpus()
    encode_corpus(corpus, HashEncoder(), tmp_path, num_shards=3)
    again = HashEncoder()
    encode_corpus(corpus, again, tmp_path, num_shards=3)
    assert again.calls == 0
    good = (tmp_path / "shard-00001.npy").read_bytes()
    corrupt = bytearray(good)
    corrupt[-1] ^= 0xFF
    (tmp_path / "shard-00001.npy").write_bytes(bytes(corrupt))
    redo = HashEncoder()
    encode_corpus(corpus, redo, tmp_path, num_shards=3)
    assert redo.docs_seen == shard_ranges(len(corpus), 3)[1].count
    assert (tmp_path / "shard-00001.npy").read_bytes() == good


def test_another_configuration_in_the_same_directory_is_refused(tmp_path):
    corpus = make_corpus()
    encode_corpus(corpus, HashEncoder(), tmp_path, num_shards=3, dtype="float16", model="a")
    with pytest.raises(ConfigError, match="dtype"):
        encode_corpus(corpus, HashEncoder(), tmp_path, num_shards=3, dtype="float32", model="a")
    with pytest.raises(ConfigError, match="num_shards"):
        encode_corpus(corpus, HashEncoder(), tmp_path, num_shards=2, model="a")
    with pytest.raises(ConfigError, match="model"):
        encode_corpus(corpus, HashEncoder(), tmp_path, num_shards=3, model="b")
    with pytest.raises(ConfigError, match="num_docs"):
        encode_corpus(make_corpus(24), HashEncoder(), tmp_path, num_shards=3, model="a")
    renamed = Corpus.from_documents(Document(f"x{d.id}", d.text, d.title) for d in corpus)
    with pytest.raises(ConfigError, match="ids_sha256"):
        encode_corpus(renamed, HashEncoder(), tmp_path, num_shards=3, model="a")


def test_bad_arguments_and_encoders(tmp_path):
    corpus = make_corpus()
    with pytest.raises(ConfigError, match="dtype"):
        encode_corpus(corpus, HashEncoder(), tmp_path / "a", dtype="int8")
    with pytest.raises(ConfigError, match="out of range"):
        encode_corpus(corpus, HashEncoder(), tmp_path / "b", shard_id=3, num_shards=3)

    class Wrong(HashEncoder):
        def encode_passages(self, docs):
            return super().encode_passages(docs)[:, :4]

    with pytest.raises(ConfigError, match="shape"):
        encode_corpus(corpus, Wrong(), tmp_path / "c")
    assert not list((tmp_path / "c").glob("*.npy")) and not list((tmp_path / "c").glob(".*.tmp"))

    class Huge(HashEncoder):
        def encode_passages(self, docs):
            return super().encode_passages(docs) * 1e6

    with pytest.raises(ConfigError, match="non-finite"):
        encode_corpus(corpus, Huge(), tmp_path / "d", dtype="float16")
    with pytest.raises(DataFormatError, match="no embeddings manifest"):
        Embeddings(tmp_path / "nothing")


KILLED_RUN = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from helpers import HashEncoder
from nestrank.data import Corpus
from nestrank.retrieve.encode import encode_corpus

class Stalls(HashEncoder):
    def encode_passages(self, docs):
        if self.calls == 4:  # the second chunk of the second shard
            Path({marker!r}).write_text("stalled")
            time.sleep(120)
        return super().encode_passages(docs)

encode_corpus(Corpus.open({corpus!r}), Stalls(), {out!r}, num_shards=4, chunk_size=2)
"""


def test_a_killed_run_leaves_no_corrupt_shard_and_resumes(tmp_path):
    corpus_path = write_corpus_file(tmp_path / "corpus.jsonl", 20)
    out, marker = tmp_path / "killed", tmp_path / "marker"
    script = KILLED_RUN.format(tests=str(Path(__file__).parent), marker=str(marker), corpus=str(corpus_path), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "the encoding subprocess exited early"
            assert time.monotonic() < deadline, "the encoding subprocess never reached the second shard"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    manifest = read_manifest(out)
    assert list(manifest["shards"]) == ["shard-00000"] and not manifest["complete"]
    assert not (out / "shard-00001.npy").exists()
    assert list(out.glob(".shard-00001.npy.*.tmp"))  # the half-written shard is only a temp file

    corpus = Corpus.open(corpus_path)
    resumed = HashEncoder()
    encode_corpus(corpus, resumed, out, num_shards=4, chunk_size=2)
    assert resumed.docs_seen == 15  # shards 1-3 only
    assert not list(out.glob(".*.tmp"))
    encode_corpus(corpus, HashEncoder(), tmp_path / "clean", num_shards=4, chunk_size=2)
    assert read_manifest(out)["shards"] == read_manifest(tmp_path / "clean")["shards"]
    np.testing.assert_array_equal(Embeddings(out).load_all()[1], Embeddings(tmp_path / "clean").load_all()[1])


def test_shards_copied_from_other_directories_are_verified_and_adopted(tmp_path):
    import shutil

    corpus = make_corpus()
    encode_corpus(corpus, HashEncoder(), tmp_path / "a", shard_id=0, num_shards=3, model="m")
    encode_corpus(corpus, HashEncoder(), tmp_path / "b", shard_id=2, num_shards=3, model="m")
    encode_corpus(corpus, HashEncoder(), tmp_path / "other", shard_id=1, num_shards=3, model="another")
    for source in (tmp_path / "b", tmp_path / "other"):
        for path in source.glob("shard-*"):
            shutil.copy(path, tmp_path / "a" / path.name)
    finish = HashEncoder()
    manifest = encode_corpus(corpus, finish, tmp_path / "a", num_shards=3, model="m")
    assert finish.docs_seen == shard_ranges(len(corpus), 3)[1].count  # shard 2 adopted, the other model's redone
    assert manifest["complete"] and manifest["model"] == "m"
    encode_corpus(corpus, HashEncoder(), tmp_path / "whole", num_shards=3, model="m")
    assert manifest["shards"] == read_manifest(tmp_path / "whole")["shards"]
