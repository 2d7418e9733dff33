"""When an evaluation means little (labeltune.metrics.macro_f1_interval, result_warnings): the bootstrap
interval of macro-F1, the warning rules on hand-made metrics, and the report showing both. Pure: no model, no
training (the evaluation of a trained run:
tests/test_pipeline.py::test_evaluate_warns_when_the_result_means_little)."""

from __future__ import annotations

import random

import pytest

from labeltune.answers import Answer
from labeltune.data import Example
from labeltune.metrics import classification_metrics, macro_f1_interval, result_warnings, system_metrics
from labeltune.report import format_table, write_report

LABELS = ["1", "0", "-1"]
NAMES = {"1": "positive", "0": "neutral", "-1": "negative"}


# ---------------------------------------------------------------- the bootstrap interval


def test_one_resample_is_the_macro_f1_of_the_resampled_rows():
    """Each resample's value is classification_metrics' macro-F1 of the rows drawn (malformed counted as
    wrong)."""
    gold = ["1", "1", "0", "0", "-1", "-1", "0", "1", "-1", "0"]
    pred = ["1", "0", None, "0", "-1", "1", "-1", "1", None, "0"]
    for seed in range(20):
        rows = random.Random(seed).choices(range(len(gold)), k=len(gold))
        expected = classification_metrics([gold[i] for i in rows], [pred[i] for i in rows], LABELS)[
            "macro_f1"
        ]
        assert macro_f1_interval(gold, pred, LABELS, resamples=1, seed=seed) == pytest.approx(
            [expected, expected]
        )


def test_interval_is_seeded_and_narrows_with_more_rows():
    rng = random.Random(7)
    gold = [rng.choice(LABELS) for _ in range(60)]
    pred = [g if rng.random() < 0.6 else rng.choice([*LABELS, None]) for g in gold]
    point = classification_metrics(gold, pred, LABELS)["macro_f1"]
    low, high = macro_f1_interval(gold, pred, LABELS)
    assert low < point < high
    assert macro_f1_interval(gold, pred, LABELS) == [low, high]  # the same rows, the same interval
    low10, high10 = macro_f1_interval(gold * 10, pred * 10, LABELS)
    assert low < low10 < point < high10 < high
    assert high10 - low10 < (high - low) / 2  # ~ 1/sqrt(10) as wide


def test_interval_of_certain_answers_and_of_no_rows():
    assert macro_f1_interval(["1", "0", "-1"] * 5, ["1", "0", "-1"] * 5, LABELS) == [1.0, 1.0]
    assert macro_f1_interval(["1", "0"] * 5, [None] * 10, LABELS) == [0.0, 0.0]  # malformed is never right
    assert macro_f1_interval([], [], LABELS) is None


# ---------------------------------------------------------------- the warning rules


def _metrics(
    tuned: float,
    interval: list[float] | None,
    majority: float = 0.2,
    base: float | None = 0.1,
    n: int = 70,
    split: str = "test",
) -> dict:
    metrics = {
        "split": split,
        "label_names": NAMES,
        "majority_baseline": {
            "label": "0",
            "n": n,
            "accuracy": 0.4,
            "macro_f1": majority,
            "malformed_rate": 0.0,
        },
        "finetuned": {
            "n": n,
            "accuracy": 0.5,
            "macro_f1": tuned,
            "malformed_rate": 0.0,
            "macro_f1_interval": interval,
        },
    }
    if base is not None:
        metrics["base"] = {"n": n, "accuracy": 0.3, "macro_f1": base, "malformed_rate": 0.5}
    return metrics


def test_a_clear_gain_gets_no_warning():
    assert result_warnings(_metrics(0.8, [0.7, 0.9])) == []
    assert result_warnings(_metrics(0.8, None, base=None)) == []


def test_worse_than_the_majority_class():
    assert result_warnings(_metrics(0.05, [0.0, 0.12], base=None)) == [
        "the fine-tuned model is worse than the majority class: macro-F1 0.050 < 0.200 "
        "(always answering 0 (neutral))"
    ]


def test_worse_than_the_untuned_base():
    assert result_warnings(_metrics(0.5, [0.4, 0.6], base=0.55)) == [
        "the fine-tuned model is worse than the untuned base (adapter off): macro-F1 0.500 < 0.550"
    ]


def test_too_few_rows_to_tell_the_model_from_the_majority_class():
    [warning] = result_warnings(_metrics(0.31, [0.18, 0.45], n=15))
    assert warning.startswith(
        "15 test rows cannot tell these apart: macro-F1 0.31 [0.18, 0.45] (fine-tuned, 95% "
        "bootstrap interval) holds the majority class's 0.20 (always answering 0 (neutral))"
    )
    [warning] = result_warnings(_metrics(0.31, [0.18, 0.45], n=15, split="data/posts.csv"))
    assert warning.startswith("15 rows of data/posts.csv cannot tell these apart")


def test_worse_and_within_the_interval_says_both():
    warnings = result_warnings(_metrics(0.15, [0.05, 0.3], base=0.2))
    assert [w.split(":")[0] for w in warnings] == [
        "the fine-tuned model is worse than the majority class",
        "the fine-tuned model is worse than the untuned base (adapter off)",
        "70 test rows cannot tell these apart",
    ]


def test_without_a_fine_tuned_system_nothing_is_said():
    metrics = _metrics(0.0, None)
    del metrics["finetuned"]
    assert result_warnings(metrics) == []


# ---------------------------------------------------------------- the report shows them


def _pred(label):
    return Answer(label, 0, label is not None, "" if label is not None else "no_label", "", False, None)


def test_report_shows_the_interval_and_the_warnings(tmp_path):
    examples = [Example(t, g, 0) for t, g in zip("abcdef", ["1", "0", "-1", "0", "1", "0"])]
    predictions = [_pred(p) for p in ["1", "-1", "-1", None, "0", "0"]]
    gold = [ex.label for ex in examples]
    tuned = system_metrics(gold, [0] * 6, predictions, LABELS)
    tuned["macro_f1_interval"] = macro_f1_interval(gold, [p.label for p in predictions], LABELS)
    metrics = {
        "run": "runs/x",
        "split": "test",
        "task": "sentiment_toxicity",
        "mode": "generate",
        "label_names": NAMES,
        "majority_baseline": {
            "label": "0",
            "n": 6,
            "accuracy": 0.5,
            "macro_f1": 2 / 9,
            "malformed_rate": 0.0,
        },
        "finetuned": tuned,
    }
    metrics["warnings"] = ["2 rows dropped: 2 empty_text (not evaluated)", *result_warnings(metrics)]
    assert any("6 test rows cannot tell these apart" in w for w in metrics["warnings"])
    write_report(tmp_path, metrics, examples, {"finetuned": predictions})
    low, high = tuned["macro_f1_interval"]
    cell = f"{tuned['macro_f1']:.3f} [{low:.2f}, {high:.2f}]"
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert (
        "| system | n | accuracy | macro-F1 [95% CI] |" in md and f"| fine-tuned | 6 | 0.500 | {cell} |" in md
    )
    assert md.index("## Warnings") < md.index("## fine-tuned")
    for warning in metrics["warnings"]:
        assert f"- {warning}" in md
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<th>macro-F1 [95% CI]</th>" in html and f"<td>{cell}</td>" in html
    for warning in metrics["warnings"]:
        assert f"<li>{warning.replace(chr(39), '&#39;')}</li>" in html
    assert f"| {cell} |" in format_table(metrics)  # the table evaluate prints and the model card shows
