"""labeltune calibrate: fit a temperature for the label probabilities on the dev split.

    labeltune calibrate --run runs/demo          # -> runs/demo/calibration.json

Label probabilities (score and constrained modes) are p(label) at temperature 1; calibrated ones
are softmax(log p / T) over the labels. T is fitted by minimising the negative log-likelihood of
the gold labels on the dev split (a 1-D search over log T), and `label` / `evaluate` apply it when
the run has a calibration.json. Also here: expected calibration error and the reliability bins.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def apply_temperature(probs: dict[str, float], temperature: float) -> dict[str, float]:
    """softmax(log p / T) over the labels (T > 1 flattens, T < 1 sharpens)."""
    logs = {k: math.log(max(v, 1e-300)) / temperature for k, v in probs.items()}
    top = max(logs.values())
    exps = {k: math.exp(v - top) for k, v in logs.items()}
    total = sum(exps.values())
    return {k: v / total for k, v in exps.items()}


def nll(probs: list[dict[str, float]], gold: list[str], temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the gold labels."""
    return sum(-math.log(max(apply_temperature(p, temperature)[g], 1e-300)) for p, g in zip(probs, gold)) / len(gold)


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
    bins = [{"lo": i / n_bins, "hi": (i + 1) / n_bins, "n": 0, "conf": 0.0, "acc": 0.0} for i in range(n_bins)]
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
    return sum(b["n"] / n * abs(b["acc"] - b["conf"]) for b in reliability_bins(confidence, correct, n_bins)) if n else 0.0


def plot_reliability(bins: list[dict], path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=110)
    centers = [(b["lo"] + b["hi"]) / 2 for b in bins]
    ax.bar(centers, [b["acc"] if b["n"] else 0 for b in bins], width=0.09, color="#4c72b0", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for x, b in zip(centers, bins):
        if b["n"]:
            ax.text(x, 0.02, str(b["n"]), ha="center", fontsize=7, color="white")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def load_temperature(run_dir: str | Path) -> float:
    path = Path(run_dir) / "calibration.json"
    return json.loads(path.read_text(encoding="utf-8"))["temperature"] if path.is_file() else 1.0


def main(cfg) -> dict:
    from labeltune.config import load_run_config
    from labeltune.data import load_examples
    from labeltune.decode import predict
    from labeltune.features import Prompter
    from labeltune.models import load_run
    from labeltune.prompts import load_template
    from labeltune.task import load_task

    run_dir = Path(cfg.run)
    train_cfg = load_run_config(run_dir)
    task = load_task(train_cfg.task)
    examples, _ = load_examples(run_dir / "data" / f"{cfg.split}.jsonl", task)
    if len(examples) < 10:
        raise ValueError(f"{cfg.split} split has {len(examples)} rows; calibration needs at least 10")
    model, tokenizer = load_run(run_dir)
    prompter = Prompter(tokenizer, load_template(train_cfg.template), task, train_cfg.max_length)
    predictions = predict(model, prompter, [ex.text for ex in examples], batch_size=cfg.batch_size, mode="score")
    probs, gold = [p.probs for p in predictions], [ex.label for ex in examples]
    temperature = fit_temperature(probs, gold)
    correct = [p.label == g for p, g in zip(predictions, gold)]

    def ece(t):
        return expected_calibration_error([max(apply_temperature(p, t).values()) for p in probs], correct)

    result = {
        "temperature": temperature,
        "split": cfg.split,
        "n": len(gold),
        "nll_before": nll(probs, gold),
        "nll_after": nll(probs, gold, temperature),
        "ece_before": ece(1.0),
        "ece_after": ece(temperature),
    }
    (run_dir / "calibration.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(
        f"temperature {temperature:.3f} on {cfg.split} (n={len(gold)}): NLL {result['nll_before']:.3f} -> "
        f"{result['nll_after']:.3f}, ECE {result['ece_before']:.3f} -> {result['ece_after']:.3f}"
    )
    return result
