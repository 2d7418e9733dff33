"""Does the review loop pay? Gold labels stand in for the annotator.

    OMP_NUM_THREADS=1 python scripts/simulate_review.py --output runs/simulate \\
        --strategies margin,entropy,random --seeds 0,1,2 --rounds 4 --seed-size 40 --budget 40

    # the real model, short texts: livedoor news titles, 9 topics (README's run; it ran one process per
    # seed, --seeds 0 and --seeds 1, their results.csv concatenated, then --summary-only)
    OMP_NUM_THREADS=1 python scripts/simulate_review.py --dataset livedoor-titles --model gemma3-270m \
        --template livedoor_plain --output runs/simp --strategies margin,entropy,random --seeds 0,1 \
        --rounds 3 --seed-size 45 --budget 45 --epochs 4 --batch-size 8 --grad-accum 1

On japanese-toxic-dataset (sentiment_toxicity) or the livedoor news corpus's article titles
(livedoor_category; `--per-label` articles of each topic), both from ../shared/data: a fixed dev and test
split, the rest is the pool. Each (strategy, seed) starts from the same seeded labelled sample of the
pool, so the first round (no reviewed labels yet) is trained once per seed and shared by the strategies;
each round trains a new run on the labels so far (labeltune.train), scores the pool and the test split
(labeltune.label, --mode score), records test macro-F1 against labels spent, and gives the strategy's
`--budget` pool rows their gold labels (labeltune.selection, as `labeltune review select` picks them).
Writes results.csv (one row per strategy, seed, round), a table (table.md: mean ± std over seeds) and a
plot (review_simulation.png). A killed simulation started again skips the rounds whose results are
written; `--summary-only` redraws table and plot from results.csv (e.g. after concatenating the
results.csv of one process per seed).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import statistics
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from labeltune import label as label_verb
from labeltune import train as train_verb
from labeltune.config import LabelConfig, TrainConfig, resolve
from labeltune.data import write_jsonl
from labeltune.metrics import classification_metrics
from labeltune.review_tasks import read_scored
from labeltune.selection import select, uncertainty
from labeltune.sources import read_japanese_toxic, read_livedoor
from labeltune.splits import split_examples
from labeltune.task import load_task

DATASETS = {  # name: (task, default --data)
    "japanese-toxic": ("sentiment_toxicity", "../shared/data/japanese-toxic-dataset"),
    "livedoor-titles": ("livedoor_category", "../shared/data/livedoor-news-corpus"),
}
FIELDS = ("strategy", "seed", "round", "labels", "rare_labels", "macro_f1", "accuracy", "seconds")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="japanese-toxic", choices=sorted(DATASETS))
    p.add_argument("--data", default=None, help="the dataset's folder; default: its copy in ../shared/data")
    p.add_argument(
        "--per-label", type=int, default=80, help="livedoor-titles: articles sampled from each topic"
    )
    p.add_argument("--output", default="runs/simulate", help="folder for runs, results.csv, table, plot")
    p.add_argument("--model", default="tiny", help="model preset (tiny = random init; gemma3-270m = real)")
    p.add_argument("--strategies", default="margin,entropy,random")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the labelled sample and of training")
    p.add_argument(
        "--rounds", type=int, default=4, help="training rounds (the last one is not followed by labels)"
    )
    p.add_argument("--seed-size", type=int, default=40, help="labelled rows before the first round")
    p.add_argument("--budget", type=int, default=40, help="rows a person labels per round")
    p.add_argument("--stratify", action="store_true", help="share each budget over predicted labels")
    p.add_argument(
        "--max-steps", type=int, default=-1, help="training steps per round; -1 = the preset's epochs"
    )
    p.add_argument("--epochs", type=float, default=None, help="training epochs; default: the preset's")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--grad-accum", type=int, default=None, help="default: the preset's")
    p.add_argument("--lr", type=float, default=None, help="default: the preset's")
    p.add_argument("--template", default=None, help="default: the task's")
    p.add_argument("--keep-runs", action="store_true", help="keep each round's run folder (disk)")
    p.add_argument("--summary-only", action="store_true", help="only redraw table and plot from results.csv")
    p.add_argument("--plot-title", default=None)
    return p.parse_args(argv)


def load_data(args):
    """The dataset's examples split once (seed 0): pool 60 %, dev 15 %, test 25 % (japanese-toxic); pool
    60 %, dev 5 %, test 35 % (livedoor-titles: each article's title is the text; a small dev split, as
    dev is only the loss that keeps the best epoch)."""
    path = Path(args.data or DATASETS[args.dataset][1])
    if args.dataset == "livedoor-titles":
        articles, _ = read_livedoor(path, args.per_label, seed=0)
        examples = [replace(ex, text=ex.meta["title"]) for ex in articles]
        ratios = (0.6, 0.05, 0.35)
    else:
        examples, _ = read_japanese_toxic(path)
        ratios = (0.6, 0.15, 0.25)
    parts = split_examples(examples, ratios, seed=0)
    return parts["train"], parts["dev"], parts["test"]


def one_round(args, work: Path, labelled: list, dev: list, pool_test: Path, seed: int) -> Path:
    """Train a new run on the labels so far and score pool + test with it; the scored file's path."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_jsonl(labelled, data / "train.jsonl")
    write_jsonl(dev, data / "dev.jsonl")
    write_jsonl(dev[:1], data / "test.jsonl")  # the run's own test split is unused (the pool file holds it)
    run = work / "run"
    knobs = {"epochs", "batch_size", "grad_accum", "lr", "template"}
    train_verb.main(
        resolve(
            TrainConfig,
            None,
            {
                "model": args.model,
                "data": str(data),
                "output": str(run),
                "task": DATASETS[args.dataset][0],
                "seed": seed,
                "allow_incomplete": True,  # japanese-toxic has no positive posts
                "max_steps": args.max_steps,
                "best_metric": "loss",
                **{k: getattr(args, k) for k in knobs if getattr(args, k) is not None},
            },
        )
    )
    scored = work / "scored.csv"
    label_verb.main(
        resolve(
            LabelConfig,
            None,
            {
                "run": str(run),
                "input": str(pool_test),
                "output": str(scored),
                "mode": "score",
                "progress": False,
            },
        )
    )
    return scored


def simulate(args, strategy: str, seed: int, pool, dev, test, out: Path, done: set) -> list[dict]:
    task = load_task(DATASETS[args.dataset][0])
    counts = Counter(ex.label for ex in pool)
    rare = min(counts, key=counts.get)  # the pool's rarest label (toxic posts here)
    rng = random.Random(seed)
    order = list(range(len(pool)))
    rng.shuffle(order)
    labelled_ids = order[: args.seed_size]  # the same seed sample for every strategy of this seed
    rows = []
    for rnd in range(args.rounds):
        work = out / "rounds" / f"{strategy}-s{seed}-r{rnd}"
        key = (strategy, seed, rnd)
        picked_file = work / "labelled_ids.json"
        if key in done and picked_file.is_file():
            labelled_ids = json.loads(picked_file.read_text())
            continue
        start = time.time()
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        # round 0 trains on the seed sample alone, the same for every strategy: trained once per seed
        shared = out / "rounds" / f"s{seed}-r0" / "scored.csv" if rnd == 0 else None
        if shared is not None and shared.is_file():
            scored = work / "scored.csv"
            shutil.copyfile(shared, scored)
            start -= float((shared.parent / "seconds").read_text())
        else:
            pool_test = work / "pool_test.csv"
            with pool_test.open("w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["text", "part", "index", "gold"])
                for i, ex in enumerate(pool):
                    w.writerow([ex.text, "pool", i, ex.label])
                for i, ex in enumerate(test):
                    w.writerow([ex.text, "test", i, ex.label])
            scored = one_round(args, work, [pool[i] for i in labelled_ids], dev, pool_test, seed)
            if shared is not None:
                shared.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(scored, shared)
                (shared.parent / "seconds").write_text(f"{time.time() - start:.1f}")
        rows_scored = read_scored(scored, task)
        test_rows = [r for r in rows_scored if r.cells["part"] == "test"]
        m = classification_metrics(
            [r.cells["gold"] for r in test_rows], [r.label for r in test_rows], task.label_values
        )
        result = {
            "strategy": strategy,
            "seed": seed,
            "round": rnd,
            "labels": len(labelled_ids),
            "rare_labels": sum(pool[i].label == rare for i in labelled_ids),
            "macro_f1": round(m["macro_f1"], 4),
            "accuracy": round(m["accuracy"], 4),
            "seconds": round(time.time() - start, 1),
        }
        print(json.dumps(result), flush=True)
        rows.append(result)
        # the next round's labels: the strategy's picks among the pool rows not labelled yet
        pool_rows = [r for r in rows_scored if r.cells["part"] == "pool"]
        taken = set(labelled_ids)
        candidates = [i for i in range(len(pool_rows)) if int(pool_rows[i].cells["index"]) not in taken]
        scores = uncertainty(strategy, [r.probs for r in pool_rows], seed=seed * 1000 + rnd)
        strata = [r.label for r in pool_rows] if args.stratify else None
        picks = select(scores, args.budget, candidates, strata) if candidates else []
        labelled_ids = labelled_ids + [int(pool_rows[i].cells["index"]) for i in picks]
        picked_file.write_text(json.dumps(labelled_ids))
        if not args.keep_runs:
            shutil.rmtree(work / "run", ignore_errors=True)
        with (out / "results.csv").open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, FIELDS).writerow(result)
    return rows


def _table(results: list[dict], column: str, digits: int) -> list[str]:
    """Markdown rows: labels spent x strategy, mean ± std of `column` over seeds."""
    by: dict[tuple[str, int], list[float]] = {}
    for r in results:
        if r.get(column) not in (None, ""):
            by.setdefault((r["strategy"], int(r["labels"])), []).append(float(r[column]))
    strategies = sorted({s for s, _ in by})
    lines = ["| labels | " + " | ".join(strategies) + " |", "|---:|" + "---:|" * len(strategies)]
    for n in sorted({n for _, n in by}):
        cells = []
        for s in strategies:
            vals = by.get((s, n), [])
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(
                f"{statistics.mean(vals):.{digits}f} ± {sd:.{digits}f} (n={len(vals)})" if vals else ""
            )
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def summarise(out: Path, title: str | None) -> None:
    """table.md (mean ± std over seeds, per strategy and labels spent: test macro-F1, and how many of the
    labels went to the rarest label) and the plot of macro-F1."""
    with (out / "results.csv").open(encoding="utf-8") as f:
        results = list(csv.DictReader(f))
    lines = ["test macro-F1:", "", *_table(results, "macro_f1", 3)]
    if any(r.get("rare_labels") for r in results):
        lines += ["", "labelled posts of the rarest label:", "", *_table(results, "rare_labels", 1)]
    (out / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("macro_f1", "test macro-F1")]
    if any(r.get("rare_labels") for r in results):
        panels.append(("rare_labels", "posts of the rarest label labelled"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (column, name) in zip(axes[0], panels):
        by: dict[tuple[str, int], list[float]] = {}
        for r in results:
            by.setdefault((r["strategy"], int(r["labels"])), []).append(float(r[column]))
        strategies = sorted({s for s, _ in by})
        for s, style in zip(strategies, ("-", "--", ":", "-.")):
            xs = sorted(n for k, n in by if k == s)
            means = [statistics.mean(by[(s, n)]) for n in xs]
            sds = [statistics.stdev(by[(s, n)]) if len(by[(s, n)]) > 1 else 0.0 for n in xs]
            ax.plot(xs, means, marker="o", linestyle=style, label=s)
            lo, hi = [m - d for m, d in zip(means, sds)], [m + d for m, d in zip(means, sds)]
            ax.fill_between(xs, lo, hi, alpha=0.15)
        ax.set_xlabel("labels spent (seed sample + reviewed rows)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "review loop, gold labels as the annotator (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(out / "review_simulation.png", dpi=110)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.output)
    if args.summary_only:
        summarise(out, args.plot_title)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    pool, dev, test = load_data(args)
    print(f"pool {len(pool)}, dev {len(dev)}, test {len(test)} rows", flush=True)
    results = out / "results.csv"
    done = set()
    if results.is_file():
        with results.open(encoding="utf-8") as f:
            done = {(r["strategy"], int(r["seed"]), int(r["round"])) for r in csv.DictReader(f)}
    else:
        with results.open("w", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, FIELDS).writeheader()
    for seed in [int(s) for s in args.seeds.split(",")]:
        for strategy in args.strategies.split(","):
            simulate(args, strategy, seed, pool, dev, test, out, done)
    summarise(out, args.plot_title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
