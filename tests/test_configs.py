"""The example configs in configs/ resolve against their verb's config class, and each names the
command that uses it in its first line."""

import re
from pathlib import Path

import pytest

from labeltune import config as config_mod

ROOT = Path(__file__).resolve().parent.parent
CLASSES = {
    "train": config_mod.TrainConfig,
    "evaluate": config_mod.EvalConfig,
    "label": config_mod.LabelConfig,
    "predict": config_mod.PredictConfig,
    "calibrate": config_mod.CalibrateConfig,
    "export": config_mod.ExportConfig,
    "prepare": config_mod.PrepareConfig,
    "compare": config_mod.CompareConfig,
    "sweep": config_mod.SweepConfig,
}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_example_config_resolves(name):
    path = ROOT / "configs" / f"{name}.yaml"
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert re.match(rf"# labeltune (data )?{name} --config configs/{name}\.yaml", first)
    cfg = config_mod.resolve(CLASSES[name], str(path))
    assert isinstance(cfg, CLASSES[name])
