"""Pure parser: generated text -> Parsed(label, score, ok, reason). It never guesses.

The accepted language is exactly what ``TaskSpec.render_answer`` writes, modulo surrounding
whitespace. Anything else is a failure with one reason, counted by ``evaluate`` as malformed:

- ``empty``             nothing but whitespace was generated
- ``missing_label``     the first line is not ``label : <value>``
- ``unknown_label``     the label is not one of the task's values
- ``missing_score``     the task has a score and the second line is not ``score : <value>``
- ``score_not_integer`` the score is not a plain base-10 integer (``07``, ``8.5``, ``八十``)
- ``score_out_of_range`` the score is outside the task's range
- ``score_not_allowed`` a label outside the task's ``only_for`` carries a non-zero score
- ``extra_text``        anything after the answer
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from labeltune.task import LABEL_PREFIX, SCORE_PREFIX, TaskSpec

REASONS = (
    "empty",
    "missing_label",
    "unknown_label",
    "missing_score",
    "score_not_integer",
    "score_out_of_range",
    "score_not_allowed",
    "extra_text",
)
_INTEGER = re.compile(r"0|-?[1-9][0-9]*")


@dataclass(frozen=True)
class Parsed:
    label: str | None
    score: int | None
    ok: bool
    reason: str  # "" when ok, else one of REASONS


def _fail(reason: str) -> Parsed:
    return Parsed(label=None, score=None, ok=False, reason=reason)


def parse(text: str, task: TaskSpec) -> Parsed:
    body = text.strip()
    if not body:
        return _fail("empty")
    lines = body.split("\n")
    first = lines[0]
    if not first.startswith(LABEL_PREFIX):
        return _fail("missing_label")
    label = first[len(LABEL_PREFIX) :]
    if label not in task.label_values:
        return _fail("unknown_label")
    if task.score is None:
        return _fail("extra_text") if len(lines) > 1 else Parsed(label, None, True, "")
    if len(lines) < 2 or not lines[1].startswith(SCORE_PREFIX):
        return _fail("missing_score")
    raw_score = lines[1][len(SCORE_PREFIX) :]
    if not _INTEGER.fullmatch(raw_score):
        return _fail("score_not_integer")
    score = int(raw_score)
    if not task.score.min <= score <= task.score.max:
        return _fail("score_out_of_range")
    if score != 0 and not task.score_allowed(label):
        return _fail("score_not_allowed")
    if len(lines) > 2:
        return _fail("extra_text")
    return Parsed(label, score, True, "")
