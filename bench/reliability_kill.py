"""Interrupted and mis-pointed commands: kill -9 then the same command, and the time to a usage error.

Functions the reliability bench (``bench/reliability.py``) calls:

- :func:`kill_resume_trials` runs ``nestrank encode|index|search|rerank|train`` on tiny data
  with a tiny random model: once uninterrupted (the reference), then per trial a run killed
  with SIGKILL after a random delay (uniform over the reference's duration) followed by the
  same command to completion; it counts trials whose output is identical to the reference,
  trials whose kill left partial progress behind (shards, journal records, checkpoints) and
  temporary files left next to the output after the resumed run.
- :func:`time_to_error` times each command, from process start to exit, on a bad option
  value and on an output path that cannot be written, and records whether torch was
  imported (a model load needs it).

``python bench/reliability_kill.py [--trials N]`` prints one JSON line. Everything runs in
subprocesses with one torch thread; the workspace (data, model, first-stage run, training
groups) is built once per process in a temporary directory.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = ("encode", "index", "search", "rerank", "train")
#: Runs ``nestrank ARGS``; reports on stderr whether torch was imported (after any exit, errors included).
LAUNCH = ("import sys\nfrom nestrank.cli import main\ntry:\n    main()\nfinally:\n"
          "    sys.stderr.write(f\"\\ntorch imported: {'torch' in sys.modules}\\n\")\n")
WORDS = ("cell", "protein", "gene", "cancer", "dna", "risk", "study", "patients", "blood", "brain", "increase",
         "decrease", "effect", "treatment", "vitamin", "scurvy", "heart", "lung", "liver", "kidney", "virus",
         "bacteria", "immune", "response", "therapy", "dose", "trial", "mouse")
_TEMP = re.compile(r"\..+\.[a-z0-9_]{8}\.(tmp|old)$|\..+\.\d+\.tmp$")


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "200",
            "PYTHONPATH": f"{src}{os.pathsep}{path}" if path else src}


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LAUNCH, *map(str, args)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", LAUNCH, *map(str, args)], env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"nestrank {' '.join(map(str, args))} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


# -- the workspace: tiny data, a tiny random Llama, a first-stage run, training groups ----------------------------
def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _save_model(directory: Path) -> None:
    """A random Llama causal LM (4 layers, hidden 64) with a byte-level tokenizer: reranker, encoder and backbone."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: index for index, char in enumerate(alphabet)}
    for token in ("<pad>", "<s>", "</s>"):
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False, pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"],
                         eos_token_id=vocab["</s>"])
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


@functools.cache
def workspace(docs: int = 160, queries: int = 48) -> Path:
    """Build the shared inputs once: ``data/`` (BEIR), ``model/``, ``bm25/`` + ``bm25.run``, ``groups.jsonl``, ``train.toml``.

    ``queries`` x 30 candidates are reranked (512 pairs per journal record).
    """
    root = Path(tempfile.mkdtemp(prefix="nestrank-reliability-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    rng = random.Random(0)
    data = root / "data"
    (data / "qrels").mkdir(parents=True)
    corpus = [{"_id": f"d{i}", "title": _text(rng, 3), "text": _text(rng, 50)} for i in range(docs)]
    (data / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")
    (data / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": _text(rng, 4)}) + "\n"
                                                for i in range(queries)), encoding="utf-8")
    judged = "".join(f"q{i}\td{rng.randrange(docs)}\t1\n" for i in range(queries))
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + judged, encoding="utf-8")
    _save_model(root / "model")
    _finish(["index", "--dataset", data, "--out", root / "bm25"])
    _finish(["search", "--index", root / "bm25", "--dataset", data, "--k", "30", "--out", root / "bm25.run"])
    groups = [{"query_id": f"q{i}", "query": _text(rng, 4),
               "positive_passages": [{"docid": f"p{i}", "title": "", "text": _text(rng, 20)}],
               "negative_passages": [{"docid": f"n{i}-{j}", "title": "", "text": _text(rng, 20)} for j in range(3)]}
              for i in range(24)]
    (root / "groups.jsonl").write_text("".join(json.dumps(g) + "\n" for g in groups), encoding="utf-8")
    (root / "train.toml").write_text(
        f'[model]\nbackbone = "{root / "model"}"\npreset = "repllama"\n'
        '[lora]\nr = 4\nalpha = 8\ndropout = 0.1\n'
        f'[data]\ntrain_groups = "{root / "groups.jsonl"}"\ngroup_size = 3\nquery_max_length = 16\n'
        'passage_max_length = 64\nvalidation_fraction = 0.0\n'
        '[train]\noutput_dir = "unset"\nbatch_size = 4\nmax_steps = 8\nlearning_rate = 1e-2\nsave_every = 1\n',
        encoding="utf-8")
    return root


def command_args(command: str, out: Path, root: Path) -> list[str]:
    """The ``nestrank`` arguments of one kill/resume command writing to ``out``, on the inputs under ``root``."""
    data, model = root / "data", root / "model"
    return {
        "encode": ["encode", "--dataset", data, "--model", model, "--preset", "repllama", "--num-shards", "8",
                   "--chunk-size", "10", "--no-progress", "--out", out],
        "index": ["index", "--dataset", data, "--method", "dense", "--model", model, "--preset", "repllama",
                  "--out", out],
        "search": ["search", "--index", root / "bm25", "--dataset", data, "--k", "100", "--out", out],
        "rerank": ["rerank", "--dataset", data, "--run", root / "bm25.run", "--model", model, "--rerank-depth", "30",
                   "--no-progress", "--out", out],
        "train": ["train", "retriever", "--config", root / "train.toml", "--set", f'train.output_dir="{out}"',
                  "--no-progress"],
    }[command]


# -- what a command wrote ---------------------------------------------------------------------------------------
def _files(out: Path, command: str) -> dict[str, bytes]:
    """The bytes that must not depend on an interruption (paths inside manifests written as OUT)."""
    if out.is_file():
        return {"": out.read_bytes()}
    final = out / "final"
    paths = [final / "adapter_model.safetensors", final / "trainer_state.json"] if command == "train" else \
        sorted(p for p in out.rglob("*") if p.is_file())
    files = {}
    for path in paths:
        content = path.read_bytes()
        if path.suffix == ".json":
            content = content.replace(str(out).encode(), b"OUT")
        files[str(path.relative_to(out))] = content
    return files


def _partial(command: str, out: Path) -> bool:
    """Whether a killed run left progress that the next run can use."""
    if command == "encode":
        return any(out.glob("shard-*.npy"))
    if command == "index":
        return any(out.with_name(out.name + ".emb").glob("shard-*.npy"))
    if command == "rerank":
        journal = out.with_name(f".{out.name}.journal")
        return journal.is_file() and len(journal.read_text(encoding="utf-8").splitlines()) > 1
    if command == "train":
        return any(out.glob("checkpoint-*"))
    return False


def _stale(out: Path) -> list[str]:
    """Temporary files or directories of nestrank's writers left anywhere under the output's directory."""
    return [str(p) for p in out.parent.rglob("*") if _TEMP.match(p.name) and out.name in p.name]


def kill_resume_trials(command: str, trials: int = 3, *, seed: int = 0, docs: int = 160, queries: int = 48) -> dict:
    """Kill ``nestrank COMMAND`` with SIGKILL at random points, re-run it; how often is the output the reference's?

    Returns ``{"command", "trials", "identical", "killed_mid_work", "stale_temps", "reference_seconds"}``:
    ``killed_mid_work`` counts trials whose kill left partial progress (so the resumed run
    really resumed), ``stale_temps`` temporary files left after the resumed runs (0 expected).
    ``docs`` and ``queries`` size the workspace (:func:`workspace`).
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)}")
    root = workspace(docs, queries)
    rng = random.Random(seed)
    reference = root / f"{command}-reference"
    clock = time.perf_counter()
    _finish(command_args(command, reference, root))
    duration = time.perf_counter() - clock
    expected = _files(reference, command)
    identical = mid_work = stale = 0
    for trial in range(trials):
        out = root / f"{command}-trial{seed}-{trial}"
        process = _start(command_args(command, out, root))
        try:
            process.wait(timeout=rng.uniform(0.1, 1.0) * duration)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        process.communicate()
        mid_work += _partial(command, out)
        _finish(command_args(command, out, root))
        identical += _files(out, command) == expected
        stale += len(_stale(out))
    return {"command": command, "trials": trials, "identical": identical, "killed_mid_work": mid_work,
            "stale_temps": stale, "reference_seconds": round(duration, 2)}


# -- time to the error --------------------------------------------------------------------------------------------
def _error_cases(root: Path) -> dict[str, dict[str, list]]:
    """Per command: arguments with a bad option value, and with an output path that cannot be written."""
    data, run, directory, file = root / "data", root / "bm25.run", root / "data", root / "data" / "corpus.jsonl"
    toml = root / "bad-output.toml"
    toml.write_text((root / "train.toml").read_text(encoding="utf-8").replace('"unset"', f'"{file}"'),
                    encoding="utf-8")
    rerank = ["rerank", "--dataset", data, "--run", run, "--model", "smollm2-135m"]
    encode = ["encode", "--dataset", data, "--model", "minilm-l6"]
    return {
        "index": {"option": ["index", "--dataset", data, "--b", "7", "--out", root / "x.idx"],
                  "output": ["index", "--dataset", data, "--out", file]},
        "search": {"option": ["search", "--index", root / "bm25", "--dataset", data, "--k", "0", "--out", root / "x"],
                   "output": ["search", "--index", root / "bm25", "--dataset", data, "--out", directory]},
        "encode": {"option": [*encode, "--chunk-size", "0", "--out", root / "x.emb"], "output": [*encode, "--out", file]},
        "rerank": {"option": [*rerank, "--batch-tokens", "0", "--out", root / "x.run"],
                   "output": [*rerank, "--out", directory]},
        "mine": {"option": ["mine", "--dataset", data, "--split", "test", "--run", run, "--negatives", "0", "--out",
                            root / "g.jsonl"],
                 "output": ["mine", "--dataset", data, "--split", "test", "--run", run, "--out", directory]},
        "evaluate": {"option": ["evaluate", "--dataset", data, run, "--alpha", "5"]},
        "train": {"option": ["train", "retriever", "--config", root / "train.toml", "--set", "train.batch_size=0"],
                  "output": ["train", "retriever", "--config", toml]},
    }


def _timed_error(args: list) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    clock = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCH, *map(str, args)], env=_env(), capture_output=True, text=True,
                          timeout=300)
    seconds = time.perf_counter() - clock
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "exit": done.returncode,
            "traceback": "Traceback" in done.stderr, "torch_imported": "torch imported: True" in done.stderr}


def time_to_error() -> dict:
    """``{command: {"option": {...}, "output": {...}}}``: seconds from start to exit, exit code, torch imported."""
    root = workspace()
    return {command: {kind: _timed_error(args) for kind, args in cases.items()}
            for command, cases in _error_cases(root).items()}


def main(argv: list[str] | None = None) -> dict:
    """Run every command's trials and the error timings; print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3, help="kill/resume trials per command")
    parser.add_argument("--commands", default=",".join(COMMANDS), help="comma-separated commands to kill")
    args = parser.parse_args(argv)
    kills = {command: kill_resume_trials(command, args.trials) for command in args.commands.split(",")}
    errors = time_to_error()
    worst = max(case["seconds"] for cases in errors.values() for case in cases.values())
    summary = {"kill_resume": kills, "all_identical": all(k["identical"] == k["trials"] for k in kills.values()),
               "time_to_error": errors, "max_seconds_to_error": worst,
               "any_torch_imported": any(c["torch_imported"] for cases in errors.values() for c in cases.values())}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
