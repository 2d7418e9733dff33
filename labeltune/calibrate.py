"""labeltune calibrate: fit a temperature for the label probabilities on the dev split.

    labeltune calibrate --run runs/demo          # -> runs/demo/calibration.json

Label probabilities (score and constrained modes) are p(label) at temperature 1; calibrated ones
are softmax(log p / T) over the labels. T is fitted by minimising the negative log-likelihood of
the gold labels on the dev split (a 1-D search over log T, labeltune.metrics), and `label` /
`evaluate` apply it when the run has a calibration.json.
"""

from __future__ import annotations

from labeltune.data import load_examples
from labeltune.decode import predict
from labeltune.metrics import apply_temperature, expected_calibration_error, fit_temperature, nll
from labeltune.run import open_run, save_temperature


def main(cfg) -> dict:
    run = open_run(cfg.run)
    examples, _ = load_examples(run.split(cfg.split), run.task)
    if len(examples) < 10:
        raise ValueError(f"{cfg.split} split has {len(examples)} rows; calibration needs at least 10")
    model, prompter = run.load()
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
    save_temperature(run.dir, result)
    print(
        f"temperature {temperature:.3f} on {cfg.split} (n={len(gold)}): NLL {result['nll_before']:.3f} -> "
        f"{result['nll_after']:.3f}, ECE {result['ece_before']:.3f} -> {result['ece_after']:.3f}"
    )
    return result
