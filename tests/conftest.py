"""Test-session setup shared by every test file: the library versions beside pytest's summary (CI runs
the suite in two environments: the newest libraries, and the gpu extra's pins), and the `train` marker's
skip where the installed TRL cannot train on this device (TRL 1.15, the gpu extra's, needs CUDA)."""

from __future__ import annotations

import importlib.metadata as metadata
import os

import pytest

# train's default model is gemma3-270m (a real model, minutes per step on a CPU): tests that do not name a
# model train the random-init tiny one; test_config checks the default without this (a fresh process)
os.environ["LABELTUNE_MODEL"] = "tiny"

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
        return f"trains a model, and {e}".split(" (")[0] + " (make test-gpu-pins runs these with the first TRL that trains on CPU)"
    return None


# Module-scoped fixtures that train a run (with TRL): every test using one trains, so it is marked `train`
# here; a test that trains by itself carries @pytest.mark.train.
TRAINING_FIXTURES = {"run_dir", "run", "unsloth_run", "qlora_run", "uninterrupted_run"}


@pytest.fixture(autouse=True)
def _unmarked_tests_do_not_train(request, monkeypatch):
    """A fast test not marked `train` that starts training fails here, on every machine, with the fix named:
    make test-gpu-pins runs the fast tests not marked `train` with TRL 1.15, which cannot train on CPU, so
    there it would fail only in CI, after the whole install. (Slow and gpu tests never run there.)"""
    if any(request.node.get_closest_marker(m) is not None for m in ("train", "slow", "gpu")):
        return
    from trl import SFTTrainer

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} trains a model: mark it @pytest.mark.train (or use a fixture "
                             "listed in TRAINING_FIXTURES in tests/conftest.py)")

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
