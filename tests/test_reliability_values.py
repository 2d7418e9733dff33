"""Values that must not change meaning on the way in (#24): config values from YAML as strict as the command
line, YAML without aliases or Python tags, calibration and checkpoint files of a run that may be damaged or
come from someone else, and predict's texts from stdin, after `--` and from Python (None, NaN, bytes)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labeltune import checkpoints
from labeltune.api import as_text
from labeltune.cli import build_parser, explicit_bools
from labeltune.config import (
    CompareConfig,
    LabelConfig,
    PredictConfig,
    SweepConfig,
    TrainConfig,
    read_yaml,
    resolve,
)
from labeltune.predict import read_texts
from labeltune.run import load_calibration, save_temperature
from labeltune.task import load_task

ROOT = Path(__file__).resolve().parent.parent


def cli(*argv, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "labeltune.cli", *map(str, argv)],
        input=stdin,
        capture_output=True,
        check=False,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------- config values


def test_a_yaml_value_is_as_strict_as_the_command_line(tmp_path):
    path = _yaml(tmp_path, "overwrite: true\nchunk_size: 2.5\n")
    with pytest.raises(ValueError) as e:
        resolve(LabelConfig, path)
    assert str(e.value) == f"{path}:2: chunk_size: expected an integer, got 2.5"
    with pytest.raises(ValueError, match="chunk_size: expected an integer, got '2.5'"):
        resolve(LabelConfig, overrides={"chunk_size": "2.5"})  # the command line, as before
    assert resolve(LabelConfig, _yaml(tmp_path, "chunk_size: 8.0\n")).chunk_size == 8  # same meaning: kept


def test_a_list_for_a_path_is_refused_not_written_as_its_repr(tmp_path):
    path = _yaml(tmp_path, "output: [out.csv, other.csv]\n")
    with pytest.raises(
        ValueError, match=r"run.yaml:1: output: expected one text value, got \['out.csv', 'other.csv'\]"
    ):
        resolve(LabelConfig, path)


@pytest.mark.parametrize(
    "cls,line",
    [
        (LabelConfig, "batch_size: true"),  # int: a bool was 1
        (LabelConfig, "batch_size: [16]"),
        (TrainConfig, "lr: true"),  # float: a bool was 1.0
        (TrainConfig, "lr: [1.0e-4]"),
        (TrainConfig, "epochs: .inf"),
        (TrainConfig, "encoding: {a: 1}"),  # optional str
        (TrainConfig, "model: true"),  # a name: True was "True"
        (TrainConfig, "leakage: [drop]"),  # a str with choices
        (TrainConfig, "split: 0.8"),  # tuple: a scalar was a TypeError traceback
        (TrainConfig, "split: [true, 0, 0]"),  # a bool was 1.0
        (TrainConfig, "report_to: 5"),  # list: a TypeError traceback
        (CompareConfig, "models: [[tiny]]"),  # a nested list was the model "['tiny']"
        (LabelConfig, "overwrite: [true]"),  # bool
        (LabelConfig, "overwrite: 2"),
    ],
)
def test_every_typed_field_refuses_a_value_of_another_kind_naming_file_and_line(tmp_path, cls, line):
    path = _yaml(tmp_path, f"# a config\n{line}\n")
    key = line.split(":")[0]
    with pytest.raises(ValueError) as e:
        resolve(cls, path)
    assert str(e.value).startswith(f"{path}:2: {key}: expected ") and "\n" not in str(e.value)


def test_python_values_still_coerce(tmp_path):
    cfg = resolve(
        TrainConfig,
        overrides={"output": tmp_path / "run", "seed": 3, "weight_decay": 1, "split": (0.8, 0.1, 0.1)},
    )
    assert cfg.output == str(tmp_path / "run") and cfg.seed == 3 and type(cfg.weight_decay) is float
    assert resolve(TrainConfig, overrides={"split": [1, 0, 0], "report_to": ["none"]}).split == (
        1.0,
        0.0,
        0.0,
    )
    cfg = resolve(PredictConfig, _yaml(tmp_path, "batch_size: 4\njson: yes\n"))
    assert (cfg.batch_size, cfg.json) == (4, True)


def test_yaml_aliases_are_refused_quickly_in_config_and_task_files(tmp_path):
    keys = [
        "input",
        "text_column",
        "encoding",
        "mode",
        "engine",
        "output",
    ]  # each a list of 9 of the one before
    levels = [f"{keys[0]}: &l0 [x, x, x, x, x, x, x, x, x]"] + [
        f"{k}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i, k in enumerate(keys[1:], 1)
    ]
    bomb = _yaml(tmp_path, "\n".join(levels) + "\n")
    started = time.time()
    with pytest.raises(ValueError) as e:
        resolve(LabelConfig, bomb)
    assert time.time() - started < 2
    assert str(e.value).startswith(f"{bomb}:2:") and "aliases (*name) are not allowed" in str(e.value)
    with pytest.raises(ValueError, match="aliases"):  # one alias of a scalar is refused too
        resolve(TrainConfig, _yaml(tmp_path, "seed: &s 1\nlimit: *s\n"))
    with pytest.raises(
        ValueError, match=r"--grid:1:\d+: not valid YAML \(aliases"
    ):  # a mapping on the command line
        resolve(SweepConfig, overrides={"grid": "{lr: &x [1], seed: *x}"})


def test_yaml_tags_and_bad_text_in_task_specs_are_one_line_naming_the_file(tmp_path):
    task = tmp_path / "task.yaml"
    task.write_text("name: x\nlabels: !!python/object/apply:os.system [echo hi]\n", encoding="utf-8")
    with pytest.raises(ValueError) as e:
        load_task(str(task))
    assert str(e.value).startswith(
        f"{task}:2:9: not valid YAML (could not determine a constructor"
    ) and "\n" not in str(e.value)
    task.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{task}: not a task spec"):
        load_task(str(task))
    config = tmp_path / "cp932.yaml"
    config.write_bytes("output: 出力.csv\n".encode("cp932"))
    with pytest.raises(ValueError, match=f"{config}: not UTF-8 text"):
        read_yaml(config)
    refused = cli("label", "--config", config)
    assert refused.returncode == 2 and refused.stderr.decode().startswith(
        f"labeltune: error: {config}: not UTF-8 text"
    )


# ---------------------------------------------------------------- calibration.json and checkpoints


@pytest.mark.parametrize(
    "data,problem",
    [
        ({"temperature": 0}, "temperature 0 is not a number > 0"),  # was ZeroDivisionError
        (
            {"temperature": -1.5, "biases": None},
            "temperature -1.5 is not a number > 0",
        ),  # silently flipped every label
        ({"temperature": float("nan")}, "temperature nan is not a number > 0"),
        ({"temperature": "1.5"}, "temperature 1.5 is not a number > 0"),
        ({"biases": {"1": 0.0}}, "temperature None is not a number > 0"),
        ({"temperature": 1.5, "biases": {"1": "high"}}, "biases {'1': 'high'} are not label: number pairs"),
        ({"temperature": 1.5, "biases": [0.1, 0.2]}, "biases [0.1, 0.2] are not label: number pairs"),
    ],
)
def test_calibration_values_that_would_crash_or_flip_labels_are_refused(tmp_path, data, problem):
    save_temperature(tmp_path, data)
    with pytest.raises(ValueError) as e:
        load_calibration(tmp_path)
    assert str(e.value) == (
        f"{tmp_path / 'calibration.json'}: {problem}; delete it, or fit it again with "
        f"`labeltune calibrate --run {tmp_path}`"
    )


def test_a_damaged_calibration_names_the_file_and_what_to_do(tmp_path):
    save_temperature(tmp_path, {"temperature": 1.7, "biases": {"1": 0.0, "0": 0.4, "-1": -0.3}})
    assert load_calibration(tmp_path) == (1.7, {"1": 0.0, "0": 0.4, "-1": -0.3})
    path = tmp_path / "calibration.json"
    path.write_bytes(path.read_bytes()[:30])  # cut short
    with pytest.raises(ValueError) as e:
        load_calibration(tmp_path)
    assert str(e.value).startswith(f"{path} is damaged (JSONDecodeError: ")
    assert str(e.value).endswith(f"delete it, or fit it again with `labeltune calibrate --run {tmp_path}`")


def _checkpoint(ckpt_dir: Path, step: int) -> Path:
    path = ckpt_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(
        json.dumps({"global_step": step, "log_history": []}), encoding="utf-8"
    )
    checkpoints.mark_complete(path, {"step": step})
    return path


def test_a_damaged_checkpoint_state_file_names_the_file_and_the_checkpoint_to_resume_from(tmp_path):
    _checkpoint(tmp_path, 4)
    last = _checkpoint(tmp_path, 8)
    assert checkpoints.latest_complete(tmp_path) == last
    state = last / "trainer_state.json"
    state.write_bytes(state.read_bytes()[:20])  # a full disk or a copy cut short
    with pytest.raises(ValueError) as e:
        checkpoints.latest_complete(tmp_path)
    assert str(e.value).startswith(f"{state} is damaged (JSONDecodeError: ")
    assert str(e.value).endswith(
        f"delete {last} and run the same train command again to resume from the checkpoint "
        "before it (checkpoint-4)"
    )


# ---------------------------------------------------------------- predict's texts


def _stdin(data: bytes) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")  # what sys.stdin is: text over a byte buffer


def test_stdin_bom_is_dropped_and_line_ends_are_any():
    assert read_texts(None, _stdin("\ufeff最高の一日\r\n\r\n最悪\rふつう\n".encode())) == [
        "最高の一日",
        "最悪",
        "ふつう",
    ]


@pytest.mark.parametrize(
    "data,message",
    [
        ("最高\nテスト\n".encode("cp932"), r"stdin: line 1 is not UTF-8 text \(byte 0x8d\)"),
        (b"ok\n\x89PNG\r\n\x1a\n", r"stdin: line 2 is not UTF-8 text \(byte 0x89\)"),
        (b"ok\nGIF89a\x00\x01\n", "stdin: line 2 holds a NUL byte: binary data, not text"),
    ],
)
def test_stdin_that_is_not_utf8_text_is_one_line(data, message):
    with pytest.raises(ValueError, match=message):
        read_texts(["-"], _stdin(data))


def test_predict_cli_refuses_binary_stdin_in_one_line(tmp_path):
    proc = cli("predict", "--run", tmp_path, stdin=b"\xff\xfe\x00a\x00b\x00\n")
    assert proc.returncode == 2, proc.stderr.decode()[-2000:]
    assert proc.stderr.decode().splitlines() == [
        (
            "labeltune: error: stdin: line 1 is not UTF-8 text (byte 0xff); "
            "convert it first (iconv -f cp932 -t utf-8), "
            "or label the file with `labeltune label --input FILE` (it detects cp932 and UTF-16)"
        )
    ]


def test_after_double_dash_every_word_is_a_text_and_nothing_is_inserted():
    argv = explicit_bools(["predict", "--run", "r", "--json", "--", "-5度", "--json"])
    assert argv == ["predict", "--run", "r", "--json", "true", "--", "-5度", "--json"]
    args = build_parser().parse_args(argv)
    assert args.texts == ["-5度", "--json"] and args.json == "true"
    assert build_parser().parse_args(explicit_bools(["predict", "--", "--calibrated"])).texts == [
        "--calibrated"
    ]


def test_python_texts_none_nan_and_bytes():
    import numpy as np

    assert [as_text(t) for t in (None, float("nan"), np.float64("nan"))] == ["", "", ""]
    assert as_text("最高".encode()) == "最高" and as_text(bytearray("\ufeff最高".encode())) == "最高"
    assert as_text(12) == "12" and as_text("  x ") == "  x "
    with pytest.raises(
        ValueError, match=r"texts\[3\]: bytes that are not UTF-8 text \(byte 0x8d at offset 0\)"
    ):
        as_text("最高".encode("cp932"), 3)
    with pytest.raises(ValueError, match=r"texts\[1\]: a dict, not a text"):
        as_text({"text": "x"}, 1)


# ---------------------------------------------------------------- with a trained run


@pytest.fixture
def run(tiny_run_3x48):
    """A tiny run trained for a few steps (conftest marks the tests using it `train`): the session's,
    read-only."""
    return tiny_run_3x48


@pytest.mark.train
def test_load_run_answers_missing_texts_as_label_does_and_decodes_bytes(run):
    import labeltune

    labeller = labeltune.load_run(run)
    out = labeller.predict([None, float("nan"), "最高の一日".encode(), "最高の一日", ""])
    assert [p.text for p in out] == ["", "", "最高の一日", "最高の一日", ""]
    for p in (out[0], out[1], out[4]):
        assert (p.label, p.name, p.score, p.ok, p.reason) == (None, None, None, False, "empty_input")
    assert out[2] == out[3] and out[2].ok
    assert [p.text for p in labeller.predict("最悪".encode())] == ["最悪"]  # one bytes text is one text


@pytest.mark.train
def test_predict_cli_double_dash_bom_and_a_bad_calibration(tiny_run_3x48, copy_run):
    run = copy_run(tiny_run_3x48)  # a calibration.json is written into it
    proc = cli("predict", "--run", run, "--json", "--", "-5度", "--json", "-", stdin="\ufeff最高\n".encode())
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert [json.loads(line)["text"] for line in proc.stdout.decode().splitlines()] == [
        "-5度",
        "--json",
        "最高",
    ]
    save_temperature(run, {"temperature": 0.0, "biases": None})
    try:
        proc = cli("predict", "--run", run, "最高")
    finally:
        (run / "calibration.json").unlink()
    assert proc.returncode == 2 and proc.stderr.decode().splitlines() == [
        (
            f"labeltune: error: {run / 'calibration.json'}: temperature 0.0 is not a number > 0; "
            f"delete it, or fit it again with `labeltune calibrate --run {run}`"
        )
    ]
