"""BM25 index: build, search, save/load, manifest dispatch and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nestrank.data import Corpus, Document
from nestrank.errors import ConfigError, DataFormatError
from nestrank.retrieve import BM25Index, open_index
from nestrank.retrieve.index import INDEX_TYPES, staged_index_dir
from nestrank.retrieve.manifest import read_manifest, write_manifest

DOCS = [
    Document("d1", "Cats purr when they are happy.", "Cats"),
    Document("d2", "Dogs bark at strangers.", "Dogs"),
    Document("d3", "Fish swim in schools to avoid predators."),
    Document("d4", "Birds migrate south in winter.", "Birds"),
    Document("d5", "Bees make honey from nectar; honey keeps.", "Bees"),
]


@pytest.fixture
def index() -> BM25Index:
    return BM25Index.build(Corpus.from_documents(DOCS))


def test_search_ranks_the_matching_document_first(index: BM25Index) -> None:
    run = index.search({"q1": "why do cats purr", "q2": "birds in winter", "q3": "honey"}, k=3)
    assert run.doc_ids("q1")[0] == "d1"
    assert run.doc_ids("q2")[0] == "d4"
    assert run.doc_ids("q3") == ["d5"]  # only documents sharing a term are returned


def test_title_is_indexed(index: BM25Index) -> None:
    assert index.search({"q": "dogs"}, k=5).doc_ids("q") == ["d2"]  # "dogs" is in d2's title and text
    only_title = BM25Index.build([Document("a", "unrelated words", "zebra"), Document("b", "other words")])
    assert only_title.search({"q": "zebra"}, k=2).doc_ids("q") == ["a"]


def test_stemming_and_stopwords_are_configurable() -> None:
    docs = [Document("a", "the runner was running"), Document("b", "the walker walks")]
    stemmed = BM25Index.build(docs)
    assert stemmed.search({"q": "runs"}, k=2).doc_ids("q") == ["a"]
    plain = BM25Index.build(docs, stemmer=None, stopwords=None)
    assert plain.search({"q": "runs"}, k=2).doc_ids("q") == []
    assert plain.search({"q": "the"}, k=2).doc_ids("q") != []  # "the" is kept without stopwords
    assert stemmed.search({"q": "the"}, k=2).doc_ids("q") == []


def test_k1_and_b_change_scores() -> None:
    docs = [Document("a", "apple apple apple pear"), Document("b", "apple kiwi"), Document("c", "kiwi")]
    default = BM25Index.build(docs).search({"q": "apple"}, k=3)["q"]
    flat = BM25Index.build(docs, k1=0.0).search({"q": "apple"}, k=3)["q"]
    assert default[0][1] != flat[0][1]
    assert flat[0][1] == pytest.approx(flat[1][1])  # k1=0: term frequency and length are ignored


def test_k_larger_than_corpus_and_empty_query(index: BM25Index) -> None:
    run = index.search({"q": "cats dogs fish birds bees", "empty": "the of and", "unknown": "xylophone"}, k=1000)
    assert sorted(run.doc_ids("q")) == ["d1", "d2", "d3", "d4", "d5"]
    assert run["empty"] == [] and run["unknown"] == []


def test_ties_at_the_cut_are_broken_by_doc_id_descending() -> None:
    docs = [Document(f"d{i}", "same words here") for i in range(6)] + [Document("x", "other text")]
    run = BM25Index.build(docs).search({"q": "words"}, k=2)
    assert run.doc_ids("q") == ["d5", "d4"]  # the order trec_eval uses for equal scores


def test_many_queries_in_batches_match_one_batch(index: BM25Index) -> None:
    queries = {f"q{i}": text for i, text in enumerate(["cats", "honey bees", "fish schools", "winter"] * 5)}
    assert index.search(queries, k=3, batch_size=3).to_dict() == index.search(queries, k=3).to_dict()
    assert index.search(queries, k=3, threads=2).to_dict() == index.search(queries, k=3).to_dict()


def test_build_streams_a_generator_once() -> None:
    consumed = []

    def docs():
        for doc in DOCS:
            consumed.append(doc.id)
            yield doc

    index = BM25Index.build(docs())
    assert consumed == [d.id for d in DOCS] and index.doc_ids == consumed


def test_build_from_a_corpus_file(tiny_beir: Path) -> None:
    index = BM25Index.build(Corpus.open(tiny_beir / "corpus.jsonl"))
    assert index.num_docs == 5
    assert index.search({"q": "honey"}, k=5).doc_ids("q") == ["d5"]


def test_save_load_round_trip(index: BM25Index, tmp_path: Path) -> None:
    queries = {"q1": "cats purr", "q2": "honey from bees", "q3": "schools of fish"}
    path = index.save(tmp_path / "idx")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["method"] == "bm25" and manifest["num_docs"] == 5
    assert manifest["params"] == {"k1": 1.5, "b": 0.75, "variant": "lucene", "stemmer": "english",
                                  "lowercase": True, "stopwords": "en"}
    for mmap in (True, False):
        loaded = open_index(path, mmap=mmap)
        assert isinstance(loaded, BM25Index)
        assert loaded.search(queries, k=5).to_dict() == index.search(queries, k=5).to_dict()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_custom_params_survive_save(tmp_path: Path) -> None:
    docs = [Document("a", "the runner was running"), Document("b", "a walker walks")]
    built = BM25Index.build(docs, k1=0.9, b=0.4, stemmer=None, stopwords=["walker"], method="robertson")
    loaded = BM25Index.load(built.save(tmp_path / "idx"))
    assert loaded.params["stopwords"] == ["walker"] and loaded.params["variant"] == "robertson"
    assert loaded.search({"q": "walker running"}, k=2).to_dict() == built.search({"q": "walker running"}, k=2).to_dict()
    assert loaded.search({"q": "walker"}, k=2)["q"] == []


def test_save_replaces_an_index_but_not_other_folders(index: BM25Index, tmp_path: Path) -> None:
    path = index.save(tmp_path / "idx")
    BM25Index.build([Document("x", "only one document")]).save(path)
    assert open_index(path).num_docs == 1
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a nestrank index"):
        index.save(precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert open_index(index.save(empty)).num_docs == 5


def test_failed_save_leaves_old_index_intact(index: BM25Index, tmp_path: Path, monkeypatch) -> None:
    path = index.save(tmp_path / "idx")
    before = sorted(p.name for p in path.iterdir())

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("nestrank.retrieve.bm25.write_manifest", broken)
    with pytest.raises(OSError, match="disk full"):
        BM25Index.build([Document("x", "new")]).save(path)
    assert sorted(p.name for p in path.iterdir()) == before and open_index(path).num_docs == 5
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_staged_dir_is_not_visible_until_done(tmp_path: Path) -> None:
    out = tmp_path / "new"
    with staged_index_dir(out) as staging:
        (staging / "file").write_text("x")
        assert not out.exists()
    assert (out / "file").read_text() == "x"


def test_open_index_errors(tmp_path: Path, index: BM25Index) -> None:
    with pytest.raises(DataFormatError, match="index directory not found"):
        open_index(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataFormatError, match="no manifest.json"):
        open_index(tmp_path / "plain")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="unreadable manifest"):
        open_index(tmp_path / "bad")
    (tmp_path / "future").mkdir()
    (tmp_path / "future" / "manifest.json").write_text('{"method": "bm25", "format_version": 99}')
    with pytest.raises(DataFormatError, match="index format 99"):
        open_index(tmp_path / "future")
    (tmp_path / "other").mkdir()
    write_manifest(tmp_path / "other", "quantum", 3, {})
    with pytest.raises(DataFormatError, match="unknown index method 'quantum'"):
        open_index(tmp_path / "other")
    assert read_manifest(tmp_path / "other")["num_docs"] == 3
    path = index.save(tmp_path / "idx")
    (path / "doc_ids.json").unlink()
    with pytest.raises(DataFormatError, match="doc_ids.json: missing from the BM25 index"):
        open_index(path)
    with pytest.raises(DataFormatError, match="cannot read the BM25 index"):
        open_index(path, verify="none")


def test_dispatch_table_names_bm25() -> None:
    assert INDEX_TYPES["bm25"] == "nestrank.retrieve.bm25:BM25Index"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"k1": -1}, "k1"),
    ({"b": 1.5}, "b must be between 0 and 1"),
    ({"stemmer": "klingon"}, "unknown stemmer 'klingon'"),
    ({"stopwords": "xx"}, "unknown stopword list 'xx'"),
    ({"method": "bm99"}, "unknown BM25 variant 'bm99'"),
])
def test_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BM25Index.build(DOCS, **kwargs)


def test_bad_corpora() -> None:
    with pytest.raises(DataFormatError, match="empty corpus"):
        BM25Index.build([])
    with pytest.raises(DataFormatError, match="contains whitespace"):
        BM25Index.build([Document("a b", "text")])
    with pytest.raises(DataFormatError, match="duplicate document ids"):
        BM25Index.build([Document("a", "one"), Document("a", "two")])


def test_bad_k(index: BM25Index) -> None:
    with pytest.raises(ConfigError, match="k must be at least 1"):
        index.search({"q": "cats"}, k=0)
