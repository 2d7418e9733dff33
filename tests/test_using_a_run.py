"""From a trained run to labels: `labeltune predict` and labeltune.load_run (the Python API) against
`labeltune label`, evaluations in folders of their own, and exports that carry a model card, the
template, the task spec and the calibration. One tiny run trained for a few steps serves every test."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labeltune.config import EvalConfig, ExportConfig, resolve
from labeltune.run import save_temperature

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["今日のランチ最高においしかった", "あいつは本当に最低な人間だ", "明日は雨らしい"]
CALIBRATION = {"temperature": 1.7, "biases": {"1": 0.0, "0": 0.4, "-1": -0.3}, "split": "dev"}


def cli(*argv, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "labeltune.cli", *map(str, argv)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.fixture(scope="module")
def run(tiny_run_3x48, tmp_path_factory, share_run):
    """A tiny run trained for a few steps (a copy of the session's), with a calibration.json whose temperature
    and biases change the probabilities (so applying it or not shows). Read-only: copy_run it to write into
    it."""
    out = tmp_path_factory.mktemp("using") / "run"
    shutil.copytree(tiny_run_3x48, out, symlinks=True)
    save_temperature(out, CALIBRATION)
    return share_run(out)


@pytest.fixture(scope="module")
def labelled(run, tmp_path_factory):
    """`labeltune label --mode score` of TEXTS: the rows predict and load_run must agree with."""
    folder = tmp_path_factory.mktemp("label")
    posts = folder / "posts.csv"
    with open(posts, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["text"], *([t] for t in TEXTS)])
    proc = cli(
        "label",
        "--run",
        run,
        "--input",
        posts,
        "--output",
        folder / "out.csv",
        "--mode",
        "score",
        "--progress",
        "false",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return list(csv.DictReader(open(folder / "out.csv", encoding="utf-8")))


def test_python_api_labels_as_label_does(run, labelled):
    import labeltune

    labeller = labeltune.load_run(run)
    predictions = labeller.predict(TEXTS)
    assert [p.text for p in predictions] == TEXTS
    for p, row in zip(predictions, labelled):
        assert (p.label, str(p.score), p.ok) == (row["label"], row["score"], True)
        assert p.name == labeller.labels[p.label] and p.name in ("positive", "neutral", "negative")
        assert p.confidence == pytest.approx(float(row["confidence"]), abs=1e-4)
        assert p.probs["-1"] == pytest.approx(float(row["p_negative"]), abs=1e-4)
    uncalibrated = labeltune.load_run(run, calibrated=False).predict(TEXTS[0])
    assert len(uncalibrated) == 1 and uncalibrated[0].probs != pytest.approx(predictions[0].probs, abs=1e-3)
    with pytest.raises(ValueError, match="mode 'fast' is not one of: generate, constrained, score"):
        labeltune.load_run(run, mode="fast")


def test_predict_prints_one_line_per_text_from_arguments_or_stdin(run, labelled):
    proc = cli("predict", "--run", run, *TEXTS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().split("\n")
    assert len(lines) == len(TEXTS)
    names = {"1": "positive", "0": "neutral", "-1": "negative"}
    for line, row, text in zip(lines, labelled, TEXTS):
        label, score, confidence, shown = line.split("\t")
        assert label == f"{row['label']} ({names[row['label']]})" and score == f"score {row['score']}"
        assert confidence.startswith("confidence ") and shown == text
        assert float(confidence.split()[1]) == pytest.approx(float(row["confidence"]), abs=1e-3)
    # no library noise on stderr (deprecations, transformers' and bitsandbytes' notices)
    for noise in ("Warning", "deprecated", "kernels-community"):
        assert noise not in proc.stderr, proc.stderr[-2000:]

    # texts and `-` (stdin, one per line, blank lines skipped) mixed; JSON lines
    piped = cli("predict", "--run", run, "--json", TEXTS[2], "-", stdin=f"{TEXTS[0]}\n\n{TEXTS[1]}\n")
    assert piped.returncode == 0, piped.stderr[-2000:]
    records = [json.loads(line) for line in piped.stdout.strip().split("\n")]
    assert [r["text"] for r in records] == [TEXTS[2], TEXTS[0], TEXTS[1]]
    by_text = {row["text"]: row for row in labelled}
    assert [(r["label"], r["score"]) for r in records] == [
        (by_text[r["text"]]["label"], int(by_text[r["text"]]["score"])) for r in records
    ]
    assert records[0]["name"] == names[records[0]["label"]] and set(records[0]["probs"]) == {"1", "0", "-1"}


def test_each_evaluation_keeps_its_own_folder(run, copy_run, capsys):
    from labeltune import evaluate

    run = copy_run(run)  # evaluations are written into it

    first = evaluate.main(
        resolve(EvalConfig, None, {"run": str(run), "split": "dev", "limit": 6, "forgetting": None})
    )
    out = capsys.readouterr().out
    first_dir = Path(first["eval_dir"])
    assert first_dir == run / "eval" / "dev-generate-1"
    assert f"report: {first_dir / 'report.html'}" in out and "next: labeltune label --run" in out
    before = {p.name: p.read_bytes() for p in first_dir.iterdir()}
    assert {
        "metrics.json",
        "report.md",
        "report.html",
        "predictions_base.csv",
        "predictions_finetuned.csv",
        "confusion_base.png",
        "confusion_finetuned.png",
    } <= set(before)

    second = evaluate.main(
        resolve(
            EvalConfig,
            None,
            {
                "run": str(run),
                "split": "test",
                "mode": "score",
                "base": False,
                "limit": 5,
                "forgetting": None,
            },
        )
    )
    second_dir = Path(second["eval_dir"])
    assert second_dir == run / "eval" / "test-score-2"
    assert {p.name: p.read_bytes() for p in first_dir.iterdir()} == before  # the first is untouched
    files = {p.name for p in second_dir.iterdir()}
    assert (
        "predictions_base.csv" not in files and "confusion_base.png" not in files
    )  # nothing of the first mixed in
    assert "reliability_finetuned.png" in files
    rows = list(csv.DictReader(open(second_dir / "predictions_finetuned.csv", encoding="utf-8")))
    assert len(rows) == 5 and all(r["id"].startswith("p") for r in rows)  # the data's own ids

    # the run's metrics.json and report.* are the latest evaluation's; the report shows its folder's plots
    assert json.loads((run / "metrics.json").read_text(encoding="utf-8")) == json.loads(
        (second_dir / "metrics.json").read_text(encoding="utf-8")
    )
    html = (run / "report.html").read_text(encoding="utf-8")
    assert 'src="eval/test-score-2/confusion_finetuned.png"' in html and "eval/dev-generate-1" not in html


def test_exports_carry_a_model_card_template_task_and_calibration(run, copy_run, capsys):
    from labeltune import evaluate, export

    run = copy_run(run)  # evaluated into, exported beside

    if not (run / "metrics.json").is_file():  # this test alone: evaluate first, so the card has test metrics
        evaluate.main(
            resolve(
                EvalConfig,
                None,
                {"run": str(run), "mode": "score", "base": False, "limit": 4, "forgetting": None},
            )
        )
    export.main(resolve(ExportConfig, None, {"run": str(run), "output": str(run.parent / "adapter")}))
    export.main(
        resolve(
            ExportConfig, None, {"run": str(run), "format": "merged16", "output": str(run.parent / "merged")}
        )
    )
    out = capsys.readouterr().out
    assert f"next: labeltune label --run {run.parent / 'adapter'}" in out
    template = ROOT / "labeltune" / "templates" / "alpaca_ja_sentiment_toxicity.jinja"
    task = ROOT / "labeltune" / "tasks" / "sentiment_toxicity.yaml"
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    for name, library, load in (
        ("adapter", "peft", "PeftModel.from_pretrained"),
        ("merged", "transformers", 'from_pretrained(export / "model"'),
    ):
        folder = run.parent / name
        assert (folder / "template.jinja").read_bytes() == template.read_bytes()
        assert (folder / "task.yaml").read_bytes() == task.read_bytes()
        assert json.loads((folder / "calibration.json").read_text(encoding="utf-8")) == CALIBRATION
        card = (folder / "README.md").read_text(encoding="utf-8")
        assert card.startswith(f"---\nlibrary_name: {library}\n")
        assert (
            "tiny" in card and "`alpaca_ja_sentiment_toxicity`" in card and "label : -1\nscore : 100" in card
        )
        assert "| `-1` | negative |" in card and "| `0` | neutral |" in card
        assert "| train | 48 |" in card  # the data summary
        assert "temperature 1.700, label biases positive +0.0, neutral +0.4, negative -0.3" in card
        assert (
            f'labeltune.load_run("{folder}")' in card
            and f"labeltune label   --run {folder}" in card
            and load in card
        )
        assert f"`labeltune evaluate` on the {metrics['split']} split, {metrics['mode']} mode" in card
        assert "| fine-tuned |" in card
    # the adapter export labels as the run does
    import labeltune

    exported = labeltune.load_run(run.parent / "adapter").predict(TEXTS)
    assert [(p.label, p.score) for p in exported] == [
        (p.label, p.score) for p in labeltune.load_run(run).predict(TEXTS)
    ]


@pytest.mark.train
def test_export_of_a_custom_template_and_task_loads_without_the_original_files(tmp_path):
    """An export carries its template and task spec and uses them: a run trained with a template and a task
    file of the user's still loads and labels after those files are gone (another machine)."""
    import shutil

    import labeltune
    from labeltune import export, train
    from labeltune.config import TrainConfig
    from labeltune.run import open_run

    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(
        ROOT / "labeltune" / "templates" / "alpaca_ja_sentiment_toxicity.jinja", mine / "my_prompt.jinja"
    )
    shutil.copy(ROOT / "labeltune" / "tasks" / "sentiment_toxicity.yaml", mine / "my_task.yaml")
    run = tmp_path / "run"
    train.main(
        resolve(
            TrainConfig,
            None,
            {
                "output": str(run),
                "max_steps": 2,
                "limit": 48,
                "template": str(mine / "my_prompt.jinja"),
                "task": str(mine / "my_task.yaml"),
            },
        )
    )
    export.main(resolve(ExportConfig, None, {"run": str(run), "output": str(tmp_path / "export")}))
    before = [(p.label, p.score) for p in labeltune.load_run(tmp_path / "export").predict(TEXTS)]
    shutil.rmtree(mine)  # the user's files are not on the machine the export goes to
    opened = open_run(tmp_path / "export")
    assert Path(opened.template().filename) == tmp_path / "export" / "template.jinja"
    assert opened.task.name == "sentiment_toxicity"
    assert [(p.label, p.score) for p in labeltune.load_run(tmp_path / "export").predict(TEXTS)] == before


def test_the_python_api_is_as_quiet_as_the_cli(run):
    """labeltune.load_run(...).predict(...) in a plain Python process prints the predictions only: no
    library FutureWarning / deprecation notes, no progress bars, no bitsandbytes / kernels notes; the
    caller's own warnings still show afterwards."""
    script = (
        f"import labeltune, warnings\nlabeller = labeltune.load_run({str(run)!r})\n"
        f"print(labeller.predict({TEXTS!r})[0].ok)\nwarnings.warn('mine', FutureWarning)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == ["<string>:4: FutureWarning: mine"], done.stderr[-2000:]
