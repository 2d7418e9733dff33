"""A run or export from someone else never runs code on the machine that opens it, and never writes
outside itself. Each test plants a real payload in a copy of a trained run (a template that walks to
Python's builtins, a base folder whose config imports its own *.py, links that point out of the run, a
pickle that calls os.system) and checks that labeltune refuses in one line and that no marker file appears.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = (
    pytest.mark.train
)  # every test opens a trained run (the session's tiny_run_2x32, through `trained`)

ROOT = Path(__file__).resolve().parent.parent
TEXTS = "今日のランチ最高においしかった\n"
NOISE = ("Loading weights", "Writing model shards")  # transformers' progress bars, not errors


def cli(*argv, stdin: str | None = TEXTS, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "labeltune.cli", *map(str, argv)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def refused_in_one_line(proc: subprocess.CompletedProcess, *words: str) -> None:
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith(NOISE)]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("labeltune: error:"), proc.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def trained(tiny_run_2x32):
    """A tiny run trained for 2 steps: the session's, read-only (`shared` below copies it)."""
    return tiny_run_2x32


@pytest.fixture
def shared(trained, tmp_path):
    """A fresh copy of the trained run, as received from someone else, and a marker path payloads aim at."""
    run = tmp_path / "received"
    shutil.copytree(trained, run)
    return run, tmp_path / "PWNED"


PAYLOADS = [
    "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch MARKER') }}",
    "{% set x = lipsum.__globals__['os'].popen('touch MARKER').read() %}{{ text }}",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_template_in_a_shared_run_cannot_run_code(shared, payload):
    run, marker = shared
    (run / "template.jinja").write_text(
        payload.replace("MARKER", str(marker)) + "\n### 応答:\n", encoding="utf-8"
    )
    refused_in_one_line(cli("predict", "--run", run), "template.jinja", "stopped before running anything")
    assert not marker.exists()


def test_label_and_the_python_api_refuse_the_same_template(shared, tmp_path):
    import labeltune

    run, marker = shared
    (run / "template.jinja").write_text(PAYLOADS[0].replace("MARKER", str(marker)), encoding="utf-8")
    posts = tmp_path / "posts.csv"
    posts.write_text("text\n" + TEXTS, encoding="utf-8")
    refused_in_one_line(
        cli("label", "--run", run, "--input", posts, "--output", tmp_path / "out.csv"), "template"
    )
    with pytest.raises(ValueError, match="stopped before running anything"):
        labeltune.load_run(run).predict(["今日は最高"])
    assert not marker.exists() and not (tmp_path / "out.csv").exists()


def test_a_template_path_outside_the_run_is_refused(shared, tmp_path):
    run, marker = shared
    evil = tmp_path / "elsewhere" / "evil.jinja"
    evil.parent.mkdir()
    evil.write_text(PAYLOADS[0].replace("MARKER", str(marker)), encoding="utf-8")
    (run / "template.jinja").unlink()
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "template": str(evil)}), encoding="utf-8")
    refused_in_one_line(cli("predict", "--run", run), "outside the run")
    assert not marker.exists()
    (run / "template.jinja").symlink_to(evil)  # nor through a link named like the run's own copy
    refused_in_one_line(cli("predict", "--run", run), "is a link")
    assert not marker.exists()


def test_a_user_template_that_only_prints_its_variables_still_works(shared):
    run, _ = shared
    template = (run / "template.jinja").read_text(encoding="utf-8")
    assert "{{ text }}" in template or "{{text}}" in template
    proc = cli("predict", "--run", run, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[0])["text"] == TEXTS.strip()


def _code_folder(folder: Path, marker: Path) -> Path:
    """A model folder whose config names its own configuration code (auto_map), which writes `marker`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evilmodel",
                "auto_map": {
                    "AutoConfig": "configuration_evil.EvilConfig",
                    "AutoModelForCausalLM": "configuration_evil.EvilConfig",
                },
            }
        ),
        encoding="utf-8",
    )
    (folder / "configuration_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evilmodel'\n",
        encoding="utf-8",
    )
    return folder


def test_a_base_outside_the_run_is_refused_even_when_stdin_says_yes(shared, tmp_path):
    run, marker = shared
    evil = _code_folder(tmp_path / "downloads" / "model", marker)
    info = json.loads((run / "model.json").read_text(encoding="utf-8"))
    (run / "model.json").write_text(json.dumps({**info, "base": str(evil)}), encoding="utf-8")
    refused_in_one_line(
        cli("predict", "--run", run, stdin="y\ny\ny\n"), "outside the run", "LABELTUNE_TRUSTED_BASES"
    )
    assert not marker.exists()
    # named by the user: loaded, but its code is still never run (trust_remote_code=False everywhere)
    proc = cli("predict", "--run", run, stdin="y\ny\ny\n", env={"LABELTUNE_TRUSTED_BASES": str(evil)})
    refused_in_one_line(proc, "cannot be loaded")
    assert not marker.exists()


def test_code_in_the_runs_own_base_folder_is_never_imported(shared):
    run, marker = shared
    shutil.rmtree(run / "base")
    _code_folder(run / "base", marker)
    refused_in_one_line(cli("predict", "--run", run, stdin="y\ny\ny\n"), "cannot be loaded")
    assert not marker.exists()


def test_a_hub_id_base_is_accepted_and_a_local_folder_named_like_one_is_not(tmp_path, monkeypatch):
    from labeltune.run import RunError, check_base

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    check_base(tmp_path / "run", "unsloth/gemma-2-9b-bnb-4bit")  # a preset's
    check_base(tmp_path / "run", "someorg/somemodel")  # a Hub id: downloaded, never its code
    (tmp_path / "someorg" / "somemodel").mkdir(parents=True)
    with pytest.raises(RunError, match="outside the run"):
        check_base(tmp_path / "run", "someorg/somemodel")


@pytest.mark.parametrize("verb", ["evaluate", "calibrate"])
def test_links_planted_in_a_run_never_redirect_its_writes(shared, tmp_path, verb):
    run, _ = shared
    victims = {}
    for name in ["metrics.json", "report.md", "report.html"] if verb == "evaluate" else ["calibration.json"]:
        victim = tmp_path / f"users_{name}"
        victim.write_text("the user's own file\n", encoding="utf-8")
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(victim)
        victims[name] = victim
    extra = ["--mode", "score", "--base", "false", "--limit", "8"] if verb == "evaluate" else []
    proc = cli(verb, "--run", run, *extra, stdin=None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, victim in victims.items():
        assert victim.read_text(encoding="utf-8") == "the user's own file\n"
        assert (run / name).is_file() and not (run / name).is_symlink()  # the link was replaced, not followed


def test_a_linked_eval_folder_is_refused_in_one_line(shared, tmp_path):
    run, _ = shared
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(run / "eval", ignore_errors=True)
    (run / "eval").symlink_to(outside)
    refused_in_one_line(cli("evaluate", "--run", run, "--base", "false", "--limit", "4", stdin=None), "link")
    assert list(outside.iterdir()) == []


def test_yaml_tags_in_a_shared_runs_config_are_refused_in_one_line(shared):
    run, marker = shared
    config = (run / "config.yaml").read_text(encoding="utf-8")
    (run / "config.yaml").write_text(
        config + f"payload: !!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8"
    )
    refused_in_one_line(cli("predict", "--run", run), "config.yaml")
    assert not marker.exists()


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_in_an_adapter_is_never_unpickled(shared):
    """A pickle among a run's weights is refused before anything reads it, in one line."""
    run, marker = shared
    (run / "adapter" / "adapter_model.safetensors").unlink()
    with open(run / "adapter" / "adapter_model.bin", "wb") as f:
        pickle.dump({"weights": _Payload(marker)}, f)
    refused_in_one_line(cli("predict", "--run", run), "adapter_model.bin", "pickle")
    assert not marker.exists()
