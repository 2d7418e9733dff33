"""labeltune data prepare: a real dataset -> train/dev/test files + a data card.

    labeltune data prepare --source japanese-toxic --path ../shared/data/japanese-toxic-dataset --output data/jtox
    labeltune data prepare --source wrime --path wrime-ver2.tsv --output data/wrime [--label-source writer]
    labeltune data prepare --source annotated-csv --path crawl.csv --flag-columns a1,a2,a3 --output data/crawl

Every input row is accounted for: kept (in one split) or dropped with a reason, in card.json and
README.md. Duplicates: exact and normalised duplicates and near-duplicates (character 5-gram Jaccard
>= 0.9) of dev/test rows are removed from train, never from dev/test; duplicates within a split are
reported. `--balance` down- or up-samples train to the smallest / largest class and `--train-per-label N`
keeps at most N train rows per class (dev/test untouched by both); `--dev-per-label N` caps dev the same way.
Test is never subsampled here.

Sources and their rules (also written into each card):
- japanese-toxic: score = round(100 * (0*NotToxic + 1/3*HardToSay + 2/3*Toxic + 1*VeryToxic) / annotation_num);
  label -1 when (Toxic + VeryToxic) / annotation_num >= 0.5, else 0 ("not toxic": the dataset has no
  sentiment, so 0 here means "not negative-toxic"); non-negative rows keep score 0 (the task's rule).
  Category columns are kept as metadata (summed sub-category selections, not per-annotator flags).
  No split in the file: stratified 80/10/10 with --seed.
- wrime: WRIME ver2 TSV; polarity of `Avg. Readers_Sentiment` (or `Writer_Sentiment` with
  --label-source writer): > 0 -> 1, < 0 -> -1, 0 -> 0 (dropped with --drop-neutral); the file's own
  Train/Dev/Test column is the split; no score (WRIME has no toxicity).
- livedoor: the livedoor news corpus folder (text/<category>/<category>-<id>.txt: URL, date, title,
  body); text = title + "\n" + body for the `livedoor_category` task (templates `alpaca_ja_livedoor`
  and `livedoor_plain`); long articles are cut by tokens at training/labelling time (the model's
  tokenizer, `--max-length`), never by characters here. `--per-label N` keeps a subset.
- annotated-csv: any CSV with a text column, a polarity column and N annotator flag columns
  (levels 0..--flag-max); score = labeltune.data.score_from_flags (round(100 * mean / max)) for -1 rows.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from labeltune.data import (
    SPLITS,
    Example,
    check_output_folder,
    dropped_summary,
    iter_rows,
    label_counts,
    read_columns,
    read_livedoor,
    score_from_flags,
    write_jsonl,
)
from labeltune.splits import normalize_text, split_examples
from labeltune.task import load_task

SOURCES = ("japanese-toxic", "wrime", "annotated-csv", "livedoor", "hf:<dataset id or local folder>")
# Where the licence allows fetching the file as published; the checksum pins the exact file.
DOWNLOADS = {
    "japanese-toxic": (
        "https://raw.githubusercontent.com/inspection-ai/japanese-toxic-dataset/main/data/subset.csv",
        "9320c51c8528325d1bc9b89e847475dcc5adc2665a0fc56952a2ab9bd4736148",
        "data/subset.csv",
    ),
}
MANUAL = {
    "wrime": "https://github.com/ids-cv/wrime (wrime-ver2.tsv; CC BY-NC-ND 4.0)",
    "livedoor": "https://www.rondhuit.com/download.html (ldcc-20140209.tar.gz; CC BY-ND 2.1 JP)",
}
LICENCES = {
    "japanese-toxic": "Apache-2.0 (inspection-ai/japanese-toxic-dataset)",
    "wrime": "CC BY-NC-ND 4.0 (ids-cv/wrime): non-commercial, no derivatives — keep prepared files private",
    "annotated-csv": "the licence of your own data",
    "livedoor": "CC BY-ND 2.1 JP (livedoor news corpus, see each category's LICENSE.txt): no derivatives",
}


# ---------------------------------------------------------------- sources


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
        raise ValueError(f"{source}: no column(s) {missing}; columns found: {read_columns(source)} "
                         "(is this the japanese-toxic-dataset's subset.csv?)")
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


def read_wrime(path: Path, label_source: str, drop_neutral: bool) -> tuple[dict[str, list[Example]], list[dict]]:
    column = "Avg. Readers_Sentiment" if label_source == "readers" else "Writer_Sentiment"
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    dropped = []
    for i, row in enumerate(iter_rows(path)):
        text = (row.get("Sentence") or "").strip()
        split = (row.get("Train/Dev/Test") or "").strip().lower()
        if "投稿本文" in row:
            raise ValueError(
                f"{path}: this is the WRIME ver1 layout (投稿本文, 主観_*, 客観*_*), which has no sentiment polarity; "
                "the wrime source needs wrime-ver2.tsv (Sentence, Train/Dev/Test, *_Sentiment): " + MANUAL["wrime"]
            )
        if column not in row or "Train/Dev/Test" not in row:
            raise ValueError(f"{path}: not WRIME ver2 (needs 'Sentence', 'Train/Dev/Test', {column!r}); columns: {list(row)}")
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
        splits[split].append(Example(text=text, label=label, score=None, meta={"sentiment": value, "user": row.get("UserID", "")}))
    return splits, dropped


def read_annotated_csv(path: Path, task, text_column: str, label_column: str, flag_columns: list[str], flag_max: int):
    if task.score is not None and not flag_columns:
        raise ValueError(
            f"annotated-csv: the task {task.name!r} scores its {', '.join(task.score.only_for or task.label_values)} rows "
            "from annotator flags: pass --flag-columns a1,a2,... (without them every such row would be dropped)"
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
        kept.append(Example(text=text, label=label, score=score if task.score is not None else None,
                            meta={c: row[c] for c in flag_columns}))
    return kept, dropped


def download(source: str, path: Path, url: str | None = None) -> Path:
    """Fetch a source's file into `path` and check its sha256; a clear error when offline."""
    import hashlib
    import urllib.request

    if source not in DOWNLOADS:
        raise ValueError(f"no download for {source!r}: get it from {MANUAL.get(source, 'its publisher')} and pass --path")
    default_url, checksum, relative = DOWNLOADS[source]
    target = path / relative
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == checksum:
        return target
    try:
        with urllib.request.urlopen(url or default_url, timeout=20) as response:
            payload = response.read()
    except OSError as e:  # URLError, timeouts, refused connections
        raise ValueError(f"could not download {url or default_url} ({e}); offline? Download it by hand into "
                         f"{target} and run again without --download") from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != checksum:
        raise ValueError(f"{url or default_url}: sha256 {digest} != expected {checksum}; not written")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(payload)
    return target


def read_hf(dataset: str, task, text_column: str, label_column: str, score_column: str | None):
    """Any Hugging Face dataset (id, or a local folder of csv/json files) with column mapping."""
    from datasets import load_dataset

    loaded = load_dataset(dataset)
    names = {"train": "train", "validation": "dev", "dev": "dev", "test": "test"}
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    dropped = []
    for hf_name, rows in loaded.items():
        for i, row in enumerate(rows):
            if text_column not in row or label_column not in row:
                raise ValueError(f"{dataset}[{hf_name}]: no column {text_column!r}/{label_column!r}; columns: {list(row)}")
            text, label = str(row[text_column] or "").strip(), task.normalize_label(row[label_column])
            if not text or label is None:
                dropped.append({"row": f"{hf_name}:{i}", "reason": "empty_text" if not text else f"label_not_in_task:{row[label_column]}"})
                continue
            score = row.get(score_column) if score_column else None
            score = int(score) if score is not None and task.score is not None and task.score_allowed(label) else (0 if task.score else None)
            splits.setdefault(names.get(hf_name, hf_name), []).append(Example(text, label, score, {}))
    return splits, dropped


# ---------------------------------------------------------------- duplicates and balance


def _grams(text: str, n: int = 5) -> set[str]:
    key = normalize_text(text)
    return {key[i : i + n] for i in range(max(1, len(key) - n + 1))}


def near_duplicates(train: list[Example], others: list[Example], threshold: float = 0.9) -> list[tuple[int, int, float]]:
    """(train index, other index, Jaccard) of pairs with character 5-gram Jaccard >= threshold.

    Candidates are the train rows sharing at least one of a row's rarer 5-grams (an inverted index;
    grams found in more than `common` rows, boilerplate, are not used to find candidates, since a
    pair at J >= 0.9 shares many rare grams too); each candidate's Jaccard is then computed exactly."""
    train_grams = [_grams(ex.text) for ex in train]
    index: dict[str, list[int]] = defaultdict(list)
    for i, grams in enumerate(train_grams):
        for g in grams:
            index[g].append(i)
    common = max(50, len(train) // 20)
    pairs = []
    for j, ex in enumerate(others):
        grams = _grams(ex.text)
        candidates = {i for g in grams if len(index.get(g, ())) <= common for i in index.get(g, ())}
        for i in candidates:
            a, b = len(grams), len(train_grams[i])
            if min(a, b) / max(a, b) < threshold:
                continue
            inter = len(grams & train_grams[i])
            jaccard = inter / (a + b - inter)
            if jaccard >= threshold:
                pairs.append((i, j, jaccard))
    return pairs


def deduplicate(splits: dict[str, list[Example]]) -> tuple[dict[str, list[Example]], list[dict]]:
    """Remove from train every row that duplicates (exactly, normalised or near) a dev/test row and
    repeats of a training row; report duplicates within dev and test (never removed there)."""
    report = []
    evaluation = splits["dev"] + splits["test"]
    drop = set()
    for i, j, jac in near_duplicates(splits["train"], evaluation):
        kind = "exact" if splits["train"][i].text == evaluation[j].text else "normalised" if jac == 1.0 else "near"
        drop.add(i)
        report.append({"kind": kind, "train_text": splits["train"][i].text, "eval_text": evaluation[j].text,
                       "jaccard": round(jac, 3), "action": "removed from train"})
    for name in SPLITS:
        seen: dict[str, int] = {}
        for k, ex in enumerate(splits[name]):
            key = normalize_text(ex.text)
            if key in seen:
                in_train = name == "train" and k not in drop
                if in_train:
                    drop.add(k)  # a repeated training row only re-weights it
                action = "removed from train" if in_train else "reported" if name != "train" else "already removed"
                report.append({"kind": f"within_{name}", "text": ex.text, "first": seen[key], "again": k, "action": action})
            seen.setdefault(key, k)
    kept_train = [ex for i, ex in enumerate(splits["train"]) if i not in drop]
    return {**splits, "train": kept_train}, report


def balance(examples: list[Example], how: str, seed: int) -> list[Example]:
    if how == "none" or not examples:
        return examples
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    rng = random.Random(seed)
    target = (min if how == "downsample" else max)(len(v) for v in by_label.values())
    out = []
    for label in sorted(by_label):
        rows = by_label[label]
        out += rng.sample(rows, target) if how == "downsample" else rows + [rng.choice(rows) for _ in range(target - len(rows))]
    rng.shuffle(out)
    return out


def cap_per_label(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """At most `limit` examples per label, sampled with `seed`; the kept rows stay in input order."""
    if limit is None:
        return examples
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_label[ex.label].append(i)
    rng = random.Random(f"{seed}:train-per-label")
    keep = {i for label in sorted(by_label) for i in rng.sample(by_label[label], min(limit, len(by_label[label])))}
    return [ex for i, ex in enumerate(examples) if i in keep]


# ---------------------------------------------------------------- card and main


def _histogram(examples: list[Example]) -> dict[str, int]:
    bins = Counter()
    for ex in examples:
        if ex.score is not None and ex.label == "-1":
            bins["0" if ex.score == 0 else f"{min((ex.score - 1) // 10 * 10 + 1, 91)}-{min((ex.score - 1) // 10 * 10 + 10, 100)}"] += 1
    return dict(sorted(bins.items(), key=lambda kv: int(kv[0].split("-")[0])))


def write_card(out: Path, cfg, total: int, splits, dropped, duplicates, removed_by_balance: int) -> dict:
    card = {
        "source": cfg.source,
        "path": str(cfg.path),
        "licence": LICENCES.get(cfg.source, "see the dataset's card on the Hub"),
        "rules": __doc__.split("Sources and their rules (also written into each card):\n", 1)[1].strip(),
        "input_rows": total,
        "kept_rows": {name: len(rows) for name, rows in splits.items()},
        "labels": {name: label_counts(rows) for name, rows in splits.items()},
        "score_histogram_negative": {name: _histogram(rows) for name, rows in splits.items()},
        "dropped": dict(Counter(d["reason"].split(":")[0] for d in dropped)),
        "dropped_rows": dropped,
        "duplicates": duplicates,
        "balance": cfg.balance,
        "train_per_label": cfg.train_per_label,
        "dev_per_label": cfg.dev_per_label,
        "train_rows_changed_by_balance": removed_by_balance,
        "seed": cfg.seed,
    }
    (out / "card.json").write_text(json.dumps(card, ensure_ascii=False, indent=1), encoding="utf-8")
    lines = [f"# Data card: {cfg.source}", "", f"Source: `{cfg.path}`; licence: {card['licence']}", "",
             f"Input rows: {total}; kept: {sum(card['kept_rows'].values())}; dropped: {len(dropped)} "
             f"({', '.join(f'{k}: {v}' for k, v in card['dropped'].items()) or 'none'}); "
             f"duplicate rows removed from train: {sum(d['action'] == 'removed from train' for d in duplicates)}; "
             f"train rows changed by --balance {cfg.balance} / --train-per-label {cfg.train_per_label}: "
             f"{removed_by_balance:+d}.", "",
             "| split | rows | " + " | ".join(f"label {lab}" for lab in sorted({lab for c in card['labels'].values() for lab in c})) + " |"]
    labels = sorted({lab for c in card["labels"].values() for lab in c})
    lines.append("|---|---|" + "---|" * len(labels))
    for name in SPLITS:
        lines.append(f"| {name} | {card['kept_rows'][name]} | " + " | ".join(str(card["labels"][name].get(lab, 0)) for lab in labels) + " |")
    lines += ["", "Score histogram of label -1 rows (train): " + json.dumps(card["score_histogram_negative"]["train"]), "",
              "Rules:", "", card["rules"], ""]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    return card


def main(cfg) -> dict:
    path, out = Path(cfg.path), Path(cfg.output)
    known = [s for s in SOURCES if not s.startswith("hf:")]
    if cfg.source not in known and not cfg.source.startswith("hf:"):
        raise ValueError(f"unknown source {cfg.source!r}; available: {', '.join(SOURCES)}")
    if cfg.download:
        download(cfg.source, path)
    if not cfg.source.startswith("hf:") and not path.exists():
        hint = " or pass --download" if cfg.source in DOWNLOADS else f"; get it from {MANUAL.get(cfg.source, 'your own files')}"
        raise FileNotFoundError(f"{path} does not exist (give --path to the dataset's file or folder{hint})")
    started = time.perf_counter()

    def step(what: str) -> None:  # a line per stage: a person waiting sees what runs, in a terminal or a log
        print(f"data prepare: {what} ({time.perf_counter() - started:.0f}s elapsed)", file=sys.stderr, flush=True)

    step(f"reading {cfg.source} from {path if not cfg.source.startswith('hf:') else cfg.source[3:]}")
    if cfg.source.startswith("hf:"):
        task = load_task(cfg.task)
        splits, dropped = read_hf(cfg.source[3:], task, cfg.text_column, cfg.label_column, cfg.score_column)
        if not splits["test"]:  # no test split published: split what there is
            examples = [ex for rows in splits.values() for ex in rows]
            splits = split_examples(examples, cfg.split, cfg.seed)
    elif cfg.source == "japanese-toxic":
        examples, dropped = read_japanese_toxic(path)
        splits = split_examples(examples, cfg.split, cfg.seed)
    elif cfg.source == "livedoor":
        examples, dropped = read_livedoor(path, cfg.per_label, cfg.seed)
        splits = split_examples(examples, cfg.split, cfg.seed)
    elif cfg.source == "wrime":
        splits, dropped = read_wrime(path, cfg.label_source, cfg.drop_neutral)
    else:
        task = load_task(cfg.task)
        flags = cfg.flag_columns or []
        examples, dropped = read_annotated_csv(path, task, cfg.text_column, cfg.label_column, flags, cfg.flag_max)
        splits = split_examples(examples, cfg.split, cfg.seed)
    total = sum(len(v) for v in splits.values()) + len(dropped)
    step(f"read {total} rows; looking for duplicates of the {len(splits['dev']) + len(splits['test'])} dev/test rows "
         f"among the {len(splits['train'])} train rows (exact, normalised, 5-gram Jaccard >= 0.9)")
    splits, duplicates = deduplicate(splits)
    step(f"{len(duplicates)} duplicates found; writing {out}")
    before = len(splits["train"])
    splits["train"] = cap_per_label(balance(splits["train"], cfg.balance, cfg.seed), cfg.train_per_label, cfg.seed)
    dev_before = len(splits["dev"])
    splits["dev"] = cap_per_label(splits["dev"], cfg.dev_per_label, cfg.seed)
    check_output_folder(out, "card.json", "data prepare")
    out.mkdir(parents=True, exist_ok=True)
    (out / "card.json").write_text('{"complete": false}\n', encoding="utf-8")  # ours from now on; replaced at the end
    for name, rows in splits.items():
        write_jsonl(rows, out / f"{name}.jsonl")
    card = write_card(out, cfg, total, splits, dropped, duplicates, len(splits["train"]) - before)
    changed = len(splits["train"]) - before
    why = [f"--balance {cfg.balance}"] * (cfg.balance != "none") + [f"--train-per-label {cfg.train_per_label}"] * bool(cfg.train_per_label)
    resampled = f", train {changed:+d} rows by {' and '.join(why)}" if changed else ""
    if len(splits["dev"]) != dev_before:
        resampled += f", dev {len(splits['dev']) - dev_before:+d} rows by --dev-per-label {cfg.dev_per_label}"
    print(f"{cfg.source}: {total} rows -> " + ", ".join(f"{k} {v}" for k, v in card["kept_rows"].items())
          + f", dropped {len(dropped)}{resampled} -> {out} (data card: {out / 'README.md'})")
    if dropped:
        print(f"labeltune: warning: {dropped_summary(dropped, total)} (each with its reason in {out / 'card.json'})",
              file=sys.stderr)
    print(f"next: labeltune train --data {out} --output runs/{out.name}")
    return card
