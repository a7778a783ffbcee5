"""Reliability: fuzzed inputs give a correct result or a nestrank error; killed commands resume to identical output.

    .venv/bin/python bench/reliability.py [--cases 1000] [--index-cases 1000] [--seed 0]

Fuzzing (tests/fuzzing.py): for every reader (corpus JSONL/TSV/TREC, queries JSONL/TSV, qrels
TSV/TREC, runs TREC/TSV, the three training-group formats, trainer and pipeline TOML configs) it
reads ``--cases`` hypothesis-drawn mutations of a valid seed file with nestrank and with an
independent reference parser, and counts: correct results, nestrank errors, tracebacks (anything
else escaping), silent wrong results (a result that differs from the reference's reading, or a
file the reference rejects being accepted) and rejections of files the reference reads. An index
directory (a hybrid index: manifests, BM25 and FAISS files, checksums) gets ``--index-cases``
mutations of one of its files (or its removal): it must search exactly as before or raise a
nestrank error. The same is tried on a copy without ``checksums.json`` (an index of an older
nestrank: damage can go unseen there, so only its tracebacks count).

Kill/resume trials (``--kill-trials`` per command of ``--kill-commands``: SIGKILL at a random
point, then the same command; identical output expected) and the time to the error for a bad
option or output path come from ``bench/reliability_kill.py``. The last line printed is one JSON
object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]


def fuzz_reader(reader, cases: int, seed: int, workdir: Path):
    """``cases`` mutations of ``reader``'s seed: a :class:`fuzzing.Tally`."""
    from fuzzing import PLANS, Tally, mutate, run_case
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    tally = Tally()

    @hypothesis_seed(seed)
    @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(PLANS)
    def case(plan):
        tally.add(*run_case(reader, mutate(reader.seed, plan), workdir))

    case()
    return tally


def fuzz_index(index: Path, expected: dict, cases: int, seed: int, workdir: Path):
    """``cases`` mutations of one file of ``index`` each: a :class:`fuzzing.Tally`."""
    from fuzzing import INDEX_PLANS, Tally, index_case
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    tally = Tally()

    @hypothesis_seed(seed)
    @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(INDEX_PLANS)
    def case(plan):
        tally.add(*index_case(index, expected, plan, workdir))

    case()
    return tally


def kill_figures(trials: int, commands: list[str]) -> dict[str, object]:
    """Kill/resume trials per command and the time to the error (bench/reliability_kill.py), as summary keys."""
    spec = importlib.util.spec_from_file_location("reliability_kill", ROOT / "bench" / "reliability_kill.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    kills = {command: module.kill_resume_trials(command, trials) for command in commands}
    errors = module.time_to_error()
    return {"kill_resume": kills,
            "kill_resume_all_identical": all(k["identical"] == k["trials"] for k in kills.values()),
            "time_to_error": errors,
            "max_seconds_to_error": max(case["seconds"] for cases in errors.values() for case in cases.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=1000, help="Fuzz cases per file reader.")
    parser.add_argument("--index-cases", type=int, default=1000, help="Fuzz cases for the index directory.")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed.")
    parser.add_argument("--skip-kill", action="store_true", help="Do not run bench/reliability_kill.py.")
    parser.add_argument("--kill-trials", type=int, default=2, help="kill -9 / resume trials per command.")
    parser.add_argument("--kill-commands", default="encode,index,search,rerank,train",
                        help="Comma-separated commands to kill and resume.")
    parser.add_argument("--readers", default=None, help="Comma-separated reader names to fuzz (default: all).")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging

    logging.getLogger("nestrank").setLevel(logging.ERROR)  # the fuzzed files' warnings are expected
    warnings.simplefilter("ignore")  # so are numpy's and bm25s' about damaged arrays
    from fuzzing import build_index, readers, without_checksums

    start = time.perf_counter()
    fuzz: dict[str, dict] = {}
    examples: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        chosen = None if args.readers is None else set(args.readers.split(","))
        for position, reader in enumerate(readers()):
            if chosen is not None and reader.name not in chosen:
                continue
            (work / reader.name).mkdir()
            tally = fuzz_reader(reader, args.cases, args.seed + position, work / reader.name)
            fuzz[reader.name] = {"cases": tally.cases, **tally.outcomes}
            examples[reader.name] = tally.examples
            print(f"{reader.name}: {fuzz[reader.name]}", file=sys.stderr)
        index, expected = build_index(work / "built")
        tally = fuzz_index(index, expected, args.index_cases, args.seed, work)
        fuzz["index"] = {"cases": tally.cases, **tally.outcomes}
        examples["index"] = tally.examples
        print(f"index: {fuzz['index']}", file=sys.stderr)
        legacy = fuzz_index(without_checksums(index, work / "legacy"), expected, args.index_cases, args.seed, work)
        legacy_figures = {"cases": legacy.cases, **legacy.outcomes}
        examples["index_without_checksums"] = [e for e in legacy.examples if e.startswith("traceback")]
        print(f"index without checksums: {legacy_figures}", file=sys.stderr)
    for name, shown in examples.items():
        for example in shown:
            print(f"  {name}: {example[:400]}", file=sys.stderr)
    fuzz_seconds = time.perf_counter() - start
    kill = {} if args.skip_kill else kill_figures(args.kill_trials, args.kill_commands.split(","))
    totals = {key: sum(figures[key] for figures in fuzz.values()) for key in ("traceback", "silent_wrong",
                                                                              "rejected_valid")}
    summary = {
        "benchmark": "reliability",
        "fuzz_cases_per_reader": {name: figures["cases"] for name, figures in fuzz.items()},
        "fuzz_cases_min": min(figures["cases"] for figures in fuzz.values()),
        "tracebacks": totals["traceback"] + legacy_figures["traceback"],
        "silent_wrong": totals["silent_wrong"],
        "rejected_valid": totals["rejected_valid"],
        "fuzz": fuzz,
        "index_without_checksums": {**legacy_figures, "note": "not verified (no checksums.json): only tracebacks "
                                    "count; damage it cannot see is why indexes now record checksums"},
        **kill,
        "seed": args.seed,
        "fuzz_seconds": round(fuzz_seconds, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
