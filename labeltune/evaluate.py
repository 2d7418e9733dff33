"""labeltune evaluate: the untuned base model and the tuned model side by side on a split.

    labeltune evaluate --run runs/demo [--split test] [--base false]

Each evaluation writes its own folder, runs/<name>/eval/<split>-<mode>-<n>/ (labeltune.run.new_eval_dir):
metrics.json (keys: base, finetuned, majority_baseline, forgetting, warnings, ...), report.md and report.html with
their plots (labeltune.report), and one predictions CSV per system; earlier evaluations are kept as they
were. The latest is also runs/<name>/metrics.json, report.md and report.html (showing its folder's plots). Malformed
answers count as wrong: they lower accuracy and the recall of their gold class, and are a false
positive for no class. Score metrics (MAE, Spearman) use the rows with a gold score whose answer
parsed; beside them, the fine-tuned model's scores with the gold label given (every row whose gold label
carries a score, estimate and greedy), which measure the score apart from the label decision. Each system's
macro-F1 has a 95% bootstrap interval (labeltune.metrics.macro_f1_interval); a fine-tuned model worse than the
majority class or the untuned base, or whose interval holds the majority class's macro-F1, gets a warning
(labeltune.metrics.result_warnings), printed at the end and shown in the report. The forgetting check
(labeltune.perplexity) compares base and tuned perplexity on general text.
"""

from __future__ import annotations

import json
import sys
import time
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
            f"--run {run.dir}: its split files ({'/'.join(names)}.jsonl in {run.dir / DATA}) changed since training "
            f"(their fingerprint differs from {summary_path}), so its test and dev scores would not measure held-out "
            "rows; restore that folder as train wrote it, or evaluate on your own labelled file with --data FILE"
        )


def main(cfg) -> dict:
    run = open_run(cfg.run)
    check_eval_parent(run.dir)
    if not cfg.data:
        check_split_unchanged(run)
    run_dir, train_cfg, task = run.dir, run.config, run.task
    source = Path(cfg.data) if cfg.data else run.held_split(cfg.split, "evaluate on a labelled file of yours with --data FILE")
    report = ReadReport(str(source))
    examples, dropped = load_examples(
        source, task, train_cfg.text_column if cfg.data else "text", train_cfg.label_column if cfg.data else "label",
        train_cfg.score_column if cfg.data else "score", report=report,
    )
    warnings = report.warnings()
    if dropped:
        warnings.append(dropped_summary(dropped, len(examples) + len(dropped)) + " (not evaluated)")
    if cfg.limit:
        examples = examples[: cfg.limit]
    if not examples:
        raise ValueError(f"{source}: nothing to evaluate ({dropped_summary(dropped)})")
    # loaded before the model so that a missing file fails at once
    general_texts, general_source = (
        load_general_texts(cfg.forgetting, cfg.forgetting_limit) if cfg.forgetting else ([], "")
    )

    temperature, biases = load_calibration(run_dir) if cfg.calibrated else (1.0, None)
    model, prompter = run.load()
    tokenizer = prompter.tokenizer
    texts = [ex.text for ex in examples]
    gold, gold_scores = [ex.label for ex in examples], [ex.score for ex in examples]
    train_labels = run.train_labels()

    metrics = {"run": str(run_dir), "split": cfg.data or cfg.split, "task": task.name, "mode": cfg.mode, "dropped_rows": len(dropped)}
    if cfg.mode == "score":
        metrics["score_estimate"] = cfg.score_estimate
    metrics["preset"] = run.info.preset
    metrics["label_names"] = {lab.value: lab.name for lab in task.labels}
    if task.score:
        metrics["score_range"] = [task.score.min, task.score.max]
    metrics["majority_baseline"] = majority_baseline(train_labels, gold, task.label_values)
    metrics["majority_baseline"]["macro_f1_interval"] = macro_f1_interval(
        gold, [metrics["majority_baseline"]["label"]] * len(gold), task.label_values)
    systems = {}
    started = time.perf_counter()

    def step(what: str) -> None:  # a line per stage: a person waiting sees what runs, in a terminal or a log
        print(f"evaluate: {what} ({time.perf_counter() - started:.0f}s elapsed)", file=sys.stderr, flush=True)

    where = f"{len(texts)} {'rows of ' + cfg.data if cfg.data else cfg.split + ' posts'}, {cfg.mode} mode"
    if cfg.base and run.merged:
        warnings.append("a merged export has no adapter to switch off: only the tuned model is evaluated")
    elif cfg.base:
        step(f"base model (adapter off) on {where}")
        with model.disable_adapter():
            systems["base"] = predict(model, prompter, texts, cfg.max_new_tokens, cfg.batch_size, cfg.mode,
                                      score_estimate=cfg.score_estimate)
    step(f"fine-tuned model on {where}")
    systems["finetuned"] = predict(model, prompter, texts, cfg.max_new_tokens, cfg.batch_size, cfg.mode, temperature,
                                   cfg.score_estimate, biases)
    if not run.score_trained and task.score is not None:  # the model's "score : 0" is a format filler, not a score
        systems = {key: without_score(predictions) for key, predictions in systems.items()}
        gold_scores = [None] * len(gold_scores)
        warnings.append("score not trained: the training data had no scores, so this run leaves the score empty and no "
                        "score metric is computed (train with a 0-100 score column to learn it)")
    out = new_eval_dir(run_dir, Path(cfg.data).stem if cfg.data else cfg.split, cfg.mode)  # decoded: a folder of its own
    metrics["eval_dir"] = str(out)
    for key, predictions in systems.items():
        metrics[key] = system_metrics(gold, gold_scores, predictions, task.label_values, task.score_ends, task.scored_labels)
        metrics[key]["macro_f1_interval"] = macro_f1_interval(gold, [p.label for p in predictions], task.label_values)
        metrics[key].update(calibration_metrics(predictions, gold, temperature if key == "finetuned" else 1.0))
        write_predictions(out / predictions_file(key), examples, predictions)
    if biases and cfg.mode == "score":  # the same decode without the biases: argmax of log p + b - b
        unbiased = [argmax_label(p.probs, {k: -v for k, v in biases.items()}) if p.probs else None for p in systems["finetuned"]]
        plain = classification_metrics(gold, unbiased, task.label_values)
        metrics["finetuned"]["biases"] = biases
        metrics["finetuned"]["without_biases"] = {
            "macro_f1": plain["macro_f1"], "accuracy": plain["accuracy"],
            "recall": {lab: c["recall"] for lab, c in plain["per_class"].items()}}
    scored_rows = [i for i, (lab, sc) in enumerate(zip(gold, gold_scores)) if lab in task.scored_labels and sc is not None]
    if scored_rows:  # the score part apart from the label decision: every gold-scored row, its gold label given
        step(f"scores with the gold label given on {len(scored_rows)} rows")
        given = scores_given_labels(model, prompter, [texts[i] for i in scored_rows], [gold[i] for i in scored_rows],
                                    cfg.batch_size, cfg.score_estimate)
        truth = [gold_scores[i] for i in scored_rows]
        metrics["finetuned"]["given_gold_label"] = {
            "estimate": score_metrics(truth, [e for e, _ in given], task.score_ends),
            "greedy": score_metrics(truth, [g for _, g in given], task.score_ends)}
    if general_texts and hasattr(model, "disable_adapter"):
        step(f"forgetting check: perplexity on {len(general_texts)} general texts")
        check = forgetting_check(model, tokenizer, general_texts, train_cfg.max_length)
        metrics["forgetting"] = {**check, "source": general_source}
    warnings += result_warnings(metrics)  # worse than the majority class or the base, or too few rows to tell
    metrics["warnings"] = warnings
    text = json.dumps(metrics, ensure_ascii=False, indent=1)
    write_inside(out, out / METRICS, text)
    write_report(out, metrics, examples, systems, read_training(run_dir), also_in=run_dir)
    write_inside(run_dir, run_dir / METRICS, text)  # last: the latest evaluation, complete
    print(format_table(metrics))
    for warning in warnings:
        print(f"labeltune: warning: {warning}", file=sys.stderr)
    print(f"wrote {out}/ (metrics.json, predictions, plots); report: {out / REPORT_HTML} (latest also in "
          f"{run_dir / REPORT_HTML})")
    print(f"next: labeltune label --run {run_dir} --input posts.csv --output labelled.csv"
          + ("" if cfg.mode == "generate" else f" --mode {cfg.mode}"))
    return metrics
