"""labeltune evaluate: the untuned base model and the tuned model side by side on a split.

    labeltune evaluate --run runs/demo [--split test] [--base false]

Each evaluation writes its own folder, runs/<name>/eval/<split>-<mode>-<n>/ (labeltune.run.new_eval_dir):
metrics.json (keys: base, finetuned, majority_baseline, forgetting, warnings, ...), report.md and
report.html with their plots (labeltune.report), and one predictions CSV per system; earlier evaluations
are kept as they were. The latest is also runs/<name>/metrics.json, report.md and report.html (showing
its folder's plots). Malformed answers count as wrong: they lower accuracy and the recall of their gold class,
and are a false positive for no class. Score metrics (MAE, Spearman) use the rows with a gold score whose
answer parsed; beside them, the fine-tuned model's scores with the gold label given (every row whose gold
label carries a score, estimate and greedy), which measure the score apart from the label decision. Each
system's macro-F1 has a 95% bootstrap interval (labeltune.metrics.macro_f1_interval); a fine-tuned model worse
than the majority class or the untuned base, or whose interval holds the majority class's macro-F1, gets a
warning (labeltune.metrics.result_warnings), printed at the end and shown in the report. The forgetting check
(labeltune.perplexity) compares base and tuned perplexity on general text.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from labeltune.atomic import write_inside
from labeltune.data import ReadReport, dropped_summary, load_examples
from labeltune.decode import predict, scores_given_labels
from labeltune.engine import without_score
from labeltune.metrics import (
    argmax_label,
    calibration_metrics,
    classification_metrics,
    macro_f1_interval,
    majority_baseline,
    result_warnings,
    score_metrics,
    system_metrics,
)
from labeltune.perplexity import forgetting_check, load_general_texts
from labeltune.report import format_table, write_predictions, write_report
from labeltune.run import (
    DATA,
    DATA_SUMMARY,
    METRICS,
    REPORT_HTML,
    check_eval_parent,
    load_calibration,
    new_eval_dir,
    open_run,
    predictions_file,
    read_training,
)
from labeltune.splits import fingerprint


def check_split_unchanged(run) -> None:
    """Refuse to evaluate on a run's split files that differ from the ones it trained with (their fingerprint
    in data/summary.json, written by train): a test split replaced by training rows would score ~1.0. A run
    of an earlier version with no fingerprint recorded is not checked."""
    summary_path = run.dir / DATA / DATA_SUMMARY
    if not summary_path.is_file():
        return
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    recorded, names = summary.get("fingerprint"), list(summary.get("counts") or {})
    if not recorded or not names or not all(run.split(name).is_file() for name in names):
        return
    splits = {name: load_examples(run.split(name), run.task)[0] for name in names}
    if fingerprint(splits) != recorded:
        raise ValueError(
            f"--run {run.dir}: its split files ({'/'.join(names)}.jsonl in {run.dir / DATA}) changed "
            f"since training (their fingerprint differs from {summary_path}), so its test and dev scores "
            "would not measure held-out rows; restore that folder as train wrote it, or evaluate on your own "
            "labelled file with --data FILE"
        )


def main(cfg) -> dict:
    """Evaluate cfg.run's base and tuned model on a split or --data FILE (the module docstring says what
    is written); returns the metrics that metrics.json holds."""
    run = open_run(cfg.run, writes="evaluate")
    check_eval_parent(run.dir)
    if not cfg.data:
        check_split_unchanged(run)
    examples, dropped, warnings = read_gold(cfg, run)
    # loaded before the model so that a missing file fails at once
    general = load_general_texts(cfg.forgetting, cfg.forgetting_limit) if cfg.forgetting else ([], "")
    temperature, biases = load_calibration(run.dir) if cfg.calibrated else (1.0, None)
    model, prompter = run.load()
    metrics = evaluation_header(cfg, run, examples, len(dropped))
    step = stage_printer()
    systems = decode_systems(
        cfg,
        run,
        model,
        prompter,
        examples,
        temperature=temperature,
        biases=biases,
        step=step,
        warnings=warnings,
    )
    gold = [ex.label for ex in examples]
    gold_scores = [None] * len(examples) if untrained_score(run) else [ex.score for ex in examples]
    # a folder of its own, made once the answers are decoded
    out = new_eval_dir(run.dir, Path(cfg.data).stem if cfg.data else cfg.split, cfg.mode)
    metrics["eval_dir"] = str(out)
    for key, predictions in systems.items():
        metrics[key] = system_scores(
            predictions, gold, gold_scores, run.task, temperature=temperature if key == "finetuned" else 1.0
        )
        write_predictions(out / predictions_file(key), examples, predictions)
    if biases and cfg.mode == "score":
        metrics["finetuned"].update(bias_comparison(systems["finetuned"], gold, biases, run.task))
    if given := scores_given_gold_labels(cfg, run.task, model, prompter, examples, gold_scores, step):
        metrics["finetuned"]["given_gold_label"] = given
    if general[0] and hasattr(model, "disable_adapter"):
        metrics["forgetting"] = forgetting(model, prompter.tokenizer, general, run.config.max_length, step)
    warnings += result_warnings(metrics)  # worse than the majority class or the base, or too few rows to tell
    metrics["warnings"] = warnings
    write_evaluation(out, run.dir, metrics, examples, systems)
    print_summary(cfg, run.dir, out, metrics)
    return metrics


def read_gold(cfg, run) -> tuple[list, list, list[str]]:
    """The labelled rows to evaluate: --data FILE (read with the run's column names) or the run's held-out
    split, cut to --limit; with the rows dropped and the warnings of reading them. Refuses an empty set."""
    train_cfg = run.config
    if cfg.data:
        source = Path(cfg.data)
        columns = (train_cfg.text_column, train_cfg.label_column, train_cfg.score_column)
    else:
        source = run.held_split(cfg.split, "evaluate on a labelled file of yours with --data FILE")
        columns = ("text", "label", "score")
    report = ReadReport(str(source))
    examples, dropped = load_examples(source, run.task, *columns, report=report)
    warnings = report.warnings()
    if dropped:
        warnings.append(dropped_summary(dropped, len(examples) + len(dropped)) + " (not evaluated)")
    if cfg.limit:
        examples = examples[: cfg.limit]
    if not examples:
        raise ValueError(f"{source}: nothing to evaluate ({dropped_summary(dropped)})")
    return examples, dropped, warnings


def evaluation_header(cfg, run, examples: list, n_dropped: int) -> dict:
    """What metrics.json says before any system's scores: the run, split, task and mode evaluated, the
    label names and score range, and the majority class of the training split as a baseline."""
    task, gold = run.task, [ex.label for ex in examples]
    metrics = {
        "run": str(run.dir),
        "split": cfg.data or cfg.split,
        "task": task.name,
        "mode": cfg.mode,
        "dropped_rows": n_dropped,
    }
    if cfg.mode == "score":
        metrics["score_estimate"] = cfg.score_estimate
    metrics["preset"] = run.info.preset
    metrics["label_names"] = {lab.value: lab.name for lab in task.labels}
    if task.score:
        metrics["score_range"] = [task.score.min, task.score.max]
    metrics["majority_baseline"] = majority_baseline(run.train_labels(), gold, task.label_values)
    metrics["majority_baseline"]["macro_f1_interval"] = macro_f1_interval(
        gold, [metrics["majority_baseline"]["label"]] * len(gold), task.label_values
    )
    return metrics


def stage_printer() -> Callable[[str], None]:
    """A line per stage on stderr with the seconds since this call: a person waiting sees what runs, in a
    terminal or a log."""
    started = time.perf_counter()

    def step(what: str) -> None:
        print(f"evaluate: {what} ({time.perf_counter() - started:.0f}s elapsed)", file=sys.stderr, flush=True)

    return step


def untrained_score(run) -> bool:
    """The task has a score but the run's training data had none: its "score : 0" is a format filler."""
    return not run.score_trained and run.task.score is not None


def decode_systems(
    cfg,
    run,
    model,
    prompter,
    examples: list,
    temperature: float,
    biases: dict | None,
    step: Callable[[str], None],
    warnings: list[str],
) -> dict[str, list]:
    """Each system's answers: the base model (adapter off; unless --base false or a merged export, which
    has no adapter) and the fine-tuned one, calibrated; scores emptied where the run never learnt them.
    What cannot be evaluated is appended to `warnings`."""
    texts = [ex.text for ex in examples]
    where = f"{len(texts)} {'rows of ' + cfg.data if cfg.data else cfg.split + ' posts'}, {cfg.mode} mode"
    systems = {}
    if cfg.base and run.merged:
        warnings.append("a merged export has no adapter to switch off: only the tuned model is evaluated")
    elif cfg.base:
        step(f"base model (adapter off) on {where}")
        with model.disable_adapter():
            systems["base"] = predict(
                model,
                prompter,
                texts,
                cfg.max_new_tokens,
                cfg.batch_size,
                cfg.mode,
                score_estimate=cfg.score_estimate,
            )
    step(f"fine-tuned model on {where}")
    systems["finetuned"] = predict(
        model,
        prompter,
        texts,
        cfg.max_new_tokens,
        cfg.batch_size,
        cfg.mode,
        temperature,
        cfg.score_estimate,
        biases,
    )
    if untrained_score(run):
        systems = {key: without_score(predictions) for key, predictions in systems.items()}
        warnings.append(
            "score not trained: the training data had no scores, so this run leaves the score "
            "empty and no score metric is computed (train with a 0-100 score column to learn it)"
        )
    return systems


def system_scores(predictions: list, gold: list[str], gold_scores: list, task, temperature: float) -> dict:
    """One system's metrics: classification and score metrics, the macro-F1's bootstrap interval and the
    calibration of its confidences (at `temperature`)."""
    scores = system_metrics(
        gold, gold_scores, predictions, task.label_values, task.score_ends, task.scored_labels
    )
    scores["macro_f1_interval"] = macro_f1_interval(gold, [p.label for p in predictions], task.label_values)
    scores.update(calibration_metrics(predictions, gold, temperature))
    return scores


def bias_comparison(predictions: list, gold: list[str], biases: dict, task) -> dict:
    """Score mode with dev-fitted label biases: the biases and the same decode without them (argmax of
    log p + b - b), to show beside the fine-tuned metrics."""
    undo = {k: -v for k, v in biases.items()}
    unbiased = [argmax_label(p.probs, undo) if p.probs else None for p in predictions]
    plain = classification_metrics(gold, unbiased, task.label_values)
    return {
        "biases": biases,
        "without_biases": {
            "macro_f1": plain["macro_f1"],
            "accuracy": plain["accuracy"],
            "recall": {lab: c["recall"] for lab, c in plain["per_class"].items()},
        },
    }


def scores_given_gold_labels(
    cfg, task, model, prompter, examples: list, gold_scores: list, step: Callable[[str], None]
) -> dict | None:
    """The score part apart from the label decision: on every gold-scored row, the tuned model's score
    (estimate and greedy) with its gold label given; None when no row has a gold score."""
    rows = [
        i
        for i, (ex, score) in enumerate(zip(examples, gold_scores))
        if ex.label in task.scored_labels and score is not None
    ]
    if not rows:
        return None
    step(f"scores with the gold label given on {len(rows)} rows")
    texts, labels = [examples[i].text for i in rows], [examples[i].label for i in rows]
    given = scores_given_labels(model, prompter, texts, labels, cfg.batch_size, cfg.score_estimate)
    truth = [gold_scores[i] for i in rows]
    return {
        "estimate": score_metrics(truth, [e for e, _ in given], task.score_ends),
        "greedy": score_metrics(truth, [g for _, g in given], task.score_ends),
    }


def forgetting(
    model, tokenizer, general: tuple[list[str], str], max_length: int, step: Callable[[str], None]
) -> dict:
    """The forgetting check: base and tuned perplexity on the general texts (labeltune.perplexity) and
    where they came from."""
    texts, source = general
    step(f"forgetting check: perplexity on {len(texts)} general texts")
    return {**forgetting_check(model, tokenizer, texts, max_length), "source": source}


def write_evaluation(
    out: Path, run_dir: Path, metrics: dict, examples: list, systems: dict[str, list]
) -> None:
    """metrics.json and the report in the evaluation's folder, then the run directory's copies of the
    latest evaluation (its metrics.json last, once everything else is complete)."""
    text = json.dumps(metrics, ensure_ascii=False, indent=1)
    write_inside(out, out / METRICS, text)
    write_report(out, metrics, examples, systems, read_training(run_dir), also_in=run_dir)
    write_inside(run_dir, run_dir / METRICS, text)  # last: the latest evaluation, complete


def print_summary(cfg, run_dir: Path, out: Path, metrics: dict) -> None:
    """The before/after table on stdout, the warnings on stderr, where the report is and what to run next."""
    print(format_table(metrics))
    for warning in metrics["warnings"]:
        print(f"labeltune: warning: {warning}", file=sys.stderr)
    print(
        f"wrote {out}/ (metrics.json, predictions, plots); report: {out / REPORT_HTML} (latest also in "
        f"{run_dir / REPORT_HTML})"
    )
    print(
        f"next: labeltune label --run {run_dir} --input posts.csv --output labelled.csv"
        + ("" if cfg.mode == "generate" else f" --mode {cfg.mode}")
    )
