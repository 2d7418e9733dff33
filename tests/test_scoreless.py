"""A run trained on data without scores: train says the score is not learnt, and label, predict, evaluate
and the model card leave it empty (never a silent 0)."""

import contextlib
import csv
import io
import json
from pathlib import Path

import pytest

from labeltune import evaluate, export, label, train
from labeltune.config import EvalConfig, ExportConfig, LabelConfig, TrainConfig, resolve

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample.csv"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run trained a few steps on the sample without its score column."""
    root = tmp_path_factory.mktemp("scoreless")
    posts = root / "posts.csv"
    with (
        open(SAMPLE, encoding="utf-8", newline="") as f,
        open(posts, "w", encoding="utf-8", newline="") as out,
    ):
        writer = csv.writer(out)
        writer.writerow(["本文", "感情"])
        for row in csv.DictReader(f):
            writer.writerow([row["text"], row["label"]])
    out = root / "run"
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        train.main(
            resolve(
                TrainConfig,
                None,
                {
                    "data": str(posts),
                    "text_column": "本文",
                    "label_column": "感情",
                    "output": str(out),
                    "max_steps": 4,
                    "limit": 120,
                },
            )
        )
    (root / "train_stderr.txt").write_text(said.getvalue(), encoding="utf-8")
    return out


def test_train_says_the_score_is_not_learnt_and_records_it(run_dir):
    said = (run_dir.parent / "train_stderr.txt").read_text(encoding="utf-8")
    assert "no training row has a score (no 'score' column" in said and "leave its score empty" in said
    assert json.loads((run_dir / "model.json").read_text(encoding="utf-8"))["score_trained"] is False


def test_label_and_predict_leave_the_score_empty(run_dir, tmp_path):
    import labeltune

    source = tmp_path / "new.csv"
    source.write_text("本文\n今日は楽しかった\nひどい対応だった\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    label.main(
        resolve(
            LabelConfig,
            None,
            {
                "run": str(run_dir),
                "input": str(source),
                "output": str(out),
                "mode": "score",
                "progress": False,
            },
        )
    )  # 本文: the run's own text column
    rows = list(csv.DictReader(open(out, encoding="utf-8-sig", newline="")))
    assert len(rows) == 2 and all(r["label"] for r in rows)
    assert all(r["score"] == "" and r["score_greedy"] == "" for r in rows)
    predictions = labeltune.load_run(run_dir).predict(["今日は楽しかった"])
    assert predictions[0].label is not None and predictions[0].score is None


def test_evaluate_and_the_card_say_the_score_was_not_trained(run_dir, tmp_path):
    metrics = evaluate.main(
        resolve(EvalConfig, None, {"run": str(run_dir), "mode": "score", "limit": 8, "forgetting": None})
    )
    assert any(w.startswith("score not trained") for w in metrics["warnings"])
    assert not metrics["finetuned"].get("score_n")
    exported = export.main(
        resolve(ExportConfig, None, {"run": str(run_dir), "output": str(tmp_path / "adapter")})
    )
    card = (exported / "README.md").read_text(encoding="utf-8")
    assert "Score: **not trained**" in card and "an integer 0..100" not in card
