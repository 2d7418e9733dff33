"""Metrics of labels and scores against gold, and of label probabilities (pure functions, no I/O).

Classification: accuracy, per-class and macro precision/recall/F1, confusion matrix; a malformed
answer counts as wrong (it lowers accuracy and its gold class's recall, and is a false positive for
no class); a bootstrap interval of macro-F1, and the warnings an evaluation's result deserves. Scores: MAE and
Spearman on the rows with a gold score whose answer parsed. Probabilities: temperature scaling
(softmax(log p / T), T fitted by NLL on dev), expected calibration error and reliability bins.
"""

from __future__ import annotations

import math
import random
from collections import Counter

MALFORMED = "malformed"


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def classification_metrics(gold: list[str], pred: list[str | None], labels: list[str]) -> dict:
    """Accuracy, per-class and macro precision/recall/F1 (macro: over the labels in gold or predicted),
    confusion matrix (gold rows x predicted cols)."""
    if len(gold) != len(pred):
        raise ValueError("gold and pred differ in length")
    columns = [*labels, MALFORMED]
    matrix = {g: {c: 0 for c in columns} for g in labels}
    for g, p in zip(gold, pred):
        matrix[g][p if p is not None else MALFORMED] += 1
    # Macro averages over the labels that occur (in gold or predicted), as scikit-learn's f1_score does
    # without `labels=`: a task label absent from a dataset (no positive posts in japanese-toxic) is not a
    # class the system failed on; a label predicted but never gold still counts (F1 0).
    per_class, present = {}, []
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
        if support or predicted:
            present.append(per_class[lab])
    n = len(gold)
    return {
        "n": n,
        "accuracy": _div(sum(g == p for g, p in zip(gold, pred)), n),
        "macro_precision": _div(sum(c["precision"] for c in present), len(present)),
        "macro_recall": _div(sum(c["recall"] for c in present), len(present)),
        "macro_f1": _div(sum(c["f1"] for c in present), len(present)),
        "per_class": per_class,
        "confusion": {
            "labels": labels,
            "columns": columns,
            "matrix": [[matrix[g][c] for c in columns] for g in labels],
        },
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


def score_metrics(gold: list[int | None], pred: list[int | None], ends: tuple[int, int] = (0, 100)) -> dict:
    """MAE and Spearman on the rows where gold and prediction both carry a score (their count: score_n),
    and the share of those predictions at either end of the range (`ends`: a collapse onto 0 or 100)."""
    pairs = [(g, p) for g, p in zip(gold, pred) if g is not None and p is not None]
    if not pairs:
        return {"score_n": 0, "score_mae": None, "score_spearman": None, "score_at_ends": None}
    return {
        "score_n": len(pairs),
        "score_mae": sum(abs(g - p) for g, p in pairs) / len(pairs),
        "score_spearman": spearman([g for g, _ in pairs], [p for _, p in pairs]),
        "score_at_ends": sum(p in ends for _, p in pairs) / len(pairs),
    }


def system_metrics(
    gold_labels,
    gold_scores,
    predictions,
    labels: list[str],
    ends: tuple[int, int] = (0, 100),
    scored: tuple[str, ...] | None = None,
) -> dict:
    """All metrics of one system's predictions (answers.Answer) against gold; in score mode also the
    greedy score's (greedy_score_mae, ...), beside the estimate's. Score metrics compare the rows where
    gold and prediction both carry a score: both labels in `scored` (the task's labels with a real score,
    TaskSpec.scored_labels; None: every label), both scores present."""

    def kept(label, score):
        return score if scored is None or label in scored else None

    gold = [kept(lab, s) for lab, s in zip(gold_labels, gold_scores)]
    out = classification_metrics(gold_labels, [p.label for p in predictions], labels)
    out["malformed_reasons"] = dict(Counter(p.reason for p in predictions if not p.ok))
    out.update(score_metrics(gold, [kept(p.label, p.score) for p in predictions], ends))
    if any(getattr(p, "score_greedy", None) is not None for p in predictions):
        greedy = score_metrics(
            gold, [kept(p.label, getattr(p, "score_greedy", None)) for p in predictions], ends
        )
        out.update({f"greedy_{k}": v for k, v in greedy.items()})
    return out


def calibration_metrics(predictions, gold: list[str], temperature: float = 1.0) -> dict:
    """ECE and reliability bins of the label probabilities (constrained / score modes); {} without any."""
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


def macro_f1_interval(
    gold: list[str],
    pred: list[str | None],
    labels: list[str],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> list[float] | None:
    """[low, high]: the percentile bootstrap interval of classification_metrics' macro-F1, from `resamples`
    resamplings of the rows with replacement by a generator seeded with `seed` (the same rows always give the
    same interval); None without rows."""
    if not gold:
        return None
    if len(gold) != len(pred):
        raise ValueError("gold and pred differ in length")
    k = len(labels) + 1  # the predicted columns: the labels, then malformed
    index = {lab: i for i, lab in enumerate(labels)}
    cells = [index[g] * k + (len(labels) if p is None else index[p]) for g, p in zip(gold, pred)]
    rng = random.Random(seed)
    values = []
    for _ in range(resamples):
        counts = Counter(rng.choices(cells, k=len(cells)))
        f1, present = 0.0, 0
        for i in range(len(labels)):  # F1 = 2 tp / (predicted + support); labels with neither are left out
            predicted = sum(counts[g * k + i] for g in range(len(labels)))
            support = sum(counts[i * k + c] for c in range(k))
            f1 += _div(2 * counts[i * k + i], predicted + support)
            present += bool(predicted + support)
        values.append(_div(f1, present))
    values.sort()
    tail = (1 - level) / 2
    return [values[round(tail * (resamples - 1))], values[round((1 - tail) * (resamples - 1))]]


def result_warnings(metrics: dict) -> list[str]:
    """What an evaluation's metrics (labeltune.evaluate) cannot claim, in words: a fine-tuned macro-F1 below
    the majority class's or the untuned base's, and an interval of the fine-tuned macro-F1
    (``macro_f1_interval``) that holds the majority class's: the split is too small to tell the two apart."""
    tuned, majority = metrics.get("finetuned"), metrics["majority_baseline"]
    if tuned is None:
        return []
    label = majority["label"]
    name = (metrics.get("label_names") or {}).get(label, label)
    always = f"always answering {label}" + ("" if name == label else f" ({name})")
    out = []
    if tuned["macro_f1"] < majority["macro_f1"]:
        out.append(
            f"the fine-tuned model is worse than the majority class: macro-F1 {tuned['macro_f1']:.3f} < "
            f"{majority['macro_f1']:.3f} ({always})"
        )
    base = metrics.get("base")
    if base is not None and tuned["macro_f1"] < base["macro_f1"]:
        out.append(
            "the fine-tuned model is worse than the untuned base (adapter off): macro-F1 "
            f"{tuned['macro_f1']:.3f} < {base['macro_f1']:.3f}"
        )
    interval = tuned.get("macro_f1_interval")
    if interval and interval[0] <= majority["macro_f1"] <= interval[1]:
        split = metrics.get("split", "test")
        rows = (
            f"{tuned['n']} {split} rows"
            if split in ("train", "dev", "test")
            else f"{tuned['n']} rows of {split}"
        )
        out.append(
            f"{rows} cannot tell these apart: macro-F1 {tuned['macro_f1']:.2f} [{interval[0]:.2f}, "
            f"{interval[1]:.2f}] (fine-tuned, 95% bootstrap interval) holds the majority class's "
            f"{majority['macro_f1']:.2f} ({always}); evaluate on more rows (--data FILE) to tell them apart"
        )
    return out


def apply_temperature(probs: dict[str, float], temperature: float) -> dict[str, float]:
    """softmax(log p / T) over the labels (T > 1 flattens, T < 1 sharpens)."""
    return adjust(probs, temperature)


def adjust(
    probs: dict[str, float], temperature: float = 1.0, biases: dict[str, float] | None = None
) -> dict[str, float]:
    """softmax(log p / T + b) over the labels: the temperature, then the per-label biases (a prior
    correction fitted on dev). Equal biases change nothing."""
    logs = {k: math.log(max(v, 1e-300)) / temperature + (biases or {}).get(k, 0.0) for k, v in probs.items()}
    top = max(logs.values())
    exps = {k: math.exp(v - top) for k, v in logs.items()}
    total = sum(exps.values())
    return {k: v / total for k, v in exps.items()}


def argmax_label(probs: dict[str, float], biases: dict[str, float] | None = None) -> str:
    """The label with the highest log p + b (ties: the first in the dict's order). Only the biases'
    differences matter, so they are taken relative to the smallest: equal biases add exactly 0 (adding the
    same float to every log p could otherwise round two near-equal ones into a different order)."""
    shift = {k: (biases or {}).get(k, 0.0) for k in probs}
    low = min(shift.values(), default=0.0)
    return max(probs, key=lambda k: math.log(max(probs[k], 1e-300)) + (shift[k] - low))


BIAS_GRID = [round(0.1 * i, 1) for i in range(-30, 31)]  # log-odds shifts tried for each label


def fit_label_biases(
    probs: list[dict[str, float]], gold: list[str], labels: list[str], rounds: int = 3
) -> dict[str, float]:
    """Per-label biases added to the (temperature-scaled) log-probabilities that maximise macro-F1 on
    `gold`: coordinate search over BIAS_GRID, the first label fixed at 0, a few rounds; among equally good
    values the one nearest 0 (the smallest correction). A prior correction for a model that under-predicts
    a class (typically neutral)."""
    biases = {lab: 0.0 for lab in labels}

    def score(b: dict[str, float]) -> float:
        return classification_metrics(gold, [argmax_label(p, b) for p in probs], labels)["macro_f1"]

    best = score(biases)
    for _ in range(rounds):
        changed = False
        for lab in labels[1:]:
            for value in sorted(BIAS_GRID, key=abs):
                trial = {**biases, lab: value}
                f1 = score(trial)
                if f1 > best + 1e-12:
                    best, biases, changed = f1, trial, True
        if not changed:
            break
    return biases


def nll(probs: list[dict[str, float]], gold: list[str], temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the gold labels."""
    return sum(
        -math.log(max(apply_temperature(p, temperature)[g], 1e-300)) for p, g in zip(probs, gold)
    ) / len(gold)


def fit_temperature(probs: list[dict[str, float]], gold: list[str]) -> float:
    """argmin_T NLL by golden-section search over log T in [log 0.05, log 20]."""
    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(probs, gold, math.exp(a)), nll(probs, gold, math.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(probs, gold, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(probs, gold, math.exp(b))
    return math.exp((lo + hi) / 2)


def reliability_bins(confidence: list[float], correct: list[bool], n_bins: int = 10) -> list[dict]:
    """Equal-width confidence bins: count, mean confidence and accuracy of each (empty bins kept)."""
    bins = [
        {"lo": i / n_bins, "hi": (i + 1) / n_bins, "n": 0, "conf": 0.0, "acc": 0.0} for i in range(n_bins)
    ]
    for c, ok in zip(confidence, correct):
        b = bins[min(int(c * n_bins), n_bins - 1)]
        b["n"] += 1
        b["conf"] += c
        b["acc"] += float(ok)
    for b in bins:
        if b["n"]:
            b["conf"] /= b["n"]
            b["acc"] /= b["n"]
    return bins


def expected_calibration_error(confidence: list[float], correct: list[bool], n_bins: int = 10) -> float:
    """ECE = sum over bins of (bin size / n) * |accuracy - mean confidence|."""
    n = len(confidence)
    return (
        sum(b["n"] / n * abs(b["acc"] - b["conf"]) for b in reliability_bins(confidence, correct, n_bins))
        if n
        else 0.0
    )
