"""Pure metric functions of labeltune.evaluate, checked against values computed by hand."""

from __future__ import annotations

import math

import pytest

from labeltune.metrics import (
    MALFORMED,
    classification_metrics,
    macro_f1_interval,
    majority_baseline,
    score_metrics,
    spearman,
)
from labeltune.report import format_table

LABELS = ["1", "0", "-1"]

# ---------------------------------------------------------------- classification
#
# gold:  1  1  1     0  0  -1 -1  -1
# pred:  1  0  None  0  1  -1 -1  0        (None = malformed answer)
#
# confusion (rows gold, columns 1 / 0 / -1 / malformed):
#   gold  1:  1  1  0  1
#   gold  0:  1  1  0  0
#   gold -1:  0  1  2  0
#
# accuracy = (1 + 1 + 2) / 8 = 0.5
# class  1: tp 1, predicted 1+1+0 = 2, support 3 -> P 1/2, R 1/3, F1 = 2*(1/2)(1/3)/(1/2+1/3)
#                                                                    = (1/3)/(5/6) = 0.4
# class  0: tp 1, predicted 1+1+1 = 3, support 2 -> P 1/3, R 1/2, F1 = 0.4
# class -1: tp 2, predicted 0+0+2 = 2, support 3 -> P 1,   R 2/3, F1 = 2*(2/3)/(5/3) = 0.8
# (the malformed answer is a false positive for no class: it is in no precision denominator)
# macro P = (1/2 + 1/3 + 1) / 3 = 11/18; macro R = (1/3 + 1/2 + 2/3) / 3 = 1/2; macro F1 = 1.6 / 3
# malformed_rate = 1 / 8
GOLD = ["1", "1", "1", "0", "0", "-1", "-1", "-1"]
PRED = ["1", "0", None, "0", "1", "-1", "-1", "0"]


def test_classification_metrics_by_hand():
    m = classification_metrics(GOLD, PRED, LABELS)
    approx = pytest.approx
    assert m["n"] == 8
    assert m["accuracy"] == approx(0.5)
    assert m["per_class"]["1"] == {
        "precision": approx(0.5),
        "recall": approx(1 / 3),
        "f1": approx(0.4),
        "support": 3,
    }
    assert m["per_class"]["0"] == {
        "precision": approx(1 / 3),
        "recall": approx(0.5),
        "f1": approx(0.4),
        "support": 2,
    }
    assert m["per_class"]["-1"] == {
        "precision": approx(1.0),
        "recall": approx(2 / 3),
        "f1": approx(0.8),
        "support": 3,
    }
    assert m["macro_precision"] == approx(11 / 18)
    assert m["macro_recall"] == approx(0.5)
    assert m["macro_f1"] == approx(1.6 / 3)
    assert m["malformed_rate"] == approx(1 / 8)
    assert m["confusion"] == {
        "labels": LABELS,
        "columns": ["1", "0", "-1", MALFORMED],
        "matrix": [[1, 1, 0, 1], [1, 1, 0, 0], [0, 1, 2, 0]],
    }
    assert sum(map(sum, m["confusion"]["matrix"])) == 8


def test_all_malformed_counts_as_wrong():
    m = classification_metrics(["1", "0", "-1"], [None, None, None], LABELS)
    assert m["accuracy"] == 0.0 and m["macro_f1"] == 0.0 and m["malformed_rate"] == 1.0
    assert [row[-1] for row in m["confusion"]["matrix"]] == [1, 1, 1]
    for c in m["per_class"].values():
        assert c["precision"] == 0.0 and c["recall"] == 0.0 and c["f1"] == 0.0 and c["support"] == 1


def test_perfect_and_absent_class():
    # class "0" never occurs and is never predicted (japanese-toxic has no positive posts): its P/R/F1 are 0
    # (no division by zero) and it is left out of the macro averages, as scikit-learn's f1_score leaves out
    # labels in neither y_true nor y_pred; a perfect system scores 1.0, not 2/3.
    m = classification_metrics(["1", "-1"], ["1", "-1"], LABELS)
    assert m["accuracy"] == 1.0 and m["malformed_rate"] == 0.0
    assert m["per_class"]["0"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == m["macro_precision"] == m["macro_recall"] == 1.0
    assert macro_f1_interval(["1", "-1"] * 5, ["1", "-1"] * 5, LABELS) == [1.0, 1.0]


def test_a_label_predicted_but_never_gold_still_counts():
    # "0" is predicted once but never gold: it is in the average with F1 0 (a wrong answer is not free).
    m = classification_metrics(["1", "-1", "-1"], ["1", "-1", "0"], LABELS)
    # "1": F1 1; "-1": P 1, R 1/2, F1 2/3; "0": F1 0 -> (1 + 2/3 + 0) / 3
    assert m["macro_f1"] == pytest.approx(5 / 9)
    low, high = macro_f1_interval(["1", "-1", "-1"], ["1", "-1", "0"], LABELS, resamples=200)
    assert 0 <= low <= 5 / 9 <= high <= 1


def test_classification_metrics_empty_and_length_mismatch():
    m = classification_metrics([], [], LABELS)
    assert m["n"] == 0 and m["accuracy"] == 0.0 and m["malformed_rate"] == 0.0
    with pytest.raises(ValueError):
        classification_metrics(["1"], [], LABELS)


# ---------------------------------------------------------------- spearman


def test_spearman_monotone():
    assert spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 7, 5, -3]) == pytest.approx(-1.0)


def test_spearman_with_ties():
    # y = 5 6 7 8 7 -> ranks 1 2 3.5 5 3.5 ; x ranks 1..5, both means 3
    # dx = -2 -1 0 1 2 ; dy = -2 -1 .5 2 .5
    # cov = 4 + 1 + 0 + 2 + 1 = 8 ; var x = 10 ; var y = 4 + 1 + .25 + 4 + .25 = 9.5
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))


def test_spearman_ties_on_both_sides():
    # x ranks 1.5 1.5 3.5 3.5 ; y ranks 1.5 3.5 1.5 3.5 ; cov = 1 - 1 - 1 + 1 = 0
    assert spearman([1, 1, 2, 2], [1, 2, 1, 2]) == pytest.approx(0.0)
    # x = 0 0 0 50 80 -> ranks 2 2 2 4 5 ; y = 0 10 0 60 60 -> ranks 1.5 3 1.5 4.5 4.5
    # means 3 and 3 ; dx = -1 -1 -1 1 2 ; dy = -1.5 0 -1.5 1.5 1.5
    # cov = 1.5 + 0 + 1.5 + 1.5 + 3 = 7.5 ; var x = 1+1+1+1+4 = 8 ; var y = 2.25*4 = 9
    assert spearman([0, 0, 0, 50, 80], [0, 10, 0, 60, 60]) == pytest.approx(7.5 / math.sqrt(72))


def test_spearman_undefined():
    assert spearman([3, 3, 3], [1, 2, 3]) is None
    assert spearman([1, 2, 3], [0, 0, 0]) is None
    assert spearman([1], [1]) is None
    assert spearman([], []) is None
    assert spearman([1, 2], [1, 2, 3]) is None


# ---------------------------------------------------------------- scores


def test_score_metrics_ignores_pairs_with_none():
    # kept pairs: (10, 20) (0, 0) (80, 60) -> MAE (10 + 0 + 20) / 3 = 10 ; same order -> rho 1
    m = score_metrics([10, None, 50, 0, 80], [20, 30, None, 0, 60])
    assert m == {
        "score_n": 3,
        "score_mae": pytest.approx(10.0),
        "score_spearman": pytest.approx(1.0),
        "score_at_ends": pytest.approx(1 / 3),
    }  # the prediction 0


def test_score_metrics_no_pairs_and_one_pair():
    none = {"score_n": 0, "score_mae": None, "score_spearman": None, "score_at_ends": None}
    assert score_metrics([None, 5], [5, None]) == none
    assert score_metrics([], []) == none
    assert score_metrics([40, None], [70, 3]) == {
        "score_n": 1,
        "score_mae": 30.0,
        "score_spearman": None,
        "score_at_ends": 0.0,
    }


# ---------------------------------------------------------------- majority baseline


def test_majority_baseline():
    # majority "0"; gold 0 1 -1 0 -> accuracy 2/4; class 0: P 2/4, R 1, F1 2/3; others 0 -> macro 2/9
    out = majority_baseline(["0", "0", "1", "-1", "0"], ["0", "1", "-1", "0"], LABELS)
    assert out == {
        "label": "0",
        "n": 4,
        "accuracy": pytest.approx(0.5),
        "macro_f1": pytest.approx(2 / 9),
        "malformed_rate": 0.0,
    }


def test_majority_baseline_ties_follow_task_order():
    assert majority_baseline(["-1", "1", "-1", "1"], ["1"], LABELS)["label"] == "1"
    assert majority_baseline(["-1", "0", "0", "-1"], ["1"], LABELS)["label"] == "0"
    assert majority_baseline([], ["-1"], LABELS)["label"] == "1"


# ---------------------------------------------------------------- table


def test_format_table():
    metrics = {
        "majority_baseline": {
            "label": "0",
            "n": 70,
            "accuracy": 0.342857,
            "macro_f1": 0.17021,
            "malformed_rate": 0.0,
        },
        "base": {
            "n": 70,
            "accuracy": 0.1,
            "macro_f1": 0.05,
            "malformed_rate": 0.75,
            "score_mae": None,
            "score_spearman": None,
        },
        "finetuned": {
            "n": 70,
            "accuracy": 0.9,
            "macro_f1": 0.8888,
            "malformed_rate": 0.0143,
            "score_mae": 12.34,
            "score_spearman": 0.61234,
            "ece": 0.04567,
        },
    }
    assert format_table(metrics).split("\n") == [
        "| system | n | accuracy | macro-F1 | malformed | score MAE | score Spearman | ECE |",
        "|---|---|---|---|---|---|---|---|",
        "| majority class | 70 | 0.343 | 0.170 | 0.0% | - | - | - |",
        "| base (untuned) | 70 | 0.100 | 0.050 | 75.0% | - | - | - |",
        "| fine-tuned | 70 | 0.900 | 0.889 | 1.4% | 12.3 | 0.612 | 0.046 |",
    ]


def test_format_table_without_base():
    metrics = {
        "majority_baseline": {"n": 2, "accuracy": 0.5, "macro_f1": 0.25, "malformed_rate": 0.0},
        "finetuned": {
            "n": 2,
            "accuracy": 1.0,
            "macro_f1": 1.0,
            "malformed_rate": 0.0,
            "score_mae": 0.0,
            "score_spearman": None,
        },
    }
    lines = format_table(metrics).split("\n")
    assert len(lines) == 4
    assert lines[-1] == "| fine-tuned | 2 | 1.000 | 1.000 | 0.0% | 0.0 | - | - |"


def test_equal_biases_never_change_the_label():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from labeltune.metrics import adjust, argmax_label

    probs = st.lists(st.floats(1e-6, 1.0), min_size=3, max_size=3).map(
        lambda v: dict(zip(["1", "0", "-1"], v))
    )

    @settings(max_examples=300, deadline=None)
    @given(probs, st.floats(-5, 5), st.floats(0.2, 5))
    def check(p, b, t):
        same = {k: b for k in p}
        assert argmax_label(p, same) == argmax_label(p)
        assert adjust(p, t, same) == pytest.approx(adjust(p, t))

    check()


def test_fitted_biases_recover_an_underpredicted_class():
    """A model whose neutral probability is always a bit too low: the fitted bias lifts neutral recall
    and macro-F1 on the fitting split; a model that is already right gets no bias."""
    from labeltune.metrics import argmax_label, classification_metrics, fit_label_biases

    labels = ["1", "0", "-1"]
    gold = ["1"] * 10 + ["0"] * 10 + ["-1"] * 10
    probs = (
        [{"1": 0.6, "0": 0.3, "-1": 0.1}] * 10
        + [{"1": 0.45, "0": 0.35, "-1": 0.2}] * 10
        + [{"1": 0.1, "0": 0.3, "-1": 0.6}] * 10
    )
    before = classification_metrics(gold, [argmax_label(p) for p in probs], labels)
    biases = fit_label_biases(probs, gold, labels)
    after = classification_metrics(gold, [argmax_label(p, biases) for p in probs], labels)
    assert before["per_class"]["0"]["recall"] == 0 and after["per_class"]["0"]["recall"] == 1
    assert after["macro_f1"] == 1.0 and biases["1"] == 0.0 and biases["0"] > 0
    right = (
        [{"1": 0.8, "0": 0.1, "-1": 0.1}] * 10
        + [{"1": 0.1, "0": 0.8, "-1": 0.1}] * 10
        + [{"1": 0.1, "0": 0.1, "-1": 0.8}] * 10
    )
    assert fit_label_biases(right, gold, labels) == {"1": 0.0, "0": 0.0, "-1": 0.0}


def test_score_estimates():
    from labeltune.decode import estimate_score

    probs = {0: 0.5, 50: 0.1, 100: 0.4}
    assert estimate_score(probs, 0, "greedy") == 0
    assert estimate_score(probs, 0, "expected") == 50  # 45 is nearest the allowed 50
    assert estimate_score(probs, 0, "median") == 0
    assert estimate_score({s: 1 / 101 for s in range(101)}, 7, "expected") == 50
    with pytest.raises(ValueError, match="unknown score estimate"):
        estimate_score(probs, 0, "mode")
