"""bench/reliability.py runs end to end: fuzz figures, kill/resume trials and the time to the error in one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reliability_bench_reports_kill_resume_and_time_to_error(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "reliability.py"), "--cases", "3", "--index-cases", "2",
                           "--readers", "run-trec", "--kill-trials", "1", "--kill-commands", "search"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["fuzz_cases_per_reader"]["run-trec"] == 3 and summary["tracebacks"] == 0
    assert summary["kill_resume"]["search"]["trials"] == 1
    assert summary["kill_resume"]["search"]["identical"] == 1
    assert summary["kill_resume_all_identical"] is True
    assert set(summary["time_to_error"]) >= {"index", "search", "encode", "rerank", "train"}
    assert summary["max_seconds_to_error"] == max(case["seconds"] for cases in summary["time_to_error"].values()
                                                   for case in cases.values())
