"""labeltune.config.resolve (defaults < YAML < overrides, coercion, choices) and the CLI parser."""

from __future__ import annotations

import dataclasses

import pytest

from labeltune import config
from labeltune.cli import VERBS, build_parser
from labeltune.config import EvalConfig, LabelConfig, TrainConfig, default_of, resolve


def _yaml(tmp_path, text: str, name: str = "run.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _cli(argv: list[str]):
    """What `labeltune <verb> ...` builds, without running the verb (mirrors cli.run)."""
    args = vars(build_parser().parse_args(argv))
    cls = VERBS[args.pop("verb")][0]
    return resolve(cls, args.pop("config", None), args)


# ---------------------------------------------------------------- resolve


@pytest.mark.parametrize("cls", [TrainConfig, EvalConfig, LabelConfig])
def test_defaults(cls):
    assert resolve(cls) == cls()


def test_train_default_model_is_the_real_one_and_LABELTUNE_MODEL_overrides_it():
    """A user who names no model trains Gemma 3 270M (a random-init model's answers mean nothing); the suite
    itself trains tiny through LABELTUNE_MODEL (tests/conftest.py)."""
    import os
    import subprocess
    import sys

    code = "from labeltune.config import TrainConfig; print(TrainConfig().model)"
    env = {k: v for k, v in os.environ.items() if k != config.MODEL_ENV}
    assert (
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        == "gemma3-270m"
    )
    env[config.MODEL_ENV] = "llama3.1"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        == "llama3.1"
    )
    assert TrainConfig().model == "tiny"


def test_defaults_yaml_overrides_precedence(tmp_path):
    path = _yaml(tmp_path, "model: smol\nseed: 7\nlr: 2.0e-4\nleakage: drop\n")
    cfg = resolve(TrainConfig, path, {"seed": 11})
    assert cfg.model == "smol"  # YAML over default
    assert cfg.leakage == "drop"
    assert cfg.lr == pytest.approx(2e-4)
    assert cfg.seed == 11  # override over YAML
    assert cfg.data == "data/sample.csv"  # default kept
    assert resolve(TrainConfig, path).seed == 7


def test_empty_yaml(tmp_path):
    assert resolve(TrainConfig, _yaml(tmp_path, "")) == TrainConfig()


def test_yaml_not_a_mapping(tmp_path):
    with pytest.raises(ValueError, match="mapping"):
        resolve(TrainConfig, _yaml(tmp_path, "- a\n- b\n"))


def test_unknown_yaml_key_lists_valid_options(tmp_path):
    with pytest.raises(ValueError) as e:
        resolve(TrainConfig, _yaml(tmp_path, "model: tiny\nlearning_rate: 0.1\n"))
    msg = str(e.value)
    assert "learning_rate" in msg
    for f in dataclasses.fields(TrainConfig):
        assert f.name in msg


def test_unknown_override_lists_valid_options():
    with pytest.raises(ValueError) as e:
        resolve(LabelConfig, overrides={"colour": "red"})
    assert "colour" in str(e.value)
    assert "overwrite" in str(e.value) and "chunk_size" in str(e.value)


@pytest.mark.parametrize(
    "cls,key,value,choices",
    [
        (TrainConfig, "leakage", "maybe", ("error", "drop", "allow")),
        (TrainConfig, "backend", "unsloth2", ("auto", "hf")),
        (EvalConfig, "split", "val", ("train", "dev", "test")),
    ],
)
def test_invalid_choice_lists_choices(cls, key, value, choices):
    with pytest.raises(ValueError) as e:
        resolve(cls, overrides={key: value})
    msg = str(e.value)
    assert key in msg and value in msg
    for choice in choices:
        assert choice in msg


def test_invalid_choice_from_yaml(tmp_path):
    with pytest.raises(ValueError, match="error, drop, allow"):
        resolve(TrainConfig, _yaml(tmp_path, "leakage: maybe\n"))


def test_coercion_from_strings():
    cfg = resolve(
        TrainConfig,
        overrides={
            "seed": "3",
            "max_steps": "-1",
            "lr": "1e-4",
            "epochs": "2.5",
            "warmup_ratio": "0.1",
            "split": "0.8,0.1,0.1",
            "lora_r": "16",
            "template": "none",
            "score_column": "None",
            "encoding": "null",
            "limit": "",
            "batch_size": "none",
        },
    )
    assert cfg.seed == 3 and type(cfg.seed) is int
    assert cfg.max_steps == -1
    assert cfg.lr == pytest.approx(1e-4) and type(cfg.lr) is float
    assert cfg.epochs == 2.5
    assert cfg.split == (0.8, 0.1, 0.1) and all(type(x) is float for x in cfg.split)
    assert cfg.lora_r == 16
    assert cfg.template is None and cfg.score_column is None and cfg.encoding is None
    assert cfg.limit is None and cfg.batch_size is None


@pytest.mark.parametrize(
    "raw,value",
    [
        ("false", False),
        ("False", False),
        ("no", False),
        ("0", False),
        ("off", False),
        ("true", True),
        ("YES", True),
        ("1", True),
        ("on", True),
        (True, True),
        (False, False),
    ],
)
def test_bool_coercion(raw, value):
    assert resolve(LabelConfig, overrides={"overwrite": raw}).overwrite is value
    assert resolve(EvalConfig, overrides={"base": raw}).base is value


def test_yaml_types(tmp_path):
    path = _yaml(tmp_path, "split: [0.7, 0.2, 0.1]\nseed: 5\nlr: 1e-4\ntemplate: null\nepochs: 3\n")
    cfg = resolve(TrainConfig, path)
    assert cfg.split == (0.7, 0.2, 0.1)
    assert cfg.seed == 5
    assert cfg.lr == pytest.approx(1e-4)  # PyYAML reads 1e-4 as a string; it is coerced
    assert cfg.template is None
    assert cfg.epochs == 3.0 and type(cfg.epochs) is float


def test_yaml_bools(tmp_path):
    cfg = resolve(LabelConfig, _yaml(tmp_path, "overwrite: yes\nbom: true\nprogress: off\n"))
    assert cfg.overwrite is True and cfg.bom is True and cfg.progress is False


@pytest.mark.parametrize(
    "cls,key,value",
    [
        (TrainConfig, "seed", "three"),
        (TrainConfig, "lr", "fast"),
        (TrainConfig, "split", "0.8,0.2"),
        (TrainConfig, "split", "a,b,c"),
        (LabelConfig, "overwrite", "maybe"),
        (TrainConfig, "seed", "none"),  # not Optional
        (TrainConfig, "model", None),  # not Optional
    ],
)
def test_bad_values(cls, key, value):
    with pytest.raises(ValueError) as e:
        resolve(cls, overrides={key: value})
    assert key in str(e.value)


def test_non_optional_string_keeps_the_word_none():
    assert resolve(TrainConfig, overrides={"model": "none"}).model == "none"


def test_save_and_load_saved_roundtrip(tmp_path):
    cfg = resolve(
        TrainConfig, overrides={"seed": "4", "split": "0.6,0.2,0.2", "template": "plain", "lr": "3e-4"}
    )
    path = tmp_path / "config.yaml"
    config.save(cfg, path)
    assert config.load_saved(TrainConfig, path) == cfg
    cfg = resolve(LabelConfig, overrides={"overwrite": "true", "output": "出力/ラベル.csv"})
    config.save(cfg, tmp_path / "label.yaml")
    assert config.load_saved(LabelConfig, tmp_path / "label.yaml") == cfg


# ---------------------------------------------------------------- CLI parser


def test_train_flags():
    cfg = _cli(
        [
            "train",
            "--lr",
            "1e-4",
            "--max-steps",
            "-1",
            "--seed",
            "2",
            "--split",
            "0.7,0.2,0.1",
            "--model",
            "smol",
            "--leakage",
            "drop",
            "--template",
            "none",
            "--score-column",
            "毒性",
        ]
    )
    assert cfg.lr == pytest.approx(1e-4)
    assert cfg.max_steps == -1 and cfg.seed == 2 and cfg.split == (0.7, 0.2, 0.1)
    assert cfg.model == "smol" and cfg.leakage == "drop" and cfg.template is None
    assert cfg.score_column == "毒性"


def test_train_invalid_choice_from_cli():
    with pytest.raises(ValueError, match="error, drop, allow"):
        _cli(["train", "--leakage", "maybe"])


def test_evaluate_flags():
    cfg = _cli(["evaluate", "--run", "runs/x", "--split", "dev", "--base", "false", "--batch-size", "4"])
    assert cfg == EvalConfig(run="runs/x", split="dev", base=False, batch_size=4)
    assert _cli(["evaluate", "--base"]).base is True
    assert _cli(["evaluate", "--base", "no"]).base is False
    assert _cli(["evaluate"]).base is True


def test_label_overwrite_without_value_is_true():
    cfg = _cli(["label", "--run", "runs/x", "--input", "in.csv", "--output", "out.csv", "--overwrite"])
    assert cfg.overwrite is True
    assert (cfg.run, cfg.input, cfg.output) == ("runs/x", "in.csv", "out.csv")
    assert _cli(["label", "--overwrite", "--bom"]) == LabelConfig(overwrite=True, bom=True)
    assert _cli(["label", "--overwrite", "false"]).overwrite is False
    assert _cli(["label"]).overwrite is False
    assert _cli(["label", "--progress", "off", "--overwrite"]) == LabelConfig(progress=False, overwrite=True)


def test_cli_defaults_do_not_override_yaml(tmp_path):
    path = _yaml(tmp_path, "overwrite: true\nchunk_size: 8\n")
    assert _cli(["label", "--config", path]) == LabelConfig(overwrite=True, chunk_size=8)
    assert _cli(["label", "--config", path, "--chunk-size", "2"]).chunk_size == 2
    assert _cli(["label", "--config", path, "--overwrite", "no"]).overwrite is False
    path = _yaml(tmp_path, "lr: 5.0e-4\nseed: 9\n", "train.yaml")
    cfg = _cli(["train", "--config", path, "--lr", "1e-4"])
    assert cfg.lr == pytest.approx(1e-4) and cfg.seed == 9


def test_every_field_has_a_flag():
    parser = build_parser()
    for verb, (cls, _, _) in VERBS.items():
        for f in dataclasses.fields(cls):
            value = "true" if f.type in ("bool",) else None
            argv = [verb, "--" + f.name.replace("_", "-")]
            if value is None:
                default = default_of(f)
                value = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
            args = vars(parser.parse_args(argv + [value]))
            assert f.name in args, (verb, f.name)


def test_unknown_flag_and_missing_verb():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--learning-rate", "1e-4"])
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


@pytest.mark.parametrize("verb", [*VERBS, "models", "templates"])
def test_help_renders(verb, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([verb, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    if verb in VERBS:
        for f in dataclasses.fields(VERBS[verb][0]):
            assert "--" + f.name.replace("_", "-") in out
