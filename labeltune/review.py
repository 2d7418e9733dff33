"""labeltune review: people correct what the model is least sure of, and the answers train the next run.

    labeltune label --run R --input posts.csv --output scored.csv --mode score
    labeltune review select --run R --input scored.csv --budget 50 --strategy margin --output tasks.json
    labeltune review push --tasks tasks.json --url http://localhost:8080 --project posts   # or import by hand
    labeltune review pull --url http://localhost:8080 --project posts --tasks tasks.json --output ann.json
    labeltune review merge --tasks tasks.json --annotations ann.json --output merged
    labeltune train --data merged --output R2 && labeltune evaluate --run R2   # the same test split as R

select writes Label Studio tasks (the post, the model's answer as a pre-annotation with its confidence,
the row's id and fingerprints) and the labelling config generated from the task spec beside them
(``tasks.config.xml``); push imports them into a project (reusing one whose config fits, refusing one
whose config does not); pull reads the finished annotations back (or checks an export saved by hand);
merge folds them into a training split folder with provenance. docs/review.md walks through it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections import Counter
from pathlib import Path

from labeltune.config import ReviewMergeConfig, ReviewPullConfig, ReviewPushConfig, ReviewSelectConfig
from labeltune.data import iter_rows, read_columns
from labeltune.labelstudio import LabelStudio, token_from_env
from labeltune.review_tasks import (
    Decision,
    label_config,
    make_task,
    read_annotations,
    read_scored,
    resolve,
    text_sha256,
)
from labeltune.run import DATA, DATA_SUMMARY, file_sha256, load_config, open_run, split_file, weights_sha256
from labeltune.selection import select as pick
from labeltune.selection import uncertainty
from labeltune.splits import normalize_text
from labeltune.task import TaskSpec, load_task

IDENTITY_KEYS = ("run", "weights_sha256", "input", "input_sha256", "task")
PROVENANCE = (
    "review_source",
    "review_row",
    "review_annotators",
    "review_labels",
    "review_annotated_at",
    "review_model_label",
    "review_agreed_with_model",
    "review_conflict",
)


def config_path(tasks: Path) -> Path:
    """The labelling config beside a tasks file: tasks.json -> tasks.config.xml."""
    return tasks.with_name(tasks.stem + ".config.xml")


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it, or choose another --output")


def _write(path: Path, text: str) -> None:
    """Atomically: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _split_texts(run_dir: Path, names: tuple[str, ...]) -> set[str]:
    """Normalised texts of the run's splits `names` (those it has)."""
    out = set()
    for name in names:
        path = run_dir / DATA / split_file(name)
        if path.is_file():
            out |= {normalize_text(str(r.get("text", ""))) for r in iter_rows(path)}
    return out


# ---------------------------------------------------------------- select


def select(cfg: ReviewSelectConfig) -> Path:
    """Pick cfg.budget rows of a scored file and write them as Label Studio tasks + labelling config.
    Rows of the run's own train/dev/test splits are never picked (a person's answer there is wasted or
    would leak the test split into training)."""
    source, output = Path(cfg.input), Path(cfg.output)
    _refuse_existing(output, cfg.overwrite)
    run = open_run(cfg.run)
    task = run.task
    text_column = cfg.text_column or load_config(run.dir).text_column
    rows = read_scored(source, task, text_column)
    weights = weights_sha256(run.dir)
    sidecar = source.with_name(f".{source.name}.labeltune.json")
    if sidecar.is_file():
        made_by = json.loads(sidecar.read_text(encoding="utf-8")).get("identity", {}).get("weights_sha256")
        if made_by and made_by != weights:
            raise ValueError(f"{source} was scored by another run than --run {cfg.run} (its weights differ)")
    identity = {
        "run": str(run.dir.resolve()),
        "weights_sha256": weights,
        "input": str(source),
        "input_sha256": file_sha256(source),
        "task": task.name,
    }
    held = _split_texts(run.dir, ("train", "dev", "test"))
    candidates, skipped = [], Counter()
    for r in rows:
        if not r.text.strip():
            skipped["empty text"] += 1
        elif normalize_text(r.text) in held:
            skipped["in the run's train/dev/test splits"] += 1
        else:
            candidates.append(r.row)
    other = None
    if cfg.strategy == "disagreement":
        if cfg.other is None:
            raise ValueError("--strategy disagreement needs --other: a second scored file of the same rows")
        other_rows = read_scored(cfg.other, task, text_column)
        if [text_sha256(r.text) for r in other_rows] != [text_sha256(r.text) for r in rows]:
            raise ValueError(f"--other {cfg.other} does not hold the same rows (texts, in order) as {source}")
        other = [r.probs for r in other_rows]
    if not candidates:
        raise ValueError(f"{source}: no row to select ({dict(skipped)})")
    scores = uncertainty(cfg.strategy, [r.probs for r in rows], other, seed=cfg.seed)
    strata = [r.label for r in rows] if cfg.stratify else None
    chosen = pick(scores, cfg.budget, candidates, strata)
    tasks = [make_task(rows[i], task, identity, cfg.strategy, scores[i]) for i in chosen]
    _write(output, json.dumps(tasks, ensure_ascii=False, indent=1) + "\n")
    _write(config_path(output), label_config(task))
    by_label = Counter(str(rows[i].label) for i in chosen)
    print(
        f"selected {len(chosen)} of {len(candidates)} candidate rows of {source} by {cfg.strategy}"
        + (f" (not candidates: {dict(skipped)})" if skipped else "")
        + f"; model labels: {dict(by_label)}"
    )
    print(f"wrote {output} (Label Studio tasks) and {config_path(output)} (labelling config)")
    print(f"next: labeltune review push --tasks {output} --url http://localhost:8080 --project NAME")
    return output


# ---------------------------------------------------------------- push / pull


def read_tasks(path: str | Path) -> tuple[list[dict], TaskSpec, dict]:
    """A tasks file of `review select`: its tasks, their task spec and their (shared) identity."""
    path = Path(path)
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(tasks, list) or not tasks:
        raise ValueError(
            f"{path}: expected a non-empty JSON list of tasks (written by `labeltune review select`)"
        )
    identities = set()
    for t in tasks:
        data = t.get("data") if isinstance(t, dict) else None
        if not isinstance(data, dict) or any(k not in data for k in (*IDENTITY_KEYS, "row", "text_sha256")):
            raise ValueError(
                f"{path}: a task without labeltune's row identity; was it written by review select?"
            )
        identities.add(tuple(data[k] for k in IDENTITY_KEYS))
    if len(identities) > 1:
        raise ValueError(f"{path}: tasks of {len(identities)} different runs or inputs in one file")
    identity = dict(zip(IDENTITY_KEYS, identities.pop()))
    return tasks, load_task(identity["task"]), identity


def _key(data: dict) -> tuple:
    return (data.get("input_sha256"), data.get("weights_sha256"), data.get("row"))


def push(cfg: ReviewPushConfig) -> dict:
    """Import the tasks into the project (created with the task's labelling config if missing); tasks
    already in the project (same input, run and row) are not imported twice."""
    tasks, task, _ = read_tasks(cfg.tasks)
    client = LabelStudio(cfg.url, token_from_env(), cfg.wait)
    project = client.project(cfg.project, label_config(task))
    there = {_key(t.get("data", {})) for t in client.tasks(project["id"])}
    new = [t for t in tasks if _key(t["data"]) not in there]
    if new:
        client.import_tasks(project["id"], new)
    print(
        f"imported {len(new)} tasks into project {project['title']!r} (id {project['id']}) at {cfg.url}"
        + (f"; {len(tasks) - len(new)} were there already" if len(new) < len(tasks) else "")
    )
    print(
        f"annotate them at {cfg.url.rstrip('/')}/projects/{project['id']}/data, then: labeltune review pull"
    )
    return {"project": project["id"], "imported": len(new), "already": len(tasks) - len(new)}


def pull(cfg: ReviewPullConfig) -> Path:
    """Annotated tasks from the project (or from --export, a file saved by hand), checked (labels the task
    has, tasks of labeltune's) and written in Label Studio's JSON export format with annotators named."""
    output = Path(cfg.output)
    _refuse_existing(output, cfg.overwrite)
    if (cfg.url is None) == (cfg.export is None):
        raise ValueError("give one of --url (read the project) or --export (a JSON export saved by hand)")
    if cfg.export is not None:
        try:
            exported = json.loads(Path(cfg.export).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"--export {cfg.export}: not JSON ({e})") from None
        users = {}
    else:
        client = LabelStudio(cfg.url, token_from_env(), cfg.wait)
        project = client.project(cfg.project, None)
        exported = client.export(project["id"])
        users = client.users()
    if not isinstance(exported, list):
        raise ValueError("the export is not a JSON list of tasks (export as JSON, not JSON-MIN or CSV)")
    left_out = 0
    if cfg.tasks is not None:
        asked = {_key(t["data"]) for t in read_tasks(cfg.tasks)[0]}
        kept = [t for t in exported if _key(t.get("data") or {}) in asked]
        left_out, exported = len(exported) - len(kept), kept
    for t in exported:
        for a in t.get("annotations") or []:
            who = a.get("completed_by")
            if not isinstance(who, dict) and who in users:
                a["completed_by"] = {"id": who, "email": users[who]}
    names = {(t.get("data") or {}).get("task") for t in exported} - {None}
    if len(names) > 1:
        raise ValueError(f"the export mixes tasks of several task specs {sorted(names)}; pull one selection")
    if names:
        _, counts = read_annotations(exported, load_task(names.pop()))
    else:
        counts = {}
    _write(output, json.dumps(exported, ensure_ascii=False, indent=1) + "\n")
    print(
        f"pulled {len(exported)} tasks: {counts.get('annotations', 0)} annotations, "
        f"{counts.get('pending', 0)} tasks not annotated yet, {counts.get('cancelled', 0)} skipped"
        + (f"; {left_out} tasks of other selections left out" if left_out else "")
        + f" -> {output}"
    )
    return output


# ---------------------------------------------------------------- merge


def check_annotations(annotations: list, tasks: list[dict], identity: dict) -> None:
    """Every annotation belongs to a task of this selection and its text is the text selected."""
    asked = {t["data"]["row"]: t["data"] for t in tasks}
    for a in annotations:
        if any(a.data.get(k) != identity[k] for k in ("weights_sha256", "input_sha256")):
            raise ValueError(
                f"annotation of row {a.row} comes from another run or input than the tasks file "
                f"(run {a.data.get('run')!r}, input {a.data.get('input')!r}); "
                "pull with --tasks to keep one selection"
            )
        if a.row not in asked:
            raise ValueError(f"annotation of row {a.row}: no such task in the tasks file")
        if (
            text_sha256(a.text) != asked[a.row]["text_sha256"]
            or a.data.get("text_sha256") != asked[a.row]["text_sha256"]
        ):
            raise ValueError(
                f"annotation of row {a.row}: its post text no longer matches the fingerprint taken at select "
                "(the text was edited in Label Studio or in the file); refusing it"
            )


def _seed_rows(path: Path) -> tuple[list[str], list[dict]]:
    rows = [
        {k: (json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v) for k, v in r.items()}
        for r in iter_rows(path)
    ]
    columns = (
        read_columns(path) if path.suffix != ".jsonl" else list(dict.fromkeys(k for r in rows for k in r))
    )
    return columns, rows


def merge(cfg: ReviewMergeConfig) -> Path:
    """A training split folder: train.csv = the seed rows (the run's training split, or --train in the
    run's columns; written as text/label/score like the dev/test files) with each
    annotated row's answer folded in (a row already there gets the answer in place, never a second row),
    provenance in review_* columns; dev and test = the run's, so the next run is evaluated on the same
    test split. Refuses annotations of another run or input, edited texts, unknown labels, and rows of the
    run's dev/test splits. Ties no rule breaks are held back and reported, as are conflicts."""
    tasks, task, identity = read_tasks(cfg.tasks)
    try:
        exported = json.loads(Path(cfg.annotations).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"--annotations {cfg.annotations}: not JSON ({e})") from None
    annotations, counts = read_annotations(exported, task)
    check_annotations(annotations, tasks, identity)
    decisions = resolve(annotations, cfg.winner)
    run_dir = Path(identity["run"])
    leaked = _split_texts(run_dir, ("dev", "test"))
    bad = [
        d.row
        for d in decisions
        if normalize_text(next(a.text for a in annotations if a.row == d.row)) in leaked
    ]
    if bad:
        raise ValueError(
            f"annotated rows {bad[:10]} are in run {run_dir}'s dev/test split: merging would leak them"
        )
    out = Path(cfg.output)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace its files")
    seed_path = Path(cfg.train) if cfg.train else run_dir / DATA / "train.jsonl"
    columns, seed = _seed_rows(seed_path)
    train_cfg = load_config(run_dir)
    if cfg.train:  # the user's file, in the columns the run was trained on
        text_col, label_col, score_col = train_cfg.text_column, train_cfg.label_column, train_cfg.score_column
    else:  # the run's split files (labeltune.data.write_jsonl)
        text_col, label_col, score_col = "text", "label", "score"
    for c in (text_col, label_col):
        if c not in columns:
            raise ValueError(f"{seed_path}: no column {c!r}; columns: {columns}")
    spelling = {}  # a label value -> the seed's spelling of it (words stay words)
    for r in seed:
        value = task.normalize_label(r.get(label_col, ""))
        if value is not None:
            spelling.setdefault(value, str(r[label_col]))
    if any(word != value for value, word in spelling.items()):  # words: a label the seed lacks by its name
        spelling = {lab.value: spelling.get(lab.value, lab.name) for lab in task.labels}
    index = {normalize_text(str(r.get(text_col, ""))): i for i, r in enumerate(seed)}
    for r in seed:
        r.setdefault("review_source", "seed")
    texts = {a.row: a.text for a in annotations}
    model = {t["data"]["row"]: t["data"].get("model_label") for t in tasks}
    replaced, added, held = 0, 0, []
    for d in decisions:
        if d.label is None:
            held.append(d)
            continue
        record = {
            text_col: texts[d.row],
            label_col: spelling.get(d.label, d.label),
            **({score_col: "" if d.score is None else d.score} if score_col else {}),
            **provenance(d, model[d.row]),
        }
        at = index.get(normalize_text(texts[d.row]))
        if at is None:  # a new row; the same post selected twice (two rows of the pool) lands here once
            index[normalize_text(texts[d.row])] = len(seed)
            seed.append(record)
            added += 1
        else:
            seed[at].update(record)
            replaced += 1
    header = list(dict.fromkeys([*columns, *([score_col] if score_col else []), *PROVENANCE]))
    # train.csv names its columns text/label/score as the copied dev/test files do, so the folder reads
    # with train's default columns whatever the seed file called them
    rename = {text_col: "text", label_col: "label", **({score_col: "score"} if score_col else {})}
    clash = [c for c in header if c in rename.values() and c not in rename]
    if clash:
        raise ValueError(
            f"{seed_path}: columns {clash} would clash with the text/label/score columns written"
        )
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, [rename.get(k, k) for k in header], lineterminator="\n")
    writer.writeheader()
    writer.writerows({rename.get(k, k): ("" if r.get(k) is None else r.get(k)) for k in header} for r in seed)
    _write(out / "train.csv", buffer.getvalue())
    for name in ("dev", "test"):
        shutil.copyfile(run_dir / DATA / f"{name}.jsonl", out / f"{name}.jsonl")
    words = json.loads((run_dir / DATA / DATA_SUMMARY).read_text(encoding="utf-8")).get("label_words")
    if words:
        _write(out / DATA_SUMMARY, json.dumps({"label_words": words}, ensure_ascii=False) + "\n")
    report_merge(out, seed_path, len(seed) - added, added, replaced, decisions, held, counts)
    return out


def provenance(d: Decision, model_label: str | None) -> dict:
    return {
        "review_source": "review",
        "review_row": d.row,
        "review_annotators": ";".join(d.annotators),
        "review_labels": ";".join(d.labels),
        "review_annotated_at": d.created_at,
        "review_model_label": "" if model_label is None else model_label,
        "review_agreed_with_model": str(d.label == model_label).lower(),
        "review_conflict": str(d.conflict).lower(),
    }


def report_merge(out, seed_path, n_seed, added, replaced, decisions, held, counts) -> None:
    agreed = sum(1 for d in decisions if d.label is not None)
    print(
        f"merged {agreed} annotated rows into {out}/train.csv: {n_seed} rows of {seed_path} "
        f"({replaced} of them relabelled) + {added} new = {n_seed + added} rows; dev and test are the run's"
    )
    for d in (d for d in decisions if d.conflict):
        fate = "held back (tie)" if d.label is None else f"-> {d.label}"
        votes = ", ".join(f"{a}: {lab}" for a, lab in zip(d.annotators, d.labels))
        print(f"conflict on row {d.row}: {votes} {fate}")
    if held:
        print(
            f"{len(held)} rows held back (annotators tied): rows {[d.row for d in held][:20]}; "
            "use --winner EMAIL"
        )
    if counts.get("pending"):
        print(f"{counts['pending']} tasks have no annotation yet (not merged)")
    print(f"next: labeltune train --data {out} --output runs/NEXT && labeltune evaluate --run runs/NEXT")


ACTIONS = {
    "select": (
        ReviewSelectConfig,
        "pick the rows to annotate -> Label Studio tasks + labelling config",
        select,
    ),
    "push": (ReviewPushConfig, "import tasks into a Label Studio project", push),
    "pull": (ReviewPullConfig, "read finished annotations back (from Label Studio or an export file)", pull),
    "merge": (ReviewMergeConfig, "fold annotations into a training split folder with provenance", merge),
}
