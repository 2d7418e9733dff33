"""labeltune calibrate: fit a temperature for the label probabilities and per-label biases on the dev split.

    labeltune calibrate --run runs/demo          # -> runs/demo/calibration.json

Label probabilities (score and constrained modes) are p(label) at temperature 1; calibrated ones
are softmax(log p / T) over the labels. T is fitted by minimising the negative log-likelihood of
the gold labels on the dev split (a 1-D search over log T, labeltune.metrics). Then per-label biases
on the temperature-scaled log-probabilities are fitted to maximise dev macro-F1 (coordinate search: a
prior correction for a model that under-predicts a class, typically neutral). `label` / `evaluate`
apply both in score mode when the run has a calibration.json (`--calibrated false`: neither).
"""

from __future__ import annotations

from labeltune.data import load_examples
from labeltune.decode import predict
from labeltune.metrics import (
    apply_temperature,
    argmax_label,
    classification_metrics,
    expected_calibration_error,
    fit_label_biases,
    fit_temperature,
    nll,
)
from labeltune.run import CALIBRATION, open_run, save_temperature


def main(cfg) -> dict:
    run = open_run(cfg.run, writes="calibrate")
    examples, _ = load_examples(
        run.held_split(
            cfg.split,
            "calibrate the run it was exported from (an export copies "
            "its calibration.json), or export it again with --include-data",
        ),
        run.task,
    )
    if len(examples) < 10:
        raise ValueError(f"{cfg.split} split has {len(examples)} rows; calibration needs at least 10")
    model, prompter = run.load()
    predictions = predict(
        model, prompter, [ex.text for ex in examples], batch_size=cfg.batch_size, mode="score"
    )
    probs, gold = [p.probs for p in predictions], [ex.label for ex in examples]
    temperature = fit_temperature(probs, gold)
    correct = [p.label == g for p, g in zip(predictions, gold)]

    def ece(t):
        return expected_calibration_error([max(apply_temperature(p, t).values()) for p in probs], correct)

    labels = run.task.label_values
    scaled = [apply_temperature(p, temperature) for p in probs]
    biases = fit_label_biases(scaled, gold, labels) if cfg.biases else None
    before = classification_metrics(gold, [argmax_label(p) for p in scaled], labels)
    after = classification_metrics(gold, [argmax_label(p, biases) for p in scaled], labels)
    result = {
        "temperature": temperature,
        "biases": biases,
        "split": cfg.split,
        "n": len(gold),
        "nll_before": nll(probs, gold),
        "nll_after": nll(probs, gold, temperature),
        "ece_before": ece(1.0),
        "ece_after": ece(temperature),
        "macro_f1_before": before["macro_f1"],
        "macro_f1_after": after["macro_f1"],
        "recall_before": {lab: c["recall"] for lab, c in before["per_class"].items()},
        "recall_after": {lab: c["recall"] for lab, c in after["per_class"].items()},
    }
    save_temperature(run.dir, result)
    print(
        f"temperature {temperature:.3f} on {cfg.split} (n={len(gold)}): NLL {result['nll_before']:.3f} -> "
        f"{result['nll_after']:.3f}, ECE {result['ece_before']:.3f} -> {result['ece_after']:.3f}"
    )
    if biases is not None:
        names = {lab.value: lab.name for lab in run.task.labels}
        recall = ", ".join(
            f"{names[lab]} {result['recall_before'][lab]:.2f} -> {result['recall_after'][lab]:.2f}"
            for lab in labels
        )
        print(
            f"label biases {', '.join(f'{names[k]} {v:+.1f}' for k, v in biases.items())}: dev macro-F1 "
            f"{before['macro_f1']:.3f} -> {after['macro_f1']:.3f}; recall {recall}"
        )
    print(
        f"wrote {run.dir / CALIBRATION}; next: labeltune evaluate --run {run.dir} --mode score (applies it), "
        f"then labeltune label --run {run.dir} --input posts.csv --output labelled.csv --mode score"
    )
    return result
