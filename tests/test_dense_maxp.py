"""Dense MaxP: long documents encoded as overlapping segments, a vector each; search scores a document by its best."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import HashEncoder

from nestrank.data import Corpus, Document
from nestrank.errors import ConfigError
from nestrank.models.maxp import split_document
from nestrank.models.tiny import byte_tokenizer
from nestrank.retrieve import build_vector_index, open_index
from nestrank.retrieve.dense_index import DenseIndex
from nestrank.retrieve.embeddings import Embeddings, shard_ranges
from nestrank.retrieve.encode import encode_corpus
from nestrank.retrieve.hybrid_index import HybridIndex
from nestrank.retrieve.manifest import read_manifest

DIM = 16


class SegmentingHashEncoder(HashEncoder):
    """The hash encoder, splitting documents as ``DenseEncoder.passage_segments`` does (on a real byte tokenizer)."""

    def __init__(self, dim: int = DIM, passage_tokens: int = 40) -> None:
        super().__init__(dim)
        self.passage_tokens = passage_tokens
        self.tokenizer = byte_tokenizer()

    def passage_segments(self, document: Document, stride: int) -> list[Document]:
        return split_document(document, self.tokenizer, self.passage_tokens, stride)


def long_corpus(n: int = 60) -> Corpus:
    """Documents of 1 to ~9 segments of 40 bytes (title included)."""
    return Corpus.from_documents(Document(f"d{i}", " ".join(f"w{i}x{j}" for j in range(i % 9 * 3 + 1)), f"t{i}")
                                 for i in range(n))


def segments_of(corpus: Corpus, stride: int = 20) -> list[Document]:
    encoder = SegmentingHashEncoder()
    return [piece for doc in corpus for piece in encoder.passage_segments(doc, stride)]


def encode_maxp(corpus: Corpus, out, **options):
    defaults = {"dtype": "float32", "model": "hash-encoder", "preset": "test", "doc_mode": "maxp"}
    return encode_corpus(corpus, options.pop("encoder", SegmentingHashEncoder()), out, **{**defaults, **options})


def unit_queries(n: int = 20, seed: int = 3) -> np.ndarray:
    q = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def best_segment_top_k(emb_dir, queries: np.ndarray, k: int) -> tuple[list[list[float]], list[list[str]]]:
    """Brute force: every document's best segment score, the top ``k`` documents per query."""
    ids, vectors = Embeddings(emb_dir).load_all()
    all_scores, all_ids = [], []
    for row in queries @ vectors.T:
        best: dict[str, float] = {}
        for doc_id, score in zip(ids, row, strict=True):
            best[doc_id] = max(best.get(doc_id, -np.inf), float(score))
        top = sorted(best.items(), key=lambda item: -item[1])[:k]
        all_ids.append([d for d, _ in top])
        all_scores.append([s for _, s in top])
    return all_scores, all_ids


@pytest.fixture(scope="module")
def corpus():
    return long_corpus()


@pytest.fixture(scope="module")
def maxp_emb(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("maxp")
    encode_maxp(corpus, out / "one")
    encode_maxp(corpus, out / "four", num_shards=4, chunk_size=3)
    return out


def test_maxp_encoding_writes_a_row_per_segment_in_resumable_shards(tmp_path, corpus, maxp_emb):
    manifest = read_manifest(maxp_emb / "one")
    assert (manifest["doc_mode"], manifest["stride"], manifest["passage_tokens"]) == ("maxp", 20, 40)  # half a passage
    expected = segments_of(corpus)
    assert len(expected) > 3 * len(corpus)
    emb = Embeddings(maxp_emb / "one")
    ids, vectors = emb.load_all()
    assert ids == [piece.id for piece in expected] and emb.num_docs == len(corpus) == 60
    assert emb.num_vectors == len(expected) and emb.segmentation == {"doc_mode": "maxp", "stride": 20,
                                                                     "passage_tokens": 40}
    np.testing.assert_array_equal(vectors, HashEncoder(DIM).encode_passages(expected))
    sharded = Embeddings(maxp_emb / "four")
    for spec in shard_ranges(len(corpus), 4):  # a shard is a range of documents; its rows are all their segments
        entry = sharded.manifest["shards"][spec.name]
        assert entry["count"] == spec.count
        assert entry["rows"] == len(segments_of(Corpus.from_documents(corpus[d] for d in corpus.ids[spec.start:spec.end])))
    np.testing.assert_array_equal(sharded.load_all()[1], vectors)

    for shard_id in (2, 0):  # separate runs, then a resume, fill one directory with the same bytes
        encode_maxp(corpus, tmp_path / "parts", shard_id=shard_id, num_shards=4, chunk_size=3)
    resumed = SegmentingHashEncoder()
    encode_maxp(corpus, tmp_path / "parts", num_shards=4, encoder=resumed)
    assert resumed.docs_seen == sum(len(segments_of(Corpus.from_documents(corpus[d] for d in corpus.ids[s.start:s.end])))
                                    for s in shard_ranges(len(corpus), 4) if s.shard_id in (1, 3))
    assert read_manifest(tmp_path / "parts")["shards"] == sharded.manifest["shards"]


@pytest.mark.parametrize("k", [1, 7, 60])
def test_flat_maxp_search_scores_each_document_by_its_best_segment(tmp_path, corpus, maxp_emb, k):
    ref_scores, ref_ids = best_segment_top_k(maxp_emb / "one", unit_queries(), k)
    for name in ("one", "four"):
        index = DenseIndex.build(maxp_emb / name, tmp_path / name)
        assert index.doc_mode == "maxp" and index.num_docs == 60 and index.num_vectors > 180
        scores, ids = index.search_vectors(unit_queries(), k)
        assert ids == ref_ids and all(len(set(row)) == len(row) == k for row in ids)
        np.testing.assert_allclose(scores, np.asarray(ref_scores), atol=1e-5)
    scores, ids = index.search_vectors(unit_queries(), 1000)  # more than there are documents: every one, once
    assert all(sorted(row) == sorted(corpus.ids) for row in ids) and np.isfinite(scores).all()


class CrowdedEncoder(SegmentingHashEncoder):
    """Every segment of the document titled ``big`` lands next to one direction: they fill the top rows."""

    def encode_passages(self, docs):
        rows = super().encode_passages(docs)
        for i, doc in enumerate(docs):
            if doc.title == "big":
                rows[i] = crowded_direction() + 0.01 * rows[i]
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def crowded_direction() -> np.ndarray:
    return np.eye(DIM, dtype=np.float32)[0]


class CrowdedQuery:
    """A query encoder whose every query is the crowded direction."""

    def encode_queries(self, texts):
        return np.tile(crowded_direction(), (len(texts), 1))


def test_collapse_fetches_more_segments_until_k_distinct_documents(tmp_path):
    big = Document("big", " ".join(f"word{j}" for j in range(400)), "big")
    corpus = Corpus.from_documents([big, *long_corpus(30)])
    encode_maxp(corpus, tmp_path / "emb", encoder=CrowdedEncoder())
    index = DenseIndex.build(tmp_path / "emb", tmp_path / "idx")
    segments = index.num_vectors - len(segments_of(long_corpus(30)))
    query = crowded_direction()[None, :]
    first_fetch = max(2 * 5, int(np.ceil(5 * index.num_vectors / index.num_docs)))
    assert segments > 2 * first_fetch  # the first fetches hold only big's segments: one document
    ref_scores, ref_ids = best_segment_top_k(tmp_path / "emb", query, 5)
    scores, ids = index.search_vectors(query, 5)
    assert ids == ref_ids and ids[0][0] == "big" and len(set(ids[0])) == 5
    np.testing.assert_allclose(scores, np.asarray(ref_scores), atol=1e-5)
    run = index.search({"q": "anything"}, 31, encoder=CrowdedQuery())
    assert sorted(run.doc_ids("q")) == sorted(corpus.ids)  # k = every document: the index is exhausted


def test_another_segmentation_is_refused_never_mixed(tmp_path, corpus):
    same = {"dtype": "float32", "model": "hash-encoder", "preset": "test"}
    encode_corpus(corpus, SegmentingHashEncoder(), tmp_path / "t", **same)
    with pytest.raises(ConfigError, match="doc_mode='truncate'.*this run has doc_mode='maxp'"):
        encode_maxp(corpus, tmp_path / "t")
    encode_maxp(corpus, tmp_path / "m", stride=20)
    with pytest.raises(ConfigError, match="stride=20, this run has stride=10"):
        encode_maxp(corpus, tmp_path / "m", stride=10)
    with pytest.raises(ConfigError, match="passage_tokens=40, this run has passage_tokens=30"):
        encode_maxp(corpus, tmp_path / "m", encoder=SegmentingHashEncoder(passage_tokens=30))
    encode_maxp(corpus, tmp_path / "m")  # the same settings (default stride: half of 40) resume

    # shards copied in from a truncate directory are not adopted: they are encoded again
    encode_corpus(corpus, SegmentingHashEncoder(), tmp_path / "t3", num_shards=3, **same)
    encode_maxp(corpus, tmp_path / "m3", shard_id=0, num_shards=3)
    for path in (tmp_path / "t3").glob("shard-00001*"):
        shutil.copy(path, tmp_path / "m3" / path.name)
    finish = SegmentingHashEncoder()
    manifest = encode_maxp(corpus, tmp_path / "m3", num_shards=3, encoder=finish)
    assert finish.calls > 0 and manifest["shards"]["shard-00001"]["rows"] > shard_ranges(60, 3)[1].count
    encode_maxp(corpus, tmp_path / "clean3", num_shards=3)
    assert manifest["shards"] == read_manifest(tmp_path / "clean3")["shards"]

    # a directory written before nestrank recorded segmentation: whole documents, passage length unknown
    encode_corpus(corpus, HashEncoder(DIM), tmp_path / "old", **same)
    path = tmp_path / "old" / "manifest.json"
    old = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("doc_mode", "stride", "passage_tokens")}
    path.write_text(json.dumps(old))
    assert Embeddings(tmp_path / "old").segmentation == {"doc_mode": "truncate", "stride": None, "passage_tokens": None}
    encode_corpus(corpus, HashEncoder(DIM), tmp_path / "old", **same)  # an encoder with no passage length: resumes
    with pytest.raises(ConfigError, match=r"passage_tokens=None \(not recorded.*passage_tokens=40"):
        encode_corpus(corpus, SegmentingHashEncoder(), tmp_path / "old", **same)
    with pytest.raises(ConfigError, match="doc_mode='truncate'.*doc_mode='maxp'"):
        encode_maxp(corpus, tmp_path / "old")


def test_bad_segmentation_settings(tmp_path, corpus):
    with pytest.raises(ConfigError, match="stride=8 applies to doc_mode='maxp' only"):
        encode_corpus(corpus, SegmentingHashEncoder(), tmp_path / "a", stride=8)
    with pytest.raises(ConfigError, match="doc_mode must be one of truncate, maxp"):
        encode_corpus(corpus, SegmentingHashEncoder(), tmp_path / "b", doc_mode="firstp")
    with pytest.raises(ConfigError, match="stride must be >= 1"):
        encode_maxp(corpus, tmp_path / "c", stride=0)
    with pytest.raises(ConfigError, match="needs a stride when the encoder's passage length is not known"):
        encode_maxp(corpus, tmp_path / "d", encoder=HashEncoder(DIM))
    with pytest.raises(ConfigError, match="needs an encoder that splits documents.*HashEncoder has none"):
        encode_maxp(corpus, tmp_path / "e", encoder=HashEncoder(DIM), stride=8)
    assert not list((tmp_path / "e").glob("shard-*"))


def test_vector_indexes_follow_and_check_the_segmentation(tmp_path, corpus, maxp_emb):
    from nestrank.retrieve.bm25 import BM25Index
    from nestrank.retrieve.fusion import reciprocal_rank_fusion

    with pytest.raises(ConfigError, match="encoded with doc_mode='maxp', not 'truncate'"):
        build_vector_index("dense", tmp_path / "x", embeddings=maxp_emb / "four", doc_mode="truncate")
    with pytest.raises(ConfigError, match="encoded with stride=20, not 16"):
        build_vector_index("dense", tmp_path / "x", embeddings=maxp_emb / "four", doc_mode="maxp", stride=16)
    assert not (tmp_path / "x").exists()
    build_vector_index("hybrid", tmp_path / "hyb", corpus, embeddings=maxp_emb / "four", doc_mode="maxp", stride=20,
                       passage_tokens=40, fusion_depth=30)
    hybrid = open_index(tmp_path / "hyb")
    assert isinstance(hybrid, HybridIndex) and hybrid.num_docs == 60
    params = read_manifest(tmp_path / "hyb" / "dense")["params"]
    assert (params["doc_mode"], params["stride"], params["passage_tokens"]) == ("maxp", 20, 40)
    assert params["num_vectors"] == len(segments_of(corpus)) and "maxp segments" in repr(hybrid.dense)
    texts = {"a": corpus["d17"].full_text, "b": "w5x0 t5"}
    encoder = SegmentingHashEncoder()
    dense = hybrid.dense.search(texts, 30, encoder=encoder)
    assert all(len(set(dense.doc_ids(q))) == 30 for q in texts)
    expected = reciprocal_rank_fusion([BM25Index.build(corpus).search(texts, 30), dense], k=10)
    assert hybrid.search(texts, k=10, encoder=encoder).to_dict() == expected.to_dict()


# -- the CLI, the pipeline and Ray, with a tiny random Llama encoder ------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(word_llama_dir):
    return word_llama_dir


MAXP_FLAGS = ("--doc-mode", "maxp", "--stride", "2", "--passage-tokens", "8")  # 4 tokens of title + text per segment


def test_cli_encode_and_index_take_the_long_document_options(tmp_path, tiny_beir, tiny_model, capsys, monkeypatch):
    from helpers import cli

    from nestrank.data import Dataset, Run
    from nestrank.models.dense import DenseEncoder

    emb, idx, hyb = tmp_path / "emb", tmp_path / "idx", tmp_path / "hyb"
    code, _, err = cli(capsys, monkeypatch, "encode", "--dataset", tiny_beir, "--model", tiny_model, "--preset",
                       "repllama", "--out", emb, "--num-shards", "2", "--no-progress", *MAXP_FLAGS)
    assert code == 0, err
    emb_manifest = read_manifest(emb)
    assert (emb_manifest["doc_mode"], emb_manifest["stride"], emb_manifest["passage_tokens"]) == ("maxp", 2, 8)
    rows = Embeddings(emb).num_vectors
    assert rows >= 12 and f"encoded 5 documents (complete, {rows} segments" in err
    code, _, err = cli(capsys, monkeypatch, "index", "--method", "dense", "--embeddings", emb, "--out", idx,
                       "--doc-mode", "truncate")
    assert code == 2 and "holds vectors encoded with doc_mode='maxp', not 'truncate'" in err and not idx.exists()
    code, _, err = cli(capsys, monkeypatch, "index", "--method", "dense", "--embeddings", emb, "--out", idx)
    assert code == 0, err
    code, _, err = cli(capsys, monkeypatch, "search", "--index", idx, "--dataset", tiny_beir, "--k", "5",
                       "--out", tmp_path / "dense.run")
    assert code == 0, err
    queries = Dataset.open(tiny_beir).split_queries("test")
    expected = DenseIndex.load(idx).search(queries, 5, encoder=DenseEncoder.from_pretrained(tiny_model, "repllama"))
    got = Run.read_trec(tmp_path / "dense.run")
    assert {q: got.doc_ids(q) for q in got} == {q: expected.doc_ids(q) for q in expected}
    assert all(sorted(got.doc_ids(q)) == ["d1", "d2", "d3", "d4", "d5"] for q in got)  # 5 documents, each once

    code, _, err = cli(capsys, monkeypatch, "index", "--method", "hybrid", "--dataset", tiny_beir, "--model", tiny_model,
                       "--preset", "repllama", "--out", hyb, *MAXP_FLAGS)
    assert code == 0, err
    np.testing.assert_array_equal(Embeddings(tmp_path / "hyb.emb").load_all()[1], Embeddings(emb).load_all()[1])
    assert read_manifest(hyb / "dense")["params"]["doc_mode"] == "maxp"
    code, _, err = cli(capsys, monkeypatch, "index", "--method", "hybrid", "--dataset", tiny_beir, "--model", tiny_model,
                       "--preset", "repllama", "--out", tmp_path / "hyb2", "--embeddings", tmp_path / "hyb.emb")
    assert code == 2 and "doc_mode='maxp', this run has doc_mode='truncate'" in err  # never reused for truncate
    code, _, err = cli(capsys, monkeypatch, "index", "--method", "bm25", "--dataset", tiny_beir, "--out", tmp_path / "b",
                       "--doc-mode", "maxp")
    assert code == 2 and "apply to --method dense or hybrid" in err
    code, _, err = cli(capsys, monkeypatch, "encode", "--dataset", tiny_beir, "--model", tiny_model, "--out",
                       tmp_path / "e", "--stride", "4")
    assert code == 2 and "applies to doc_mode='maxp' only" in err


def test_pipeline_first_stage_builds_and_checks_a_maxp_index(tmp_path, tiny_beir, tiny_model):
    from nestrank.data import Dataset
    from nestrank.models.dense import DenseEncoder
    from nestrank.pipeline import FirstStage, FirstStageSection, load_pipeline_config

    dataset = Dataset.open(tiny_beir)
    path = tmp_path / "p.toml"
    path.write_text(f'[first_stage]\nmethod = "dense"\nindex = "{tmp_path / "idx"}"\nencoder = "{tiny_model}"\n'
                    'doc_mode = "maxp"\nstride = 2\npassage_tokens = 8\nk = 5\n', encoding="utf-8")
    section = load_pipeline_config(path).first_stage
    first = FirstStage.open(section, dataset.corpus)  # builds the index: a vector per segment
    params = read_manifest(tmp_path / "idx")["params"]
    assert (params["doc_mode"], params["stride"], params["passage_tokens"]) == ("maxp", 2, 8)
    assert params["num_vectors"] == Embeddings(tmp_path / "idx.emb").num_vectors > 5
    run = first.search(dataset.queries)
    by_hand = DenseIndex.load(tmp_path / "idx").search(dataset.queries, 5, encoder=DenseEncoder.from_pretrained(tiny_model))
    assert run.to_dict() == by_hand.to_dict()
    again = FirstStage.open(FirstStageSection(method="dense", index=str(tmp_path / "idx"), doc_mode="maxp"))
    assert again.search(dataset.queries).to_dict() == run.to_dict()  # no stride / passage_tokens: any
    for wrong, message in (({"doc_mode": "truncate"}, "doc_mode='maxp', not 'truncate'"),
                           ({"doc_mode": "maxp", "stride": 3}, "stride=2, not 3"),
                           ({"doc_mode": "maxp", "passage_tokens": 16}, "passage_tokens=8, not 16")):
        with pytest.raises(ConfigError, match=message):
            FirstStage.open(FirstStageSection(method="dense", index=str(tmp_path / "idx"), **wrong))
    for text, message in (('stride = 64\n', 'first_stage.stride applies to doc_mode = "maxp" only'),
                          ('doc_mode = "maxp"\npassage_tokens = 0\n', "first_stage.passage_tokens must be >= 1"),
                          ('doc_mode = "firstp"\n', "first_stage.doc_mode must be one of truncate, maxp")):
        path.write_text("[first_stage]\n" + text, encoding="utf-8")
        with pytest.raises(ConfigError, match=message):
            load_pipeline_config(path)


@pytest.mark.ray
def test_ray_engine_encodes_maxp_as_the_local_engine_does(tmp_path, tiny_model):
    ray = pytest.importorskip("ray")
    from helpers import make_corpus

    from nestrank.retrieve.encode import EncoderSpec, encode_corpus_ray

    spec = EncoderSpec(str(tiny_model), "repllama", (("passage_max_length", 8), ("show_progress", False)))
    corpus = Corpus.from_documents(Document(d.id, "gene study of brain cells " * (int(d.id[1:]) % 4 + 1), "cancer")
                                   for d in make_corpus(12))
    local = encode_corpus(corpus, spec(), tmp_path / "local", num_shards=3, model=spec.model, preset="repllama",
                          doc_mode="maxp", stride=3)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = encode_corpus_ray(corpus, spec, tmp_path / "ray", num_shards=3, model=spec.model, preset="repllama",
                                   doc_mode="maxp", stride=3, actors=2)
    finally:
        ray.shutdown()
    assert remote["passage_tokens"] == local["passage_tokens"] == 8 and remote["stride"] == 3
    assert remote["shards"] == local["shards"] and Embeddings(tmp_path / "ray").num_vectors > 12


def test_pipeline_refuses_an_encoder_retrained_since_its_index_was_built(tmp_path, tiny_beir):
    """The pipeline names its query encoder; an index encoded by other weights at that path is refused, not searched."""
    from helpers import save_word_llama

    from nestrank.data import Dataset
    from nestrank.errors import ArtifactError
    from nestrank.pipeline import FirstStage, FirstStageSection

    dataset = Dataset.open(tiny_beir)
    encoder = save_word_llama(tmp_path / "encoder", seed=0)
    section = FirstStageSection(method="dense", index=str(tmp_path / "idx"), encoder=str(encoder), k=5)
    before = FirstStage.open(section, dataset.corpus).search(dataset.queries)
    save_word_llama(encoder, seed=1)  # retrained in place: the index still holds the seed-0 encoder's documents
    with pytest.raises(ArtifactError, match=r"first_stage.encoder .*encoder is not the model .* encoded with"):
        FirstStage.open(section, dataset.corpus)
    save_word_llama(encoder, seed=0)
    assert FirstStage.open(section, dataset.corpus).search(dataset.queries).to_dict() == before.to_dict()
