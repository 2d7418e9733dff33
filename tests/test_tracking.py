"""report_to: TensorBoard event files land in the run directory; a tracker that is not installed is
skipped with a warning and training still completes."""

import importlib.util
import struct
from pathlib import Path

import pytest

from labeltune import train
from labeltune.config import TrainConfig, resolve

ROOT = Path(__file__).resolve().parent.parent


def _scalars(event_file: Path) -> dict[str, list[float]]:
    """Scalar summaries of a TensorBoard event file (TFRecord framing: length, crc, payload, crc)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[float]] = {}
    data = event_file.read_bytes()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4
        for value in event.summary.value:
            out.setdefault(value.tag, []).append(value.simple_value)
    return out


def _train(tmp_path, report_to: str) -> Path:
    out = tmp_path / "run"
    cfg = resolve(
        TrainConfig,
        None,
        {
            "data": str(ROOT / "data" / "sample.csv"),
            "output": str(out),
            "max_steps": 4,
            "logging_steps": 1,
            "limit": 64,
            "report_to": report_to,
        },
    )
    train.main(cfg)
    return out


@pytest.mark.train
@pytest.mark.skipif(
    importlib.util.find_spec("tensorboardX") is None, reason="tensorboardX not installed (dev extra)"
)
def test_tensorboard_logs_into_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written to ./runs of the working directory
    out = _train(tmp_path, "tensorboard")
    files = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    scalars = _scalars(files[0])
    assert len(scalars["train/loss"]) == 4
    assert all(v > 0 for v in scalars["train/loss"])
    assert not (tmp_path / "runs").exists()


@pytest.mark.train
def test_missing_tracker_is_skipped_with_a_warning(tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here: this checks the case where it is not")
    with pytest.warns(UserWarning, match="report_to=wandb: not installed"):
        out = _train(tmp_path, "wandb")
    assert (out / "adapter").is_dir()


def test_unknown_tracker_is_refused():
    from labeltune.config import TrainConfig, resolve

    with pytest.raises(ValueError, match="report_to: 'tensorbored' is not one of: none, tensorboard, wandb"):
        resolve(TrainConfig, None, {"report_to": "tensorboard,tensorbored"})
