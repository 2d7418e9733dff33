r"""labeltune data prepare: a real dataset -> train/dev/test files + a data card.

    labeltune data prepare --source japanese-toxic --path ../shared/data/japanese-toxic-dataset \
        --output data/jtox
    labeltune data prepare --source wrime --path wrime-ver2.tsv --output data/wrime [--label-source writer]
    labeltune data prepare --source annotated-csv --path crawl.csv --flag-columns a1,a2,a3 --output data/crawl

Every input row is accounted for: kept (in one split) or dropped with a reason, in card.json and
README.md. Duplicates: exact and normalised duplicates and near-duplicates (character 5-gram Jaccard
>= 0.9) of dev/test rows are removed from train, never from dev/test; duplicates within a split are
reported. `--balance` down- or up-samples train to the smallest / largest class and `--train-per-label N`
keeps at most N train rows per class (dev/test untouched by both); `--dev-per-label N` caps dev the same way.
Test is never subsampled here.

Sources, their licences and their rules (each card carries its source's): labeltune.sources.SOURCES.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from labeltune.data import SPLITS, Example, check_output_folder, dropped_summary, label_counts, write_jsonl
from labeltune.sources import HF, HF_PREFIX, find_source
from labeltune.splits import normalize_text, split_examples

# ---------------------------------------------------------------- download


def download(name: str, path: Path, url: str | None = None) -> Path:
    """Fetch the file of the source called `name` into `path` and check its sha256; a clear error when
    offline."""
    import hashlib
    import urllib.request

    source = find_source(name)
    if source.download is None:
        where = source.manual or "its publisher"
        raise ValueError(f"no download for {name!r}: get it from {where} and pass --path")
    default_url, checksum, relative = source.download.url, source.download.sha256, source.download.file
    target = path / relative
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == checksum:
        return target
    try:
        with urllib.request.urlopen(url or default_url, timeout=20) as response:
            payload = response.read()
    except OSError as e:  # URLError, timeouts, refused connections
        raise ValueError(
            f"could not download {url or default_url} ({e}); offline? Download it by hand into "
            f"{target} and run again without --download"
        ) from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != checksum:
        raise ValueError(f"{url or default_url}: sha256 {digest} != expected {checksum}; not written")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(payload)
    return target


# ---------------------------------------------------------------- duplicates and balance


def _grams(text: str, n: int = 5) -> set[str]:
    key = normalize_text(text)
    return {key[i : i + n] for i in range(max(1, len(key) - n + 1))}


def near_duplicates(
    train: list[Example], others: list[Example], threshold: float = 0.9
) -> list[tuple[int, int, float]]:
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
        kind = (
            "exact"
            if splits["train"][i].text == evaluation[j].text
            else "normalised"
            if jac == 1.0
            else "near"
        )
        drop.add(i)
        report.append(
            {
                "kind": kind,
                "train_text": splits["train"][i].text,
                "eval_text": evaluation[j].text,
                "jaccard": round(jac, 3),
                "action": "removed from train",
            }
        )
    for name in SPLITS:
        seen: dict[str, int] = {}
        for k, ex in enumerate(splits[name]):
            key = normalize_text(ex.text)
            if key in seen:
                in_train = name == "train" and k not in drop
                if in_train:
                    drop.add(k)  # a repeated training row only re-weights it
                action = (
                    "removed from train" if in_train else "reported" if name != "train" else "already removed"
                )
                report.append(
                    {
                        "kind": f"within_{name}",
                        "text": ex.text,
                        "first": seen[key],
                        "again": k,
                        "action": action,
                    }
                )
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
        out += (
            rng.sample(rows, target)
            if how == "downsample"
            else rows + [rng.choice(rows) for _ in range(target - len(rows))]
        )
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
    keep = {
        i for label in sorted(by_label) for i in rng.sample(by_label[label], min(limit, len(by_label[label])))
    }
    return [ex for i, ex in enumerate(examples) if i in keep]


# ---------------------------------------------------------------- card and main


def _histogram(examples: list[Example]) -> dict[str, int]:
    bins = Counter()
    for ex in examples:
        if ex.score is not None and ex.label == "-1":
            bins[
                "0"
                if ex.score == 0
                else f"{min((ex.score - 1) // 10 * 10 + 1, 91)}-{min((ex.score - 1) // 10 * 10 + 10, 100)}"
            ] += 1
    return dict(sorted(bins.items(), key=lambda kv: int(kv[0].split("-")[0])))


def write_card(out: Path, cfg, total: int, splits, dropped, duplicates, removed_by_balance: int) -> dict:
    source = find_source(cfg.source)
    card = {
        "source": cfg.source,
        "path": str(cfg.path),
        "licence": source.licence,
        "rules": source.rules,
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
    lines = [
        f"# Data card: {cfg.source}",
        "",
        f"Source: `{cfg.path}`; licence: {card['licence']}",
        "",
        f"Input rows: {total}; kept: {sum(card['kept_rows'].values())}; dropped: {len(dropped)} "
        f"({', '.join(f'{k}: {v}' for k, v in card['dropped'].items()) or 'none'}); "
        f"duplicate rows removed from train: {sum(d['action'] == 'removed from train' for d in duplicates)}; "
        f"train rows changed by --balance {cfg.balance} / --train-per-label {cfg.train_per_label}: "
        f"{removed_by_balance:+d}.",
        "",
        "| split | rows | "
        + " | ".join(f"label {lab}" for lab in sorted({lab for c in card["labels"].values() for lab in c}))
        + " |",
    ]
    labels = sorted({lab for c in card["labels"].values() for lab in c})
    lines.append("|---|---|" + "---|" * len(labels))
    for name in SPLITS:
        lines.append(
            f"| {name} | {card['kept_rows'][name]} | "
            + " | ".join(str(card["labels"][name].get(lab, 0)) for lab in labels)
            + " |"
        )
    lines += [
        "",
        "Score histogram of label -1 rows (train): " + json.dumps(card["score_histogram_negative"]["train"]),
        "",
        "Rules:",
        "",
        card["rules"],
        "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    return card


def main(cfg) -> dict:
    path, out = Path(cfg.path), Path(cfg.output)
    source = find_source(cfg.source)
    if cfg.download:
        download(cfg.source, path)
    if source is not HF and not path.exists():
        hint = (
            " or pass --download" if source.download else f"; get it from {source.manual or 'your own files'}"
        )
        raise FileNotFoundError(f"{path} does not exist (give --path to the dataset's file or folder{hint})")
    started = time.perf_counter()

    def step(what: str) -> None:  # a line per stage: a person waiting sees what runs, in a terminal or a log
        print(
            f"data prepare: {what} ({time.perf_counter() - started:.0f}s elapsed)",
            file=sys.stderr,
            flush=True,
        )

    step(f"reading {cfg.source} from {path if source is not HF else cfg.source.removeprefix(HF_PREFIX)}")
    rows, dropped = source.reader(path, cfg)
    splits = rows if isinstance(rows, dict) else split_examples(rows, cfg.split, cfg.seed)
    total = sum(len(v) for v in splits.values()) + len(dropped)
    step(
        f"read {total} rows; looking for duplicates of the {len(splits['dev']) + len(splits['test'])} "
        f"dev/test rows among the {len(splits['train'])} train rows (exact, normalised, 5-gram Jaccard >= "
        "0.9)"
    )
    splits, duplicates = deduplicate(splits)
    step(f"{len(duplicates)} duplicates found; writing {out}")
    before = len(splits["train"])
    splits["train"] = cap_per_label(
        balance(splits["train"], cfg.balance, cfg.seed), cfg.train_per_label, cfg.seed
    )
    dev_before = len(splits["dev"])
    splits["dev"] = cap_per_label(splits["dev"], cfg.dev_per_label, cfg.seed)
    check_output_folder(out, "card.json", "data prepare")
    out.mkdir(parents=True, exist_ok=True)
    (out / "card.json").write_text(
        '{"complete": false}\n', encoding="utf-8"
    )  # ours from now on; replaced at the end
    for name, rows in splits.items():
        write_jsonl(rows, out / f"{name}.jsonl")
    card = write_card(out, cfg, total, splits, dropped, duplicates, len(splits["train"]) - before)
    changed = len(splits["train"]) - before
    why = [f"--balance {cfg.balance}"] * (cfg.balance != "none") + [
        f"--train-per-label {cfg.train_per_label}"
    ] * bool(cfg.train_per_label)
    resampled = f", train {changed:+d} rows by {' and '.join(why)}" if changed else ""
    if len(splits["dev"]) != dev_before:
        resampled += f", dev {len(splits['dev']) - dev_before:+d} rows by --dev-per-label {cfg.dev_per_label}"
    print(
        f"{cfg.source}: {total} rows -> "
        + ", ".join(f"{k} {v}" for k, v in card["kept_rows"].items())
        + f", dropped {len(dropped)}{resampled} -> {out} (data card: {out / 'README.md'})"
    )
    if dropped:
        print(
            f"labeltune: warning: {dropped_summary(dropped, total)} (each with its reason in "
            f"{out / 'card.json'})",
            file=sys.stderr,
        )
    print(f"next: labeltune train --data {out} --output runs/{out.name}")
    return card
