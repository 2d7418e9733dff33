"""CLI conventions (labeltune.cli): --version, metavars that say what a value is, a typo'd option answered
with the verb's own usage and the closest option, BOOL options before predict's texts; `import labeltune`
stays light."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from labeltune.cli import VERBS, build_parser, explicit_bools, run

ROOT = Path(__file__).resolve().parent.parent


def _help(verb: str, capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*verb.split(), "--help"])
    return capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        run(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"labeltune {importlib.metadata.version('labeltune')}"


@pytest.mark.parametrize("verb", [*VERBS, "data prepare"])
def test_metavars_say_what_the_value_is(verb, capsys):
    usage = _help(verb, capsys).split("\n\n", 1)[0]
    assert " X]" not in usage and "CONFIG]" not in usage
    assert "[--config PATH]" in usage


def test_metavars_by_kind(capsys):
    label, train, compare = _help("label", capsys), _help("train", capsys), _help("compare", capsys)
    for flag in (
        "--run PATH",
        "--input PATH",
        "--mode {generate,constrained,score}",
        "--engine {hf,vllm}",
        "--batch-size N",
        "--overwrite [BOOL]",
        "--text-column COLUMN",
        "--encoding TEXT",
    ):
        assert flag in label, flag
    for flag in (
        "--lr FLOAT",
        "--model NAME",
        "--split FLOAT,FLOAT,FLOAT",
        "--report-to {none,tensorboard,wandb},...",
        "--save-steps N",
    ):
        assert flag in train, flag
    assert "--train YAML" in compare and "--models A,B" in compare


def test_a_typo_gets_the_verbs_usage_and_the_closest_option(capsys):
    with pytest.raises(SystemExit) as e:
        run(["label", "--rn", "runs/demo"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: labeltune label ")
    assert "labeltune label: error: unrecognized arguments: --rn runs/demo; did you mean --run?" in err
    with pytest.raises(SystemExit) as e:
        run(["data", "prepare", "--outptu", "x"])
    err = capsys.readouterr().err
    assert (
        e.value.code == 2
        and err.startswith("usage: labeltune data prepare ")
        and "did you mean --output?" in err
    )
    with pytest.raises(SystemExit):
        run(["evaluate", "--zzzzzz"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --zzzzzz" in err and "did you mean" not in err
    with pytest.raises(SystemExit) as e:
        run(["evalute", "--run", "runs/demo"])  # a verb typo gets the closest verb too
    err = capsys.readouterr().err
    assert e.value.code == 2 and "labeltune: error: unknown verb 'evalute'; did you mean evaluate?" in err


def test_a_bool_option_before_a_text_leaves_the_text_a_text():
    assert explicit_bools(["predict", "--json", "最高", "--calibrated", "false", "x"]) == [
        "predict",
        "--json",
        "true",
        "最高",
        "--calibrated",
        "false",
        "x",
    ]
    args = build_parser().parse_args(explicit_bools(["predict", "--run", "r", "--json", "最高", "最悪"]))
    assert args.texts == ["最高", "最悪"] and args.json == "true" and args.run == "r"
    assert explicit_bools(["label", "--overwrite"]) == ["label", "--overwrite", "true"]


def test_import_labeltune_stays_light():
    """`import labeltune` (and reaching its Python API's names) imports neither torch nor transformers."""
    code = (
        "import sys, labeltune; labeltune.load_run; labeltune.Prediction; print(labeltune.__version__); "
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.split("\n")[:2] == [importlib.metadata.version("labeltune"), "[]"]


def test_predict_lines():
    from labeltune.api import Prediction
    from labeltune.predict import format_line

    scored = Prediction("最悪の\n一日", "-1", "negative", 85, 0.9312, {"-1": 0.9312}, True, "", False)
    assert format_line(scored) == "-1 (negative)\tscore 85\tconfidence 0.931\t最悪の 一日"
    generated = Prediction("x" * 70, "ポジティブ", "positive", None, None, None, True, "", False)
    assert format_line(generated) == "ポジティブ (positive)\t" + "x" * 60 + "…"
    malformed = Prediction("良い", None, None, None, None, None, False, "missing_label", False)
    assert format_line(malformed) == "malformed (missing_label)\t良い"


def test_predict_without_texts_on_a_terminal_says_how():
    import io

    from labeltune.predict import read_texts

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    with pytest.raises(ValueError, match="no texts: give them after the options"):
        read_texts(None, Terminal(""))
    assert read_texts(["a", "-", "b"], io.StringIO("x\n\n y \n")) == ["a", "x", " y ", "b"]
    with pytest.raises(ValueError, match="stdin was empty"):
        read_texts(["-"], io.StringIO("\n"))
