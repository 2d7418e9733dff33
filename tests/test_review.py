"""The review loop without a Label Studio server: selection maths, the labelling config, tasks and
annotations as Label Studio exports them, and merge's provenance, conflicts and refusals. The server
itself: tests/test_review_labelstudio.py."""

from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from labeltune import cli, review
from labeltune.config import ReviewMergeConfig, ReviewPullConfig, ReviewSelectConfig
from labeltune.labelstudio import LabelStudio
from labeltune.review_tasks import (
    Annotation,
    config_controls,
    label_config,
    read_annotations,
    resolve,
    result_items,
)
from labeltune.selection import entropy, margin_uncertainty, select, shares, uncertainty
from labeltune.task import load_task

ROOT = Path(__file__).resolve().parent.parent
TASK = load_task("sentiment_toxicity")

# ---------------------------------------------------------------- selection maths


def test_margin_and_entropy_rank_the_unsure_rows_first():
    sure, torn, even = {"1": 0.9, "0": 0.05, "-1": 0.05}, {"1": 0.45, "0": 0.45, "-1": 0.1}, None
    spread = {"1": 1 / 3, "0": 1 / 3, "-1": 1 / 3}
    assert margin_uncertainty(sure) == pytest.approx(0.15)
    assert margin_uncertainty(torn) == pytest.approx(1.0)
    assert entropy(spread) == pytest.approx(math.log(3))
    assert entropy({"1": 1.0, "0": 0.0, "-1": 0.0}) == 0
    probs = [sure, torn, even, spread]
    assert select(uncertainty("margin", probs), 3) == [2, 1, 3]  # no answer first, then the tie
    assert select(uncertainty("entropy", probs), 2) == [2, 3]


def test_random_is_seeded_and_disagreement_needs_two_sources():
    probs = [{"1": 0.5, "0": 0.5}] * 20
    assert uncertainty("random", probs, seed=3) == uncertainty("random", probs, seed=3)
    assert uncertainty("random", probs, seed=3) != uncertainty("random", probs, seed=4)
    with pytest.raises(ValueError, match="second prediction file"):
        uncertainty("disagreement", probs)
    a = [{"1": 0.6, "0": 0.4}, {"1": 0.9, "0": 0.1}, {"1": 0.7, "0": 0.3}]
    b = [{"1": 0.4, "0": 0.6}, {"1": 0.1, "0": 0.9}, {"1": 0.7, "0": 0.3}]
    scores = uncertainty("disagreement", a, b)
    assert select(scores, 3) == [1, 0, 2]  # both disagree; the larger distance first; agreement last
    with pytest.raises(ValueError, match="unknown strategy 'least'"):
        uncertainty("least", a)


def test_stratified_budget_follows_the_predicted_labels():
    assert shares(10, {"a": 50, "b": 30, "c": 20}) == {"a": 5, "b": 3, "c": 2}
    assert shares(10, {"a": 50, "b": 1}) == {"a": 9, "b": 1}  # a small group passes its share on
    assert shares(10, {"a": 3, "b": 2}) == {"a": 3, "b": 2}  # never more than there are
    scores = [0.9, 0.8, 0.7, 0.6, 0.1, 0.05]
    strata = ["a", "a", "a", "a", "b", "b"]
    assert select(scores, 2) == [0, 1]
    assert select(scores, 2, strata=strata) == [0, 4]  # b gets its share although its rows are surer
    assert select(scores, 2, candidates=[2, 3, 4], strata=strata) == [2, 4]


# ---------------------------------------------------------------- labelling config, tasks, annotations


def test_label_config_is_generated_from_the_task_spec():
    xml = label_config(TASK)
    root = ET.fromstring(xml)
    assert [c.get("value") for c in root.iter("Choice")] == ["positive", "neutral", "negative"]
    number = next(root.iter("Number"))
    assert (number.get("min"), number.get("max")) == ("0", "100")
    assert config_controls(xml) == {
        "text": set(),
        "label": {"positive", "neutral", "negative"},
        "score": set(),
    }
    posneg = ET.fromstring(label_config(load_task("posneg")))
    assert list(posneg.iter("Number")) == []  # a task without a score asks for none
    assert [c.get("value") for c in posneg.iter("Choice")] == ["positive", "negative"]


def _exported(data: dict, *annotations: tuple[str, str, int | None, str], task_id: int = 1) -> dict:
    """A task as Label Studio's JSON export writes it, with (annotator, choice, score, time) annotations."""
    return {
        "id": task_id,
        "data": data,
        "annotations": [
            {
                "id": task_id * 100 + i,
                "completed_by": {"id": i, "email": who},
                "result": [
                    {
                        "from_name": "label",
                        "to_name": "text",
                        "type": "choices",
                        "value": {"choices": [choice]},
                    },
                    *(
                        [{"from_name": "score", "to_name": "text", "type": "number", "value": {"number": s}}]
                        if s is not None
                        else []
                    ),
                ],
                "was_cancelled": False,
                "created_at": at,
            }
            for i, (who, choice, s, at) in enumerate(annotations)
        ],
    }


def test_annotations_are_read_as_task_values_and_unknown_labels_refused():
    data = {"text": "t", "row": 3, "text_sha256": "x"}
    anns, counts = read_annotations([_exported(data, ("a@x", "negative", 80, "1"))], TASK)
    assert (anns[0].label, anns[0].score, anns[0].annotator) == ("-1", 80, "a@x")
    neutral, _ = read_annotations([_exported(data, ("a@x", "neutral", 80, "1"))], TASK)
    assert neutral[0].score == 0  # only negative posts carry a score
    with pytest.raises(ValueError, match="label 'spam' is not one of task sentiment_toxicity's labels"):
        read_annotations([_exported(data, ("a@x", "spam", None, "1"))], TASK)
    with pytest.raises(ValueError, match="not made by `labeltune review select`"):
        read_annotations([{"id": 9, "data": {"text": "t"}, "annotations": []}], TASK)
    skipped = _exported(data, ("a@x", "negative", 1, "1"))
    skipped["annotations"][0]["was_cancelled"] = True
    assert read_annotations([skipped, {"data": data, "annotations": []}], TASK)[1] == {
        "cancelled": 1,
        "pending": 1,
    }
    assert result_items(TASK, "0", 0)[0]["value"] == {"choices": ["neutral"]}


def _ann(row, who, label, at="2026-01-01", score=None):
    return Annotation(row=row, text="t", data={}, annotator=who, created_at=at, label=label, score=score)


def test_conflicts_resolve_by_majority_or_a_chosen_annotator():
    anns = [
        _ann(1, "a", "-1", score=80),
        _ann(1, "b", "-1", score=60),
        _ann(1, "c", "0"),
        _ann(2, "a", "1"),
        _ann(2, "b", "0"),
        _ann(3, "a", "0", at="1"),
        _ann(3, "a", "1", at="2"),  # a changed their mind: the latest counts, once
    ]
    by_row = {d.row: d for d in resolve(anns)}
    assert (by_row[1].label, by_row[1].score, by_row[1].conflict) == ("-1", 70, True)
    assert by_row[2].label is None and by_row[2].conflict  # a tie is held back
    assert (by_row[3].label, by_row[3].conflict, by_row[3].annotators) == ("1", False, ("a",))
    chosen = {d.row: d for d in resolve(anns, winner="c")}
    assert chosen[1].label == "0" and chosen[2].label is None  # c did not annotate row 2: majority (a tie)


# ---------------------------------------------------------------- select -> export -> pull -> merge


def _scored(path: Path, texts: list[str]) -> Path:
    """A file as `label --mode score` writes it (the columns that matter), probabilities varied by row."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label", "score", "confidence", "p_positive", "p_neutral", "p_negative"])
        for i, text in enumerate(texts):
            p_neg = 0.3 + 0.6 * i / max(1, len(texts) - 1)
            p = {"p_positive": 0.1, "p_neutral": 0.9 - p_neg, "p_negative": p_neg}
            label = "-1" if p_neg >= p["p_neutral"] else "0"
            w.writerow([f"n{i}", text, label, int(100 * p_neg), max(p.values()), *p.values()])
    return path


NEW_POSTS = [r["text"] for r in csv.DictReader((ROOT / "data" / "new_posts.csv").open(encoding="utf-8"))]


@pytest.fixture
def selection(tiny_run_3x48, tmp_path, monkeypatch):
    """A tiny run, a scored file of posts it was not trained on, and 6 of them selected as tasks."""
    monkeypatch.chdir(tmp_path)
    texts = [t for t in NEW_POSTS if t.strip()][:12]
    scored = _scored(tmp_path / "scored.csv", texts)
    tasks = review.select(
        ReviewSelectConfig(run=str(tiny_run_3x48), input=str(scored), budget=6, output="tasks.json")
    )
    return tmp_path, tasks, json.loads(tasks.read_text(encoding="utf-8"))


def test_select_writes_label_studio_tasks_with_the_models_answer(selection):
    folder, tasks_path, tasks = selection
    run = tasks[0]["data"]["run"]
    argv = ["review", "select", "--run", run, "--input", "scored.csv", "--budget", "4", "--stratify"]
    assert cli.run([*argv, "--strategy", "random", "--seed", "1", "--output", "cli.json"]) == 0
    by_cli = json.loads((folder / "cli.json").read_text(encoding="utf-8"))
    assert len(by_cli) == 4 and {t["data"]["strategy"] for t in by_cli} == {"random"}
    assert {t["data"]["model_label"] for t in by_cli} == {"-1", "0"}  # stratified: both predicted labels
    assert len(tasks) == 6 and (folder / "tasks.config.xml").is_file()
    uncertainties = [t["data"]["uncertainty"] for t in tasks]
    assert uncertainties == sorted(uncertainties, reverse=True)
    first = tasks[0]
    assert first["data"]["text"] in NEW_POSTS and first["data"]["row"] < 12
    assert first["predictions"][0]["score"] == pytest.approx(first["data"]["model_confidence"])
    assert {"row", "text_sha256", "input_sha256", "weights_sha256", "run", "task"} <= set(first["data"])
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        review.select(ReviewSelectConfig(run=first["data"]["run"], input="scored.csv", output="tasks.json"))


def _annotate(tasks: list[dict], plan: dict[int, list[tuple[str, str, int | None]]]) -> list[dict]:
    """The tasks as Label Studio exports them after people answered: plan = task index -> answers."""
    out = []
    for i, t in enumerate(tasks):
        answers = [
            (who, choice, s, f"2026-12-07T0{j}:00:00Z") for j, (who, choice, s) in enumerate(plan.get(i, []))
        ]
        out.append(_exported(dict(t["data"]), *answers, task_id=i + 1))
    return out


def test_merge_folds_answers_in_with_provenance_and_accounts_for_every_row(selection):
    folder, tasks_path, tasks = selection
    plan = {
        0: [("ann@x", "negative", 90)],
        1: [("ann@x", "neutral", None), ("bob@x", "neutral", None)],  # agree
        2: [("ann@x", "positive", None), ("bob@x", "negative", 40)],  # tie: held back
        3: [("ann@x", tasks[3]["predictions"][0]["result"][0]["value"]["choices"][0], None)],
    }
    (folder / "export.json").write_text(json.dumps(_annotate(tasks, plan), ensure_ascii=False))
    pulled = review.pull(ReviewPullConfig(export="export.json", tasks=str(tasks_path), output="ann.json"))
    run_dir = Path(tasks[0]["data"]["run"])
    out = review.merge(ReviewMergeConfig(tasks=str(tasks_path), annotations=str(pulled), output="merged"))
    rows = list(csv.DictReader((out / "train.csv").open(encoding="utf-8")))
    seed = [json.loads(line) for line in (run_dir / "data" / "train.jsonl").open(encoding="utf-8")]
    reviewed = [r for r in rows if r["review_source"] == "review"]
    assert len(rows) == len(seed) + 3 and len(reviewed) == 3  # 3 resolved, 1 tie held, 2 not annotated
    assert [r["text"] for r in rows[: len(seed)]] == [s["text"] for s in seed]  # the seed rows kept, in order
    by_row = {int(r["review_row"]): r for r in reviewed}
    first = by_row[tasks[0]["data"]["row"]]
    assert (first["label"], first["score"], first["review_annotators"]) == ("-1", "90", "ann@x")
    assert first["review_agreed_with_model"] == str(tasks[0]["data"]["model_label"] == "-1").lower()
    assert by_row[tasks[3]["data"]["row"]]["review_agreed_with_model"] == "true"
    assert by_row[tasks[1]["data"]["row"]]["review_annotators"] == "ann@x;bob@x"
    assert tasks[2]["data"]["row"] not in by_row
    for name in ("dev", "test"):  # the next run is evaluated on the same split
        assert (out / f"{name}.jsonl").read_bytes() == (run_dir / "data" / f"{name}.jsonl").read_bytes()
    # the same answers merged again into a folder holding them: refused unless asked
    with pytest.raises(FileExistsError, match="--overwrite"):
        review.merge(ReviewMergeConfig(tasks=str(tasks_path), annotations=str(pulled), output="merged"))
    # the chosen annotator breaks the tie
    chosen = review.merge(
        ReviewMergeConfig(tasks=str(tasks_path), annotations=str(pulled), output="merged2", winner="bob@x")
    )
    assert len(list(csv.DictReader((chosen / "train.csv").open(encoding="utf-8")))) == len(seed) + 4


def test_merge_refuses_edited_texts_other_selections_unknown_labels_and_test_rows(
    selection, capsys, monkeypatch
):
    folder, tasks_path, tasks = selection
    export = _annotate(tasks, {0: [("ann@x", "negative", 90)]})

    def merge_fails(exported, match):
        (folder / "bad.json").write_text(json.dumps(exported, ensure_ascii=False))
        with pytest.raises(ValueError, match=match):
            review.merge(ReviewMergeConfig(tasks=str(tasks_path), annotations="bad.json", output="m"))
        assert not (folder / "m").exists()  # nothing written

    edited = json.loads(json.dumps(export))
    edited[0]["data"]["text"] += "（編集）"
    merge_fails(edited, "no longer matches the fingerprint")
    other = json.loads(json.dumps(export))
    other[0]["data"]["input_sha256"] = "0" * 64
    merge_fails(other, "another run or input")
    unknown = _annotate(tasks, {0: [("ann@x", "spam", None)]})
    merge_fails(unknown, "label 'spam' is not one of")
    # a hand-made task whose post is in the run's test split: merging it would leak test into training
    run_dir = Path(tasks[0]["data"]["run"])
    test_text = json.loads((run_dir / "data" / "test.jsonl").read_text(encoding="utf-8").splitlines()[0])[
        "text"
    ]
    leaked_tasks = json.loads(json.dumps(tasks))
    leaked_tasks[0]["data"]["text"] = test_text
    leaked_tasks[0]["data"]["text_sha256"] = review.text_sha256(test_text)
    (folder / "leak_tasks.json").write_text(json.dumps(leaked_tasks, ensure_ascii=False))
    (folder / "leak.json").write_text(
        json.dumps(_annotate(leaked_tasks, {0: [("a@x", "neutral", None)]}), ensure_ascii=False)
    )
    with pytest.raises(ValueError, match="dev/test split: merging would leak"):
        review.merge(ReviewMergeConfig(tasks="leak_tasks.json", annotations="leak.json", output="m"))
    # on the command line: one line, exit 2
    monkeypatch.setattr(
        "sys.argv", ["labeltune", "review", "pull", "--export", "bad.json", "--output", "x.json"]
    )
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_select_refuses_a_file_without_probabilities_and_another_runs_file(selection):
    folder, _, tasks = selection
    (folder / "plain.csv").write_text("text,label\nこんにちは,0\n", encoding="utf-8")
    run = tasks[0]["data"]["run"]
    with pytest.raises(ValueError, match=r"no probability column\(s\) \['p_positive'"):
        review.select(ReviewSelectConfig(run=run, input="plain.csv", output="t.json"))
    with pytest.raises(ValueError, match="needs --other"):
        review.select(
            ReviewSelectConfig(run=run, input="scored.csv", output="t.json", strategy="disagreement")
        )
    _scored(folder / "other.csv", ["別の投稿", "もう一つ"])
    with pytest.raises(ValueError, match="does not hold the same rows"):
        review.select(
            ReviewSelectConfig(
                run=run, input="scored.csv", output="t.json", strategy="disagreement", other="other.csv"
            )
        )
    # a file label.py wrote records the weights that scored it: another run's tasks are refused
    (folder / ".scored.csv.labeltune.json").write_text(json.dumps({"identity": {"weights_sha256": "f" * 64}}))
    with pytest.raises(ValueError, match="scored by another run"):
        review.select(ReviewSelectConfig(run=run, input="scored.csv", output="t.json"))


def test_an_unreachable_label_studio_is_one_error_after_a_bounded_wait():
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ValueError, match=f"not reachable at http://127.0.0.1:{port}"):
        LabelStudio(f"http://127.0.0.1:{port}", "token", wait=1.5).project("p", None)
    assert time.monotonic() - start < 10


def test_simulation_summary_is_mean_and_spread_over_seeds(tmp_path):
    """scripts/simulate_review.py's table and plot from its results.csv (the rounds themselves train)."""
    import runpy

    simulate = runpy.run_path(str(ROOT / "scripts" / "simulate_review.py"))
    with (tmp_path / "results.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, simulate["FIELDS"])
        w.writeheader()
        for seed, f1 in enumerate((0.5, 0.7)):
            w.writerow({"strategy": "margin", "seed": seed, "round": 0, "labels": 40, "macro_f1": f1})
        w.writerow({"strategy": "random", "seed": 0, "round": 0, "labels": 40, "macro_f1": 0.4})
    simulate["summarise"](tmp_path, None)
    table = (tmp_path / "table.md").read_text(encoding="utf-8")
    assert "| 40 | 0.600 ± 0.141 (n=2) | 0.400 ± 0.000 (n=1) |" in table
    assert "rarest label" not in table  # no rare_labels column filled in
    assert (tmp_path / "review_simulation.png").stat().st_size > 1000


def test_merge_into_a_given_training_file_relabels_a_post_already_there(selection):
    """--train: the answers join the user's file; a post already in it gets the answer in place."""
    folder, tasks_path, tasks = selection
    first = tasks[0]["data"]
    with (folder / "seed.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label", "score"])
        w.writerows([["s1", "既存の投稿", "neutral", ""], ["s2", first["text"], "positive", ""]])
    (folder / "ann.json").write_text(
        json.dumps(_annotate(tasks, {0: [("ann@x", "negative", 75)], 1: [("ann@x", "neutral", None)]}))
    )
    out = review.merge(
        ReviewMergeConfig(tasks=str(tasks_path), annotations="ann.json", train="seed.csv", output="m")
    )
    rows = list(csv.DictReader((out / "train.csv").open(encoding="utf-8")))
    assert [r["id"] for r in rows] == ["s1", "s2", ""] and len(rows) == 3  # 2 seed rows + 1 new, none twice
    assert (rows[1]["label"], rows[1]["score"], rows[1]["review_source"]) == ("negative", "75", "review")
    assert rows[2]["label"] == "neutral"  # the seed's spelling of the label
    assert rows[0]["review_source"] == "seed"


LIVEDOOR = ROOT.parent / "shared" / "data" / "livedoor-news-corpus"
TOXIC = ROOT.parent / "shared" / "data" / "japanese-toxic-dataset"


@pytest.mark.skipif(not LIVEDOOR.is_dir(), reason=f"needs the livedoor news corpus in {LIVEDOOR}")
def test_simulation_on_livedoor_titles_splits_titles_of_every_topic():
    import runpy

    simulate = runpy.run_path(str(ROOT / "scripts" / "simulate_review.py"))
    args = simulate["parse_args"](["--dataset", "livedoor-titles", "--per-label", "20"])
    pool, dev, test = simulate["load_data"](args)
    assert (len(pool), len(dev), len(test)) == (108, 9, 63)  # 180 titles: 60 / 5 / 35 %
    assert {ex.label for ex in test} == set(load_task("livedoor_category").label_values)
    assert all("\n" not in ex.text and len(ex.text) < 120 for ex in pool + dev + test)  # the title alone
    assert not {ex.text for ex in pool} & {ex.text for ex in test}


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.skipif(not TOXIC.is_dir(), reason=f"needs japanese-toxic-dataset in {TOXIC}")
def test_simulation_trains_the_first_round_once_per_seed_and_resumes(tmp_path, capsys):
    """Two strategies share round 0 (one training for both); a second start finds every round written."""
    import runpy

    simulate = runpy.run_path(str(ROOT / "scripts" / "simulate_review.py"))
    argv = ["--model", "tiny", "--output", str(tmp_path), "--strategies", "margin,random", "--seeds", "0"]
    argv += ["--rounds", "2", "--seed-size", "20", "--budget", "10", "--max-steps", "2"]
    assert simulate["main"](argv) == 0
    rows = list(csv.DictReader((tmp_path / "results.csv").open(encoding="utf-8")))
    assert [(r["strategy"], r["round"], r["labels"]) for r in rows] == [
        ("margin", "0", "20"),
        ("margin", "1", "30"),
        ("random", "0", "20"),
        ("random", "1", "30"),
    ]
    assert rows[0]["macro_f1"] == rows[2]["macro_f1"]  # the same round 0, trained once
    trained = capsys.readouterr().out.count("trained 2 steps")
    assert trained == 3  # round 0 once, round 1 per strategy
    picked = [
        json.loads((tmp_path / "rounds" / f"{s}-s0-r1" / "labelled_ids.json").read_text())
        for s in ("margin", "random")
    ]
    assert all(len(ids) == len(set(ids)) == 40 for ids in picked)
    assert simulate["main"](argv) == 0  # started again: nothing left to train
    assert "trained" not in capsys.readouterr().out
    assert len(list(csv.DictReader((tmp_path / "results.csv").open(encoding="utf-8")))) == 4
