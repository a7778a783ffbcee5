"""FAISS dense indexes: exactness, sharding, approximate types, persistence and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import HashEncoder, cli, make_corpus, write_corpus_file

from nestrank.errors import ArtifactError, ConfigError, DataFormatError
from nestrank.retrieve.config import IndexConfig
from nestrank.retrieve.dense_index import DenseIndex
from nestrank.retrieve.embeddings import Embeddings
from nestrank.retrieve.encode import encode_corpus
from nestrank.retrieve.index import open_index

DIM = 16


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(600)


def encoded(tmp_path_factory, corpus, num_shards: int):
    out = tmp_path_factory.mktemp(f"emb{num_shards}")
    encode_corpus(corpus, HashEncoder(DIM), out, num_shards=num_shards, dtype="float32", chunk_size=128,
                  model="hash-encoder", preset="test")
    return out


@pytest.fixture(scope="module")
def emb1(tmp_path_factory, corpus):
    return encoded(tmp_path_factory, corpus, 1)


@pytest.fixture(scope="module")
def emb4(tmp_path_factory, corpus):
    return encoded(tmp_path_factory, corpus, 4)


def queries(n: int = 25, seed: int = 7) -> np.ndarray:
    q = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def brute_force(emb_dir, q, k):
    ids, vectors = Embeddings(emb_dir).load_all()
    scores = q @ vectors.T
    order = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), [[ids[j] for j in row] for row in order]


@pytest.mark.parametrize("k", [1, 10, 600])
def test_flat_search_equals_numpy_brute_force(tmp_path, emb1, k):
    index = DenseIndex.build(emb1, tmp_path / "idx")
    scores, ids = index.search_vectors(queries(), k)
    ref_scores, ref_ids = brute_force(emb1, queries(), k)
    assert ids == ref_ids
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_sharded_search_equals_unsharded(tmp_path, emb1, emb4):
    whole = DenseIndex.build(emb1, tmp_path / "one")
    sharded = DenseIndex.build(emb4, tmp_path / "four")
    assert len(sharded.shards) == 4 and sharded.num_docs == whole.num_docs == 600
    s1, i1 = whole.search_vectors(queries(), 50)
    s4, i4 = sharded.search_vectors(queries(), 50)
    assert i1 == i4
    np.testing.assert_allclose(s1, s4, atol=1e-6)


def test_ivf_visiting_every_cluster_is_exact_and_approximate_types_find_most(tmp_path, emb1, emb4):
    flat_scores, flat_ids = DenseIndex.build(emb1, tmp_path / "flat").search_vectors(queries(), 100)
    ivf = DenseIndex.build(emb4, tmp_path / "ivf", IndexConfig("ivf", nlist=3, nprobe=1))
    _, all_clusters = ivf.search_vectors(queries(), 100, nprobe=3)
    assert all_clusters == flat_ids
    _, one_cluster = ivf.search_vectors(queries(), 100)
    assert one_cluster != flat_ids  # nprobe=1 of 3 is approximate
    hnsw = DenseIndex.build(emb1, tmp_path / "hnsw", IndexConfig("hnsw", hnsw_m=16, ef_search=200))
    _, hnsw_ids = hnsw.search_vectors(queries(), 100)
    recall = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(hnsw_ids, flat_ids, strict=True)])
    assert recall > 0.9
    ivfpq = DenseIndex.build(emb1, tmp_path / "ivfpq", IndexConfig("ivfpq", nlist=4, nprobe=4, pq_m=4, pq_nbits=6))
    pq_scores, pq_ids = ivfpq.search_vectors(queries(), 100)
    assert all(len(row) == 100 for row in pq_ids) and np.isfinite(pq_scores).all()


def test_save_load_round_trip_and_text_search(tmp_path, emb4, corpus):
    built = DenseIndex.build(emb4, tmp_path / "idx", IndexConfig("hnsw", hnsw_m=8))
    loaded = open_index(tmp_path / "idx")
    assert isinstance(loaded, DenseIndex) and loaded.config == built.config
    assert loaded.encoder_spec == {"model": "hash-encoder", "preset": "test", "normalized": True, "fingerprint": None}
    np.testing.assert_array_equal(built.search_vectors(queries(), 20)[0], loaded.search_vectors(queries(), 20)[0])
    texts = {"q1": corpus["d5"].full_text, "q2": "something else"}
    run = loaded.search(texts, k=5, encoder=HashEncoder(DIM))
    assert run.doc_ids("q1")[0] == "d5" and len(run["q2"]) == 5
    assert run["q1"][0][1] == pytest.approx(1.0, abs=1e-5)  # a document's own (unit) vector


def test_bad_inputs_give_clear_errors(tmp_path, emb4, corpus):
    index = DenseIndex.build(emb4, tmp_path / "idx")
    with pytest.raises(ConfigError, match="16-d"):
        index.search_vectors(np.zeros((2, 8), np.float32), 5)
    with pytest.raises(ConfigError, match="NaN"):
        index.search_vectors(np.full((1, DIM), np.nan, np.float32), 5)
    with pytest.raises(ConfigError, match="k must"):
        index.search_vectors(queries(), 0)
    anonymous = tmp_path / "anonymous"
    encode_corpus(corpus, HashEncoder(DIM), anonymous / "emb")
    with pytest.raises(ConfigError, match="no encoder model"):
        DenseIndex.build(anonymous / "emb", anonymous / "idx").search({"q": "text"})
    (tmp_path / "idx" / "shard-00002.faiss").unlink()
    with pytest.raises(DataFormatError, match="shard-00002.faiss: missing from the dense index"):
        DenseIndex.load(tmp_path / "idx")
    with pytest.raises(DataFormatError, match="shard-00002 is missing"):
        DenseIndex.load(tmp_path / "idx", verify="none")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    manifest["method"] = "bm25"
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataFormatError, match="'bm25', not 'dense'"):
        DenseIndex.load(tmp_path / "idx")
    partial = tmp_path / "partial"
    encode_corpus(corpus, HashEncoder(DIM), partial, shard_id=1, num_shards=3)
    with pytest.raises(DataFormatError, match="not encoded yet"):
        DenseIndex.build(partial, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(ConfigError, match="unknown dense index type"):
        DenseIndex.build(emb4, tmp_path / "x", IndexConfig("annoy"))
    with pytest.raises(ConfigError, match="must divide"):
        DenseIndex.build(emb4, tmp_path / "x", IndexConfig("ivfpq", pq_m=5))
    with pytest.raises(ConfigError, match="nlist=500"):
        DenseIndex.build(emb4, tmp_path / "x", IndexConfig("ivf", nlist=500))
    with pytest.raises(ConfigError, match="at least 256"):
        DenseIndex.build(emb4, tmp_path / "x", IndexConfig("ivfpq", nlist=2, pq_m=4))
    assert not (tmp_path / "x").exists()


def test_hybrid_index_fuses_bm25_and_dense_runs(tmp_path, emb4, corpus):
    from nestrank.retrieve.bm25 import BM25Index
    from nestrank.retrieve.fusion import reciprocal_rank_fusion
    from nestrank.retrieve.hybrid_index import HybridIndex

    HybridIndex.build(corpus, emb4, tmp_path / "hyb", rrf_k=30, fusion_depth=50)
    hybrid = open_index(tmp_path / "hyb")
    assert isinstance(hybrid, HybridIndex) and hybrid.num_docs == 600
    texts = {"a": "text number 17 title", "b": corpus["d42"].full_text}
    run = hybrid.search(texts, k=10, encoder=HashEncoder(DIM))
    bm25 = BM25Index.build(corpus).search(texts, 50)
    dense = DenseIndex.load(tmp_path / "hyb" / "dense").search(texts, 50, encoder=HashEncoder(DIM))
    expected = reciprocal_rank_fusion([bm25, dense], rrf_k=30, k=10)
    assert run.to_dict() == expected.to_dict()
    assert run.doc_ids("b")[0] == "d42"
    with pytest.raises(ArtifactError, match="not encoded from the corpus given"):
        HybridIndex.build(make_corpus(599), emb4, tmp_path / "bad")
    with pytest.raises(DataFormatError, match="'hybrid', not 'dense'"):
        DenseIndex.load(tmp_path / "hyb")


def test_the_library_builds_what_the_cli_builds(tmp_path, capsys, monkeypatch):
    from dataclasses import asdict

    from nestrank.data import Corpus
    from nestrank.retrieve import BM25Index, IndexConfig, build_vector_index, read_manifest

    corpus_file = write_corpus_file(tmp_path / "corpus.jsonl", 120)
    emb = tmp_path / "emb"
    encode_corpus(Corpus.open(corpus_file), HashEncoder(DIM), emb, num_shards=2, model="hash-encoder")
    built = build_vector_index("hybrid", tmp_path / "lib", Corpus.open(corpus_file), embeddings=emb, fusion_depth=7)
    assert built.num_docs == 120
    code, _, err = cli(capsys, monkeypatch, "index", "--method", "hybrid", "--corpus", corpus_file, "--embeddings", emb,
                       "--fusion-depth", "7", "--out", tmp_path / "cli")
    assert code == 0 and "deprecated" not in err, err
    code, _, err = cli(capsys, monkeypatch, "index", "--method", "hybrid", "--corpus", corpus_file, "--embeddings", emb,
                       "--depth", "7", "--out", tmp_path / "old")
    assert code == 0 and "warning: --depth is deprecated and will be removed; use --fusion-depth" in err.splitlines()
    for part in ("", "bm25", "dense"):
        lib, *others = [read_manifest(tmp_path / name / part) for name in ("lib", "cli", "old")]
        assert all(other["params"] == lib["params"] for other in others), part
    params = read_manifest(tmp_path / "lib")["params"]
    assert params["depth"] == 7 and params["rrf_k"] == 60
    assert read_manifest(tmp_path / "cli" / "dense")["params"]["faiss"] == asdict(IndexConfig())  # one set of defaults
    assert read_manifest(tmp_path / "cli" / "bm25")["params"] == BM25Index.build(Corpus.open(corpus_file)).params
    code, _, err = cli(capsys, monkeypatch, "index", "--method", "hybrid", "--corpus", corpus_file, "--embeddings", emb,
                       "--depth", "7", "--fusion-depth", "8", "--out", tmp_path / "both")
    assert code == 2 and "give --fusion-depth only" in err
    with pytest.raises(ConfigError, match="needs embeddings or a model"):
        build_vector_index("dense", tmp_path / "x")
    with pytest.raises(ConfigError, match="needs the corpus"):
        build_vector_index("hybrid", tmp_path / "x", embeddings=emb)
    with pytest.raises(ConfigError, match="unknown vector index method 'bm25'"):
        build_vector_index("bm25", tmp_path / "x", embeddings=emb)
    with pytest.raises(DataFormatError, match="holds nestrank embeddings, not a nestrank index"):
        open_index(emb)
    with pytest.raises(DataFormatError, match="holds a nestrank index, not nestrank embeddings"):
        Embeddings(tmp_path / "lib")


def test_cli_encode_index_and_search_dense_and_hybrid(tmp_path, tiny_beir, word_llama_dir, capsys, monkeypatch):
    from nestrank.data import Dataset, Run
    from nestrank.models.dense import DenseEncoder

    model = word_llama_dir
    emb, idx, hyb, run_file = tmp_path / "emb", tmp_path / "idx", tmp_path / "hyb", tmp_path / "dense.run"
    code, _, err = cli(capsys, monkeypatch, "encode", "--dataset", tiny_beir, "--model", model, "--preset", "repllama",
                       "--out", emb, "--num-shards", "2", "--dtype", "float32", "--no-progress")
    assert code == 0, err
    assert "encoded 5 documents (complete, dim 32, float32)" in err
    code, _, err = cli(capsys, monkeypatch, "index", "--method", "dense", "--embeddings", emb, "--out", idx,
                       "--index-type", "hnsw", "--hnsw-m", "8", "--ef-search", "20")
    assert code == 0, err
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["params"]["faiss"]["index_type"] == "hnsw" and manifest["params"]["faiss"]["ef_search"] == 20
    assert manifest["params"]["encoder"]["model"] == str(model.resolve())
    code, _, err = cli(capsys, monkeypatch, "search", "--index", idx, "--dataset", tiny_beir, "--k", "3",
                       "--out", run_file)
    assert code == 0, err
    queries = Dataset.open(tiny_beir).split_queries("test")
    expected = DenseIndex.load(idx).search(queries, 3, encoder=DenseEncoder.from_pretrained(model, "repllama"))
    got = Run.read_trec(run_file)
    assert {q: got.doc_ids(q) for q in got} == {q: expected.doc_ids(q) for q in expected}

    code, _, err = cli(capsys, monkeypatch, "index", "--method", "hybrid", "--dataset", tiny_beir, "--model", model,
                       "--preset", "repllama", "--out", hyb)
    assert code == 0, err
    assert (tmp_path / "hyb.emb" / "manifest.json").is_file()  # encoded first, kept for resuming
    code, _, err = cli(capsys, monkeypatch, "search", "--index", hyb, "--dataset", tiny_beir, "--k", "5",
                       "--out", tmp_path / "hybrid.run")
    assert code == 0, err
    fused = Run.read_trec(tmp_path / "hybrid.run")
    assert set(fused) == {"q1", "q2"} and fused.doc_ids("q1")[0] == "d1"  # BM25's clear winner survives fusion

    code, _, err = cli(capsys, monkeypatch, "index", "--method", "dense", "--dataset", tiny_beir, "--out", tmp_path / "x")
    assert code == 2 and "needs --embeddings DIR" in err
    code, _, err = cli(capsys, monkeypatch, "encode", "--dataset", tiny_beir, "--model", model, "--preset", "repllama",
                       "--out", emb, "--num-shards", "3", "--dtype", "float32")
    assert code == 2 and "num_shards=2" in err and "Loading weights" not in err  # refused before loading the model
    code, _, err = cli(capsys, monkeypatch, "encode", "--dataset", tiny_beir, "--model", model, "--preset", "repllama",
                       "--out", emb, "--num-shards", "2", "--dtype", "float32")
    assert code == 0 and "complete" in err and "Loading weights" not in err  # nothing left to do
    from nestrank.retrieve import read_manifest, run_encoding

    done = run_encoding(Dataset.open(tiny_beir).corpus, emb, model, preset="repllama", num_shards=2, dtype="float32")
    assert done == read_manifest(emb) and done["complete"]  # what `nestrank encode` did, from Python
    with pytest.raises(ConfigError, match="unknown engine 'spark'"):
        run_encoding(Dataset.open(tiny_beir).corpus, tmp_path / "e2", model, engine="spark")
