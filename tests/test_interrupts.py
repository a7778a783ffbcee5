"""Interrupted runs: SIGINT/SIGTERM exit 130/143 with one line, temporaries never linger, and work resumes.

The signal tests run the real entry point in a subprocess; the slow part (a reranker that
sleeps, a write that stalls) is the only thing replaced, so the signal lands mid-work.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nestrank.data import Corpus, Document, Run
from nestrank.files import atomic_dir, atomic_write, remove_stale_temps
from nestrank.journal import ScoreJournal, journal_path, reranker_fingerprint
from nestrank.models.reranker import Reranker
from nestrank.rerank import rerank_run

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
       "COLUMNS": "200"}


class LengthReranker(Reranker):
    """Scores a pair by its document's length (non-round floats); counts score() calls; fails after ``fail_after``.

    The counters are private attributes: run-time state, which the journal's fingerprint leaves out.
    """

    def __init__(self, offset: float = 0.0, fail_after: int | None = None) -> None:
        self.offset = offset
        self._fail_after = fail_after
        self._calls = 0

    @property
    def calls(self) -> int:
        return self._calls

    def score(self, queries, documents, *, config=None, batch_tokens=None, show_progress=False):
        _, docs = self.pairs(queries, documents)
        if self._fail_after is not None and self._calls >= self._fail_after:
            raise KeyboardInterrupt
        self._calls += 1
        return np.array([len(d.text) / 7.0 + self.offset for d in docs], dtype=np.float32)


def make_inputs(queries: int = 6, depth: int = 4) -> tuple[Run, dict[str, str], Corpus]:
    rng = random.Random(0)
    corpus = Corpus.from_documents([Document(f"d{i}", "word " * rng.randint(1, 30)) for i in range(max(20, depth))])
    run = Run({f"q{q}": [(f"d{d}", 1.0 / (r + 1)) for r, d in enumerate(rng.sample(range(max(20, depth)), depth))]
               for q in range(queries)})
    return run, {f"q{q}": f"query {q}" for q in range(queries)}, corpus


# -- the journal: resumable reranking ---------------------------------------------------------------------------
def test_an_interrupted_rerank_resumes_from_its_journal_with_an_identical_result(tmp_path):
    run, queries, corpus = make_inputs()
    expected = rerank_run(run, queries, corpus, LengthReranker(), pairs_per_call=8, show_progress=False)
    journal = tmp_path / "rr.journal"
    with pytest.raises(KeyboardInterrupt):
        rerank_run(run, queries, corpus, LengthReranker(fail_after=2), pairs_per_call=8, show_progress=False,
                   journal=journal)
    assert len(journal.read_text().splitlines()) == 1 + 2  # header + two finished chunks
    resumed = LengthReranker()
    result = rerank_run(run, queries, corpus, resumed, pairs_per_call=8, show_progress=False, journal=journal)
    assert resumed.calls == 1  # only the last chunk was scored
    assert result.to_dict() == expected.to_dict()
    again = LengthReranker()
    assert rerank_run(run, queries, corpus, again, pairs_per_call=8, show_progress=False,
                      journal=journal).to_dict() == expected.to_dict()
    assert again.calls == 0


def test_a_changed_reranker_config_or_run_starts_the_journal_over(tmp_path):
    run, queries, corpus = make_inputs()
    journal = tmp_path / "rr.journal"
    rerank_run(run, queries, corpus, LengthReranker(), pairs_per_call=8, show_progress=False, journal=journal)
    for changed, kwargs in ((LengthReranker(offset=1.0), {}), (LengthReranker(), {"config": "depth=3"}),
                            (LengthReranker(), {"rerank_depth": 3})):
        result = rerank_run(run, queries, corpus, changed, pairs_per_call=8, show_progress=False, journal=journal,
                            **kwargs)
        fresh = LengthReranker(changed.offset)
        plain = rerank_run(run, queries, corpus, fresh, pairs_per_call=8, show_progress=False, **kwargs)
        assert changed.calls == fresh.calls, kwargs  # every chunk scored again
        assert result.to_dict() == plain.to_dict()


def test_a_torn_last_line_and_a_changed_document_are_scored_again(tmp_path):
    run, queries, corpus = make_inputs()
    journal = tmp_path / "rr.journal"
    rerank_run(run, queries, corpus, LengthReranker(), pairs_per_call=8, show_progress=False, journal=journal)
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed while writing the last
    resumed = LengthReranker()
    rerank_run(run, queries, corpus, resumed, pairs_per_call=8, show_progress=False, journal=journal)
    assert resumed.calls == 1
    assert all(json.loads(line) for line in journal.read_text().splitlines())  # the torn line was cut off
    first_doc = run.doc_ids(next(iter(run)))[0]
    edited = Corpus.from_documents([Document(d.id, d.text + " more" if d.id == first_doc else d.text)
                                    for d in corpus.get_many(corpus.ids)])
    changed = LengthReranker()
    result = rerank_run(run, queries, edited, changed, pairs_per_call=8, show_progress=False, journal=journal)
    assert changed.calls >= 1
    assert result.to_dict() == rerank_run(run, queries, edited, LengthReranker(), pairs_per_call=8,
                                          show_progress=False).to_dict()


def test_the_pipeline_rerank_stage_resumes_from_its_journal(tmp_path):
    from nestrank.pipeline.rerank_stage import RerankStage

    run, queries, corpus = make_inputs(queries=40, depth=20)  # 800 pairs: two chunks of rerank_run
    first = RerankStage(LengthReranker(fail_after=1), rerank_depth=20, weight=0.5, journal=tmp_path / "j")
    with pytest.raises(KeyboardInterrupt):
        first.apply(run, queries, corpus)
    resumed = RerankStage(LengthReranker(), rerank_depth=20, weight=0.5, journal=tmp_path / "j")
    result, stats = resumed.apply(run, queries, corpus)
    assert resumed.reranker.calls == 1 and stats.pairs == 800
    whole, _ = RerankStage(LengthReranker(), rerank_depth=20, weight=0.5).apply(run, queries, corpus)
    assert result.to_dict() == whole.to_dict()


def test_the_fingerprint_covers_weights_and_settings():
    torch = pytest.importorskip("torch")

    class ModelReranker(LengthReranker):
        def __init__(self, seed: int, offset: float = 0.0) -> None:
            super().__init__(offset)
            torch.manual_seed(seed)
            self.model = torch.nn.Linear(8, 8)

    assert reranker_fingerprint(ModelReranker(0)) == reranker_fingerprint(ModelReranker(0))
    assert reranker_fingerprint(ModelReranker(0)) != reranker_fingerprint(ModelReranker(1))
    assert reranker_fingerprint(ModelReranker(0)) != reranker_fingerprint(ModelReranker(0, offset=0.5))
    tweaked = ModelReranker(0)
    with torch.no_grad():
        tweaked.model.bias[3] += 1e-3
    assert reranker_fingerprint(tweaked) != reranker_fingerprint(ModelReranker(0))


def test_a_journal_of_another_fingerprint_is_replaced(tmp_path):
    path = tmp_path / "j"
    with ScoreJournal(path, "a") as journal:
        journal.add("x", [[1.5, 2.25]])
    with ScoreJournal(path, "a") as journal:
        assert journal.get("x") == [[1.5, 2.25]]
    with ScoreJournal(path, "b") as journal:
        assert journal.get("x") is None
    assert json.loads(path.read_text().splitlines()[0])["fingerprint"] == "b"
    assert journal_path(tmp_path / "out.run") == tmp_path / ".out.run.journal"


# -- temporaries of killed writers --------------------------------------------------------------------------------
def test_stale_temporaries_are_removed_but_a_live_writer_keeps_its_own(tmp_path):
    out = tmp_path / "run.trec"
    stale_file = tmp_path / ".run.trec.ab12cd_9.tmp"
    stale_dir = tmp_path / ".run.trec.zz99yy00.old"
    stale_file.write_text("half")
    (stale_dir / "x").mkdir(parents=True)
    others = [tmp_path / ".run.trec.meta.json.ab12cd34.tmp", tmp_path / ".run.trec.journal", tmp_path / "run.trec.tmp",
              tmp_path / ".run.trec.short.tmp"]
    for other in others:
        other.write_text("not a temporary of run.trec")
    with atomic_write(out) as handle:
        live = [p for p in tmp_path.iterdir() if p.name.startswith(".run.trec.") and p not in others]
        assert live and not stale_file.exists() and not stale_dir.exists()  # removed on entry
        assert remove_stale_temps(out) == []  # a live writer's locked temporary is not stale
        handle.write("done")
    assert out.read_text() == "done"
    assert all(other.exists() for other in others)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, *(o.name for o in others)])
    index = tmp_path / "idx"
    (tmp_path / ".idx.00000000.tmp").mkdir()
    with atomic_dir(index, "manifest.json", "an index") as staging:
        (staging / "manifest.json").write_text("{}")
    assert not (tmp_path / ".idx.00000000.tmp").exists() and (index / "manifest.json").is_file()


# -- signals on the real entry point ------------------------------------------------------------------------------
SLOW_RERANK = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import nestrank.rerank
    from nestrank.models.reranker import Reranker

    class SlowReranker(Reranker):
        def score(self, queries, documents, *, config=None, batch_tokens=None, show_progress=False):
            _, docs = self.pairs(queries, documents)
            print("scoring", flush=True)
            time.sleep(float(os.environ["SLOW"]))
            return np.array([len(d.text) / 7.0 for d in docs], dtype=np.float32)

    nestrank.rerank.load_reranker = lambda *args, **kwargs: SlowReranker()
    from nestrank.cli import main
    main()
""")


def _rerank_inputs(root: Path) -> list[str]:
    """30 queries x 40 candidates: three chunks of 512 pairs for rerank_run."""
    data = root / "data"
    (data / "qrels").mkdir(parents=True)
    rng = random.Random(1)
    docs = [{"_id": f"d{i}", "text": "word " * rng.randint(1, 20)} for i in range(200)]
    (data / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (data / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n"
                                                for i in range(30)))
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n"
                                                                                      for i in range(30)))
    Run({f"q{i}": [(f"d{d}", 40.0 - r) for r, d in enumerate(rng.sample(range(200), 40))]
         for i in range(30)}).write_trec(root / "bm25.run")
    return ["rerank", "--dataset", str(data), "--run", str(root / "bm25.run"), "--model", "smollm2-135m",
            "--rerank-depth", "40", "--no-progress"]


def _rerank(args: list[str], out: Path, slow: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SLOW_RERANK, *args, "--out", str(out)], env={**ENV, "SLOW": str(slow)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigint_exits_130_with_one_line_and_the_same_command_resumes(tmp_path):
    args = _rerank_inputs(tmp_path)
    out = tmp_path / "rr.run"
    process = _rerank(args, out, slow=2.0)
    assert process.stdout.readline() == "scoring\n"
    assert process.stdout.readline() == "scoring\n"  # the first chunk is journaled before the second is scored
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert [line for line in err.splitlines() if line.strip()] == [
        "interrupted (SIGINT): no partial output was written; run the same command again to continue (rerank, "
        "pipeline run, encode, tune and train resume where they stopped)"]
    assert not out.exists()
    assert len(journal_path(out).read_text().splitlines()) == 2  # header + the first chunk
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rr.run.journal", "bm25.run", "data"]

    resumed = _rerank(args, out, slow=0)
    stdout, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert stdout.count("scoring") == 2  # chunks 2 and 3 only
    assert not journal_path(out).exists()
    whole = _rerank(args, tmp_path / "whole.run", slow=0)
    assert whole.communicate(timeout=120)[0].count("scoring") == 3 and whole.returncode == 0
    assert out.read_bytes() == (tmp_path / "whole.run").read_bytes()


STALLED_WRITE = textwrap.dedent("""
    import contextlib, time
    import nestrank.data.run
    from nestrank.files import atomic_write

    @contextlib.contextmanager
    def stalled(path, *args, **kwargs):
        with atomic_write(path, *args, **kwargs) as handle:
            yield handle
            handle.flush()
            print("writing", flush=True)
            time.sleep(60)

    nestrank.data.run.atomic_write = stalled
    from nestrank.cli import main
    main()
""")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGKILL, -9)])
def test_a_signal_during_a_write_leaves_no_output_and_no_temporary_after_the_next_run(tiny_beir, tmp_path, signum,
                                                                                        code):
    from nestrank.retrieve.bm25 import BM25Index

    BM25Index.build(Corpus.open(tiny_beir / "corpus.jsonl")).save(tmp_path / "idx")
    out = tmp_path / "runs" / "bm25.run"
    args = ["search", "--index", str(tmp_path / "idx"), "--dataset", str(tiny_beir), "--out", str(out)]
    process = subprocess.Popen([sys.executable, "-c", STALLED_WRITE, *args], env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "writing\n"
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert not out.exists()
    temps = [p.name for p in out.parent.iterdir()]
    if signum == signal.SIGTERM:
        assert "interrupted (SIGTERM)" in err and "Traceback" not in err
        assert temps == []  # removed while unwinding
    else:
        assert len(temps) == 1 and temps[0].startswith(".bm25.run.")  # a kill -9 leaves its temporary...
    done = subprocess.run([sys.executable, "-c", "from nestrank.cli import main; main()", *args], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in out.parent.iterdir()] == ["bm25.run"]  # ...which the next run removes


# -- kill -9 at random points, then the same command (bench/reliability_kill.py) ---------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("command", ["encode", "index", "search", "rerank", "train"])
def test_kill_9_then_the_same_command_gives_the_uninterrupted_output(command):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from reliability_kill import kill_resume_trials

    result = kill_resume_trials(command, trials=1, seed=3, docs=40, queries=24)
    assert result["identical"] == result["trials"] == 1, result
    assert result["stale_temps"] == 0, result


# -- training: the same command continues from the newest checkpoint of the same configuration -------------------
def _tiny_backbone(directory: Path) -> Path:
    """A random 2-layer Llama with a byte-level tokenizer (BOS, EOS and pad tokens)."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in ("<pad>", "<s>", "</s>"):
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(directory)
    torch.manual_seed(0)
    LlamaModel(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, pad_token_id=vocab["<pad>"],
                           bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"])).save_pretrained(directory)
    return directory


def test_a_rerun_of_an_interrupted_training_resumes_from_its_newest_checkpoint(tmp_path, monkeypatch, one_torch_thread):
    from safetensors.torch import load_file

    from nestrank.data.groups import TrainingGroup, write_groups
    from nestrank.train.config import config_from_dict
    from nestrank.train.loop import LOG_FILE
    from nestrank.train.retriever import RetrieverTrainer, train_retriever

    rng = random.Random(0)
    words = ["cell", "gene", "blood", "brain", "risk", "dose", "virus", "heart"]
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    write_groups(tmp_path / "groups.jsonl", [TrainingGroup(text(3), [Document(f"p{i}", text(8))],
                                                           [Document(f"n{i}{j}", text(8)) for j in range(2)], f"q{i}")
                                             for i in range(16)])
    backbone = _tiny_backbone(tmp_path / "tiny")

    def config(out: str):
        return config_from_dict({
            "model": {"backbone": str(backbone)}, "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
            "data": {"train_groups": str(tmp_path / "groups.jsonl"), "group_size": 3, "query_max_length": 8,
                     "passage_max_length": 24, "validation_fraction": 0.0},
            "train": {"output_dir": str(tmp_path / out), "batch_size": 4, "max_steps": 4, "learning_rate": 1e-2,
                      "save_every": 1}})

    whole = train_retriever(config("whole"), progress=False)
    assert whole.resumed_from is None
    start_step = RetrieverTrainer.start_step

    def killed_at_step_3(self, step):
        if step == 2:
            raise KeyboardInterrupt  # after checkpoint-2 was written
        start_step(self, step)

    monkeypatch.setattr(RetrieverTrainer, "start_step", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_retriever(config("run"), progress=False)
    monkeypatch.setattr(RetrieverTrainer, "start_step", start_step)
    resumed = train_retriever(config("run"), progress=False)
    assert resumed.resumed_from == tmp_path / "run" / "checkpoint-2" and resumed.steps == whole.steps == 4
    weights = load_file(resumed.checkpoint / "adapter_model.safetensors")
    expected = load_file(whole.checkpoint / "adapter_model.safetensors")
    assert all((weights[name] == expected[name]).all() for name in expected)  # bit for bit
    logged = [json.loads(line) for line in (tmp_path / "run" / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]  # each step once
    assert [r["loss"] for r in logged] == [json.loads(line)["loss"] for line in
                                           (tmp_path / "whole" / LOG_FILE).read_text().splitlines()]
    other = config("run")
    other.train.learning_rate = 5e-3  # another configuration: its checkpoints are not resumed
    assert train_retriever(other, progress=False).resumed_from is None
