"""Test-session setup shared by every test file: the library versions beside pytest's summary (CI runs
the suite in two environments: the newest libraries, and the gpu extra's pins), and the `train` marker's
skip where the installed TRL cannot train on this device (TRL 1.15, the gpu extra's, needs CUDA)."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import shutil
from pathlib import Path

import pytest

# train's default model is gemma3-270m (a real model, minutes per step on a CPU): tests that do not name a
# model train the random-init tiny one; test_config checks the default without this (a fresh process)
os.environ["LABELTUNE_MODEL"] = "tiny"
# TRL's trainers queue a usage ping (huggingface_hub.send_telemetry) whose worker thread reads the Hub
# endpoint when it sends: tests send none, so none reaches the stand-in Hub of tests/test_hub.py or hangs on
# a closed network (set before huggingface_hub is imported: its constants read the environment once)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "tokenizers")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def pytest_terminal_summary(terminalreporter):
    """The libraries this run used, beside its summary (shown with -q too, unlike the report header)."""
    import trl

    terminalreporter.write_line("libraries: " + ", ".join(f"{n} {_version(n)}" for n in LIBRARIES))
    terminalreporter.write_line(f"trl {trl.__version__} imported from {trl.__file__.rsplit('/trl/', 1)[0]}")


def _cannot_train() -> str | None:
    """Why training tests cannot run here (None: they can), in labeltune's own words."""
    import torch
    import trl

    from labeltune.models import check_trainer_supports

    try:
        check_trainer_supports(torch.cuda.is_available(), trl.__version__)
    except ValueError as e:
        return (
            f"trains a model, and {e}".split(" (")[0]
            + " (make test-gpu-pins runs these with the first TRL that trains on CPU)"
        )
    return None


# Fixtures that train a run (with TRL): every test using one trains, so it is marked `train` here; a test
# that trains by itself carries @pytest.mark.train.
TRAINING_FIXTURES = {
    "run_dir",
    "run",
    "unsloth_run",
    "qlora_run",
    "uninterrupted_run",
    "tiny_run_3x48",
    "tiny_run_2x32",
    "tiny_run_70",
}

# ---------------------------------------------------------------- runs trained once per session
# One run per kind (same model, data and options), trained the first time a test asks for it and shared by
# every module that uses that kind. Tests only read a shared run: one that writes into a run (evaluate,
# calibrate, exports beside it, planted files) takes `copy_run(run)`, its own copy in tmp_path. A test
# that changes a shared run fails at its teardown, so a change never leaks into the next test. Tests that
# check training itself (resume, checkpoints, a particular option) still train their own runs.

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample.csv"
_SHARED: dict[Path, dict] = {}  # each shared run: its files as training left them


def _files(run: Path) -> dict:
    """Every path under `run` with its kind, size and mtime: what a write into the run changes."""
    found = {}
    for folder, dirs, files in os.walk(run):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            found[str(path.relative_to(run))] = (
                st.st_mode,
                None if name in dirs else st.st_size,
                st.st_mtime_ns,
            )
    return found


def _train_shared(tmp_path_factory, kind: str, options: dict) -> Path:
    from labeltune import train
    from labeltune.config import TrainConfig, resolve

    out = tmp_path_factory.mktemp(kind) / "run"
    train.main(resolve(TrainConfig, None, {**options, "output": str(out)}))
    _SHARED[out] = _files(out)
    return out


@pytest.fixture(scope="session")
def tiny_run_3x48(tmp_path_factory) -> Path:
    """The tiny model (LABELTUNE_MODEL above) on data/sample.csv's first 48 rows, 3 steps: a run whose labels
    need not be good, only produced. Read-only: copy_run it to write into it."""
    return _train_shared(tmp_path_factory, "tiny_3x48", {"max_steps": 3, "limit": 48})


@pytest.fixture(scope="session")
def tiny_run_2x32(tmp_path_factory) -> Path:
    """The tiny model on data/sample.csv's first 32 rows, 2 steps. Read-only: copy_run it to write into it."""
    return _train_shared(tmp_path_factory, "tiny_2x32", {"max_steps": 2, "limit": 32})


@pytest.fixture(scope="session")
def tiny_run_70(tmp_path_factory) -> Path:
    """The tiny model on all of data/sample.csv, 70 steps (logged every 10): it learns the answer format.
    Read-only: copy_run it to write into it."""
    return _train_shared(
        tmp_path_factory, "tiny_70", {"data": str(SAMPLE), "max_steps": 70, "logging_steps": 10}
    )


@pytest.fixture(scope="session")
def share_run():
    """share_run(run) -> run: a run a module-scoped fixture made (from a shared one) joins the runs that no
    test may change."""

    def share(run: Path) -> Path:
        _SHARED[run] = _files(run)
        return run

    return share


@pytest.fixture
def copy_run(tmp_path):
    """copy_run(run) -> a copy of `run` in this test's tmp_path (tmp_path/"run", then "run-2", ...) to write
    into."""
    made = []

    def copy(run: Path) -> Path:
        made.append(run)
        return Path(
            shutil.copytree(run, tmp_path / ("run" if len(made) == 1 else f"run-{len(made)}"), symlinks=True)
        )

    return copy


@pytest.fixture(autouse=True)
def _shared_runs_stay_as_trained(request):
    """A test that writes into a shared run fails here, naming what it changed (give it copy_run instead)."""
    yield
    for run, trained in _SHARED.items():
        now = _files(run)
        if now != trained:
            changed = sorted(k for k in now.keys() | trained.keys() if now.get(k) != trained.get(k))
            _SHARED[run] = now  # blame this test only, not the ones after it
            pytest.fail(
                f"{request.node.nodeid} changed the shared run {run}: {changed[:5]}; write into "
                "copy_run(run) instead",
                pytrace=False,
            )


@pytest.fixture(autouse=True)
def _unmarked_tests_do_not_train(request, monkeypatch):
    """A fast test not marked `train` that starts training fails here, on every machine, with the fix named:
    make test-gpu-pins runs the fast tests not marked `train` with TRL 1.15, which cannot train on CPU, so
    there it would fail only in CI, after the whole install. (Slow and gpu tests never run there.)"""
    if any(request.node.get_closest_marker(m) is not None for m in ("train", "slow", "gpu")):
        return
    from trl import SFTTrainer

    def refuse(self, *args, **kwargs):
        raise AssertionError(
            f"{request.node.nodeid} trains a model: mark it @pytest.mark.train (or use a fixture "
            "listed in TRAINING_FIXTURES in tests/conftest.py)"
        )

    monkeypatch.setattr(SFTTrainer, "train", refuse)


def pytest_collection_modifyitems(config, items):
    reason = None
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.train)
        if item.get_closest_marker("train") is not None:
            reason = reason or _cannot_train() or ""
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
