"""The README's "Your own CSV" commands, run verbatim (in a fresh folder, `labeltune` being this
checkout's CLI) on a CSV with a 本文 column and labels as words: the run, the report and the labelled
file they promise are there."""

import csv
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.train]
ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample.csv"
WORDS = {"1": "positive", "0": "neutral", "-1": "negative"}


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Your own CSV", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_quickstart_runs_verbatim_on_a_csv_with_its_own_columns(tmp_path):
    rows = list(csv.DictReader(open(SAMPLE, encoding="utf-8", newline="")))
    with open(tmp_path / "posts.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["投稿ID", "本文", "感情"])
        for r in rows[:240]:
            writer.writerow([r["id"], r["text"], WORDS[r["label"]]])
    new = [(f"n{i}", r["text"]) for i, r in enumerate(rows[240:265])]
    with open(tmp_path / "new.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["投稿ID", "本文"])
        writer.writerows(new)

    commands = quickstart_commands()
    assert commands[0] == "source .venv/bin/activate" and len(commands) == 4
    for command in commands[1:]:
        argv = shlex.split(command)
        assert argv[0] == "labeltune", command
        done = subprocess.run(
            [sys.executable, "-m", "labeltune.cli", *argv[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"

    run = tmp_path / "runs" / "mine"
    assert (run / "report.html").is_file() and (run / "metrics.json").is_file()
    out = list(csv.DictReader(open(tmp_path / "new_labelled.csv", encoding="utf-8", newline="")))
    assert [(r["投稿ID"], r["本文"]) for r in out] == new  # every row, in order, its columns kept
    # trained on words, labelled in those words (the task's values beside them)
    assert all(r["ok"] == "True" and r["label"] == WORDS[r["label_value"]] for r in out)
    assert all(re.fullmatch(r"0\.\d{4}|1\.0000", r["confidence"]) for r in out)
