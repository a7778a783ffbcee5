"""Two processes (torchrun, gloo on CPU) make the same update as one process on the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from helpers import retrieval_groups  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from nestrank.train.config import load_config  # noqa: E402
from nestrank.train.retriever import train_retriever  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(path: Path, tiny: Path, groups: Path, out: Path, chunk: int) -> Path:
    path.write_text(f"""
[model]
backbone = "{tiny}"
[lora]
r = 4
alpha = 8
dropout = 0.0
[data]
train_groups = "{groups}"
group_size = 3
query_max_length = 8
passage_max_length = 16
[train]
output_dir = "{out}"
batch_size = 4
max_steps = 2
learning_rate = 1e-2
warmup_ratio = 0.0
gradcache_chunk_size = {chunk}
""", encoding="utf-8")
    return path


@pytest.mark.timeout(300)
def test_two_process_torchrun_matches_one_process(word_llama_dir, tmp_path):
    tiny, groups = word_llama_dir, retrieval_groups(tmp_path / "groups.jsonl")
    single = train_retriever(load_config(write_config(tmp_path / "one.toml", tiny, groups, tmp_path / "one", 0)),
                             progress=False)
    config = write_config(tmp_path / "two.toml", tiny, groups, tmp_path / "two", 1)  # GradCache chunks of 1 as well
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "nestrank.train", "retriever", "--config", str(config), "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    state = (tmp_path / "two" / "final" / "trainer_state.json").read_text()
    assert '"world_size": 2' in state
    one = load_file(single.checkpoint / "adapter_model.safetensors")
    two = load_file(tmp_path / "two" / "final" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    moved = 0.0
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=0)
        moved += float(one[key].abs().sum()) if "lora_B" in key else 0.0
    assert moved > 0
    # Adam's update hardly depends on the gradient's scale, so compare the gradient norms as well.
    logs = [[json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
            for out in (tmp_path / "one", tmp_path / "two")]
    for a, b in zip(*logs, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
