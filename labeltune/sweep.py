"""labeltune sweep: a grid of training runs on one split, the best by a dev metric evaluated on test.

    labeltune sweep --config configs/sweep.yaml
    labeltune sweep --grid '{lr: [2e-4, 1e-3], template: [alpaca_ja_sentiment_toxicity, plain]}'

``train`` holds the TrainConfig options every trial shares, ``grid`` maps TrainConfig options to
lists of values; every combination is one trial and a normal run directory
(``<output>/trials/<name>``). The data is split once into ``<output>/data`` so every trial trains
and is selected on the same rows. Each trial is scored on dev (``--mode``); only the best trial by
``--metric`` is evaluated on test (``labeltune evaluate``: metrics.json + report in its run
directory), so the test split never takes part in the choice.

Written: results.csv and results.md (one row per trial: grid values, model, template, lr, LoRA r,
dev metrics, train time; test accuracy / precision / recall / F1 / malformed for the best trial),
dev_<metric>.png (dev metric per value of each grid option), sweep.yaml (the resolved config).
Resumable: a trial with dev_metrics.json is done and is not trained again; a trial killed while
training is started over; the best trial's test evaluation is reused when present. Every trial's options
and the data are checked before anything is written; an --output holding files sweep did not write is
refused, as train refuses one.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import shutil
from pathlib import Path

from labeltune import evaluate, train
from labeltune.config import EvalConfig, SweepConfig, TrainConfig, load_saved, resolve, save, to_dict
from labeltune.data import check_output_folder, load_examples
from labeltune.decode import predict
from labeltune.metrics import system_metrics
from labeltune.presets import resolve_preset
from labeltune.prompts import load_template
from labeltune.report import format_cell, md_table
from labeltune.run import DATA, DATA_SUMMARY, SWEEP_DEV_METRICS, SWEEP_TEST_METRICS, load_config, open_run
from labeltune.splits import make_splits, on_split_folder, write_splits
from labeltune.task import load_task

SHARED_ONLY = ("data", "output", "text_column", "label_column", "score_column", "encoding", "split")
SAVED = "sweep.yaml"  # written first: a folder holding it is a sweep's


def expand_grid(grid: dict) -> list[dict]:
    """Every combination of the grid's values, in the order the options and values are written."""
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid.{key}: expected a non-empty list of values, got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def trial_name(index: int, params: dict) -> str:
    """e.g. ``t01-lr=0.001-lora_r=8``, safe as a directory name."""
    parts = [f"{k}={v}" for k, v in params.items()]
    name = "-".join([f"t{index:02d}", *parts])
    return "".join(c if c.isalnum() or c in "=-._" else "_" for c in name)


def check_options(cfg: SweepConfig) -> None:
    """Only TrainConfig options, none that would give trials different data or directories."""
    valid = {f.name for f in dataclasses.fields(TrainConfig)}
    for where, options in (("train", cfg.train), ("grid", cfg.grid)):
        unknown = sorted(set(options) - valid)
        if unknown:
            raise ValueError(
                f"sweep {where}: unknown TrainConfig option(s) {unknown}; valid: {', '.join(sorted(valid))}"
            )
    fixed = sorted((set(cfg.grid) & set(SHARED_ONLY)) | ({"output"} & set(cfg.train)))
    if fixed:
        raise ValueError(
            f"sweep: {fixed} cannot vary per trial (every trial uses the same split and <output>/trials/)"
        )
    if not cfg.grid:
        raise ValueError("sweep: the grid is empty")


def check_trials(cfg: SweepConfig) -> list[dict]:
    """The grid's trials, each one's TrainConfig resolved and its model, task and template found (what
    `labeltune train` would refuse), so a bad value is refused before anything is written or trained."""
    trials = expand_grid(cfg.grid)
    for index, params in enumerate(trials):
        try:
            trial = resolve(TrainConfig, None, {**cfg.train, **params})
            resolve_preset(trial.model)
            task = load_task(trial.task)
            load_template(trial.template or task.default_template)
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"sweep trial {trial_name(index, params)}: {e}") from None
    return trials


def check_same_sweep(cfg: SweepConfig, out: Path) -> None:
    """Refuse an --output that holds files of the user's, or another sweep (other train/grid/mode)."""
    check_output_folder(out, SAVED, "sweep")
    if (out / SAVED).is_file():
        before = load_saved(SweepConfig, out / SAVED)
        if (before.train, before.grid, before.mode) != (cfg.train, cfg.grid, cfg.mode):
            raise FileExistsError(f"{out} holds a sweep with another train/grid/mode; use another --output")


def prepare_split(cfg: SweepConfig, out: Path) -> TrainConfig:
    """Split the data once into <output>/data (read and checked before sweep.yaml, the first file, is
    written); returns the shared TrainConfig pointing at it."""
    base = resolve(TrainConfig, None, cfg.train)
    data_dir = out / DATA
    split = None if (data_dir / DATA_SUMMARY).is_file() else make_splits(base, load_task(base.task))
    out.mkdir(parents=True, exist_ok=True)
    save(cfg, out / SAVED)
    if split is not None:
        write_splits(base, *split, data_dir)
    return on_split_folder(base, data_dir)


def dev_metrics(run_dir: Path, mode: str, batch_size: int) -> dict:
    """The fine-tuned model's metrics on the run's dev split."""
    run = open_run(run_dir)
    examples, _ = load_examples(run.split("dev"), run.task)
    if not examples:
        raise ValueError(
            f"{run_dir}: the dev split is empty; a sweep selects on dev (use a larger split ratio)"
        )
    model, prompter = run.load()
    predictions = predict(model, prompter, [ex.text for ex in examples], None, batch_size, mode)
    metrics = system_metrics(
        [ex.label for ex in examples],
        [ex.score for ex in examples],
        predictions,
        run.task.label_values,
        run.task.score_ends,
        run.task.scored_labels,
    )
    metrics["train_seconds"] = run.info.train_seconds
    return metrics


def run_trial(shared: TrainConfig, params: dict, run_dir: Path, cfg: SweepConfig) -> dict:
    """Train + dev-evaluate one trial, or load it when it is already done."""
    done = run_dir / SWEEP_DEV_METRICS
    if done.is_file():
        print(f"sweep: {run_dir.name} done before, not trained again")
        return json.loads(done.read_text(encoding="utf-8"))
    if run_dir.exists():  # killed mid-training or mid-evaluation: start this trial over
        shutil.rmtree(run_dir)
    overrides = dict(to_dict(shared))
    overrides.update(params, output=str(run_dir))
    train.spawn(
        resolve(TrainConfig, None, overrides)
    )  # own process: GPU memory freed, no Unsloth patches here
    metrics = dev_metrics(run_dir, cfg.mode, cfg.batch_size)
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(metrics, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(done)
    return metrics


def evaluate_best(run_dir: Path, cfg: SweepConfig) -> dict:
    """The best trial on test through `labeltune evaluate` (report in its run directory)."""
    path = run_dir / SWEEP_TEST_METRICS
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    metrics = evaluate.main(
        resolve(
            EvalConfig,
            None,
            {
                "run": str(run_dir),
                "split": "test",
                "mode": cfg.mode,
                "batch_size": cfg.batch_size,
                "base": False,
            },
        )
    )["finetuned"]
    path.write_text(json.dumps(metrics, ensure_ascii=False, indent=1), encoding="utf-8")
    return metrics


def result_rows(trials: list[tuple[str, dict, TrainConfig, dict]], best: str, test: dict) -> list[dict]:
    rows = []
    for name, params, resolved, dev in trials:
        row = {
            "trial": name,
            "best": name == best,
            **{f"grid.{k}": v for k, v in params.items()},
            "model": resolved.model,
            "template": resolved.template,
            "lr": resolved.lr,
            "lora_r": resolved.lora_r,
            "dev_macro_f1": dev["macro_f1"],
            "dev_accuracy": dev["accuracy"],
            "dev_malformed": dev["malformed_rate"],
            "train_seconds": dev.get("train_seconds"),
        }
        for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
            row[f"test_{key}"] = test[key] if name == best else None
        row["test_malformed"] = test["malformed_rate"] if name == best else None
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if not k.startswith("grid.")]
    cells = [
        ["**best**" if row[k] is True else "" if k == "best" else format_cell(k, row[k]) for k in keys]
        for row in rows
    ]
    return "\n".join(md_table(keys, cells))


def plot_dev_metric(rows: list[dict], grid: dict, metric: str, path: Path) -> None:
    """One panel per grid option: every trial's dev metric at its value, the mean per value joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"dev_{metric}"
    fig, axes = plt.subplots(1, len(grid), figsize=(3.6 * len(grid), 3.4), dpi=110, squeeze=False)
    for ax, option in zip(axes[0], grid):
        values = [str(v) for v in grid[option]]
        for row in rows:
            x = values.index(str(row[f"grid.{option}"]))
            ax.scatter(
                x,
                row[key],
                color="#c44e52" if row["best"] else "#4c72b0",
                zorder=3,
                marker="*" if row["best"] else "o",
                s=120 if row["best"] else 30,
            )
        means = [
            sum(r[key] for r in rows if str(r[f"grid.{option}"]) == v)
            / max(1, sum(str(r[f"grid.{option}"]) == v for r in rows))
            for v in values
        ]
        ax.plot(range(len(values)), means, "-", color="grey", label="mean")
        ax.set_xticks(range(len(values)), values, rotation=20, fontsize=8)
        ax.set(xlabel=option, ylabel=f"dev {metric}", xlim=(-0.5, len(values) - 0.5))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(loc="best", fontsize=8)
    fig.suptitle(f"dev {metric} per value (star: best trial)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(cfg: SweepConfig) -> list[dict]:
    check_options(cfg)
    grid = check_trials(cfg)
    out = Path(cfg.output)
    check_same_sweep(cfg, out)
    shared = prepare_split(cfg, out)
    trials = []
    for index, params in enumerate(grid):
        run_dir = out / "trials" / trial_name(index, params)
        dev = run_trial(shared, params, run_dir, cfg)
        trials.append((run_dir.name, params, load_config(run_dir), dev))
        print(f"sweep: {run_dir.name}: dev {cfg.metric} {dev[cfg.metric]:.3f}")
    best = max(trials, key=lambda t: t[3][cfg.metric])[0]  # ties: the first trial
    test = evaluate_best(out / "trials" / best, cfg)
    rows = result_rows(trials, best, test)
    with open(out / "results.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(rows)
    (out / "results.md").write_text(
        f"# Sweep `{out}`\n\nSelected by dev {cfg.metric} ({cfg.mode} mode); only the best trial is "
        f"evaluated on test (report: trials/{best}/report.md).\n\n{table}\n\n"
        f"![dev {cfg.metric}](dev_{cfg.metric}.png)\n",
        encoding="utf-8",
    )
    plot_dev_metric(rows, cfg.grid, cfg.metric, out / f"dev_{cfg.metric}.png")
    print(table)
    best_dev = next(dev for name, _, _, dev in trials if name == best)[cfg.metric]
    print(
        f"best: {best} (dev {cfg.metric} {best_dev:.3f}, test macro-F1 {test['macro_f1']:.3f}) -> "
        f"{out}/results.md"
    )
    print(f"next: labeltune label --run {out / 'trials' / best} --input posts.csv --output labelled.csv")
    return rows
