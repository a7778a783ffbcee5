"""bench/train_reranker.py end to end: a tiny random Llama through every stage on SciFact (~1 minute)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
MODELS = ("zeroshot", "plain", "distill", "comp")


def run_bench(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "train_reranker.py"), "--dataset", str(SCIFACT),
                           "--model", "tiny", "--smoke", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason="SciFact not found next to the repo")
def test_bench_trains_every_stage_and_reports_test_then_validation_figures(tmp_path):
    trained = run_bench("--out", str(tmp_path), "--train-only", "distill", "--threads", "1")
    assert trained["distill_steps"] == 2 and trained["distill_threads"] == 1
    assert "plain_steps" not in trained and "bm25" not in trained  # one stage, no evaluation
    plain = run_bench("--out", str(tmp_path), "--models", "plain", "--sweep-models", "")
    assert "plain_full" in plain and "comp_full" not in plain
    assert not (tmp_path / "comp").exists()  # a stage no evaluated model needs is not trained
    figures = run_bench("--out", str(tmp_path))
    assert figures["distill_minutes"] == trained["distill_minutes"]  # reused, with its timing
    expected = ["bm25"] + [f"{m}_{v}" for m in MODELS for v in ("full", "light")]
    assert all(0.0 <= figures[key] <= 1.0 for key in expected)
    assert all(figures[f"{stage}_steps"] == 2 and figures[f"{stage}_minutes"] >= 0 for stage in MODELS[1:])
    assert figures["queries"] == 5 and figures["test_queries"].startswith("random.Random(0).sample of 5")
    sweep = figures["sweep"]
    assert {row["depth"] for row in sweep} == {1, 2, 3, 4} and len({row["compress"] for row in sweep}) == 4
    assert all(0 < row["relative_flops"] <= 1 for row in sweep)
    comp = {(row["depth"], row["compress"]): row for row in sweep if row["model"] == "comp"}
    assert [comp[(d, "full")]["relative_flops"] for d in (1, 2, 3, 4)] == [0.25, 0.5, 0.75, 1.0]
    assert {row["model"] for row in sweep if row["compress"] == "full"} == set(MODELS)  # free with the full pass
    assert {row["model"] for row in sweep if row["compress"] != "full"} == {"comp"}
    # one pass per width scores every depth: the full and light figures are the sweep's own points
    assert figures["comp_full"] == comp[(4, "full")]["ndcg@10"]
    assert figures["comp_light"] == comp[(2, "1:0.5")]["ndcg@10"]
    assert Path(figures["sweep_png"]).stat().st_size > 0 and Path(figures["sweep_csv"]).is_file()

    validation = run_bench("--out", str(tmp_path), "--validation-only", "--sweep-models", "", "--fuse-weights", "0.2,0.7")
    assert not any(key in validation for key in expected) and "sweep" not in validation
    assert all(0.0 <= validation[f"validation.{key}"] <= 1.0 for key in expected)
    assert validation["comp_minutes"] == figures["comp_minutes"]  # the stages were reused, with their timings
    # interpolation with BM25: the weight is chosen on validation, then applied to test
    variants = [f"{m}_{v}" for m in MODELS for v in ("full", "light")]
    weights = json.loads((tmp_path / "fuse-weights.json").read_text())
    assert set(weights) == set(variants) and all(w in (0.2, 0.7) for w in weights.values())
    assert all(validation[f"validation.{key}_fused_weight"] == weights[key] for key in variants)
    fused = run_bench("--out", str(tmp_path), "--models", "plain,comp", "--sweep-models", "")
    assert all(fused[f"{m}_{v}_fused_weight"] == weights[f"{m}_{v}"] for m in ("plain", "comp") for v in ("full", "light"))
    assert all(0.0 <= fused[f"{m}_{v}_fused"] <= 1.0 for m in ("plain", "comp") for v in ("full", "light"))
    assert "zeroshot_full" not in fused and fused["comp_full"] == figures["comp_full"]
    # scoring at another passage length: its own weights file; the default one is left as it was
    short = run_bench("--out", str(tmp_path), "--validation-only", "--models", "plain", "--sweep-models", "",
                      "--fuse-weights", "0.2,0.7", "--passage-tokens", "8")
    assert short["validation.plain_passage_tokens"] == 8 and validation["validation.plain_passage_tokens"] == 128
    assert set(json.loads((tmp_path / "fuse-weights-p8.json").read_text())) == {"plain_full", "plain_light"}
    assert json.loads((tmp_path / "fuse-weights.json").read_text()) == weights
    # 8 bytes of each passage instead of 128: the same seeded model ranks differently
    assert short["validation.plain_full"] != validation["validation.plain_full"]

    # --init: a continuation starts from the earlier run's weights (step 1's loss, before any update,
    # differs from the fresh run's on the same seeded batch) and holds out the same validation queries
    go_on = tmp_path / "go-on"
    run_bench("--out", str(go_on), "--init", str(tmp_path), "--train-only", "plain")
    first_loss = [json.loads((d / "plain" / "train_log.jsonl").read_text().splitlines()[0])["loss"]
                  for d in (tmp_path, go_on)]
    assert first_loss[0] != first_loss[1]
    assert (go_on / "plain" / "validation_queries.txt").read_text() == (tmp_path / "plain" / "validation_queries.txt").read_text()
    failed = subprocess.run([sys.executable, str(ROOT / "bench" / "train_reranker.py"), "--dataset", str(SCIFACT),
                             "--model", "tiny", "--smoke", "--out", str(tmp_path / "x"), "--init", str(go_on)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, capture_output=True, text=True)
    assert failed.returncode == 2 and "no trained distill" in failed.stderr
