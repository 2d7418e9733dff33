"""The demo's quality gates, on the exact settings `make demo` uses (slow: trains for minutes)."""

import json
from pathlib import Path

import pytest

from labeltune import evaluate, label, train
from labeltune.config import EvalConfig, LabelConfig, TrainConfig, resolve

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_gates(tmp_path):
    run = tmp_path / "demo"
    train.main(
        resolve(
            TrainConfig,
            None,
            {"model": "tiny", "data": str(ROOT / "data" / "sample.csv"), "output": str(run)},
        )
    )
    evaluate.main(resolve(EvalConfig, None, {"run": str(run)}))
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    for key in ("base", "finetuned"):
        assert {"accuracy", "macro_f1", "malformed_rate", "n"} <= set(metrics[key])
    assert metrics["finetuned"]["malformed_rate"] <= 0.02
    assert metrics["base"]["malformed_rate"] >= 0.5
    assert metrics["finetuned"]["accuracy"] > metrics["majority_baseline"]["accuracy"]
    out = tmp_path / "labelled.csv"
    label.main(
        resolve(
            LabelConfig,
            None,
            {"run": str(run), "input": str(ROOT / "data" / "new_posts.csv"), "output": str(out)},
        )
    )
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("id,posted_at,text,label,score,score_greedy,ok,reason")
