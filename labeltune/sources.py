"""The datasets `labeltune data prepare` reads: one ``Source`` per dataset, in ``SOURCES``.

A source is its reader (file or folder -> Examples and dropped rows), its licence, where to get it by
hand or how to download it, and the rules that turn its columns into labels and scores (written into
every data card). A reader returns a list of Examples when the data has no split of its own (prepare
splits it by --split with --seed) or a dict train/dev/test when it has one.

A new dataset: its reader function here and one ``Source(...)`` entry in ``SOURCES``; then its name in
the help of ``PrepareConfig.source`` (labeltune/config.py; a test checks it) and, if the reader needs an
option of its own, a ``PrepareConfig`` field.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from labeltune.data import SPLITS, Example, iter_rows, read_columns, score_from_flags
from labeltune.task import load_task

Rows = list[Example] | dict[str, list[Example]]  # no split of its own (split by ratio) / train, dev, test


@dataclass(frozen=True)
class Download:
    url: str  # where the licence allows fetching the file as published
    sha256: str  # pins the exact file
    file: str  # where it goes, relative to --path


@dataclass(frozen=True)
class Source:
    reader: Callable[[Path, object], tuple[Rows, list[dict]]]  # (--path, the PrepareConfig) -> rows, dropped
    licence: str  # written into the card; say what it forbids
    manual: str | None  # where to get the data by hand (None: the user's own files)
    download: Download | None  # None: no download (the licence forbids it, or nothing to fetch)
    rules: str  # how rows become labels, scores and splits; written into every card of this source


WRIME_MANUAL = "https://github.com/ids-cv/wrime (wrime-ver2.tsv; CC BY-NC-ND 4.0)"


# ---------------------------------------------------------------- readers


def _int(value) -> int:
    """A whole, finite, non-negative count (votes, flags); anything else raises ValueError."""
    number = float(value)
    if not math.isfinite(number) or number < 0 or not number.is_integer():
        raise ValueError(f"not a count: {value!r}")
    return int(number)


JT_VOTES = ("Not Toxic", "Hard to Say", "Toxic", "Very Toxic")


def read_japanese_toxic(path: Path) -> tuple[list[Example], list[dict]]:
    source = path / "data" / "subset.csv" if path.is_dir() else path
    kept, dropped = [], []
    missing = [c for c in ("text", *JT_VOTES, "annotation_num") if c not in read_columns(source)]
    if missing:
        raise ValueError(
            f"{source}: no column(s) {missing}; columns found: {read_columns(source)} "
            "(is this the japanese-toxic-dataset's subset.csv?)"
        )
    for i, row in enumerate(iter_rows(source)):
        text = (row.get("text") or "").strip()
        try:
            votes = [_int(row[k]) for k in JT_VOTES]
            n = _int(row["annotation_num"])
        except ValueError:
            dropped.append({"row": i, "reason": "votes_not_counts"})
            continue
        if not text:
            dropped.append({"row": i, "reason": "empty_text"})
            continue
        if n <= 0 or sum(votes) != n:
            dropped.append({"row": i, "reason": f"votes_do_not_sum_to_annotation_num:{sum(votes)}!={n}"})
            continue
        toxic = (votes[2] + votes[3]) / n >= 0.5
        score = round(100 * (votes[1] / 3 + 2 * votes[2] / 3 + votes[3]) / n)
        meta = {"source_id": row.get("id", ""), "annotation_num": n, "votes": votes}
        meta.update({k: _int(v) for k, v in row.items() if k.startswith("category_") and str(v).strip()})
        kept.append(Example(text=text, label="-1" if toxic else "0", score=score if toxic else 0, meta=meta))
    return kept, dropped


def read_wrime(
    path: Path, label_source: str, drop_neutral: bool
) -> tuple[dict[str, list[Example]], list[dict]]:
    column = "Avg. Readers_Sentiment" if label_source == "readers" else "Writer_Sentiment"
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    dropped = []
    for i, row in enumerate(iter_rows(path)):
        text = (row.get("Sentence") or "").strip()
        split = (row.get("Train/Dev/Test") or "").strip().lower()
        if "投稿本文" in row:
            raise ValueError(
                f"{path}: this is the WRIME ver1 layout (投稿本文, 主観_*, 客観*_*), which has no sentiment "
                "polarity; the wrime source needs wrime-ver2.tsv (Sentence, Train/Dev/Test, *_Sentiment): "
                + WRIME_MANUAL
            )
        if column not in row or "Train/Dev/Test" not in row:
            raise ValueError(
                f"{path}: not WRIME ver2 (needs 'Sentence', 'Train/Dev/Test', {column!r}); columns: "
                f"{list(row)}"
            )
        if not text:
            dropped.append({"row": i, "reason": "empty_text"})
            continue
        if split not in splits:
            dropped.append({"row": i, "reason": f"unknown_split:{split}"})
            continue
        try:
            value = float(row[column])
        except ValueError:
            dropped.append({"row": i, "reason": f"sentiment_not_a_number:{row[column]}"})
            continue
        label = "1" if value > 0 else "-1" if value < 0 else "0"
        if label == "0" and drop_neutral:
            dropped.append({"row": i, "reason": "neutral_dropped"})
            continue
        splits[split].append(
            Example(
                text=text, label=label, score=None, meta={"sentiment": value, "user": row.get("UserID", "")}
            )
        )
    return splits, dropped


def read_annotated_csv(
    path: Path, task, text_column: str, label_column: str, flag_columns: list[str], flag_max: int
):
    if task.score is not None and not flag_columns:
        raise ValueError(
            f"annotated-csv: the task {task.name!r} scores its "
            f"{', '.join(task.score.only_for or task.label_values)} rows from annotator flags: pass "
            "--flag-columns a1,a2,... (without them every such row would be dropped)"
        )
    missing = [c for c in (text_column, label_column, *flag_columns) if c not in read_columns(path)]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; columns found: {read_columns(path)}")
    kept, dropped = [], []
    for i, row in enumerate(iter_rows(path)):
        missing = [c for c in (text_column, label_column, *flag_columns) if c not in row]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing}; columns found: {list(row)}")
        text = (row[text_column] or "").strip()
        label = task.normalize_label(row[label_column])
        if not text:
            dropped.append({"row": i, "reason": "empty_text"})
            continue
        if label is None:
            dropped.append({"row": i, "reason": f"label_not_in_task:{row[label_column]}"})
            continue
        try:
            flags = [_int(row[c]) for c in flag_columns]
            score = score_from_flags(flags, flag_max) if task.score_allowed(label) else 0
        except ValueError as e:
            dropped.append({"row": i, "reason": f"bad_flags:{e}"})
            continue
        kept.append(
            Example(
                text=text,
                label=label,
                score=score if task.score is not None else None,
                meta={c: row[c] for c in flag_columns},
            )
        )
    return kept, dropped


def read_livedoor(path: Path, per_label: int | None, seed: int) -> tuple[list[Example], list[dict]]:
    """Articles of the livedoor news corpus (text/<category>/*.txt): text = title + newline + body, label =
    the category folder; `per_label` articles per category sampled with `seed` (None = all)."""
    root = path / "text" if (path / "text").is_dir() else path
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    if not folders:
        raise ValueError(f"{root}: no category folders (expected text/<category>/*.txt)")
    kept, dropped = [], []
    for folder in folders:
        files = sorted(f for f in folder.glob("*.txt") if f.name != "LICENSE.txt")
        if per_label is not None:
            files = sorted(random.Random(f"{seed}:{folder.name}").sample(files, min(per_label, len(files))))
        for f in files:
            lines = f.read_text(encoding="utf-8").splitlines()
            title, body = (lines[2].strip() if len(lines) > 2 else ""), "\n".join(lines[3:]).strip()
            if not title or not body:
                dropped.append({"row": str(f.relative_to(root)), "reason": "no_title_or_body"})
                continue
            meta = {"url": lines[0].strip(), "date": lines[1].strip(), "title": title, "file": f.name}
            kept.append(Example(text=f"{title}\n{body}", label=folder.name, score=None, meta=meta))
    return kept, dropped


def read_hf(dataset: str, task, text_column: str, label_column: str, score_column: str | None):
    """Any Hugging Face dataset (id, or a local folder of csv/json files) with column mapping: its splits, or
    all its rows in one list when it publishes no test split (to be split by ratio)."""
    from datasets import load_dataset

    loaded = load_dataset(dataset)
    names = {"train": "train", "validation": "dev", "dev": "dev", "test": "test"}
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    dropped = []
    for hf_name, rows in loaded.items():
        for i, row in enumerate(rows):
            if text_column not in row or label_column not in row:
                raise ValueError(
                    f"{dataset}[{hf_name}]: no column {text_column!r}/{label_column!r}; columns: {list(row)}"
                )
            text, label = str(row[text_column] or "").strip(), task.normalize_label(row[label_column])
            if not text or label is None:
                dropped.append(
                    {
                        "row": f"{hf_name}:{i}",
                        "reason": "empty_text" if not text else f"label_not_in_task:{row[label_column]}",
                    }
                )
                continue
            score = row.get(score_column) if score_column else None
            score = (
                int(score)
                if score is not None and task.score is not None and task.score_allowed(label)
                else (0 if task.score else None)
            )
            splits.setdefault(names.get(hf_name, hf_name), []).append(Example(text, label, score, {}))
    if not splits["test"]:  # no test split published: split what there is
        return [ex for rows in splits.values() for ex in rows], dropped
    return splits, dropped


# ---------------------------------------------------------------- the registry

SOURCES: dict[str, Source] = {
    "japanese-toxic": Source(
        reader=lambda path, cfg: read_japanese_toxic(path),
        licence="Apache-2.0 (inspection-ai/japanese-toxic-dataset)",
        manual=None,
        download=Download(
            url="https://raw.githubusercontent.com/inspection-ai/japanese-toxic-dataset/main/data/subset.csv",
            sha256="9320c51c8528325d1bc9b89e847475dcc5adc2665a0fc56952a2ab9bd4736148",
            file="data/subset.csv",
        ),
        rules=(
            "score = round(100 * (0*NotToxic + 1/3*HardToSay + 2/3*Toxic + 1*VeryToxic) / annotation_num); "
            'label -1 when (Toxic + VeryToxic) / annotation_num >= 0.5, else 0 ("not toxic": the dataset '
            'has no sentiment, so 0 here means "not negative-toxic"); non-negative rows keep score 0 (the '
            "task's rule). Category columns are kept as metadata (summed sub-category selections, not "
            "per-annotator flags). No split in the file: stratified 80/10/10 with --seed."
        ),
    ),
    "wrime": Source(
        reader=lambda path, cfg: read_wrime(path, cfg.label_source, cfg.drop_neutral),
        licence="CC BY-NC-ND 4.0 (ids-cv/wrime): non-commercial, no derivatives — keep prepared files "
        "private",
        manual=WRIME_MANUAL,
        download=None,
        rules=(
            "WRIME ver2 TSV; polarity of `Avg. Readers_Sentiment` (or `Writer_Sentiment` with "
            "--label-source writer): > 0 -> 1, < 0 -> -1, 0 -> 0 (dropped with --drop-neutral); the file's "
            "own Train/Dev/Test column is the split; no score (WRIME has no toxicity)."
        ),
    ),
    "annotated-csv": Source(
        reader=lambda path, cfg: read_annotated_csv(
            path, load_task(cfg.task), cfg.text_column, cfg.label_column, cfg.flag_columns or [], cfg.flag_max
        ),
        licence="the licence of your own data",
        manual=None,
        download=None,
        rules=(
            "any CSV with a text column, a polarity column and N annotator flag columns (levels "
            "0..--flag-max); score = labeltune.data.score_from_flags (round(100 * mean / max)) for -1 rows."
        ),
    ),
    "livedoor": Source(
        reader=lambda path, cfg: read_livedoor(path, cfg.per_label, cfg.seed),
        licence="CC BY-ND 2.1 JP (livedoor news corpus, see each category's LICENSE.txt): no derivatives",
        manual="https://www.rondhuit.com/download.html (ldcc-20140209.tar.gz; CC BY-ND 2.1 JP)",
        download=None,
        rules=(
            "the livedoor news corpus folder (text/<category>/<category>-<id>.txt: URL, date, title, "
            'body); text = title + "\\n" + body for the `livedoor_category` task (templates '
            "`alpaca_ja_livedoor` and `livedoor_plain`); long articles are cut by tokens at "
            "training/labelling time (the model's tokenizer, `--max-length`), never by characters here. "
            "`--per-label N` keeps a subset."
        ),
    ),
}

HF_PREFIX = "hf:"
HF = Source(  # any Hugging Face dataset, named hf:<dataset id or local folder>
    reader=lambda path, cfg: read_hf(
        cfg.source.removeprefix(HF_PREFIX),
        load_task(cfg.task),
        cfg.text_column,
        cfg.label_column,
        cfg.score_column,
    ),
    licence="see the dataset's card on the Hub",
    manual=None,
    download=None,
    rules=(
        "a Hugging Face dataset (id, or a local folder of csv/json files): --text-column is the text, "
        "--label-column the label (a value or alias of --task), --score-column the score where the task "
        "scores the label (else 0; none for a task without a score rule); its train/validation/test splits "
        "are kept, and with no test split all its rows are split stratified by --split with --seed."
    ),
)


def source_names() -> list[str]:
    """Every name --source takes, for messages."""
    return [*SOURCES, f"{HF_PREFIX}<dataset id or local folder>"]


def find_source(name: str) -> Source:
    """The Source called `name` (hf:<...> is the Hugging Face one); an unknown name raises, listing them."""
    if name.startswith(HF_PREFIX):
        return HF
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; available: {', '.join(source_names())}")
    return SOURCES[name]
