"""Every `next: labeltune ...` hint a verb prints runs as printed, in the folder the user typed the verb in:
train -> evaluate -> label -> evaluate --data -> calibrate -> evaluate/label -> export -> label, on a CSV
with Japanese column names (本文 / 感情), which the later verbs take from the run."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample.csv"
HINT = re.compile(r"labeltune [a-z]+(?: (?:--[a-z-]+|[^\s,;()]+))*")  # one command, up to a comma, ';' or '('


def _cli(cwd: Path, command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "labeltune.cli", *command.split()[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    return done.stdout


def _hints(stdout: str) -> list[str]:
    lines = [line.split("next:", 1)[1] for line in stdout.splitlines() if "next:" in line]
    return [hint for line in lines for hint in HINT.findall(line)]


def test_every_printed_hint_runs_as_printed(tmp_path):
    rows = list(csv.DictReader(open(SAMPLE, encoding="utf-8", newline="")))
    with open(tmp_path / "mine.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["本文", "感情"])
        writer.writerows([r["text"], r["label"]] for r in rows[:120])
    for name, chosen in (("posts.csv", rows[200:208]), ("your_labelled.csv", rows[300:316])):
        with open(tmp_path / name, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["本文", "感情"])
            writer.writerows([r["text"], r["label"]] for r in chosen)
    ran = []

    def follow(stdout: str) -> list[str]:
        outs = []
        for hint in _hints(stdout):
            (tmp_path / "labelled.csv").unlink(missing_ok=True)  # each label hint writes a new file
            ran.append(hint)
            outs.append(_cli(tmp_path, hint))
        return outs

    trained = _cli(
        tmp_path,
        "labeltune train --model tiny --data mine.csv --text-column 本文 --label-column 感情 "
        "--output runs/mine --max-steps 4",
    )
    evaluated = follow(trained)  # labeltune evaluate --run runs/mine
    labelled = [o for out in evaluated for o in follow(out)]  # labeltune label ... --input posts.csv ...
    for out in labelled:
        follow(out)  # labeltune evaluate --run runs/mine --data your_labelled.csv
    follow(
        _cli(tmp_path, "labeltune calibrate --run runs/mine")
    )  # evaluate --mode score, then label --mode score
    follow(_cli(tmp_path, "labeltune export --run runs/mine"))  # label --run runs/mine-adapter ...
    verbs = [h.split()[1] for h in ran]
    assert verbs.count("evaluate") >= 3 and verbs.count("label") >= 3, ran
    assert any("--data your_labelled.csv" in h for h in ran) and any("runs/mine-adapter" in h for h in ran), (
        ran
    )
