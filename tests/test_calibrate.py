"""Calibration math on hand-made probabilities."""

import math

import pytest

from labeltune.metrics import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_bins,
)


def test_apply_temperature():
    p = {"1": 0.7, "0": 0.2, "-1": 0.1}
    assert apply_temperature(p, 1.0) == pytest.approx(p)
    flat = apply_temperature(p, 1e6)
    assert all(v == pytest.approx(1 / 3, abs=1e-5) for v in flat.values())
    # T = 2: proportional to sqrt(p)
    root = {k: math.sqrt(v) for k, v in p.items()}
    total = sum(root.values())
    assert apply_temperature(p, 2.0) == pytest.approx({k: v / total for k, v in root.items()})
    assert max(apply_temperature(p, 0.5), key=apply_temperature(p, 0.5).get) == "1"


def test_ece_hand_computed():
    # bin [0.9, 1.0): two rows, confidence 0.9, one correct -> |0.5 - 0.9| * 2/4 = 0.2
    # bin [0.6, 0.7): two rows, confidence 0.6, both correct -> |1.0 - 0.6| * 2/4 = 0.2
    conf, correct = [0.9, 0.9, 0.6, 0.6], [True, False, True, True]
    assert expected_calibration_error(conf, correct) == pytest.approx(0.4)
    bins = reliability_bins(conf, correct)
    assert [b["n"] for b in bins] == [0, 0, 0, 0, 0, 0, 2, 0, 0, 2]
    assert bins[9]["acc"] == 0.5 and bins[6]["conf"] == pytest.approx(0.6)
    assert expected_calibration_error([1.0, 0.0], [True, False]) == pytest.approx(0.0)  # edges land in bins


def test_nll_hand_computed():
    probs = [{"a": 0.5, "b": 0.5}, {"a": 0.8, "b": 0.2}]
    assert nll(probs, ["a", "b"]) == pytest.approx((math.log(2) + math.log(5)) / 2)


def test_fit_temperature_flattens_overconfidence_and_minimises_nll():
    # confidence 0.95 but right only 60% of the time: the best T is > 1
    probs = [{"a": 0.95, "b": 0.05}] * 10
    gold = ["a"] * 6 + ["b"] * 4
    t = fit_temperature(probs, gold)
    assert t > 1
    # the fitted T makes p(a) close to the observed 0.6
    assert apply_temperature(probs[0], t)["a"] == pytest.approx(0.6, abs=1e-3)
    grid = [nll(probs, gold, 0.05 * 1.05**k) for k in range(120)]
    assert nll(probs, gold, t) <= min(grid) + 1e-9
    # underconfident and always right: T < 1
    assert fit_temperature([{"a": 0.6, "b": 0.4}] * 5, ["a"] * 5) < 1
