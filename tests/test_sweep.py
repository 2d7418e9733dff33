"""labeltune sweep: grid expansion and option checks (fast), a real 2 x 2 sweep of tiny models with
resume (slow, run by CI)."""

import csv
import json
from pathlib import Path

import pytest

from labeltune import sweep
from labeltune.cli import run
from labeltune.config import SweepConfig

ROOT = Path(__file__).resolve().parent.parent


def test_grid_is_every_combination_in_order():
    trials = sweep.expand_grid({"lr": [1e-4, 2e-4], "lora_r": [8, 16, 32]})
    assert len(trials) == 6
    assert trials[0] == {"lr": 1e-4, "lora_r": 8} and trials[1] == {"lr": 1e-4, "lora_r": 16}
    assert trials[-1] == {"lr": 2e-4, "lora_r": 32}
    with pytest.raises(ValueError, match="grid.lr: expected a non-empty list"):
        sweep.expand_grid({"lr": 1e-4})


def test_trial_names_are_distinct_directory_names():
    names = [
        sweep.trial_name(i, p)
        for i, p in enumerate(sweep.expand_grid({"template": ["a/b c", "plain"], "lr": [1e-3]}))
    ]
    assert names == ["t00-template=a_b_c-lr=0.001", "t01-template=plain-lr=0.001"]


@pytest.mark.parametrize(
    "train, grid, message",
    [
        ({}, {"learning_rate": [1e-4]}, "unknown TrainConfig option"),
        ({"epochs": 1}, {"data": ["a.csv", "b.csv"]}, "cannot vary per trial"),
        ({"output": "x"}, {"lr": [1e-4]}, "cannot vary per trial"),
        ({}, {}, "grid is empty"),
    ],
)
def test_bad_sweeps_are_refused(train, grid, message):
    with pytest.raises(ValueError, match=message):
        sweep.check_options(SweepConfig(train=train, grid=grid))


def test_grid_from_the_command_line_is_a_mapping(tmp_path):
    with pytest.raises(ValueError, match="grid: expected a mapping"):
        run(["sweep", "--grid", "[1, 2]", "--output", str(tmp_path / "s")])


@pytest.mark.slow
def test_two_by_two_sweep_and_resume(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--output",
        str(out),
        "--train",
        "{data: data/sample.csv, max_steps: 15, limit: 150}",
        "--grid",
        "{lr: [5.0e-4, 2.0e-3], lora_r: [4, 8]}",
        "--mode",
        "score",
    ]
    assert run(argv) == 0
    rows = list(csv.DictReader(open(out / "results.csv", encoding="utf-8")))
    assert len(rows) == 4
    assert {(r["grid.lr"], r["grid.lora_r"]) for r in rows} == {
        ("0.0005", "4"),
        ("0.0005", "8"),
        ("0.002", "4"),
        ("0.002", "8"),
    }
    best = [r for r in rows if r["best"] == "True"]
    assert len(best) == 1
    assert float(best[0]["dev_macro_f1"]) == max(float(r["dev_macro_f1"]) for r in rows)
    assert all(r["test_macro_f1"] == "" for r in rows if r["best"] != "True")  # test only for the best
    assert 0 <= float(best[0]["test_macro_f1"]) <= 1 and best[0]["test_malformed"] == "0.0"
    assert all(float(r["train_seconds"]) > 0 and r["model"] == "tiny" for r in rows)
    # every trial trained on the same split
    splits = {
        json.loads((out / "trials" / r["trial"] / "data" / "summary.json").read_text())["fingerprint"]
        for r in rows
    }
    assert len(splits) == 1
    # lr and r really reached the trials
    assert {(r["lr"], r["lora_r"]) for r in rows} == {(r["grid.lr"], r["grid.lora_r"]) for r in rows}
    assert (out / "trials" / best[0]["trial"] / "report.md").is_file()
    from matplotlib.image import imread

    image = imread(out / "dev_macro_f1.png")
    assert image.shape[0] > 200 and image.shape[1] > 400 and image.std() > 0.01
    assert "| trial |" in (out / "results.md").read_text(encoding="utf-8")

    # resume: nothing is trained again, the table is the same
    adapters = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/adapter/*.safetensors")}
    capsys.readouterr()
    assert run(argv) == 0
    assert capsys.readouterr().out.count("done before, not trained again") == 4
    assert adapters == {p: p.stat().st_mtime_ns for p in out.glob("trials/*/adapter/*.safetensors")}
    assert list(csv.DictReader(open(out / "results.csv", encoding="utf-8"))) == rows

    # a different grid in the same directory is refused
    with pytest.raises(FileExistsError, match="another train/grid/mode"):
        run(argv[:-4] + ["--grid", "{lr: [1.0e-4]}", "--mode", "score"])
