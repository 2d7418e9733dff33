"""Verbs check what they can before they write, and wait a bounded time (issue #24): export --push-to-hub
without a token, a sweep with a bad grid or someone else's folder, --ray at an address nothing answers,
evaluate on a split replaced since training, and a train whose model does not load leave nothing behind
that would refuse the corrected command; tiny trains in 4-bit on CPU."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from labeltune.config import EvalConfig, SweepConfig, TrainConfig, resolve, save

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample.csv"


def _cli(*argv, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "labeltune.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env=env,
        check=False,
    )


def _error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("labeltune: error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


def _untrained_run(out: Path) -> Path:
    """A run directory as train writes it before the model loads (config, model.json, data/ split from the
    sample with its fingerprint), without adapter or training."""
    from labeltune.run import RunInfo
    from labeltune.splits import make_splits, write_splits
    from labeltune.task import load_task

    cfg = resolve(TrainConfig, None, {"data": str(SAMPLE), "output": str(out), "limit": 48})
    cfg = replace(cfg, template=load_task(cfg.task).default_template)  # as train resolves it
    out.mkdir(parents=True)
    RunInfo.from_dict({"base": "base/", "backend": "hf", "load_in_4bit": False, "preset": "tiny"}).save(out)
    save(cfg, out / "config.yaml")
    write_splits(cfg, *make_splits(cfg, load_task(cfg.task)), out / "data")
    (out / "adapter").mkdir()
    return out


# ---------------------------------------------------------------- export --push-to-hub


def test_push_without_a_token_is_refused_before_the_export_is_written(tmp_path):
    run = _untrained_run(tmp_path / "run")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")
    }
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")  # no saved token there
    out = tmp_path / "export"
    said = _error(_cli("export", "--run", run, "--output", out, "--push-to-hub", "me/labeller", env=env))
    assert "--push-to-hub" in said and "HF_TOKEN" in said and "hf auth login" in said
    assert not out.exists()  # so the same command, with a token, is not refused for a non-empty folder
    said = _error(
        _cli(
            "export",
            "--run",
            run,
            "--output",
            out,
            "--push-to-hub",
            "me/a/b",
            env={**env, "HF_TOKEN": "hf_x"},
        )
    )
    assert "not a Hugging Face repo id" in said and not out.exists()


def test_push_lists_what_it_uploads_and_uploads_no_training_data(tmp_path, monkeypatch, capsys):
    """--push-to-hub prints every file it uploads with its size; the export it uploads keeps the data's
    summary, not its splits. The Hub is a stand-in HfApi that records the folder it was given."""
    import huggingface_hub

    from labeltune import export
    from labeltune.config import ExportConfig

    run = _untrained_run(tmp_path / "run")
    (run / "base").mkdir()  # tiny's base travels with its adapter (empty here: nothing is loaded)
    uploaded = {}

    class Hub:
        def __init__(self, token):
            uploaded["token"] = token

        def create_repo(self, repo_id, private, exist_ok):
            uploaded["private"] = private

        def upload_folder(self, folder_path, repo_id):
            uploaded["files"] = sorted(
                str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()
            )

    monkeypatch.setattr(huggingface_hub, "HfApi", Hub)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    export.main(
        resolve(
            ExportConfig,
            None,
            {"run": str(run), "output": str(tmp_path / "out"), "push_to_hub": "me/labeller"},
        )
    )
    said = capsys.readouterr().out
    assert uploaded["private"] is True and uploaded["token"] == "hf_test"
    assert f"pushing {len(uploaded['files'])} files" in said and "to me/labeller (private):" in said
    for name in uploaded["files"]:
        assert f"  {name}  (" in said
    assert "data/summary.json" in uploaded["files"] and not any(
        n.startswith("data/") and n.endswith(".jsonl") for n in uploaded["files"]
    )


def test_the_token_saved_by_hf_auth_login_is_found(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from labeltune.export import hub_token

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    saved = tmp_path / "token"
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(saved))
    with pytest.raises(ValueError, match="needs a Hugging Face token"):
        hub_token("me/labeller")
    saved.write_text("hf_saved\n")
    assert hub_token("me/labeller") == "hf_saved"


# ---------------------------------------------------------------- sweep


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"lr": []}, "grid.lr: expected a non-empty list"),
        ({"lora_r": [8, -1]}, "sweep trial t01-lora_r=-1: --lora-r: -1 is not valid"),
        ({"model": ["tiny", "no-such-model"]}, "sweep trial t01-model=no-such-model: unknown model"),
    ],
)
def test_a_bad_sweep_writes_nothing(tmp_path, grid, message):
    from labeltune import sweep

    out = tmp_path / "sweep"
    with pytest.raises(ValueError, match=message):
        sweep.main(
            SweepConfig(output=str(out), train={"data": str(SAMPLE), "max_steps": 1, "limit": 48}, grid=grid)
        )
    assert not out.exists()  # the corrected command is not refused as "another sweep"


def test_sweep_never_writes_into_a_folder_of_the_users(tmp_path):
    from labeltune import sweep

    out = tmp_path / "mine"
    (out / "data").mkdir(parents=True)
    (out / "data" / "train.jsonl").write_text('{"text": "my own rows"}\n', encoding="utf-8")
    # llama3.1-8b: a trial the spawned train would refuse at once on CPU, should the sweep get that far
    with pytest.raises(ValueError, match="already holds files that sweep did not write"):
        sweep.main(
            SweepConfig(
                output=str(out), train={"data": str(SAMPLE), "model": "llama3.1-8b"}, grid={"lr": [1e-3]}
            )
        )
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["data", "data/train.jsonl"]
    assert (out / "data" / "train.jsonl").read_text(encoding="utf-8") == '{"text": "my own rows"}\n'


# ---------------------------------------------------------------- label --ray


def test_ray_address_nothing_answers_at_is_refused_in_seconds():
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'labeltune[ray]')")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", f"from labeltune.ray_label import connect; connect('127.0.0.1:{port}')"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=90,
        check=False,
    )
    assert time.monotonic() - started < 30
    assert proc.returncode != 0
    assert f"ValueError: --ray 127.0.0.1:{port}: unreachable" in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------- evaluate on a changed split


def test_evaluate_refuses_a_split_replaced_since_training(tmp_path):
    from labeltune import evaluate
    from labeltune.run import open_run

    run = _untrained_run(tmp_path / "run")
    evaluate.check_split_unchanged(open_run(run))  # as train wrote it: accepted
    shutil.copyfile(run / "data" / "train.jsonl", run / "data" / "test.jsonl")
    with pytest.raises(ValueError, match="changed since training.*--data FILE"):
        evaluate.main(resolve(EvalConfig, None, {"run": str(run), "base": False, "forgetting": None}))
    assert not (run / "eval").exists()
    # the user's own data is evaluated whatever the run's split holds (here it stops at the missing adapter)
    with pytest.raises(ValueError) as own:
        evaluate.main(
            resolve(
                EvalConfig, None, {"run": str(run), "base": False, "forgetting": None, "data": str(SAMPLE)}
            )
        )
    assert "changed since training" not in str(own.value)
    # a run of an earlier version, with no fingerprint recorded: not checked
    summary = json.loads((run / "data" / "summary.json").read_text(encoding="utf-8"))
    del summary["fingerprint"]
    (run / "data" / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    evaluate.check_split_unchanged(open_run(run))


# ---------------------------------------------------------------- train


@pytest.mark.train  # runs `labeltune train`, which first refuses a TRL that cannot train here
def test_train_whose_model_does_not_load_leaves_the_folder_as_it_was(tmp_path):
    from labeltune import train

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "vocab_size": "many"}', encoding="utf-8")
    for out, existed in ((tmp_path / "new", False), (tmp_path / "empty", True)):
        if existed:
            out.mkdir()
        cfg = resolve(
            TrainConfig,
            None,
            {"model": str(broken), "data": str(SAMPLE), "output": str(out), "limit": 48, "max_steps": 1},
        )
        with pytest.raises(
            Exception, match="vocab_size"
        ):  # transformers' own error, raised after the split is written
            train.main(cfg)
        assert out.exists() == existed and (not existed or not any(out.iterdir()))


@pytest.mark.train
def test_tiny_trains_in_4bit_on_cpu_and_its_split_is_checked(tmp_path):
    """--load-in-4bit true on the tiny preset (bitsandbytes 4-bit on CPU): trains, keeps its dev-chosen
    epoch and evaluates; the same run with its test split replaced by training rows is refused."""
    from labeltune.models import bnb_4bit_unavailable

    if why := bnb_4bit_unavailable(cuda=False):
        pytest.skip(f"4-bit on CPU: {why}")
    out = tmp_path / "tiny4"
    done = _cli(
        "train",
        "--model",
        "tiny",
        "--load-in-4bit",
        "true",
        "--data",
        SAMPLE,
        "--output",
        out,
        "--max-steps",
        "3",
        "--limit",
        "48",
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "model.json").read_text())["load_in_4bit"] is True
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    evaluated = _cli(
        "evaluate",
        "--run",
        out,
        "--base",
        "false",
        "--forgetting",
        "None",
        "--mode",
        "score",
        "--limit",
        "8",
        timeout=600,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    shutil.copyfile(out / "data" / "train.jsonl", out / "data" / "test.jsonl")
    assert "changed since training" in _error(
        _cli("evaluate", "--run", out, "--base", "false", "--forgetting", "None")
    )
