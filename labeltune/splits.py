"""Splitting and the split policy shared by train, sweep and compare.

The mechanics: ``split_examples`` is a deterministic stratified split that keeps normalised duplicates
in one split; ``find_leaks`` finds exact and normalised duplicates across splits; ``fingerprint``
identifies a split's rows. The policy: labelled data -> train/dev/test, the leakage policy applied,
train cut to --limit, checked to give meaningful results, and written as a split folder
(train/dev/test.jsonl + summary.json) that every run of a sweep or comparison reads.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from labeltune.config import TrainConfig
from labeltune.data import (
    SPLITS,
    Example,
    ReadReport,
    dropped_summary,
    label_counts,
    label_words,
    load_examples,
    write_jsonl,
)
from labeltune.run import DATA_SUMMARY, split_file, summary_label_words
from labeltune.task import TaskSpec

# ---------------------------------------------------------------- splitting and leakage


def normalize_text(text: str) -> str:
    """NFKC, casefolded, all whitespace removed: the key for 'normalised duplicate'."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).casefold()


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()


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


def fingerprint(splits: dict[str, list[Example]]) -> str:
    """sha256 over (split, text, label, score) of every example, in order."""
    h = hashlib.sha256()
    for name in sorted(splits):
        for ex in splits[name]:
            h.update(json.dumps([name, ex.text, ex.label, ex.score], ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
    return h.hexdigest()


# ---------------------------------------------------------------- the policy

SPLIT_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl")


def load_splits(
    cfg: TrainConfig,
    task: TaskSpec,
    warnings: list[str] | None = None,
) -> tuple[dict[str, list[Example]], list[dict]]:
    """train/dev/test from a folder of split files, or a stratified split of one file; plus dropped rows.
    What reading changed or doubted (short rows, replaced characters) is appended to `warnings`."""
    source = Path(cfg.data)
    columns = dict(text_column=cfg.text_column, label_column=cfg.label_column, score_column=cfg.score_column)
    warnings = warnings if warnings is not None else []
    if source.is_dir():
        splits, dropped = {}, []
        for name in SPLITS:
            files = [source / f"{name}{s}" for s in SPLIT_FILE_SUFFIXES if (source / f"{name}{s}").is_file()]
            if not files:
                raise FileNotFoundError(f"{source}: no {name}.csv/.tsv/.jsonl")
            report = ReadReport(str(files[0]))
            splits[name], rows = load_examples(
                files[0], task, encoding=cfg.encoding, report=report, **columns
            )
            dropped += [{"split": name, **r} for r in rows]
            warnings += report.warnings()
        # a split folder of labeltune's (sweep, compare) keeps the data's words
        words = summary_label_words(source)
        for ex in (ex for examples in splits.values() for ex in examples if ex.label in words):
            ex.written = words[ex.label]
        return splits, dropped
    report = ReadReport(str(source))
    examples, dropped = load_examples(source, task, encoding=cfg.encoding, report=report, **columns)
    warnings += report.warnings()
    if not examples:
        raise ValueError(f"{source}: no usable rows ({dropped_summary(dropped)})")
    return split_examples(examples, cfg.split, cfg.seed), dropped


def check_leakage(cfg: TrainConfig, splits: dict) -> tuple[dict, list]:
    leaks = find_leaks(splits)
    if leaks and cfg.leakage == "error":
        shown = "\n".join(
            f"  {lk.kind:10s} {lk.split}[{lk.index}] = train[{lk.train_index}]: {lk.text[:40]!r}"
            for lk in leaks[:10]
        )
        raise ValueError(
            f"{len(leaks)} dev/test rows also appear in train (scores would be inflated):\n{shown}\n"
            "Deduplicate the data, or pass --leakage drop (remove them from train) or --leakage allow."
        )
    if leaks and cfg.leakage == "drop":
        splits = drop_leaked_from_train(splits, leaks)
    return splits, leaks


def write_splits(cfg: TrainConfig, splits: dict, dropped: list[dict], leaks: list, data_dir: Path) -> dict:
    """train/dev/test.jsonl + summary.json (source, fingerprint, label counts, dropped rows, leaks) in
    `data_dir`; summary.json is written last, so its presence means the split is complete."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, examples in splits.items():
        write_jsonl(examples, data_dir / split_file(name))
    summary = {
        "source": str(cfg.data),
        "fingerprint": fingerprint(splits),
        "counts": {name: label_counts(ex) for name, ex in splits.items()},
        **({"label_words": words} if (words := label_words(splits["train"])) else {}),
        "dropped": dropped,
        "leaks": [vars(lk) for lk in leaks],
        "leakage_policy": cfg.leakage,
    }
    (data_dir / DATA_SUMMARY).write_text(json.dumps(summary, ensure_ascii=False, indent=1), encoding="utf-8")
    return summary


def make_splits(
    cfg: TrainConfig, task: TaskSpec, warnings: list[str] | None = None
) -> tuple[dict, list[dict], list]:
    """(splits, dropped rows, leaks) of `cfg.data`: loaded, leakage policy applied, train cut to --limit,
    checked to give meaningful results (check_splits)."""
    splits, dropped = load_splits(cfg, task, warnings)
    splits, leaks = check_leakage(cfg, splits)
    if cfg.limit:
        splits["train"] = splits["train"][: cfg.limit]
    check_splits(splits, task, cfg.allow_incomplete)
    return splits, dropped, leaks


def check_splits(splits: dict, task: TaskSpec, allow_incomplete: bool) -> None:
    """Refuse data whose results would mean nothing: no training rows; a single label in training (nothing
    to tell apart); a label in dev/test that training never shows; an empty dev or test split (evaluation
    and model choice need them). With allow_incomplete all but the first are warnings. A task label that
    no split has (e.g. japanese-toxic has no positive posts) is a warning: the model will not predict it."""
    if not splits["train"]:
        raise ValueError("no training examples (every row was dropped, or the train split is empty)")
    counts = label_counts(splits["train"])
    evaluated = {ex.label for name in ("dev", "test") for ex in splits[name]}
    problems = []
    if len(counts) < 2:
        problems.append(
            f"the training split has only one label ({', '.join(task.label_name(v) for v in counts)}): "
            "nothing to tell apart"
        )
    problems += [
        f"label {v} ({task.label_name(v)}) is in dev/test but has no training rows"
        for v in task.label_values
        if v in evaluated and v not in counts
    ]
    problems += [f"the {name} split is empty" for name in ("dev", "test") if not splits[name]]
    if problems and not allow_incomplete:
        raise ValueError(
            "; ".join(problems) + " (more data, other split ratios, or --allow-incomplete to train anyway)"
        )
    for problem in problems:
        print(f"labeltune: warning: {problem} (--allow-incomplete)", file=sys.stderr)
    for v in task.label_values:
        if v not in counts and v not in evaluated:
            print(
                f"labeltune: warning: label {v} ({task.label_name(v)}) appears in no split: the model will "
                "not learn to predict it",
                file=sys.stderr,
            )


def split_once(cfg: TrainConfig, task: TaskSpec, data_dir: Path) -> dict:
    """Split `cfg.data` as `labeltune train` does (leakage policy, --limit) into `data_dir` unless a
    complete split is already there; returns its summary. sweep and compare hand this folder to every
    run (see on_split_folder), so all of them train and are measured on the same rows."""
    if (data_dir / DATA_SUMMARY).is_file():
        return json.loads((data_dir / DATA_SUMMARY).read_text(encoding="utf-8"))
    return write_splits(cfg, *make_splits(cfg, task), data_dir)


def on_split_folder(cfg: TrainConfig, data_dir: Path) -> TrainConfig:
    """`cfg` reading a folder written by split_once (jsonl files with text/label/score fields)."""
    return replace(
        cfg, data=str(data_dir), text_column="text", label_column="label", score_column="score", encoding=None
    )
