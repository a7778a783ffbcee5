"""Artifacts verify themselves: checksums, built-from fingerprints, damaged third-party files, old artifacts."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import HashEncoder, make_corpus, write_corpus_file

from nestrank import integrity
from nestrank.data import Corpus, Document
from nestrank.errors import ArtifactError, ConfigError
from nestrank.integrity import CHECKSUMS_FILE, read_checksums, verify_checksums, write_checksums
from nestrank.retrieve import BM25Index, DenseIndex, HybridIndex, build_vector_index, open_index
from nestrank.retrieve.embeddings import Embeddings, run_header
from nestrank.retrieve.encode import encode_corpus

QUERIES = {"a": "text number 3", "b": "title 7 text"}


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Change one byte in place (same size): the damage a bad disk or a careless edit leaves."""
    data = bytearray(path.read_bytes())
    position = len(data) // 2 if offset is None else offset
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return make_corpus(40)


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("emb") / "emb"
    encode_corpus(corpus, HashEncoder(8), out, num_shards=2, dtype="float32", model="hash-encoder", preset="test")
    return out


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(integrity, "_warned", set())


# -- the checksum record ---------------------------------------------------------------------------
def test_write_and_verify_checksums(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "sub" / "b.json").write_text("{}")
    (tmp_path / ".lock").write_text("")  # hidden files are not part of an artifact
    write_checksums(tmp_path, {"corpus_ids_sha256": "abc"})
    record = read_checksums(tmp_path)
    assert sorted(record["files"]) == ["a.bin", "sub/b.json"] and record["files"]["a.bin"]["size"] == 1000
    assert verify_checksums(tmp_path, what="test artifact", fix="redo it") == {"corpus_ids_sha256": "abc"}
    write_checksums(tmp_path, {"step": 3})  # again: the fingerprint is kept, new keys merged
    assert read_checksums(tmp_path)["built_from"] == {"corpus_ids_sha256": "abc", "step": 3}
    flip_byte(tmp_path / "a.bin")
    with pytest.raises(ArtifactError, match=r"a.bin: content differs from its checksum.*\(fix: redo it\)"):
        verify_checksums(tmp_path, what="test artifact", fix="redo it")
    assert verify_checksums(tmp_path, "none", what="test artifact", fix="redo it") == {"corpus_ids_sha256": "abc",
                                                                                       "step": 3}
    (tmp_path / "a.bin").write_bytes(b"x" * 999)
    with pytest.raises(ArtifactError, match="a.bin: is 999 bytes, its checksum record says 1000"):
        verify_checksums(tmp_path, what="test artifact", fix="redo it")
    (tmp_path / "a.bin").unlink()
    with pytest.raises(ArtifactError, match="a.bin: missing from the test artifact"):
        verify_checksums(tmp_path, what="test artifact", fix="redo it")
    (tmp_path / CHECKSUMS_FILE).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="not a nestrank checksum record"):
        verify_checksums(tmp_path, what="test artifact", fix="redo it")
    with pytest.raises(ConfigError, match="verify must be one of fast, full, none"):
        verify_checksums(tmp_path, "quick", what="test artifact", fix="redo it")


def test_large_files_are_sampled_by_default_and_hashed_whole_with_full(tmp_path, monkeypatch):
    monkeypatch.setattr(integrity, "FULL_HASH_LIMIT", 4096)
    monkeypatch.setattr(integrity, "SAMPLE_BLOCKS", 4)
    monkeypatch.setattr(integrity, "SAMPLE_BLOCK_SIZE", 256)
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).bytes(100_000))
    write_checksums(tmp_path)
    assert "sample_sha256" in read_checksums(tmp_path)["files"]["big.bin"]
    flip_byte(big, 50_000)  # between the sampled blocks: only the full check reads it
    assert verify_checksums(tmp_path, what="x", fix="y") == {}
    with pytest.raises(ArtifactError, match="big.bin: content differs"):
        verify_checksums(tmp_path, "full", what="x", fix="y")
    flip_byte(big, 50_000)
    flip_byte(big, 100)  # inside the first sampled block
    with pytest.raises(ArtifactError, match="big.bin: content differs"):
        verify_checksums(tmp_path, what="x", fix="y")


# -- indexes ---------------------------------------------------------------------------------------
def test_bm25_index_refuses_same_size_damage_that_would_change_scores(tmp_path, corpus):
    path = BM25Index.build(corpus).save(tmp_path / "idx")
    every_term = {"q": " ".join(doc.full_text for doc in corpus)}  # every score of the matrix counts
    expected = open_index(path).search(every_term, 40).to_dict()
    flip_byte(path / "data.csc.index.npy", (path / "data.csc.index.npy").stat().st_size - 1)
    assert open_index(path, verify="none").search(every_term, 40).to_dict() != expected  # unchecked: wrong, exit 0
    with pytest.raises(ArtifactError, match=r"data.csc.index.npy: content differs .*rebuild the index"):
        open_index(path)


def test_truncated_files_are_named_even_without_checksums(tmp_path, corpus, embeddings):
    bm25 = BM25Index.build(corpus).save(tmp_path / "bm25")
    (bm25 / CHECKSUMS_FILE).unlink()
    data = bm25 / "indices.csc.index.npy"
    data.write_bytes(data.read_bytes()[:60])
    with pytest.raises(ArtifactError, match=r"bm25: cannot read the BM25 index \(ValueError"):
        open_index(bm25)
    dense = DenseIndex.build(embeddings, tmp_path / "dense")
    (dense.path / CHECKSUMS_FILE).unlink()
    shard = dense.path / "shard-00000.faiss"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ArtifactError, match=r"shard-00000.faiss: cannot read the dense index shard \(RuntimeError"):
        open_index(dense.path).search_vectors(np.ones((1, 8), np.float32), 3)


def test_dense_and_hybrid_indexes_check_files_and_corpus(tmp_path, corpus, embeddings):
    dense = DenseIndex.build(embeddings, tmp_path / "dense", corpus=corpus)
    assert read_checksums(dense.path)["built_from"]["corpus_ids_sha256"] == dense.corpus_fingerprint
    flip_byte(dense.path / "shard-00001.ids.txt", 1)
    with pytest.raises(ArtifactError, match="shard-00001.ids.txt: content differs"):
        open_index(dense.path)
    hybrid = HybridIndex.build(corpus, embeddings, tmp_path / "hybrid")
    open_index(hybrid.path, corpus=corpus)
    other = make_corpus(39)
    with pytest.raises(ArtifactError, match="built from another corpus.*40 documents, the corpus given has 39"):
        open_index(hybrid.path, corpus=other)
    flip_byte(hybrid.path / "bm25" / "vocab.index.json", 2)  # a sub-index file: the hybrid's record covers it
    with pytest.raises(ArtifactError, match="bm25/vocab.index.json: content differs"):
        open_index(hybrid.path)


def test_indexes_cannot_be_built_from_embeddings_of_another_corpus(tmp_path, corpus, embeddings):
    other = Corpus.from_documents([*make_corpus(39), Document("extra", "another text")])
    for build in (lambda: DenseIndex.build(embeddings, tmp_path / "d", corpus=other),
                  lambda: HybridIndex.build(other, embeddings, tmp_path / "h"),
                  lambda: build_vector_index("dense", tmp_path / "b", other, embeddings=embeddings)):
        with pytest.raises(ArtifactError, match="not encoded from the corpus given"):
            build()
    assert not any((tmp_path / name).exists() for name in "dhb")


def test_damaged_embeddings_are_refused(tmp_path, corpus, embeddings):
    copy = tmp_path / "emb"
    shutil.copytree(embeddings, copy)
    Embeddings(copy)
    flip_byte(copy / "shard-00001.npy")
    with pytest.raises(ArtifactError, match=r"shard-00001.npy: content differs .*re-run `nestrank encode"):
        Embeddings(copy)
    with pytest.raises(ArtifactError, match="shard-00001.npy: content differs"):
        DenseIndex.build(copy, tmp_path / "idx")
    npy = copy / "shard-00000.npy"
    npy.write_bytes(npy.read_bytes()[:90])
    with pytest.raises(ArtifactError, match=r"shard-00000.npy: cannot read the embedding shard \(ValueError"):
        Embeddings(copy, verify="none").shard("shard-00000")


def test_search_cli_checks_the_corpus(tmp_path, run_cli):
    corpus_file = write_corpus_file(tmp_path / "corpus.jsonl", 12)
    queries = tmp_path / "queries.tsv"
    queries.write_text("q1\ttext number 3\n")
    index = tmp_path / "idx"
    assert run_cli("index", "--corpus", corpus_file, "--out", index)[0] == 0
    code, _, err = run_cli("search", "--index", index, "--corpus", corpus_file, "--queries", queries,
                           "--out", tmp_path / "ok.run")
    assert code == 0, err
    other = write_corpus_file(tmp_path / "other.jsonl", 11)
    code, _, err = run_cli("search", "--index", index, "--corpus", other, "--queries", queries,
                           "--out", tmp_path / "bad.run")
    assert code == 2 and "built from another corpus" in err and "fix:" in err
    assert not (tmp_path / "bad.run").exists()


def test_old_artifacts_load_with_a_one_line_warning(tmp_path, corpus, caplog):
    path = BM25Index.build(corpus).save(tmp_path / "idx")
    (path / CHECKSUMS_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="nestrank"):
        first = open_index(path).search(QUERIES, 3)
        open_index(path)
    warnings = [r.getMessage() for r in caplog.records if r.name == "nestrank"]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "has no checksums.json" in warnings[0]
    assert first == BM25Index.build(corpus).search(QUERIES, 3)


def test_model_fingerprints_follow_the_weights(tmp_path, corpus, embeddings):
    model = tmp_path / "encoder"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights v1")
    header = run_header(corpus, num_shards=1, dtype="float32", model=str(model), preset=None)
    assert header["model_fingerprint"] == integrity.model_fingerprint(model)
    manifest = json.loads((embeddings / "manifest.json").read_text())
    copy = tmp_path / "emb"
    shutil.copytree(embeddings, copy)
    manifest.update(model=str(model), model_fingerprint=header["model_fingerprint"])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    index = DenseIndex.build(copy, tmp_path / "idx")
    (model / "model.safetensors").write_bytes(b"weights v2")  # the encoder was retrained in place
    with pytest.raises(ArtifactError, match="recorded encoder .* is not the model the documents were encoded with"):
        index.encoder()
    assert integrity.model_fingerprint(tmp_path / "missing") is None


# -- checkpoints -----------------------------------------------------------------------------------
def test_matryoshka_checkpoint_checks_files_and_base_model(tiny_llama_dir, tmp_path, caplog, one_torch_thread):
    from nestrank.models.matryoshka import MatryoshkaReranker
    from nestrank.models.tiny import save_tiny_llama

    base = tmp_path / "base"
    shutil.copytree(tiny_llama_dir, base)
    ckpt = MatryoshkaReranker.from_pretrained(base, device="cpu").save_pretrained(tmp_path / "ckpt")
    assert read_checksums(ckpt)["built_from"]["base_fingerprint"] is not None
    heads = ckpt / "heads.safetensors"
    data_start = 8 + int.from_bytes(heads.read_bytes()[:8], "little")  # safetensors: header length, header, data
    flip_byte(heads, data_start + 4)  # a weight, not the header: loads fine, scores differently
    with pytest.raises(ArtifactError, match=r"heads.safetensors: content differs .*save \(train\) it again"):
        MatryoshkaReranker.from_pretrained(ckpt, device="cpu")
    MatryoshkaReranker.from_pretrained(ckpt, device="cpu", verify="none")
    write_checksums(ckpt)  # accept the change: one call records the files again
    save_tiny_llama(base, seed=1)  # the base model is replaced by other weights of the same shape
    with pytest.raises(ArtifactError, match="is not the one this Matryoshka checkpoint was trained on"):
        MatryoshkaReranker.from_pretrained(ckpt, device="cpu")
    (ckpt / CHECKSUMS_FILE).unlink()  # a checkpoint of an older nestrank (the layout without a record): loads
    with caplog.at_level(logging.WARNING, logger="nestrank"):
        assert MatryoshkaReranker.from_pretrained(ckpt, device="cpu").score("a query", ["a document"]).shape == (1,)
    assert "has no checksums.json (a Matryoshka checkpoint written by an older nestrank)" in caplog.text
    heads.write_bytes(heads.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match=r"heads.safetensors: cannot read the score heads \(SafetensorError"):
        MatryoshkaReranker.from_pretrained(ckpt, device="cpu")


def test_training_checkpoint_is_verified_before_resuming(tmp_path):
    import torch

    from nestrank.train.checkpoint import OPTIMIZER_FILE, SCHEDULER_FILE, STATE_FILE, load_checkpoint
    from nestrank.train.config import TrainConfig

    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([parameter])
    parameter.grad = torch.ones(3)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    config = TrainConfig()
    path = tmp_path / "checkpoint-2"
    path.mkdir()
    torch.save(optimizer.state_dict(), path / OPTIMIZER_FILE)
    (path / SCHEDULER_FILE).write_text(json.dumps(scheduler.state_dict(), default=lambda value: None))
    (path / STATE_FILE).write_text(json.dumps({"step": 2, "world_size": 1, "config": config.to_dict()}))
    write_checksums(path, {"step": 2})
    loaded = []
    assert load_checkpoint(path, config, optimizer, scheduler, loaded.append) == 2 and loaded == [path]
    flip_byte(path / OPTIMIZER_FILE)
    with pytest.raises(ArtifactError, match=r"optimizer.pt: content differs .*resume from another checkpoint"):
        load_checkpoint(path, config, optimizer, scheduler, loaded.append)
    (path / CHECKSUMS_FILE).unlink()
    (path / OPTIMIZER_FILE).write_bytes((path / OPTIMIZER_FILE).read_bytes()[:200])
    with pytest.raises(ArtifactError, match=r"optimizer.pt: cannot read the optimizer state"):
        load_checkpoint(path, config, optimizer, scheduler, loaded.append)
