"""Reading rows, turning them into Examples, splitting, and the train/test leakage check.

Readers stream CSV/TSV (UTF-8, UTF-8 with BOM, UTF-16 with BOM, CP932/Shift_JIS; detected or
given) and JSONL. ``load_examples`` maps columns to ``Example`` and reports every dropped row with a
reason. ``split_examples`` is a deterministic stratified split that keeps normalised duplicates in
one split; ``find_leaks`` finds exact and normalised duplicates across splits.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from labeltune.task import TaskSpec

SPLITS = ("train", "dev", "test")
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


@dataclass
class Example:
    text: str
    label: str
    score: int | None = None
    meta: dict = field(default_factory=dict)  # the row's other columns, kept through to outputs


# ---------------------------------------------------------------- reading


def detect_encoding(path: str | Path) -> str:
    """BOM if present, else UTF-8 if the whole file decodes as UTF-8, else CP932 if it decodes."""
    with open(path, "rb") as f:
        head = f.read(4)
        for bom, name in _BOMS:
            if head.startswith(bom):
                return name
        f.seek(0)
        for encoding in ("utf-8", "cp932"):
            decoder = codecs.getincrementaldecoder(encoding)()
            f.seek(0)
            try:
                while chunk := f.read(1 << 20):
                    decoder.decode(chunk)
                decoder.decode(b"", final=True)
                return encoding
            except UnicodeDecodeError:
                continue
    raise ValueError(f"{path}: not UTF-8, UTF-16 or CP932; pass --encoding")


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def read_columns(path: str | Path, encoding: str | None = None) -> list[str]:
    """Column names of a CSV/TSV (header) or JSONL (keys of the first record)."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        for row in iter_rows(path, encoding):
            return list(row)
        return []
    with open(path, encoding=encoding or detect_encoding(path), newline="") as f:
        return next(csv.reader(f, delimiter=_delimiter(path)), [])


def iter_rows(path: str | Path, encoding: str | None = None) -> Iterator[dict]:
    """Stream rows as dicts of strings (CSV/TSV) or JSON values (JSONL), in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    encoding = encoding or detect_encoding(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        with open(path, encoding=encoding) as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{lineno}: not a JSON object: {e}") from None
                    if not isinstance(record, dict):
                        raise ValueError(f"{path}:{lineno}: not a JSON object")
                    yield record
        return
    with open(path, encoding=encoding, newline="") as f:
        reader = csv.DictReader(f, delimiter=_delimiter(path))
        for row in reader:
            row.pop(None, None)  # extra unnamed cells of a ragged row
            yield {k: ("" if v is None else v) for k, v in row.items()}


# ---------------------------------------------------------------- examples


def score_from_flags(flags: list[int], max_level: int = 3) -> int:
    """Toxicity score from annotators' severity flags (each 0..max_level): round(100 * mean / max_level).

    Used for the bundled sample (five annotators, levels 0 none / 1 rude / 2 abusive / 3 severe), so
    the possible scores are multiples of 100/15. Python's round (half to even) is used.
    """
    if not flags:
        raise ValueError("no annotator flags")
    if any(not 0 <= f <= max_level for f in flags):
        raise ValueError(f"flags must be in 0..{max_level}: {flags}")
    return round(100 * sum(flags) / (max_level * len(flags)))


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def load_examples(
    path: str | Path,
    task: TaskSpec,
    text_column: str = "text",
    label_column: str = "label",
    score_column: str | None = "score",
    encoding: str | None = None,
) -> tuple[list[Example], list[dict]]:
    """Examples of a labelled file, and the dropped rows as ``{"row": i, "reason": ...}``.

    Missing text or label column is an error naming the columns found. A missing score column is
    allowed (score None); a score present on a row must be an integer in the task's range, and is
    set to 0 on labels the task gives no score (outside its ``only_for``).
    """
    columns = read_columns(path, encoding)
    for needed in (text_column, label_column):
        if needed not in columns:
            raise ValueError(f"{path}: no column {needed!r}; columns found: {columns}")
    has_score = task.score is not None and score_column is not None and score_column in columns
    examples, dropped = [], []
    for i, row in enumerate(iter_rows(path, encoding)):
        text, raw_label = row.get(text_column), row.get(label_column)
        if _missing(text):
            dropped.append({"row": i, "reason": "empty_text"})
            continue
        label = task.normalize_label(raw_label)
        if label is None:
            dropped.append({"row": i, "reason": f"label_not_in_task:{raw_label}"})
            continue
        score = None
        if has_score and not _missing(row.get(score_column)):
            try:
                number = float(row[score_column])
                if not number.is_integer():
                    raise ValueError
                score = int(number)
            except (ValueError, OverflowError):
                dropped.append({"row": i, "reason": f"score_not_an_integer:{row[score_column]}"})
                continue
            if not task.score.min <= score <= task.score.max:
                dropped.append({"row": i, "reason": f"score_out_of_range:{score}"})
                continue
            if not task.score_allowed(label):
                score = 0  # the task spec: labels outside `only_for` have score 0
        meta = {k: v for k, v in row.items() if k not in (text_column, label_column, score_column)}
        examples.append(Example(text=str(text), label=label, score=score, meta=meta))
    return examples, dropped


def write_jsonl(examples: list[Example], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            record = {"text": ex.text, "label": ex.label, "score": ex.score, **ex.meta}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def fingerprint(splits: dict[str, list[Example]]) -> str:
    """sha256 over (split, text, label, score) of every example, in order."""
    h = hashlib.sha256()
    for name in sorted(splits):
        for ex in splits[name]:
            h.update(json.dumps([name, ex.text, ex.label, ex.score], ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
    return h.hexdigest()


# ---------------------------------------------------------------- splits and leakage


def normalize_text(text: str) -> str:
    """NFKC, casefolded, all whitespace removed: the key for 'normalised duplicate'."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).casefold()


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\x00{key}".encode("utf-8")).hexdigest()


def split_examples(
    examples: list[Example], ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[Example]]:
    """Deterministic stratified train/dev/test split.

    Examples are grouped by normalised text (duplicates never straddle splits, even with conflicting
    labels); each group is stratified under the label of its first example; within a label, groups
    are ordered by a seeded hash of their key (independent of file order) and cut by the ratios.
    Each split keeps the input order of its examples.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise ValueError(f"split ratios must be three non-negative numbers summing to 1, got {ratios}")
    first_label: dict[str, str] = {}
    groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, ex in enumerate(examples):
        key = normalize_text(ex.text)
        groups[first_label.setdefault(key, ex.label)][key].append(i)
    assignment: dict[int, str] = {}
    for label_groups in groups.values():
        keys = sorted(label_groups, key=lambda k: _rank(seed, k))
        total = sum(len(v) for v in label_groups.values())
        bounds = (ratios[0] * total, (ratios[0] + ratios[1]) * total)
        seen = 0
        for key in keys:
            name = "train" if seen < bounds[0] else "dev" if seen < bounds[1] else "test"
            for i in label_groups[key]:
                assignment[i] = name
            seen += len(label_groups[key])
    out: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for i, ex in enumerate(examples):
        out[assignment[i]].append(ex)
    return out


@dataclass(frozen=True)
class Leak:
    kind: str  # "exact" or "normalised"
    split: str  # the evaluation split holding the row ("dev" or "test")
    index: int  # its position in that split
    train_index: int  # the position of its duplicate in train
    text: str


def find_leaks(splits: dict[str, list[Example]]) -> list[Leak]:
    """Rows of dev/test whose text also appears in train, exactly or after normalisation."""
    exact = {ex.text: i for i, ex in enumerate(splits.get("train", []))}
    normal = {normalize_text(ex.text): i for i, ex in enumerate(splits.get("train", []))}
    leaks = []
    for name in ("dev", "test"):
        for i, ex in enumerate(splits.get(name, [])):
            if ex.text in exact:
                leaks.append(Leak("exact", name, i, exact[ex.text], ex.text))
            elif normalize_text(ex.text) in normal:
                leaks.append(Leak("normalised", name, i, normal[normalize_text(ex.text)], ex.text))
    return leaks


def drop_leaked_from_train(splits: dict[str, list[Example]], leaks: list[Leak]) -> dict[str, list[Example]]:
    """Remove from train every row that duplicates a dev/test row (evaluation rows are never dropped)."""
    keys = {normalize_text(leak.text) for leak in leaks}
    return {**splits, "train": [ex for ex in splits["train"] if normalize_text(ex.text) not in keys]}


def label_counts(examples: list[Example]) -> dict[str, int]:
    return dict(Counter(ex.label for ex in examples))
