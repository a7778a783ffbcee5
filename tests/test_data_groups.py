"""Training groups: the three JSONL formats, their errors and their writers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nestrank.data import Corpus, Document, Queries
from nestrank.data.groups import GROUP_FORMATS, TrainingGroup, read_groups, write_groups
from nestrank.errors import DataFormatError


def jsonl(path: Path, *rows: dict | str) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def corpus(tiny_beir) -> Corpus:
    return Corpus.open(tiny_beir / "corpus.jsonl")


@pytest.fixture
def queries(tiny_beir) -> Queries:
    return Queries.read(tiny_beir / "queries.jsonl")


def check_error(info, path: Path, line: int, fix: str) -> None:
    err = info.value
    assert (err.path, err.line) == (str(path), line), str(err)
    assert err.fix and fix in err.fix, str(err)
    assert str(err).startswith(f"{path}:{line}: ")


def test_tevatron_ids_resolve_against_corpus_and_queries(tmp_path, corpus, queries):
    path = jsonl(tmp_path / "g.jsonl",
                 {"query_id": "q1", "query_text": "cats?", "positive_document_ids": ["d1"], "negative_document_ids": ["d2", "d3"]},
                 {"query_id": "q3", "positive_document_ids": [5], "negative_document_ids": []},
                 {"query_id": "q2", "query_text": "", "positive_document_ids": ["d4"], "negative_document_ids": ["d5"]})
    groups = list(read_groups(path, corpus=Corpus.from_documents([*corpus, Document("5", "numeric id")]), queries=queries))
    assert [g.query for g in groups] == ["cats?", "how is honey made", "where do birds go in winter"]
    assert groups[0].query_id == "q1"
    assert groups[0].positives == [corpus["d1"]] and groups[0].negatives == [corpus["d2"], corpus["d3"]]
    assert groups[1].positives == [Document("5", "numeric id")] and groups[1].negatives == []


def test_tevatron_passages_with_scores(tmp_path):
    path = jsonl(tmp_path / "g.jsonl", {
        "query_id": "7", "query": "q text",
        "positive_passages": [{"docid": "1", "title": "T", "text": "pos", "score": 2.5}],
        "negative_passages": [{"docid": "2", "title": "", "text": "neg"}, {"docid": "3", "text": "neg2"}],
    })
    (group,) = read_groups(path)
    assert group == TrainingGroup("q text", [Document("1", "pos", "T")],
                                  [Document("2", "neg"), Document("3", "neg2")], "7", [2.5], None)


def test_flagembedding_with_scores(tmp_path):
    path = jsonl(tmp_path / "g.jsonl",
                 {"query": "a", "pos": ["p1"], "neg": ["n1", "n2"], "pos_scores": [1], "neg_scores": [0.5, 0.1], "prompt": "x"},
                 {"query": "b", "pos": ["p2"], "neg": []})
    first, second = read_groups(path)
    assert first.positives == [Document("", "p1")] and first.negative_scores == [0.5, 0.1]
    assert first.positive_scores == [1.0] and first.query_id is None
    assert second.negatives == [] and second.positive_scores is None


def test_reading_is_lazy(tmp_path):
    path = jsonl(tmp_path / "g.jsonl", {"query": "a", "pos": ["p"], "neg": []}, "{broken")
    groups = read_groups(path)
    assert next(groups).query == "a"  # the bad second line is not read yet
    with pytest.raises(DataFormatError):
        next(groups)


GOOD_IDS = {"query_id": "q1", "query_text": "x", "positive_document_ids": ["d1"], "negative_document_ids": ["d2"]}
GOOD_PASSAGES = {"query": "a", "positive_passages": [{"docid": "1", "text": "p"}], "negative_passages": []}
GOOD_FLAG = {"query": "a", "pos": ["p"], "neg": ["n"]}
ERROR_CASES = {  # case: (a good first line, the bad second line, words of the fix)
    "bad json": (GOOD_FLAG, '{"query": "a", "pos": ["p"]', "complete JSON object"),
    "not an object": (GOOD_FLAG, "[1, 2]", "JSON object"),
    "no format fields": (GOOD_FLAG, {"query": "a", "positives": ["p"]}, "one of these three formats"),
    "ambiguous": (GOOD_FLAG, {"query": "a", "pos": ["p"], "positive_passages": []}, "one format per line"),
    "mixed formats": (GOOD_IDS, GOOD_FLAG, "one format"),
    "no positive": (GOOD_IDS, {**GOOD_IDS, "positive_document_ids": []}, "at least one positive"),
    "unknown ids": (GOOD_IDS, {**GOOD_IDS, "negative_document_ids": ["d2", "nope"]}, "corpus these groups were made from"),
    "missing query": (GOOD_FLAG, {"pos": ["p"], "neg": []}, "'query'"),
    "missing query id": (GOOD_IDS, {k: v for k, v in GOOD_IDS.items() if k != "query_id"}, "'query_id'"),
    "ids not a list": (GOOD_IDS, {**GOOD_IDS, "positive_document_ids": "d1"}, "JSON list"),
    "empty passage": (GOOD_PASSAGES, {"query": "a", "positive_passages": [{"docid": "1", "text": " "}]}, "give it text"),
    "passage without text": (GOOD_PASSAGES, {"query": "a", "positive_passages": [{"docid": "1"}]}, '"text": "..."'),
    "score count": (GOOD_FLAG, {**GOOD_FLAG, "pos_scores": [1.0, 2.0]}, "one score per"),
    "score type": (GOOD_FLAG, {**GOOD_FLAG, "pos_scores": ["high"]}, "list of numbers"),
    "empty query": (GOOD_FLAG, {**GOOD_FLAG, "query": " "}, "give the query a text"),
    "empty pos text": (GOOD_FLAG, {**GOOD_FLAG, "pos": [""]}, "give it text"),
    "query not in queries": (GOOD_IDS, {**GOOD_IDS, "query_id": "q99", "query_text": ""}, "queries file"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_group_errors_name_file_line_and_fix(tmp_path, corpus, queries, case):
    good, bad, fix = ERROR_CASES[case]
    path = jsonl(tmp_path / "g.jsonl", good, bad)
    with pytest.raises(DataFormatError) as info:
        list(read_groups(path, corpus=corpus, queries=queries))
    check_error(info, path, 2, fix)


def test_group_errors_without_corpus_or_queries(tmp_path, corpus):
    path = jsonl(tmp_path / "g.jsonl", GOOD_IDS)
    with pytest.raises(DataFormatError) as info:
        list(read_groups(path))
    check_error(info, path, 1, "--corpus")
    path = jsonl(tmp_path / "g2.jsonl", {**GOOD_IDS, "query_text": ""})
    with pytest.raises(DataFormatError) as info:
        list(read_groups(path, corpus=corpus))
    check_error(info, path, 1, "--queries")


def test_group_wrong_encoding(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_bytes(b'{"query": "a", "pos": ["p"]}\n{"query": "\xe9", "pos": ["p"]}\n')
    with pytest.raises(DataFormatError) as info:
        list(read_groups(path))
    check_error(info, path, 2, "UTF-8")


def test_forced_format_mismatch_and_unknown_format(tmp_path):
    path = jsonl(tmp_path / "g.jsonl", {"query": "a", "pos": ["p"]})
    with pytest.raises(DataFormatError, match="requested format is tevatron-passages"):
        list(read_groups(path, fmt="tevatron-passages"))
    with pytest.raises(DataFormatError, match="unknown training-group format"):
        list(read_groups(path, fmt="sbert"))


def test_training_group_validates():
    with pytest.raises(ValueError, match="no positive"):
        TrainingGroup("q", [])
    with pytest.raises(ValueError, match="1 negative scores for 0"):
        TrainingGroup("q", [Document("1", "p")], negative_scores=[1.0])


GROUPS = [
    TrainingGroup("cats?", [Document("d1", "Cats purr.", "Cats")], [Document("d2", "Dogs bark.", "Dogs")], "q1",
                  [0.9], [0.1]),
    TrainingGroup("honey?", [Document("d5", "Bees make honey.")], [], "q3"),
]


@pytest.mark.parametrize("fmt", GROUP_FORMATS)
def test_write_read_round_trip(tmp_path, fmt):
    path = tmp_path / f"{fmt}.jsonl"
    assert write_groups(path, GROUPS, fmt=fmt) == 2
    corpus = Corpus.from_documents([d for g in GROUPS for d in g.positives + g.negatives])
    back = list(read_groups(path, corpus=corpus))
    if fmt == "tevatron-passages":
        assert back == GROUPS
    elif fmt == "tevatron-ids":  # ids only: documents come back from the corpus, scores are not stored
        assert [(g.query_id, g.query, g.positives, g.negatives) for g in back] == \
               [(g.query_id, g.query, g.positives, g.negatives) for g in GROUPS]
    else:  # plain strings: title and text are joined, ids are not stored
        assert [g.positives[0].text for g in back] == ["Cats Cats purr.", "Bees make honey."]
        assert back[0].positive_scores == [0.9] and back[1].negative_scores is None


def test_write_tevatron_ids_needs_ids_and_is_atomic(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text("old\n")
    flag = TrainingGroup("q", [Document("", "p")])
    with pytest.raises(DataFormatError, match="tevatron-passages or flagembedding instead"):
        write_groups(path, [GROUPS[0], flag], fmt="tevatron-ids")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["g.jsonl"]
