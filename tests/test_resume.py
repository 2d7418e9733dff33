"""Training that survives a kill and keeps its best epoch (labeltune.checkpoints, labeltune.callbacks).

The end-to-end tests run `labeltune train` in child processes on the tiny preset, as a Colab user
would: one run uninterrupted; the same command killed with SIGKILL after its first complete
checkpoint, then run again. The chosen options make the dev macro-F1 peak at epoch 3 of 5 on this
data and seed (checked in the test), so the best-epoch choice is visible.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labeltune import checkpoints

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--limit", "128", "--epochs", "5", "--lr", "3e-3", "--save-steps", "4", "--logging-steps", "4"]


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "labeltune.cli", "train", "--output", str(out), *ARGS, *extra]


def _train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(out, *extra), capture_output=True, text=True, cwd=ROOT, timeout=600)


def _dev_records(run: Path) -> list[dict]:
    with open(run / "train_log.jsonl", encoding="utf-8") as f:
        return [
            {k: v for k, v in r.items() if k != "dev_seconds"}
            for r in map(json.loads, f)
            if "dev_macro_f1" in r
        ]


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "whole"
    proc = _train(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(uninterrupted_run, tmp_path):
    whole, _ = uninterrupted_run
    out = tmp_path / "killed"
    child = subprocess.Popen(_command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 300
    while not checkpoints.complete(out / "checkpoints") and time.time() < deadline and child.poll() is None:
        time.sleep(0.1)
    assert child.poll() is None, "training finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not (out / "adapter").exists() and checkpoints.complete(out / "checkpoints")

    # the same directory with other options is refused, naming what differs
    other = _train(out, "--lr", "1e-3")
    assert other.returncode == 2 and "unfinished run started with other options" in other.stderr
    assert "--lr 0.001 (the run has 0.003)" in other.stderr

    again = _train(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stdout and "from checkpoint-" in again.stdout
    info, whole_info = (json.loads((d / "model.json").read_text()) for d in (out, whole))
    assert info["steps"] == whole_info["steps"] == 40
    assert _dev_records(out) == _dev_records(whole)  # every epoch's dev metrics, exactly
    assert info["best"] == whole_info["best"]
    assert _same(_weights(out / "adapter"), _weights(whole / "adapter"))


@pytest.mark.slow
def test_the_best_epoch_is_kept_not_the_last(uninterrupted_run):
    whole, stdout = uninterrupted_run
    info = json.loads((whole / "model.json").read_text())
    best = info["best"]
    records = _dev_records(whole)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    assert best["metric"] == "macro_f1" and best["epoch"] == 3 and not best["is_last_step"]
    assert best["value"] == max(r["dev_macro_f1"] for r in records) > records[-1]["dev_macro_f1"]
    kept = whole / "checkpoints" / f"checkpoint-{best['step']}"
    last = whole / "checkpoints" / "checkpoint-40"
    assert _same(_weights(whole / "adapter"), _weights(kept))
    assert not _same(_weights(whole / "adapter"), _weights(last))
    # finished: the kept checkpoints hold weights only (no optimizer state), the newest 2 and the best
    assert sorted(checkpoints.step_of(p) for p in checkpoints.complete(whole / "checkpoints")) == [
        best["step"],
        36,
        40,
    ]
    assert not list((whole / "checkpoints").glob("*/optimizer.pt"))
    assert "kept epoch 3" in stdout and "next: labeltune evaluate" in stdout
    # progress in words when the output is not a terminal (no raw dicts)
    assert "step 4/40 (epoch 0.50): loss" in stdout and "ETA" in stdout and "{'loss'" not in stdout


@pytest.mark.slow
def test_dev_scored_after_training_keeps_the_same_epoch(uninterrupted_run, tmp_path, monkeypatch, capsys):
    """The unsloth backend's way (each epoch's checkpoint scored on the dev split in a fresh process after
    training, labeltune.devscore), forced on the hf backend: the same dev records, kept epoch and adapter as
    scoring inside the training loop."""
    from labeltune import cli, train

    whole, _ = uninterrupted_run
    monkeypatch.setattr(train, "dev_scoring", lambda backend, metric, has_dev: "after")
    monkeypatch.chdir(ROOT)
    out = tmp_path / "after"
    assert cli.run(["train", "--output", str(out), *ARGS]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("(scored after training, in a fresh process)") == 5
    info, whole_info = (json.loads((d / "model.json").read_text()) for d in (out, whole))
    assert _dev_records(out) == _dev_records(whole)
    assert info["best"] == whole_info["best"] and info["best"]["epoch"] == 3
    assert _same(_weights(out / "adapter"), _weights(whole / "adapter"))
    # then rotated as usual: the newest 2 and the best
    assert sorted(checkpoints.step_of(p) for p in checkpoints.complete(out / "checkpoints")) == [
        info["best"]["step"],
        36,
        40,
    ]


def test_the_kept_epoch_follows_best_metric_on_every_backend():
    """--best-metric macro_f1 on the unsloth backend decodes the dev split too (after training), not the
    dev loss in its place; loss, or no dev split, decode nothing."""
    from labeltune.train import dev_scoring

    assert dev_scoring("hf", "macro_f1", True) == "loop"
    assert dev_scoring("unsloth", "macro_f1", True) == "after"
    assert dev_scoring("unsloth", "accuracy", True) == "after"
    assert dev_scoring("unsloth", "loss", True) is None and dev_scoring("hf", "loss", True) is None
    assert dev_scoring("unsloth", "macro_f1", False) is None


# ---------------------------------------------------------------- the checkpoint files (no training)


def _checkpoint(ckpt_dir: Path, step: int, complete: bool = True) -> Path:
    path = ckpt_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"x")
    if complete:
        checkpoints.mark_complete(path, {"step": step})
    return path


def test_only_marked_checkpoints_count_and_half_written_ones_are_removed(tmp_path):
    _checkpoint(tmp_path, 4)
    _checkpoint(tmp_path, 8)
    _checkpoint(tmp_path, 12, complete=False)  # killed while the Trainer was writing it
    assert checkpoints.latest_complete(tmp_path).name == "checkpoint-8"
    assert [p.name for p in checkpoints.remove_incomplete(tmp_path)] == ["checkpoint-12"]
    assert not (tmp_path / "checkpoint-12").exists()
    assert checkpoints.latest_complete(tmp_path / "none") is None


def test_rotation_keeps_the_newest_and_the_best(tmp_path):
    for step in (4, 8, 12, 16, 20):
        _checkpoint(tmp_path, step)
    checkpoints.rotate(tmp_path, keep=2, best_step=8)
    assert [checkpoints.step_of(p) for p in checkpoints.complete(tmp_path)] == [8, 16, 20]


def test_rotation_holds_back_the_epoch_ends_to_be_scored_after_training(tmp_path):
    for step in (2, 4, 6, 8, 10, 12):
        _checkpoint(tmp_path, step)
    checkpoints.rotate(tmp_path, keep=1, best_step=None, also_keep=frozenset({4, 8}))
    assert [checkpoints.step_of(p) for p in checkpoints.complete(tmp_path)] == [4, 8, 12]


def test_best_record_and_patience_follow_the_log():
    log = [
        {"loss": 3.0, "step": 2},
        {"epoch": 1, "step": 4, "dev_macro_f1": 0.3, "dev_loss": 1.0, "dev_score_mae": 20.0},
        {"epoch": 2, "step": 8, "dev_macro_f1": 0.5, "dev_loss": 0.9, "dev_score_mae": 25.0},
        {"epoch": 3, "step": 12, "dev_macro_f1": 0.5, "dev_loss": 0.7, "dev_score_mae": 15.0},
        {"epoch": 4, "step": 16, "dev_macro_f1": 0.4, "dev_loss": 0.6, "dev_score_mae": 18.0},
    ]
    assert checkpoints.best_record(log, "macro_f1")["epoch"] == 3  # a tie goes to the lower dev loss
    assert checkpoints.best_record(log, "score_mae")["epoch"] == 3  # lower is better
    assert checkpoints.epochs_since_best(log, "macro_f1") == 1
    assert (
        checkpoints.best_record(log[:1], "macro_f1") is None
        and checkpoints.epochs_since_best(log[:1], "macro_f1") == 0
    )
