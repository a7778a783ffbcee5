"""TREC SGML collections and topic files: a real collection (SciFact) written in TREC form reads back equal."""

from __future__ import annotations

import gzip
import html
from pathlib import Path

import pytest

from nestrank.data import Corpus, Qrels
from nestrank.data.trec import is_trec_sgml, iter_trec_documents, read_trec_topics
from nestrank.errors import ConfigError, DataFormatError

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


def write_sgml(docs, path: Path, gz: bool) -> None:
    blocks = [f"<DOC>\n<DOCNO> {d.id} </DOCNO>\n<HEADLINE>\n{html.escape(d.title)}\n</HEADLINE>\n<TEXT>\n"
              f"{html.escape(d.text)}\n</TEXT>\n</DOC>\n" for d in docs]
    data = "".join(blocks).encode()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.skipif(not SCIFACT.is_dir(), reason="needs ../shared/data/scifact")
def test_scifact_as_a_gzipped_multi_file_trec_collection_reads_back_equal(tmp_path):
    corpus = Corpus.open(SCIFACT / "corpus.jsonl")
    docs = list(corpus)
    folder = tmp_path / "collection"
    folder.mkdir()
    for part, chunk in enumerate(docs[i:i + 2000] for i in range(0, len(docs), 2000)):
        write_sgml(chunk, folder / f"part{part}.sgml{'.gz' if part % 2 == 0 else ''}", gz=part % 2 == 0)
    assert is_trec_sgml(folder)
    read = list(iter_trec_documents(folder))
    assert len(read) == len(docs) == 5183
    fold = " ".join
    for mine, theirs in zip(read, docs, strict=True):
        assert (mine.id, mine.title, mine.text) == (theirs.id, fold(theirs.title.split()), fold(theirs.text.split()))


def test_topics_fields_and_labels(tmp_path):
    path = tmp_path / "topics.txt"
    path.write_text("<top>\n<num> Number: 301\n<title> International Organized Crime\n\n<desc> Description:\n"
                    "Identify organizations that participate in\ninternational criminal activity.\n\n<narr> Narrative:\n"
                    "A relevant document must identify the organization.\n</top>\n\n"
                    "<top>\n<num> Number: 302 <title> Topic: Poliomyelitis &amp; Post-Polio\n<desc> Description: "
                    "Is the disease under control?\n</top>\n")
    assert read_trec_topics(path) == {"301": "International Organized Crime", "302": "Poliomyelitis & Post-Polio"}
    assert read_trec_topics(path, "desc")["301"] == ("Identify organizations that participate in international "
                                                     "criminal activity.")
    assert read_trec_topics(path, "title+desc")["302"] == "Poliomyelitis & Post-Polio Is the disease under control?"
    with pytest.raises(DataFormatError, match="topic 302 has no <narr>"):
        read_trec_topics(path, "narr")
    with pytest.raises(ConfigError, match="unknown topic field"):
        read_trec_topics(path, "summary")


@pytest.mark.parametrize(("content", "message", "line"), [
    ("<DOC>\n<TEXT>x</TEXT>\n</DOC>\n", "without a <DOCNO>", 1),
    ("<DOC>\n<DOCNO>a</DOCNO>\n<DOC>\n", "inside the document opened at line 1", 3),
    ("<DOC>\n<DOCNO>a</DOCNO>\ntext\n", "never closed", 1),
    ("</DOC>\n", "without an opening", 1),
])
def test_malformed_collections_name_file_and_line(tmp_path, content, message, line):
    path = tmp_path / "bad.sgml"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=message) as info:
        list(iter_trec_documents(path))
    assert f"bad.sgml:{line}:" in str(info.value)


def test_truncated_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.sgml.gz"
    path.write_bytes(gzip.compress(b"<DOC>\n<DOCNO>a</DOCNO>\n</DOC>\n" * 100)[:40])
    with pytest.raises(DataFormatError, match="cut.sgml.gz: cannot read it"):
        list(iter_trec_documents(path))


@pytest.mark.skipif(not SCIFACT.is_dir(), reason="needs ../shared/data/scifact")
def test_commands_take_trec_collections_and_topics(tmp_path):
    """BM25 over SciFact as a TREC collection with TREC topics gives the BEIR figures; convert writes JSONL."""
    from typer.testing import CliRunner

    from nestrank.cli import app
    from nestrank.cli import commands as _commands  # noqa: F401
    from nestrank.data import Queries, Run
    from nestrank.evaluate import evaluate

    docs = list(Corpus.open(SCIFACT / "corpus.jsonl"))
    folder = tmp_path / "collection"
    folder.mkdir()
    write_sgml(docs[:2500], folder / "a.sgml.gz", gz=True)
    write_sgml(docs[2500:], folder / "b", gz=False)  # no suffix: recognised by its content
    queries = Queries.read(SCIFACT / "queries.jsonl")
    topics = tmp_path / "topics.txt"
    topics.write_text("".join(f"<top>\n<num> Number: {q}\n<title> {html.escape(t)}\n<desc> Description:\nAbout "
                              f"{html.escape(t)}\n</top>\n\n" for q, t in queries.items()))
    assert Queries.read(topics)["1"] == queries["1"] and Corpus.open(folder).fmt == "trec"
    runner = CliRunner()
    for argv in (["index", "--corpus", str(folder), "--method", "bm25", "--out", str(tmp_path / "bm25.idx")],
                 ["search", "--index", str(tmp_path / "bm25.idx"), "--queries", str(topics), "--out",
                  str(tmp_path / "bm25.run")],
                 ["data", "convert", "--kind", "corpus", str(folder), str(tmp_path / "corpus.jsonl")],
                 ["data", "convert", "--kind", "queries", "--topic-field", "desc", str(topics),
                  str(tmp_path / "desc.jsonl")]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, (argv, result.output)
    ndcg = evaluate(Run.read_trec(tmp_path / "bm25.run"), Qrels.read(SCIFACT / "qrels" / "test.tsv"), ["nDCG@10"])
    assert abs(ndcg["nDCG@10"] - 0.6863) < 0.002  # whitespace folded by the SGML reader: nearly the JSONL figure
    assert len(Corpus.open(tmp_path / "corpus.jsonl")) == 5183
    assert Queries.read(tmp_path / "desc.jsonl")["1"] == "About " + queries["1"]
