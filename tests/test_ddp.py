"""Data-parallel training: two CPU processes (gloo) under `accelerate launch --multi_gpu` (the
torchrun launcher; without CUDA each rank runs on CPU), tiny preset.

Both ranks train; only rank 0 writes the run directory and its logs.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.train
def test_two_process_ddp_on_cpu(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    out = tmp_path / "ddp"
    cmd = [
        accelerate,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "labeltune.cli",
        "train",
        "--model",
        "tiny",
        "--output",
        str(out),
        "--max-steps",
        "4",
        "--limit",
        "64",
        "--batch-size",
        "4",
        "--logging-steps",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_CONFIG_FILE": str(tmp_path / "none.yaml")}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    info = json.loads((out / "model.json").read_text())
    assert info["world_size"] == 2 and info["steps"] == 4
    assert proc.stdout.count("trained 4 steps") == 1  # one rank reports
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert sum("loss" in r for r in log) == 4
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
