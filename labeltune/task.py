"""TaskSpec: the one place that knows what a well-formed answer looks like.

A task is data (``labeltune/tasks/<name>.yaml``): its label values, an optional integer score range with the
labels allowed a non-zero score, and the template used by default. The answer is always written as
``key : value`` lines, ``label`` first, then ``score`` when the task has one::

    label : -1
    score : 85

``render_answer`` writes it (training targets, constrained decoding) and ``labeltune.parse`` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from labeltune.config import read_yaml

TASKS_DIR = (
    Path(__file__).resolve().parent / "tasks"
)  # package data (pyproject: tool.setuptools.package-data)


# The answer format, written by TaskSpec.render_answer and read by labeltune.parse (nowhere else):
LABEL_PREFIX, SCORE_PREFIX = "label : ", "score : "  # "label : -1\nscore : 85"


@dataclass(frozen=True)
class Label:
    value: str  # exactly what the model writes after "label : "
    name: str  # English name used in reports
    aliases: tuple[str, ...] = ()  # other spellings accepted in gold data (never in model output)


@dataclass(frozen=True)
class ScoreSpec:
    min: int
    max: int
    only_for: tuple[str, ...] = ()  # labels that may carry a non-zero score; () means all labels


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    labels: tuple[Label, ...]
    score: ScoreSpec | None = None
    default_template: str = "plain"
    _alias_index: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def label_values(self) -> list[str]:
        return [lab.value for lab in self.labels]

    def label_name(self, value: str) -> str:
        return next(lab.name for lab in self.labels if lab.value == value)

    @property
    def scored_labels(self) -> tuple[str, ...]:
        """The labels that carry a real score (the rest answer a fixed 0): what score metrics compare."""
        return tuple(v for v in self.label_values if self.score_allowed(v))

    @property
    def score_ends(self) -> tuple[int, int]:
        return (self.score.min, self.score.max) if self.score else (0, 100)

    def score_allowed(self, label: str) -> bool:
        """Whether `label` may carry a non-zero score."""
        return self.score is not None and (not self.score.only_for or label in self.score.only_for)

    def normalize_label(self, raw: object) -> str | None:
        """Map a gold label as found in data (value or alias, any case) to its value; None if unknown."""
        key = str(raw).strip()
        if key.endswith(".0") and key[:-2].lstrip("+-").isdigit():  # 1.0 / -1.0 from spreadsheets
            key = key[:-2]
        return self._alias_index.get(key.lower())

    def render_answer(self, label: str, score: int | None = None) -> str:
        """The exact completion the model is trained to write (without EOS)."""
        if label not in self.label_values:
            raise ValueError(f"label {label!r} is not one of {self.label_values}")
        lines = [f"{LABEL_PREFIX}{label}"]
        if self.score is not None:
            score = 0 if score is None or not self.score_allowed(label) else int(score)
            if not self.score.min <= score <= self.score.max:
                raise ValueError(f"score {score} outside {self.score.min}..{self.score.max}")
            lines.append(f"{SCORE_PREFIX}{score}")
        return "\n".join(lines)

    def answer_pairs(self) -> list[tuple[str, int | None]]:
        """(label, score) of every well-formed answer (score None for a task without one)."""
        out: list[tuple[str, int | None]] = []
        for value in self.label_values:
            if self.score is None:
                out.append((value, None))
            elif self.score_allowed(value):
                out += [(value, s) for s in range(self.score.min, self.score.max + 1)]
            else:
                out.append((value, 0))
        return out

    def all_answers(self) -> list[str]:
        """Every well-formed answer (the task's finite answer language)."""
        return [self.render_answer(label, score) for label, score in self.answer_pairs()]


def available_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def task_path(name_or_path: str) -> Path:
    """The YAML file of a task given by name (``labeltune/tasks/<name>.yaml``) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = TASKS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown task {name_or_path!r}; available: {', '.join(available_tasks())}")
    return path


def load_task(name_or_path: str) -> TaskSpec:
    """Load a task by name (``labeltune/tasks/<name>.yaml``) or from a YAML path."""
    path = task_path(name_or_path)
    raw = read_yaml(path)  # no aliases; a YAML problem is one line naming the file and line
    if not isinstance(raw, dict) or "labels" not in raw:
        raise ValueError(f"{path}: not a task spec (a mapping with name, labels, ...; see {TASKS_DIR})")
    unknown = set(raw) - {"name", "description", "labels", "score", "default_template"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    labels = tuple(
        Label(value=str(d["value"]), name=str(d["name"]), aliases=tuple(str(a) for a in d.get("aliases", ())))
        for d in raw["labels"]
    )
    if len({lab.value for lab in labels}) != len(labels):
        raise ValueError(f"{path}: duplicate label values")
    score = None
    if raw.get("score"):
        s = raw["score"]
        score = ScoreSpec(
            min=int(s["min"]), max=int(s["max"]), only_for=tuple(str(v) for v in s.get("only_for", ()))
        )
        if score.min != 0 and score.only_for:
            raise ValueError(f"{path}: labels outside `only_for` answer score 0, so min must be 0")
    index: dict[str, str] = {}
    for lab in labels:
        for key in (lab.value, lab.name, *lab.aliases):
            if index.setdefault(key.lower(), lab.value) != lab.value:
                raise ValueError(f"{path}: {key!r} names two labels")
    return TaskSpec(
        name=str(raw["name"]),
        description=str(raw.get("description", "")),
        labels=labels,
        score=score,
        default_template=str(raw.get("default_template", "plain")),
        _alias_index=index,
    )
