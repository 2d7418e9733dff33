"""The review loop against a real Label Studio on localhost: its own data folder, a user and a legacy API
token made by `label-studio start`'s options; tasks pushed, annotated through the HTTP API as the
browser's editor saves them, pulled, merged, a new run trained on the merged data and both runs evaluated
on the same test split, with every selected row accounted for.

Needs Label Studio: `make env-labelstudio` (.venv-ls, with a migrated template database that makes a
start take seconds instead of minutes) or $LABELTUNE_LABEL_STUDIO naming a `label-studio` executable;
skipped otherwise. Run with `make test-labelstudio`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from labeltune import evaluate, review, train
from labeltune import label as label_verb
from labeltune.config import (
    EvalConfig,
    LabelConfig,
    ReviewMergeConfig,
    ReviewPullConfig,
    ReviewPushConfig,
    ReviewSelectConfig,
    TrainConfig,
    resolve,
)
from labeltune.review_tasks import result_items
from labeltune.task import load_task

ROOT = Path(__file__).resolve().parent.parent
EXECUTABLE = os.environ.get("LABELTUNE_LABEL_STUDIO") or str(ROOT / ".venv-ls" / "bin" / "label-studio")
TOKEN = "labeltune-review-test-token"
USER = "reviewer@example.com"
SPAM_CONFIG = (
    '<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
    '<Choice value="spam"/><Choice value="ham"/></Choices></View>'
)
START_WAIT = 900  # seconds: a start without the template database migrates a fresh one (minutes)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.labelstudio,
    pytest.mark.skipif(
        not (Path(EXECUTABLE).is_file() and os.access(EXECUTABLE, os.X_OK)),
        reason=f"Label Studio is not installed ({EXECUTABLE} missing): make env-labelstudio, or set "
        "LABELTUNE_LABEL_STUDIO to a label-studio executable",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str | None = None):
    headers = {"Authorization": f"Token {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return json.loads(r.read().decode("utf-8"))


@pytest.fixture
def label_studio(tmp_path):
    """A Label Studio server of this test's own: data folder in tmp_path, one user with a legacy token."""
    data = tmp_path / "ls-data"
    data.mkdir()
    template = Path(EXECUTABLE).resolve().parent.parent / "template-data" / "label_studio.sqlite3"
    if template.is_file():
        shutil.copyfile(template, data / "label_studio.sqlite3")
    port = _free_port()
    env = {
        **os.environ,
        "SENTRY_DSN": "",  # no error reports sent anywhere (and sentry-sdk 3 breaks 1.23's init)
        "FRONTEND_SENTRY_DSN": "",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LATEST_VERSION_CHECK": "false",  # no call to PyPI at start
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
    }
    log = (tmp_path / "label-studio.log").open("w")
    command = [EXECUTABLE, "start", "--data-dir", str(data), "--no-browser", "--port", str(port)]
    command += ["--internal-host", "127.0.0.1", "--username", USER, "--password", "review-pass-123"]
    command += ["--user-token", TOKEN, "--enable-legacy-api-token"]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                tail = (tmp_path / "label-studio.log").read_text()[-2000:]
                pytest.fail(f"label-studio exited ({proc.returncode}): {tail}")
            try:
                _get(url + "/api/version")
                break
            except OSError:
                if time.monotonic() - started > START_WAIT:
                    pytest.fail(f"label-studio did not answer within {START_WAIT} s")
                time.sleep(1)
        print(f"label-studio answered after {time.monotonic() - started:.0f} s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _annotate_as_the_browser(
    url: str, task: dict, project: int, label: str | None, score: int | None
) -> None:
    """POST /api/tasks/{id}/annotations/ with the body Label Studio's editor sends on Submit (label None:
    Skip, a cancelled annotation)."""
    spec = load_task("sentiment_toxicity")
    body = {
        "result": []
        if label is None
        else [{**item, "origin": "manual"} for item in result_items(spec, label, score)],
        "was_cancelled": label is None,
        "ground_truth": False,
        "lead_time": 7.5,
        "draft_id": 0,
        "parent_prediction": task["predictions"][0] if task.get("predictions") else None,
        "parent_annotation": None,
        "started_at": "2026-12-07T03:00:00.000Z",
        "project": str(project),
    }
    request = urllib.request.Request(
        f"{url}/api/tasks/{task['id']}/annotations/?project={project}",
        data=json.dumps(body).encode("utf-8"),
        method="POST",
        headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        assert r.status == 201


def test_push_annotate_pull_merge_retrain_against_a_real_label_studio(
    label_studio, tiny_run_3x48, copy_run, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    before = copy_run(tiny_run_3x48)  # evaluate writes into the run
    scored = label_verb.main(
        resolve(
            LabelConfig,
            None,
            {"run": str(before), "input": str(ROOT / "data" / "new_posts.csv"), "output": "scored.csv"}
            | {"mode": "score", "progress": False},
        )
    )
    tasks_path = review.select(
        ReviewSelectConfig(
            run=str(before), input=str(scored), budget=6, strategy="entropy", output="tasks.json"
        )
    )
    asked = json.loads(tasks_path.read_text(encoding="utf-8"))
    pushed = review.push(ReviewPushConfig(tasks=str(tasks_path), url=label_studio, project="posts review"))
    assert pushed["imported"] == 6
    again = review.push(ReviewPushConfig(tasks=str(tasks_path), url=label_studio, project="posts review"))
    assert again == {"project": pushed["project"], "imported": 0, "already": 6}  # nothing imported twice

    # a project whose labelling config does not fit the task is refused, and nothing is imported into it
    other = json.dumps({"title": "spam or ham", "label_config": SPAM_CONFIG}).encode("utf-8")
    request = urllib.request.Request(
        f"{label_studio}/api/projects/",
        data=other,
        method="POST",
        headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        spam_id = json.loads(r.read())["id"]
    with pytest.raises(ValueError, match="does not match the task"):
        review.push(ReviewPushConfig(tasks=str(tasks_path), url=label_studio, project="spam or ham"))
    assert _get(f"{label_studio}/api/projects/{spam_id}/", TOKEN)["task_number"] == 0

    project = pushed["project"]
    there = _get(
        f"{label_studio}/api/projects/{project}/export?exportType=JSON&download_all_tasks=true", TOKEN
    )
    assert all(t["predictions"] for t in there)  # the model's answer is the pre-annotation
    by_row = {t["data"]["row"]: t for t in there}
    rows = [t["data"]["row"] for t in asked]
    answers = {rows[0]: ("-1", 85), rows[1]: ("0", None), rows[2]: ("1", None), rows[3]: ("-1", 40)}
    for row, (lab, score) in answers.items():
        _annotate_as_the_browser(label_studio, by_row[row], project, lab, score)
    _annotate_as_the_browser(label_studio, by_row[rows[4]], project, None, None)  # skipped; rows[5] untouched

    pulled = review.pull(
        ReviewPullConfig(url=label_studio, project="posts review", tasks=str(tasks_path), output="ann.json")
    )
    exported = json.loads(pulled.read_text(encoding="utf-8"))
    assert len(exported) == 6
    annotators = {a["completed_by"]["email"] for t in exported for a in t["annotations"]}
    assert annotators == {USER}

    merged = review.merge(ReviewMergeConfig(tasks=str(tasks_path), annotations=str(pulled), output="merged"))
    train_rows = list(csv.DictReader((merged / "train.csv").open(encoding="utf-8")))
    seed = (before / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    reviewed = {int(r["review_row"]): r for r in train_rows if r["review_source"] == "review"}
    # every selected row accounted for: 4 answered -> in the training file once, 1 skipped, 1 pending
    assert len(train_rows) == len(seed) + 4 and sorted(reviewed) == sorted(answers)
    for row, (lab, score) in answers.items():
        assert reviewed[row]["label"] == lab and reviewed[row]["review_annotators"] == USER
        assert reviewed[row]["score"] == str(score if score is not None else 0)
        model = next(t["data"]["model_label"] for t in asked if t["data"]["row"] == row)
        assert reviewed[row]["review_agreed_with_model"] == str(model == lab).lower()

    after = train.main(
        resolve(TrainConfig, None, {"data": str(merged), "output": str(tmp_path / "after"), "max_steps": 2})
    )
    assert (after / "data" / "test.jsonl").read_bytes() == (before / "data" / "test.jsonl").read_bytes()
    results = {}
    for name, run in (("before", before), ("after", after)):
        metrics = evaluate.main(
            resolve(EvalConfig, None, {"run": str(run), "mode": "score", "base": False, "limit": 16})
        )
        results[name] = metrics
    print({k: v["finetuned"]["macro_f1"] for k, v in results.items()})
    assert results["before"]["finetuned"]["n"] == results["after"]["finetuned"]["n"] == 16
