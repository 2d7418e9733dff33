"""The dev split decoded in score mode: the epoch-end record the best epoch is chosen by.

`dev_record` runs inside training on the hf backend (labeltune.callbacks.DevScore). On the unsloth backend
the model in the training process has Unsloth's forward, which score mode's cache handling is not built for
(run.check_not_patched_by_unsloth), so after training each epoch's checkpoint is scored here in a fresh
process, loaded the way evaluate loads the run: `python -m labeltune.devscore RUN CHECKPOINT` prints the
record as one JSON line (labeltune.train.score_checkpoints runs it).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from labeltune.data import load_examples
from labeltune.decode import predict
from labeltune.metrics import system_metrics
from labeltune.run import open_run


def dev_record(model, prompter, examples, batch_size: int) -> dict:
    """Dev macro-F1, accuracy and score MAE of `model` (score mode: always well-formed) and the seconds it
    took."""
    import torch

    started = time.time()
    training = model.training
    model.eval()
    with torch.no_grad():
        predictions = predict(model, prompter, [ex.text for ex in examples], None, batch_size, "score")
    model.train(training)
    task = prompter.task
    scores = system_metrics(
        [ex.label for ex in examples],
        [ex.score for ex in examples],
        predictions,
        task.label_values,
        task.score_ends,
        task.scored_labels,
    )
    return {
        "dev_macro_f1": scores["macro_f1"],
        "dev_accuracy": scores["accuracy"],
        "dev_score_mae": scores.get("score_mae"),
        "dev_seconds": round(time.time() - started, 2),
    }


def describe(record: dict) -> str:
    """An epoch's dev record in words (the training log's line)."""
    mae, loss = record.get("dev_score_mae"), record.get("dev_loss")
    return (
        f"epoch {record['epoch']:g}: dev macro-F1 {record['dev_macro_f1']:.3f}, accuracy "
        f"{record['dev_accuracy']:.3f}"
        + (f", score MAE {mae:.1f}" if mae is not None else "")
        + (f", loss {loss:.4f}" if loss is not None else "")
    )


def score_checkpoint(run_dir: str | Path, checkpoint: str | Path) -> dict:
    """dev_record of a training checkpoint of the run (its adapter and tokenizer on the run's base)."""
    run = open_run(run_dir)
    model, prompter = run.load(adapter=Path(checkpoint))
    examples = load_examples(run.split("dev"), run.task)[0]
    return dev_record(model, prompter, examples, run.config.batch_size or 16)


def main(argv: list[str] | None = None) -> None:
    run_dir, checkpoint = argv if argv is not None else sys.argv[1:]
    print(json.dumps(score_checkpoint(run_dir, checkpoint)), flush=True)


if __name__ == "__main__":
    main()
