"""labeltune evaluate: the untuned base model and the tuned model side by side on a split.

    labeltune evaluate --run runs/demo [--split test] [--base false]

Writes runs/<name>/metrics.json (keys: base, finetuned, majority_baseline, forgetting, ...), report.md
and report.html with their plots (labeltune.report), and one predictions CSV per system. Malformed
answers count as wrong: they lower accuracy and the recall of their gold class, and are a false
positive for no class. Score metrics (MAE, Spearman) use the rows with a gold score whose answer
parsed. The forgetting check (labeltune.perplexity) compares base and tuned perplexity on general text.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from pathlib import Path

MALFORMED = "malformed"


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def classification_metrics(gold: list[str], pred: list[str | None], labels: list[str]) -> dict:
    """Accuracy, per-class and macro precision/recall/F1, confusion matrix (gold rows x predicted cols)."""
    if len(gold) != len(pred):
        raise ValueError("gold and pred differ in length")
    columns = [*labels, MALFORMED]
    matrix = {g: {c: 0 for c in columns} for g in labels}
    for g, p in zip(gold, pred):
        matrix[g][p if p is not None else MALFORMED] += 1
    per_class = {}
    for lab in labels:
        tp = matrix[lab][lab]
        predicted = sum(matrix[g][lab] for g in labels)
        support = sum(matrix[lab].values())
        precision, recall = _div(tp, predicted), _div(tp, support)
        per_class[lab] = {
            "precision": precision,
            "recall": recall,
            "f1": _div(2 * precision * recall, precision + recall),
            "support": support,
        }
    n = len(gold)
    return {
        "n": n,
        "accuracy": _div(sum(g == p for g, p in zip(gold, pred)), n),
        "macro_precision": _div(sum(c["precision"] for c in per_class.values()), len(labels)),
        "macro_recall": _div(sum(c["recall"] for c in per_class.values()), len(labels)),
        "macro_f1": _div(sum(c["f1"] for c in per_class.values()), len(labels)),
        "per_class": per_class,
        "confusion": {"labels": labels, "columns": columns, "matrix": [[matrix[g][c] for c in columns] for g in labels]},
        "malformed_rate": _div(sum(p is None for p in pred), n),
    }


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties get their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho (Pearson correlation of average ranks); None when either side is constant."""
    if len(x) != len(y) or len(x) < 2:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5 if vx and vy else None


def score_metrics(gold: list[int | None], pred: list[int | None]) -> dict:
    pairs = [(g, p) for g, p in zip(gold, pred) if g is not None and p is not None]
    if not pairs:
        return {"score_n": 0, "score_mae": None, "score_spearman": None}
    return {
        "score_n": len(pairs),
        "score_mae": sum(abs(g - p) for g, p in pairs) / len(pairs),
        "score_spearman": spearman([g for g, _ in pairs], [p for _, p in pairs]),
    }


def system_metrics(gold_labels, gold_scores, predictions, labels: list[str]) -> dict:
    """All metrics of one system's predictions (decode.Prediction) against gold."""
    out = classification_metrics(gold_labels, [p.label for p in predictions], labels)
    out["malformed_reasons"] = dict(Counter(p.reason for p in predictions if not p.ok))
    out.update(score_metrics(gold_scores, [p.score for p in predictions]))
    return out


def calibration_metrics(predictions, gold: list[str], temperature: float = 1.0) -> dict:
    """ECE and reliability bins of the label probabilities (constrained / score modes); {} without any."""
    from labeltune.calibrate import expected_calibration_error, reliability_bins

    scored = [(p.confidence, p.label == g) for p, g in zip(predictions, gold) if p.confidence is not None]
    if not scored:
        return {}
    confidence, correct = [c for c, _ in scored], [ok for _, ok in scored]
    return {
        "ece": expected_calibration_error(confidence, correct),
        "temperature": temperature,
        "reliability": reliability_bins(confidence, correct),
    }


def majority_baseline(train_labels: list[str], gold: list[str], labels: list[str]) -> dict:
    """Always predict the most frequent training label (ties: the task's label order)."""
    counts = Counter(train_labels)
    majority = max(labels, key=lambda lab: (counts[lab], -labels.index(lab)))
    metrics = classification_metrics(gold, [majority] * len(gold), labels)
    return {"label": majority, **{k: metrics[k] for k in ("n", "accuracy", "macro_f1", "malformed_rate")}}


SUMMARY_HEADER = ["system", "n", "accuracy", "macro-F1", "malformed", "score MAE", "score Spearman", "ECE"]


def summary_rows(metrics: dict) -> list[list[str]]:
    """The before/after table's rows (majority class, base, fine-tuned), formatted, under SUMMARY_HEADER."""
    systems = [("majority class", metrics["majority_baseline"])]
    systems += [(name, metrics[key]) for name, key in (("base (untuned)", "base"), ("fine-tuned", "finetuned"))
                if key in metrics]
    rows = []
    for name, m in systems:
        mae, rho, ece = m.get("score_mae"), m.get("score_spearman"), m.get("ece")
        rows.append([
            name, str(m["n"]), f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}", f"{m['malformed_rate']:.1%}",
            "-" if mae is None else f"{mae:.1f}", "-" if rho is None else f"{rho:.3f}",
            "-" if ece is None else f"{ece:.3f}",
        ])
    return rows


def format_table(metrics: dict) -> str:
    """Markdown before/after table."""
    lines = ["| " + " | ".join(SUMMARY_HEADER) + " |", "|---" * len(SUMMARY_HEADER) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in summary_rows(metrics)])


def write_predictions(path: Path, examples, predictions) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "gold_label", "gold_score", "label", "score", "ok", "reason", "truncated", "confidence", "raw"])
        for ex, p in zip(examples, predictions):
            writer.writerow([ex.text, ex.label, ex.score, p.label, p.score, p.ok, p.reason, p.truncated, p.confidence, p.raw])


def main(cfg) -> dict:
    from labeltune.calibrate import load_temperature
    from labeltune.config import load_run_config
    from labeltune.data import ReadReport, dropped_summary, iter_rows, load_examples
    from labeltune.decode import predict
    from labeltune.features import Prompter
    from labeltune.models import load_run
    from labeltune.perplexity import forgetting_check, load_general_texts
    from labeltune.prompts import load_template
    from labeltune.report import write_report
    from labeltune.task import load_task

    run_dir = Path(cfg.run)
    train_cfg = load_run_config(run_dir)
    task = load_task(train_cfg.task)
    source = Path(cfg.data) if cfg.data else run_dir / "data" / f"{cfg.split}.jsonl"
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

    temperature = load_temperature(run_dir) if cfg.calibrated else 1.0
    model, tokenizer = load_run(run_dir)
    prompter = Prompter(tokenizer, load_template(train_cfg.template), task, train_cfg.max_length)
    texts = [ex.text for ex in examples]
    gold, gold_scores = [ex.label for ex in examples], [ex.score for ex in examples]
    train_labels = [row["label"] for row in iter_rows(run_dir / "data" / "train.jsonl")]

    metrics = {"run": str(run_dir), "split": cfg.data or cfg.split, "task": task.name, "mode": cfg.mode, "dropped_rows": len(dropped)}
    metrics["preset"] = json.loads((run_dir / "model.json").read_text(encoding="utf-8")).get("preset")
    metrics["label_names"] = {lab.value: lab.name for lab in task.labels}
    if task.score:
        metrics["score_range"] = [task.score.min, task.score.max]
    metrics["majority_baseline"] = majority_baseline(train_labels, gold, task.label_values)
    systems = {}
    if cfg.base:
        with model.disable_adapter():
            systems["base"] = predict(model, prompter, texts, cfg.max_new_tokens, cfg.batch_size, cfg.mode)
    systems["finetuned"] = predict(model, prompter, texts, cfg.max_new_tokens, cfg.batch_size, cfg.mode, temperature)
    for key, predictions in systems.items():
        metrics[key] = system_metrics(gold, gold_scores, predictions, task.label_values)
        metrics[key].update(calibration_metrics(predictions, gold, temperature if key == "finetuned" else 1.0))
        write_predictions(run_dir / f"predictions_{key}.csv", examples, predictions)
    if general_texts and hasattr(model, "disable_adapter"):
        check = forgetting_check(model, tokenizer, general_texts, train_cfg.max_length)
        metrics["forgetting"] = {**check, "source": general_source}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=1), encoding="utf-8")
    write_report(run_dir, metrics, examples, systems)
    print(format_table(metrics))
    for warning in warnings:
        print(f"labeltune: warning: {warning}", file=sys.stderr)
    return metrics
