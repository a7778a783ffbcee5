"""Mutation fuzzing of nestrank's readers, shared by tests/test_fuzz.py (a few dozen cases each) and
bench/reliability.py (a thousand or more each).

Each :class:`Reader` pairs a valid seed file with nestrank's reader and, for text formats, an
independent reference parser written from the documented format (not from nestrank's code paths:
whole-buffer splitting, regular expressions, ``json``/``tomllib``). A hypothesis-drawn
:data:`PLANS` entry mutates the seed (bit flips, inserted bytes and tokens, deleted or swapped
lines and fields, truncation); :func:`run_case` then classifies the outcome:

- ``correct``: nestrank's result equals the reference's reading of the mutated bytes;
- ``error``: nestrank raised one of its own errors and the reference also found the file invalid;
- ``rejected_valid``: nestrank raised its own error, the reference read the file (a disagreement
  about the format, reported apart);
- ``traceback``: anything other than a nestrank error escaped;
- ``silent_wrong``: nestrank returned a result that differs from the reference, or accepted a
  file the reference rejects.

Index directories (manifest + files) have no reference parser: a mutated index must search
exactly like the original or raise a nestrank error.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from nestrank.errors import NestrankError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class Invalid(Exception):
    """The reference parser found the input invalid."""


# -- mutations ---------------------------------------------------------------------------------
TOKENS = [b"\t", b" ", b"\n", b"\r\n", b"\r", b"\x00", b"\xff", b"\xc3", b"\xef\xbb\xbf", b'"', b"'", b"{", b"}",
          b"[", b"]", b",", b":", b"=", b"#", b"null", b"true", b"false", b"0", b"1", b"-1", b"2", b"+3", b"1.5",
          b"1e999", b"-inf", b"NaN", b"nan", b"1_0", "\u00b2".encode(), "\u0663".encode(), b"\\u0000", b"\\ud800",
          b'\\"', b"<DOC>", b"</DOC>", b"<DOCNO>", b"</DOCNO>", b"<TITLE>", b"</TITLE>", b"<TEXT>", b"&amp;", b"&#0;",
          b"Q0", b"\x0b", b"\x1c", "\u2028".encode(), "\u00a0".encode(), "\u00e9".encode(), b"x", b"d1", b"d2",
          b"q1", b"q2", b'"_id"', b'"text"', b'"title"', b'"pos"', b'"query"', b"[train]", b"[model]", b"[reranker]",
          b"[first_stage]", b"inf", b"2024-01-01", b"1 2", b"a b"]
#: Numbers as careless tools (or other locales) write them; Python's int()/float() read several of them.
NUMBERS = [b"1_0", "\u00b2".encode(), "\u0663".encode(), "\u0967".encode(), b"+3", b"-0", b"1e3", b"0x10", b"1.",
           b".5", b"inf", b"nan", b"-inf", b"1e999", b"00", b"-1", b"2.5", b"1,5"]
POSITION = st.integers(0, 1 << 20)
NUMBER_OPERATION = st.tuples(st.just("number"), POSITION, POSITION, st.sampled_from(NUMBERS))
OPERATIONS = st.one_of(
    NUMBER_OPERATION,
    NUMBER_OPERATION,
    st.tuples(st.just("flip"), POSITION, st.integers(0, 7)),
    st.tuples(st.just("insert"), POSITION, st.sampled_from(TOKENS)),
    st.tuples(st.just("delete"), POSITION, st.integers(1, 24)),
    st.tuples(st.just("truncate"), POSITION),
    st.tuples(st.just("dup_line"), POSITION),
    st.tuples(st.just("del_line"), POSITION),
    st.tuples(st.just("swap_lines"), POSITION, POSITION),
    st.tuples(st.just("field"), POSITION, POSITION, st.sampled_from(TOKENS)),
    st.tuples(st.just("tabs"), POSITION),
)
#: A mutation plan: one to three operations, applied in order.
PLANS = st.lists(OPERATIONS, min_size=1, max_size=3)
#: For index directories: which file (an index into the sorted file list) and a plan for it.
INDEX_PLANS = st.tuples(POSITION, st.one_of(PLANS, st.just([("remove",)])))


def mutate(data: bytes, plan: list[tuple]) -> bytes:
    """``data`` after every operation of ``plan`` (positions are taken modulo the current length)."""
    for op in plan:
        kind, args = op[0], op[1:]
        lines = data.split(b"\n")
        if kind == "flip" and data:
            at = args[0] % len(data)
            data = data[:at] + bytes([data[at] ^ (1 << args[1])]) + data[at + 1:]
        elif kind == "insert":
            at = args[0] % (len(data) + 1)
            data = data[:at] + args[1] + data[at:]
        elif kind == "delete" and data:
            at = args[0] % len(data)
            data = data[:at] + data[at + args[1]:]
        elif kind == "truncate":
            data = data[:args[0] % (len(data) + 1)]
        elif kind == "dup_line":
            at = args[0] % len(lines)
            data = b"\n".join(lines[:at + 1] + lines[at:])
        elif kind == "del_line":
            at = args[0] % len(lines)
            data = b"\n".join(lines[:at] + lines[at + 1:])
        elif kind == "swap_lines":
            i, j = args[0] % len(lines), args[1] % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
            data = b"\n".join(lines)
        elif kind == "field":
            at = args[0] % len(lines)
            fields = re.split(rb"([\t ,:])", lines[at])
            fields[(args[1] % len(fields)) & ~1] = args[2]  # an even index: a field, not a separator
            lines[at] = b"".join(fields)
            data = b"\n".join(lines)
        elif kind == "number":  # replace a numeric field (a grade, rank, score, setting) of the line
            at = args[0] % len(lines)
            fields = re.split(rb"([\t ,:=\[\]])", lines[at])
            numeric = [i for i in range(0, len(fields), 2) if re.fullmatch(rb"[-+0-9.eE]+", fields[i])]
            if numeric:
                fields[numeric[args[1] % len(numeric)]] = args[2]
                lines[at] = b"".join(fields)
                data = b"\n".join(lines)
        elif kind == "tabs":
            at = args[0] % len(lines)
            lines[at] = lines[at].replace(b"\t", b"\x01").replace(b" ", b"\t").replace(b"\x01", b" ")
            data = b"\n".join(lines)
    return data


# -- readers -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reader:
    """A seed, nestrank's reader and the reference (both return plain data; the reference raises :class:`Invalid`)."""

    name: str
    suffix: str
    seed: bytes
    read: Callable[[Path], Any]
    reference: Callable[[bytes], Any] | None = None
    #: For config files: ``compare(nestrank_result, reference_result)`` returns a problem or ``None``.
    compare: Callable[[Any, Any], str | None] | None = None
    #: Whether the reference knows every rule (then a file it reads must not be rejected); configs have
    #: range checks the reference does not model.
    strict: bool = True


@dataclass
class Tally:
    """Outcomes of a reader's cases (see the module docstring), with the first few problem cases."""

    cases: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("correct", "error", "rejected_valid", "traceback", "silent_wrong"), 0))
    examples: list[str] = field(default_factory=list)

    def add(self, outcome: str, detail: str) -> None:
        self.cases += 1
        self.outcomes[outcome] += 1
        if outcome in ("traceback", "silent_wrong", "rejected_valid") and \
                sum(e.startswith(outcome) for e in self.examples) < 3:
            self.examples.append(f"{outcome}: {detail}")


def run_case(reader: Reader, data: bytes, workdir: Path) -> tuple[str, str]:
    """Write ``data``, read it with nestrank and the reference; the outcome and a description (see the module doc)."""
    path = workdir / f"input{reader.suffix}"
    path.write_bytes(data)
    valid: bool | None
    try:
        expected: Any = reader.reference(data) if reader.reference else None
        valid = True if reader.strict else None
    except Invalid as exc:
        expected, valid = str(exc), False
    return classify(lambda: reader.read(path), expected, valid, reader.compare, repr(data[:300]))


def classify(read: Callable[[], Any], expected: Any, valid: bool | None,
             compare: Callable[[Any, Any], str | None] | None, shown: str) -> tuple[str, str]:
    """Run ``read`` and compare its result with ``expected``. ``valid``: the reference read the input (``True``),
    found it invalid (``False``), or read it without knowing every rule (``None``: a rejection is no disagreement)."""
    try:
        got = read()
    except NestrankError as exc:
        return ("rejected_valid", f"{exc} | reference read it | {shown}") if valid else ("error", "")
    except Exception as exc:  # noqa: BLE001 (what this harness counts)
        return "traceback", f"{type(exc).__name__}: {exc} | {shown}"
    if valid is False:
        return "silent_wrong", f"accepted, the reference says: {expected} | {shown}"
    problem = compare(got, expected) if compare else (None if got == expected else f"got {got!r:.300}, "
                                                                                   f"expected {expected!r:.300}")
    return ("silent_wrong", f"{problem} | {shown}") if problem else ("correct", "")


# -- reference parsers: the documented formats, written independently -----------------------------------
INT = re.compile(r"[+-]?[0-9]+")
FLOAT = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)", re.IGNORECASE)
ID_KEYS = ("_id", "id", "docid", "doc_id")


def text_lines(data: bytes) -> list[str]:
    """Non-blank lines, split at ``\\n`` only, each UTF-8 (a BOM allowed on line 1), without trailing ``\\r``/``\\n``."""
    out = []
    for number, raw in enumerate(data.split(b"\n")):
        try:
            line = raw.decode("utf-8-sig" if number == 0 else "utf-8").rstrip("\r")
        except UnicodeDecodeError:
            raise Invalid(f"line {number + 1}: not UTF-8") from None
        if line.strip():
            out.append(line)
    return out


def json_object(line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        raise Invalid("bad JSON") from None
    if not isinstance(obj, dict):
        raise Invalid("not an object")
    return obj


def json_id(obj: dict) -> str:
    present = [key for key in ID_KEYS if key in obj]
    value = obj[present[0]] if present else None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Invalid("no id")
    return str(value)


def unique_nonempty(items: list[tuple], what: str) -> list[tuple]:
    ids = [item[0] for item in items]
    if not items:
        raise Invalid(f"no {what}")
    if any(not i.strip() for i in ids) or len(set(ids)) != len(ids):
        raise Invalid(f"empty or duplicate {what} id")
    return items


def corpus_reference(fmt: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> tuple[list, list]:
        docs = []
        for line in text_lines(data):
            if fmt == "jsonl":
                obj = json_object(line)
                doc_id = json_id(obj)
                text = next((obj[key] for key in ("text", "contents") if key in obj), None)
                title = "" if obj.get("title") is None else obj["title"]
                if not isinstance(text, str) or not isinstance(title, str):
                    raise Invalid("title/text")
            else:
                cells = line.split("\t")
                if len(cells) not in (2, 3):
                    raise Invalid("columns")
                doc_id, title, text = (cells[0], "", cells[1]) if len(cells) == 2 else cells
            if not (f"{title} {text}".strip() if title else text.strip()):
                raise Invalid("empty document")
            docs.append((doc_id, title, text))
        unique_nonempty(docs, "document")
        return docs, docs

    return parse


TITLE_TAGS = ("TITLE", "HEAD", "HEADLINE", "HL", "TI", "HEADER")


def trec_reference(data: bytes) -> tuple[list, list]:
    """TREC SGML: ``<DOC>`` ... ``</DOC>`` at line starts; ``<DOCNO>`` the id, the first title tag the title."""
    def clean(text: str) -> str:
        return " ".join(html.unescape(re.sub(r"<[^>]*>", " ", text)).split())

    text = data.decode("utf-8", errors="replace")
    docs, block = [], None
    for line in re.findall(r"[^\n]*\n|[^\n]+$", text):
        head = line.lstrip().upper()
        if head.startswith("<DOC>"):
            if block is not None:
                raise Invalid("nested <DOC>")
            block = [line[line.index(">") + 1:]]
        elif head.startswith("</DOC>"):
            if block is None:
                raise Invalid("</DOC> without <DOC>")
            body = "".join(block)
            number = re.search(r"<DOCNO>(.*?)</DOCNO>", body, re.S | re.I)
            if number is None or not number.group(1).strip():
                raise Invalid("no DOCNO")
            rest, title = body[number.end():], ""
            for tag in TITLE_TAGS:
                found = re.search(rf"<{tag}\b[^>]*>(.*?)</{tag}>", rest, re.S | re.I)
                if found:
                    title, rest = clean(found.group(1)), rest[:found.start()] + " " + rest[found.end():]
                    break
            docs.append((number.group(1).strip(), title, clean(rest)))
            block = None
        elif block is not None:
            block.append(line)
    if block is not None:
        raise Invalid("unclosed <DOC>")
    for _, title, body in docs:
        if not (f"{title} {body}".strip() if title else body.strip()):
            raise Invalid("empty document")
    unique_nonempty(docs, "document")
    return docs, docs


def queries_reference(fmt: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> list:
        queries = []
        for line in text_lines(data):
            if fmt == "jsonl":
                obj = json_object(line)
                qid = json_id(obj)
                text = obj["text"] if "text" in obj else obj.get("query")
                if not isinstance(text, str):
                    raise Invalid("text")
            else:
                cells = line.split("\t")
                if len(cells) != 2:
                    raise Invalid("columns")
                qid, text = cells
            if not text.strip():
                raise Invalid("empty query")
            queries.append((qid, text))
        return unique_nonempty(queries, "query")

    return parse


def qrels_reference(data: bytes) -> dict:
    judged: dict[str, dict[str, int]] = {}
    columns = None
    for number, line in enumerate(text_lines(data)):
        cells = line.split()
        if number == 0 and len(cells) == 3 and not INT.fullmatch(cells[2]):
            continue
        columns = columns or len(cells)
        if columns not in (3, 4) or len(cells) != columns:
            raise Invalid("columns")
        qid, doc, grade = (cells[0], cells[1], cells[2]) if columns == 3 else (cells[0], cells[2], cells[3])
        if not INT.fullmatch(grade) or doc in judged.setdefault(qid, {}):
            raise Invalid("grade or duplicate")
        judged[qid][doc] = int(grade)
    if not judged:
        raise Invalid("empty")
    return judged


def ranked(scores: dict[str, dict[str, float]]) -> dict[str, list]:
    """Best first; ties by document id descending (trec_eval's order)."""
    out = {}
    for qid, docs in scores.items():
        by_id = sorted(docs.items(), key=lambda item: item[0], reverse=True)
        out[qid] = sorted(by_id, key=lambda item: -item[1])
    return out


def run_reference(data: bytes) -> dict:
    lines = text_lines(data)
    if lines and len(lines[0].split()) == 3:
        return run_tsv_reference(lines)
    scores: dict[str, dict[str, float]] = {}
    rows: dict[str, list[tuple[str, float]]] = {}
    for line in lines:
        cells = line.split()
        if len(cells) != 6 or not FLOAT.fullmatch(cells[4]) or math.isnan(float(cells[4])):
            raise Invalid("columns or score")
        qid, doc, score = cells[0], cells[2], float(cells[4])
        if doc in scores.setdefault(qid, {}):
            raise Invalid("duplicate")
        scores[qid][doc] = score
        rows.setdefault(qid, []).append((cells[3], score))
    if not scores:
        raise Invalid("empty")
    verdicts = []
    for qid_rows in rows.values():
        ranks = [r for r, _ in qid_rows]
        if len({s for _, s in qid_rows}) < 2 or not all(INT.fullmatch(r) for r in ranks) or \
                len({int(r) for r in ranks}) != len(ranks):
            continue
        in_rank_order = [s for _, s in sorted(qid_rows, key=lambda row: int(row[0]))]
        verdicts.append(in_rank_order == sorted(in_rank_order))
    if verdicts and all(verdicts):
        raise Invalid("every query's scores rise with its ranks")
    return ranked(scores)


def run_tsv_reference(lines: list[str]) -> dict:
    scores: dict[str, dict[str, float]] = {}
    seen: dict[str, set[int]] = {}
    for line in lines:
        cells = line.split()
        if len(cells) != 3 or not INT.fullmatch(cells[2]) or int(cells[2]) < 1:
            raise Invalid("columns or rank")
        qid, doc, rank = cells[0], cells[1], int(cells[2])
        if rank in seen.setdefault(qid, set()) or doc in scores.setdefault(qid, {}):
            raise Invalid("duplicate")
        seen[qid].add(rank)
        scores[qid][doc] = 1.0 / rank
    if not scores:
        raise Invalid("empty")
    return ranked(scores)


# -- training groups ---------------------------------------------------------------------------------
GROUP_CORPUS = {"d1": ("Cats", "Cats purr."), "d2": ("", "Dogs bark."), "d3": ("Bees", "Bees make honey.")}
GROUP_QUERIES = {"q1": "why do cats purr", "q2": "do dogs bark"}
MARKERS = {"tevatron-ids": "positive_document_ids", "tevatron-passages": "positive_passages", "flagembedding": "pos"}


def _gid(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise Invalid("id")
    return str(value)


def _glist(obj: dict, key: str, required: bool) -> list:
    if key not in obj:
        if required:
            raise Invalid(f"missing {key}")
        return []
    if not isinstance(obj[key], list):
        raise Invalid(f"{key} not a list")
    return obj[key]


def _numbers(values: list) -> list[float]:
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise Invalid("scores")
    return [float(v) for v in values]


def _group(obj: dict, fmt: str) -> tuple:
    pos_scores = neg_scores = None
    if fmt == "tevatron-ids":
        qid = _gid(obj.get("query_id"))
        query = "" if obj.get("query_text") is None else obj["query_text"]
        if not isinstance(query, str):
            raise Invalid("query_text")
        if not query:
            if qid not in GROUP_QUERIES:
                raise Invalid("unknown query")
            query = GROUP_QUERIES[qid]
        ids = {key: [_gid(v) for v in _glist(obj, key, key.startswith("positive"))]
               for key in ("positive_document_ids", "negative_document_ids")}
        if any(d not in GROUP_CORPUS for values in ids.values() for d in values):
            raise Invalid("unknown document")
        pos, neg = ([(d, *GROUP_CORPUS[d]) for d in ids[key]] for key in ids)
    elif fmt == "tevatron-passages":
        qid = None if obj.get("query_id") is None else _gid(obj["query_id"])
        query = obj.get("query")
        if not isinstance(query, str):
            raise Invalid("query")
        sides = []
        for key in ("positive_passages", "negative_passages"):
            docs, scores = [], []
            for passage in _glist(obj, key, key.startswith("positive")):
                if not isinstance(passage, dict) or not isinstance(passage.get("text"), str):
                    raise Invalid("passage")
                title = "" if passage.get("title") is None else passage["title"]
                doc_id = passage.get("docid")
                if not isinstance(title, str) or (doc_id is not None and (isinstance(doc_id, bool)
                                                                         or not isinstance(doc_id, str | int))):
                    raise Invalid("passage title or docid")
                docs.append(("" if doc_id is None else str(doc_id), title, passage["text"]))
                scores.append(passage.get("score"))
            sides.append((docs, None if not docs or None in scores else _numbers(scores)))
        (pos, pos_scores), (neg, neg_scores) = sides
    else:
        qid, query = None, obj.get("query")
        if not isinstance(query, str):
            raise Invalid("query")
        texts = [_glist(obj, key, key == "pos") for key in ("pos", "neg")]
        if not all(isinstance(t, str) for side in texts for t in side):
            raise Invalid("passages")
        pos, neg = ([("", "", t) for t in side] for side in texts)
        pos_scores, neg_scores = (None if obj.get(key) is None else _numbers(_glist(obj, key, True))
                                  for key in ("pos_scores", "neg_scores"))
    if not query.strip() or not pos or any(not (f"{t} {x}".strip() if t else x.strip()) for _, t, x in pos + neg):
        raise Invalid("empty query, no positive or empty passage")
    for docs, scores in ((pos, pos_scores), (neg, neg_scores)):
        if scores is not None and (len(scores) != len(docs) or not all(math.isfinite(s) for s in scores)):
            raise Invalid("scores")
    return query, pos, neg, qid, pos_scores, neg_scores


def groups_reference(data: bytes) -> list:
    groups, fmt = [], None
    for line in text_lines(data):
        obj = json_object(line)
        found = [name for name, marker in MARKERS.items() if marker in obj]
        if len(found) != 1 or (fmt is not None and found[0] != fmt):
            raise Invalid("format")
        fmt = found[0]
        groups.append(_group(obj, fmt))
    return groups


def read_groups_plain(path: Path) -> list:
    from nestrank.data import Corpus, Document
    from nestrank.data.groups import read_groups

    corpus = Corpus.from_documents(Document(d, text, title) for d, (title, text) in GROUP_CORPUS.items())
    return [(g.query, [(d.id, d.title, d.text) for d in g.positives], [(d.id, d.title, d.text) for d in g.negatives],
             g.query_id, g.positive_scores, g.negative_scores) for g in read_groups(path, corpus, GROUP_QUERIES)]


# -- TOML configs -------------------------------------------------------------------------------------
def toml_reference(data: bytes) -> dict:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        raise Invalid("not TOML") from None


def same_value(got: Any, wanted: Any) -> bool:
    """Equal and of the same type (an integer is accepted where a float is read)."""
    if isinstance(wanted, list):
        return isinstance(got, list) and len(got) == len(wanted) and all(map(same_value, got, wanted))
    if type(got) is float and type(wanted) is int:
        return got == wanted
    return type(got) is type(wanted) and (got == wanted or (isinstance(got, float) and math.isnan(got)
                                                            and math.isnan(wanted)))


def config_comparison(defaults: dict) -> Callable[[dict, dict], str | None]:
    """A config read by nestrank must hold every key of the TOML (same value and type) and defaults elsewhere."""
    def compare(got: dict, toml: dict) -> str | None:
        for section, values in defaults.items():
            for key, default in values.items():
                given = toml.get(section, {}).get(key, default)
                if not same_value(got[section][key], given):
                    return f"{section}.{key}: read {got[section][key]!r}, the file (or default) says {given!r}"
        unknown = [f"{s}.{k}" for s, values in toml.items() for k in (values if isinstance(values, dict) else [None])
                   if s not in defaults or k not in defaults[s]]
        return f"accepted unknown keys {unknown}" if unknown else None

    return compare


def sections(config: Any) -> dict:
    return {f.name: dataclasses.asdict(getattr(config, f.name)) for f in dataclasses.fields(config)}


# -- the readers ----------------------------------------------------------------------------------------
def _corpus_plain(path: Path) -> tuple[list, list]:
    from nestrank.data import Corpus

    corpus = Corpus.open(path)
    docs = [(d.id, d.title, d.text) for d in corpus]
    return docs, [(d.id, d.title, d.text) for d in corpus.get_many(corpus.ids)]


def _queries_plain(path: Path) -> list:
    from nestrank.data import Queries

    return list(Queries.read(path).items())


def _qrels_plain(path: Path) -> dict:
    from nestrank.data import Qrels

    return Qrels.read(path).to_dict()


def _run_plain(path: Path) -> dict:
    from nestrank.data import Run

    run = Run.read(path)
    return {qid: run[qid] for qid in run}


def _train_config(path: Path) -> dict:
    from nestrank.train.config import load_config

    return sections(load_config(path))


def _pipeline_config(path: Path) -> dict:
    from nestrank.pipeline.config import load_pipeline_config

    return sections(load_pipeline_config(path))


def _doc(doc_id: str, title: str, text: str) -> str:
    return json.dumps({"_id": doc_id, "title": title, "text": text})


TRAIN_TOML = b"""[model]
backbone = "smollm2-135m"
dtype = "float32"

[lora]
r = 8
target_modules = ["q_proj", "v_proj"]

[data]
train_groups = "groups.jsonl"
group_size = 4
validation_fraction = 0.1

[train]
output_dir = "out/run"
batch_size = 8
learning_rate = 1e-3
warmup_ratio = 0.1
save_every = 5
"""
PIPELINE_TOML = b"""[data]
dataset = "../shared/data/scifact"

[first_stage]
method = "hybrid"
index = "out/scifact.hybrid"
rrf_k = 60.0
weights = [0.5, 0.5]
k = 100

[reranker]
model = "smollm2-135m-scifact"
profile = "light"
rerank_depth = 20
weight = 0.6
"""


def readers() -> list[Reader]:
    """Every file reader fuzzed, with its seed (see the module docstring)."""
    from nestrank.pipeline.config import PipelineConfig
    from nestrank.train.config import TrainConfig

    docs = [("d1", "Cats", "Cats purr when happy."), ("d2", "", "Dogs bark at strangers."),
            ("3", "Fish", "Fish swim in schools.")]
    corpus_jsonl = "".join(_doc(*d) + "\n" for d in docs).encode()
    corpus_tsv = b"d1\tCats\tCats purr when happy.\nd2\tDogs bark at strangers.\n3\tFish\tFish swim in schools.\n"
    corpus_trec = (b"<DOC>\n<DOCNO> d1 </DOCNO>\n<TITLE>Cats</TITLE>\n<TEXT>Cats purr &amp; sleep.</TEXT>\n</DOC>\n"
                   b"<DOC>\n<DOCNO>d2</DOCNO>\n<TEXT>\nDogs <b>bark</b>.\n</TEXT>\n</DOC>\n")
    queries_jsonl = b'{"_id": "q1", "text": "why do cats purr"}\n{"_id": 2, "text": "dogs"}\n{"id": "q3", "query": "x"}\n'
    queries_tsv = b"q1\twhy do cats purr\nq2\tdo dogs bark\n"
    qrels_tsv = b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\nq2\td3\t2\n"
    qrels_trec = b"q1 0 d1 1\nq1 0 d2 0\nq2 0 d3 2\nq2 0 d4 -1\n"
    run_trec = (b"q1 Q0 d1 1 2.5 bm25\nq1 Q0 d2 2 1.25 bm25\nq1 Q0 d3 3 1.25 bm25\nq2 Q0 d3 1 -1e-3 bm25\n"
                b"q2 Q0 d1 2 -0.5 bm25\n")
    run_tsv = b"q1\td1\t1\nq1\td2\t2\nq2\td3\t1\n"
    groups = "".join(json.dumps(g) + "\n" for g in [
        {"query_id": "q1", "query": "why do cats purr",
         "positive_passages": [{"docid": "d1", "title": "Cats", "text": "Cats purr.", "score": 2.0}],
         "negative_passages": [{"docid": 7, "title": "", "text": "Dogs bark.", "score": 0.5}]},
        {"query": "bees", "positive_passages": [{"text": "Bees make honey."}], "negative_passages": []}]).encode()
    flag = (b'{"query": "q", "pos": ["a text"], "neg": ["b", "c"], "pos_scores": [1.0], "neg_scores": [0.5, 0]}\n'
            b'{"query": "r", "pos": ["d"]}\n')
    tevatron_ids = (b'{"query_id": "q1", "query_text": "", "positive_document_ids": ["d1"], '
                    b'"negative_document_ids": ["d2", "d3"]}\n'
                    b'{"query_id": "q9", "query_text": "bees", "positive_document_ids": ["d3"]}\n')
    return [
        Reader("corpus-jsonl", ".jsonl", corpus_jsonl, _corpus_plain, corpus_reference("jsonl")),
        Reader("corpus-tsv", ".tsv", corpus_tsv, _corpus_plain, corpus_reference("tsv")),
        Reader("corpus-trec", ".trec", corpus_trec, _corpus_plain, trec_reference),
        Reader("queries-jsonl", ".jsonl", queries_jsonl, _queries_plain, queries_reference("jsonl")),
        Reader("queries-tsv", ".tsv", queries_tsv, _queries_plain, queries_reference("tsv")),
        Reader("qrels-tsv", ".tsv", qrels_tsv, _qrels_plain, qrels_reference),
        Reader("qrels-trec", ".txt", qrels_trec, _qrels_plain, qrels_reference),
        Reader("run-trec", ".run", run_trec, _run_plain, run_reference),
        Reader("run-tsv", ".tsv", run_tsv, _run_plain, run_reference),
        Reader("groups-tevatron-passages", ".jsonl", groups, read_groups_plain, groups_reference),
        Reader("groups-flagembedding", ".jsonl", flag, read_groups_plain, groups_reference),
        Reader("groups-tevatron-ids", ".jsonl", tevatron_ids, read_groups_plain, groups_reference),
        Reader("config-trainer", ".toml", TRAIN_TOML, _train_config, toml_reference,
               config_comparison(sections(TrainConfig())), strict=False),
        Reader("config-pipeline", ".toml", PIPELINE_TOML, _pipeline_config, toml_reference,
               config_comparison(sections(PipelineConfig())), strict=False),
    ]


# -- index directories -------------------------------------------------------------------------------
INDEX_QUERIES = {"a": "text number 3", "b": "title 7 text", "c": "number"}


def build_index(root: Path) -> tuple[Path, dict]:
    """A small hybrid index (BM25 + flat FAISS, 2 shards) and what it returns for :data:`INDEX_QUERIES`."""
    from helpers import HashEncoder, make_corpus

    from nestrank.retrieve import HybridIndex
    from nestrank.retrieve.encode import encode_corpus

    corpus = make_corpus(30)
    encode_corpus(corpus, HashEncoder(8), root / "emb", num_shards=2, dtype="float32", model="hash-encoder")
    index = HybridIndex.build(corpus, root / "emb", root / "index")
    return index.path, search_index(index.path)


def search_index(path: Path, verify: str = "fast") -> dict:
    from helpers import HashEncoder

    from nestrank.retrieve import open_index

    run = open_index(path, verify=verify).search(INDEX_QUERIES, 5, encoder=HashEncoder(8))
    return {qid: run[qid] for qid in run}


def without_checksums(index: Path, out: Path) -> Path:
    """A copy of ``index`` with no ``checksums.json`` anywhere: an index as an older nestrank wrote it."""
    from nestrank.integrity import CHECKSUMS_FILE

    shutil.copytree(index, out)
    for record in out.rglob(CHECKSUMS_FILE):
        record.unlink()
    return out


def index_case(index: Path, expected: dict, plan: tuple[int, list], workdir: Path, verify: str = "fast"
               ) -> tuple[str, str]:
    """Mutate one file of a copy of ``index`` and search it: the original results or a nestrank error."""
    copy = Path(tempfile.mkdtemp(dir=workdir))
    shutil.copytree(index, copy / "index")
    files = sorted(p for p in (copy / "index").rglob("*") if p.is_file())
    target = files[plan[0] % len(files)]
    if plan[1] == [("remove",)]:
        target.unlink()
    else:
        target.write_bytes(mutate(target.read_bytes(), plan[1]))
    try:
        return classify(lambda: search_index(copy / "index", verify), expected, None, None,
                        f"{target.relative_to(copy)} {plan[1]!r:.200}")
    finally:
        shutil.rmtree(copy, ignore_errors=True)
