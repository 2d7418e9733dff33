"""Label Studio's side of the review loop, as pure data: the labelling config (XML) a task spec asks for,
the tasks (post text + the model's answer as a pre-annotation + the row's identity), and the annotations
read back from a Label Studio export, resolved to one answer per row.

Nothing here talks to a server (labeltune.labelstudio does) or writes files (labeltune.review does).

A task's ``data`` carries, beside the text: ``row`` (0-based data row of the scored file), ``text_sha256``
(the post's fingerprint), ``input_sha256`` (the scored file's), ``run`` and ``weights_sha256`` (the run
that scored it), ``model_label`` / ``model_score`` / ``model_confidence`` and ``strategy`` /
``uncertainty`` (why it was picked). Label Studio keeps ``data`` as imported and returns it with every
exported task, so an annotation can always be traced to its row and checked against it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

from labeltune.data import iter_rows, read_columns
from labeltune.task import TaskSpec

TEXT_NAME, LABEL_NAME, SCORE_NAME = "text", "label", "score"  # the config's control names
MODEL_VERSION_PREFIX = "labeltune:"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- the scored file


@dataclass(frozen=True)
class ScoredRow:
    row: int  # 0-based data row of the scored file
    text: str
    label: str | None  # the model's label (task value); None = no answer
    score: int | None
    confidence: float | None
    probs: dict[str, float] | None  # task value -> probability; None = the model said nothing usable
    cells: dict = field(default_factory=dict, compare=False)  # the row as read


def _column(columns: list[str], name: str) -> str | None:
    """The prediction column `name` as label.py wrote it (``pred_``-prefixed when the input had one)."""
    for candidate in (f"pred_{name}", name):
        if candidate in columns:
            return candidate
    return None


def _float(cell) -> float | None:
    try:
        return float(cell) if str(cell).strip() != "" else None
    except ValueError:
        return None


def read_scored(path: str | Path, task: TaskSpec, text_column: str = "text") -> list[ScoredRow]:
    """The rows of a file `labeltune label --mode score` wrote: text, the model's label (as a task value,
    from ``label_value`` when the run was trained on words), and one probability per label from the
    ``p_<label name>`` columns. Refuses a file without those columns (not scored) naming what it has."""
    columns = read_columns(path)
    if text_column not in columns:
        raise ValueError(f"{path}: no text column {text_column!r}; columns: {columns} (set --text-column)")
    prob_columns = {lab.value: _column(columns, f"p_{lab.name}") for lab in task.labels}
    missing = [f"p_{task.label_name(v)}" for v, c in prob_columns.items() if c is None]
    if missing:
        raise ValueError(
            f"{path}: no probability column(s) {missing} for task {task.name}; "
            "select needs a file written by `labeltune label --mode score` with the same task"
        )
    label_col = _column(columns, "label_value") or _column(columns, "label")
    score_col, conf_col = _column(columns, "score"), _column(columns, "confidence")
    out = []
    for i, cells in enumerate(iter_rows(path)):
        probs = {v: _float(cells.get(c)) for v, c in prob_columns.items()}
        label = task.normalize_label(cells.get(label_col, "")) if label_col else None
        score = _float(cells.get(score_col)) if score_col else None
        out.append(
            ScoredRow(
                row=i,
                text=str(cells.get(text_column) or ""),
                label=label,
                score=None if score is None else int(round(score)),
                confidence=_float(cells.get(conf_col)) if conf_col else None,
                probs=None if any(p is None for p in probs.values()) else probs,
                cells=cells,
            )
        )
    return out


# ---------------------------------------------------------------- labelling config and tasks


def label_config(task: TaskSpec) -> str:
    """Label Studio's labelling config for `task`: the post, one single choice per label (shown by its
    name, its value as hint) and, for a scored task, the score as a 0-100 number."""
    lines = [
        "<View>",
        f"  <Header value={quoteattr(task.description or task.name)}/>",
        f'  <Text name="{TEXT_NAME}" value="${TEXT_NAME}"/>',
        f'  <Choices name="{LABEL_NAME}" toName="{TEXT_NAME}" choice="single" showInLine="true"'
        ' required="true">',
        *(f"    <Choice value={quoteattr(lab.name)} hint={quoteattr(lab.value)}/>" for lab in task.labels),
        "  </Choices>",
    ]
    if task.score is not None:
        only = ", ".join(task.label_name(v) for v in task.score.only_for)
        hint = f"score {task.score.min}-{task.score.max}" + (f" (only for {only}; others 0)" if only else "")
        lines += [
            f'  <Header value={quoteattr(hint)} size="6"/>',
            f'  <Number name="{SCORE_NAME}" toName="{TEXT_NAME}" min="{task.score.min}"'
            f' max="{task.score.max}" step="1"/>',
        ]
    lines.append("</View>")
    return "\n".join(lines) + "\n"


def config_controls(config: str) -> dict[str, set[str]]:
    """A labelling config's control names with their choices: what a project must have for our tasks
    (compared, not the XML text, since Label Studio may reformat it)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(config)
    except ET.ParseError as e:
        raise ValueError(f"the project's labelling config is not XML: {e}") from None
    out: dict[str, set[str]] = {}
    for el in root.iter():
        if el.tag in ("Choices", "Number", "Text"):
            out[el.get("name", "")] = {c.get("value", "") for c in el.iter("Choice")}
    return out


def result_items(task: TaskSpec, label: str, score: int | None) -> list[dict]:
    """A Label Studio `result` (what the editor saves) for a label value and score."""
    items = [
        {
            "from_name": LABEL_NAME,
            "to_name": TEXT_NAME,
            "type": "choices",
            "value": {"choices": [task.label_name(label)]},
        }
    ]
    if task.score is not None and score is not None:
        items.append(
            {"from_name": SCORE_NAME, "to_name": TEXT_NAME, "type": "number", "value": {"number": int(score)}}
        )
    return items


def make_task(row: ScoredRow, task: TaskSpec, identity: dict, strategy: str, uncertainty: float) -> dict:
    """One Label Studio task: the post and its identity in `data`, the model's answer as a prediction."""
    data = {
        TEXT_NAME: row.text,
        "row": row.row,
        "text_sha256": text_sha256(row.text),
        **identity,
        "model_label": row.label,
        "model_score": row.score,
        "model_confidence": row.confidence,
        "strategy": strategy,
        "uncertainty": None if uncertainty == float("inf") else round(uncertainty, 6),
    }
    out: dict = {"data": data}
    if row.label is not None:
        out["predictions"] = [
            {
                "model_version": MODEL_VERSION_PREFIX + str(identity.get("weights_sha256", ""))[:12],
                "score": row.confidence,
                "result": result_items(task, row.label, row.score),
            }
        ]
    return out


# ---------------------------------------------------------------- annotations read back


@dataclass(frozen=True)
class Annotation:
    row: int
    text: str
    data: dict  # the task's data as exported
    annotator: str
    created_at: str
    label: str  # task value
    score: int | None


def _annotator(completed_by) -> str:
    """Label Studio writes completed_by as a user id (API) or a user object (some exports)."""
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id"))
    return f"user:{completed_by}"


def read_annotations(tasks: list, task: TaskSpec, users: dict | None = None) -> tuple[list[Annotation], dict]:
    """Every finished annotation of a Label Studio JSON export (or of `labeltune review pull`), with its
    label as a task value; cancelled (skipped) ones are counted, not read. `users`: id -> email, to name
    annotators that the export gives by id. Refuses, naming the task: a task labeltune did not make, an
    annotation without a label, a label the task does not have."""
    if not isinstance(tasks, list):
        raise ValueError("annotations: expected a JSON list of tasks (Label Studio's JSON export)")
    out, counts = [], Counter()
    for t in tasks:
        data = t.get("data") if isinstance(t, dict) else None
        where = f"task {t.get('id', '?') if isinstance(t, dict) else '?'}"
        if not isinstance(data, dict) or "row" not in data or "text_sha256" not in data:
            raise ValueError(
                f"annotations: {where} was not made by `labeltune review select` (no row/fingerprint)"
            )
        if not t.get("annotations"):
            counts["pending"] += 1
        for a in t.get("annotations") or []:
            if a.get("was_cancelled"):
                counts["cancelled"] += 1
                continue
            label, score = None, None
            for item in a.get("result") or []:
                value = item.get("value") or {}
                if item.get("from_name") == LABEL_NAME and value.get("choices"):
                    raw = value["choices"][0]
                    label = task.normalize_label(raw)
                    if label is None:
                        names = [lab.name for lab in task.labels]
                        raise ValueError(
                            f"annotations: {where}, annotation {a.get('id', '?')}: label {raw!r} is not one "
                            f"of task {task.name}'s labels {names}"
                        )
                elif item.get("from_name") == SCORE_NAME and value.get("number") is not None:
                    score = int(round(float(value["number"])))
            if label is None:
                raise ValueError(f"annotations: {where}, annotation {a.get('id', '?')} has no label chosen")
            who = a.get("completed_by")
            annotator = (
                (users or {}).get(who, _annotator(who)) if not isinstance(who, dict) else _annotator(who)
            )
            if task.score is not None and not task.score_allowed(label):
                score = 0
            out.append(
                Annotation(
                    row=int(data["row"]),
                    text=str(data.get(TEXT_NAME, "")),
                    data=data,
                    annotator=annotator,
                    created_at=str(a.get("updated_at") or a.get("created_at") or ""),
                    label=label,
                    score=score,
                )
            )
            counts["annotations"] += 1
    return out, dict(counts)


@dataclass(frozen=True)
class Decision:
    row: int
    label: str | None  # None: a tie no rule breaks (held back, reported)
    score: int | None
    annotators: tuple[str, ...]
    labels: tuple[str, ...]  # each annotator's label, same order
    created_at: str
    conflict: bool


def resolve(annotations: list[Annotation], winner: str = "majority") -> list[Decision]:
    """One decision per annotated row: `winner` = majority (most annotators; a tie is held back) or an
    annotator's name (theirs where they annotated the row, else the majority). The latest annotation of
    an annotator on a row counts once. Score: the mean of the winning label's annotators' scores."""
    by_row: dict[int, dict[str, Annotation]] = {}
    for a in sorted(annotations, key=lambda a: a.created_at):
        by_row.setdefault(a.row, {})[a.annotator] = a
    out = []
    for row in sorted(by_row):
        latest = by_row[row]
        votes = Counter(a.label for a in latest.values())
        conflict = len(votes) > 1
        if winner != "majority" and winner in latest:
            label = latest[winner].label
        else:
            top = votes.most_common()
            label = top[0][0] if len(top) == 1 or top[0][1] > top[1][1] else None
        scores = [a.score for a in latest.values() if a.label == label and a.score is not None]
        out.append(
            Decision(
                row=row,
                label=label,
                score=round(sum(scores) / len(scores)) if scores else None,
                annotators=tuple(latest),
                labels=tuple(a.label for a in latest.values()),
                created_at=max(a.created_at for a in latest.values()),
                conflict=conflict,
            )
        )
    return out
