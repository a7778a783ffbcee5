"""Helpers shared by the tests: tiny data sets, word-level tokenizers, a stand-in encoder, training groups.

The random Llama models and the byte tokenizer come from :mod:`nestrank.models.tiny` (the
benchmarks build their ``--model tiny`` models there too). The fixtures built from these
helpers live in conftest.py; test modules import from here, never from each other.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nestrank.data import Corpus, Document
from nestrank.data.groups import TrainingGroup, write_groups
from nestrank.models.tiny import save_tiny_llama
from nestrank.train.config import config_from_dict

if TYPE_CHECKING:
    import pytest

# --- a tiny BEIR data set -------------------------------------------------------------------------

TINY_DOCS = [
    {"_id": "d1", "title": "Cats", "text": "Cats purr when they are happy."},
    {"_id": "d2", "title": "Dogs", "text": "Dogs bark at strangers."},
    {"_id": "d3", "title": "", "text": "Fish swim in schools to avoid predators."},
    {"_id": "d4", "title": "Birds", "text": "Birds migrate south in winter."},
    {"_id": "d5", "title": "Bees", "text": "Bees make honey from nectar."},
]
TINY_QUERIES = [
    {"_id": "q1", "text": "why do cats purr"},
    {"_id": "q2", "text": "where do birds go in winter"},
    {"_id": "q3", "text": "how is honey made"},
]


def write_beir(root: Path) -> Path:
    """Write a five-document BEIR directory (corpus, queries, train/test qrels) at ``root``."""
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in TINY_DOCS), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in TINY_QUERIES), encoding="utf-8")
    header = "query-id\tcorpus-id\tscore\n"
    (root / "qrels" / "test.tsv").write_text(header + "q1\td1\t1\nq2\td4\t2\nq2\td2\t0\n", encoding="utf-8")
    (root / "qrels" / "train.tsv").write_text(header + "q3\td5\t1\n", encoding="utf-8")
    return root


# --- Matryoshka engine inputs ---------------------------------------------------------------------

QUERY = "what did the cat do"
DOCS = [
    "the cat sat on the mat and looked around the room",
    "dogs bark",
    "a much longer passage about nothing in particular, it goes on and on for a while",
    Document("d4", "felines rest on rugs", title="Cats"),
]


def truncated(model, layers: int):
    """A deep copy of a causal Llama keeping only its first ``layers`` decoder layers."""
    short = copy.deepcopy(model)
    short.model.layers = short.model.layers[:layers]
    short.config.num_hidden_layers = layers
    return short


def randomise_heads(model_dir: Path, out: Path, *, seed: int) -> Path:
    """Save a Matryoshka checkpoint of ``model_dir`` at ``out`` whose score heads are random (``seed``)."""
    import torch

    from nestrank.models.matryoshka import MatryoshkaReranker

    reranker = MatryoshkaReranker.from_pretrained(str(model_dir), dtype="float32", device="cpu", max_passage_tokens=40)
    torch.manual_seed(seed)
    with torch.no_grad():
        for head in reranker.heads.values():
            head.weight.normal_()
    return reranker.save_pretrained(out)


# --- word-level tokenizers and the models saved with them ----------------------------------------

WORDS = (
    "query", "passage", "what", "is", "the", "a", "of", "in", "cells", "protein", "gene", "cancer", "dna", "risk",
    "study", "patients", "blood", "brain", "increase", "decrease", "effect", "treatment", ":", ".", ",", "?",
    "title", "text", "hello", "world",
)


def word_tokenizer(*, with_unk: bool = True):
    """A lower-casing word-level Llama-like tokenizer over ``WORDS`` (BOS prepended, ``</s>`` EOS, no pad token)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"] if with_unk else ["<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(dict.fromkeys(WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>" if with_unk else None))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    kwargs = {"unk_token": "<unk>"} if with_unk else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", **kwargs)


def save_word_llama(directory: Path, *, seed: int = 0) -> Path:
    """Save a tiny random ``LlamaModel`` (2 layers, hidden 32) and its :func:`word_tokenizer` to ``directory``."""
    return save_tiny_llama(directory, word_tokenizer(), task="base", layers=2, seed=seed)


PAIR_WORDS = ["query:", "document:", "cats", "purr", "when", "they", "are", "happy", "dogs", "bark", "at", "strangers",
              "fish", "swim", "birds", "migrate", "south", "in", "winter", "bees", "make", "honey", "from", "nectar",
              "why", "do", "where", "go", "how", "is", "made", "the", "a"]


def pair_tokenizer():
    """A word-level Llama-like tokenizer over ``PAIR_WORDS``: <s> prepended (pairs: <s> A B), no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(PAIR_WORDS))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def save_seq_cls(directory: Path, seed: int = 0) -> Path:
    """A tiny random LlamaForSequenceClassification (1 label) + :func:`pair_tokenizer` saved at ``directory``."""
    return save_tiny_llama(directory, pair_tokenizer(), task="seq-cls", layers=2, seed=seed)


def save_rankllama_layout(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """A base causal LM dir and a SEQ_CLS LoRA adapter dir, as castorini/rankllama-v1-7b-lora-passage.

    LoRA B matrices and the score head are random (not peft's zero init), so the adapter
    really changes the scores.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForSequenceClassification

    base_dir, adapter_dir = root / "base", root / "adapter"
    save_tiny_llama(base_dir, pair_tokenizer(), layers=2, seed=seed)
    seq_cls = LlamaForSequenceClassification.from_pretrained(base_dir, num_labels=1)
    lora = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.0,
                      target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(seq_cls, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "score" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(adapter_dir)
    return base_dir, adapter_dir


# --- a stand-in encoder and corpora ---------------------------------------------------------------


class HashEncoder:
    """A deterministic stand-in encoder: a unit vector seeded by each text's hash."""

    def __init__(self, dim: int = 8, normalize: bool = True) -> None:
        self.dim = dim
        self.normalize = normalize
        self.calls = 0
        self.docs_seen = 0

    def encode_passages(self, docs):
        self.calls += 1
        self.docs_seen += len(docs)
        rows = []
        for doc in docs:
            text = doc.full_text if isinstance(doc, Document) else doc
            seed = int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)
            row = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            rows.append(row / np.linalg.norm(row))
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)

    encode_queries = encode_passages


def make_corpus(n: int = 23) -> Corpus:
    """``n`` documents ``d0``... whose texts repeat ``text number i`` 1-5 times."""
    return Corpus.from_documents(Document(f"d{i}", f"text number {i} " * (i % 5 + 1), f"title {i}") for i in range(n))


def write_corpus_file(path: Path, n: int) -> Path:
    """A BEIR corpus.jsonl of ``n`` documents at ``path``."""
    with path.open("w") as handle:
        for i in range(n):
            handle.write(json.dumps({"_id": f"d{i}", "title": f"title {i}", "text": f"text number {i}"}) + "\n")
    return path


# --- training groups ------------------------------------------------------------------------------

RERANK_WORDS = ["cat", "dog", "sun", "moon", "tree", "river", "stone", "bird", "fish", "rain", "cloud", "fire", "road"]


def rerank_groups(path: Path, count: int = 4, negatives: int = 2, seed: int = 0) -> Path:
    """Groups whose positive repeats the query word (learnable) and negatives that do not."""
    rng = random.Random(seed)
    groups = []
    for i in range(count):
        word = RERANK_WORDS[i]
        others = [w for w in RERANK_WORDS if w != word]
        groups.append(TrainingGroup(
            f"where is the {word}", [Document(f"p{i}", f"the {word} is here, a {word} by the {rng.choice(others)}")],
            [Document(f"n{i}-{j}", " ".join(rng.choice(others) for _ in range(rng.randint(4, 8))))
             for j in range(negatives)], f"q{i}"))
    write_groups(path, groups)
    return path


def retrieval_groups(path: Path, count: int = 16, negatives: int = 4, seed: int = 0) -> Path:
    """Random training groups over the :func:`word_tokenizer` vocabulary."""
    rng = random.Random(seed)
    text_words = [w for w in WORDS if w.isalpha()]

    def text(n: int) -> str:
        return " ".join(rng.choice(text_words) for _ in range(n))

    groups = [TrainingGroup(text(rng.randint(2, 5)), [Document(f"p{i}", text(rng.randint(4, 12)), "title")],
                            [Document(f"n{i}-{j}", text(rng.randint(3, 12))) for j in range(negatives)], f"q{i}")
              for i in range(count)]
    write_groups(path, groups)
    return path


# --- the CLI in-process ---------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str | Path) -> tuple[int, str, str]:
    """Run ``nestrank ARGS`` in-process; return (exit code, stdout, stderr)."""
    from nestrank.cli import main

    monkeypatch.setattr(sys, "argv", ["nestrank", *map(str, args)])
    capsys.readouterr()
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def matryoshka_train_config(setup, out: Path, reranker: dict | None = None, lora: dict | None = None, **train):
    """A tiny Matryoshka trainer config over ``setup = (base model dir, groups file)``; keyword arguments go to [train]."""
    base, groups = setup
    return config_from_dict({
        "model": {"backbone": str(base)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, **(lora or {})},
        "data": {"train_groups": str(groups), "group_size": 3, "query_max_length": 16, "passage_max_length": 24},
        "train": {"output_dir": str(out), "batch_size": 4, "max_steps": 2, "epochs": 10, "learning_rate": 1e-2,
                  "warmup_ratio": 0.0, "temperature": 1.0, **train},
        "reranker": {"stage": "distill", "teachers": [3, 6], "student_depths": [2, 3, 4, 5],
                     "student_compress": ["", "1:0.5", "2:0.5"], "students_per_step": 2, **(reranker or {})},
    })


def retriever_train_config(setup, out: Path, lora: dict | None = None, data: dict | None = None, model: dict | None = None,
                **train):
    """A tiny retriever trainer config over ``setup = (base model dir, groups file)``; keyword arguments go to [train]."""
    tiny, groups = setup
    return config_from_dict({
        "model": {"backbone": str(tiny), **(model or {})},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, **(lora or {})},
        "data": {"train_groups": str(groups), "group_size": 3, "query_max_length": 8, "passage_max_length": 16,
                 **(data or {})},
        "train": {"output_dir": str(out), "batch_size": 4, "max_steps": 2, "learning_rate": 1e-2,
                  "warmup_ratio": 0.0, **train},
    })


def pointwise_train_config(setup, out: Path, reranker: dict | None = None, **train):
    """A tiny pointwise-reranker trainer config over ``setup = (base model dir, groups file)``."""
    base, groups = setup
    return config_from_dict({
        "model": {"backbone": str(base)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "data": {"train_groups": str(groups), "group_size": 3, "query_max_length": 16, "passage_max_length": 24},
        "train": {"output_dir": str(out), "batch_size": 4, "max_steps": 8, "epochs": 10, "learning_rate": 3e-2,
                  "warmup_ratio": 0.0, "temperature": 1.0, **train},
        "reranker": {"kind": "pointwise", "stage": "contrastive", **(reranker or {})},
    })
