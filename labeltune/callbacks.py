"""What labeltune adds to the Trainer's loop (transformers TrainerCallbacks, used by labeltune.train):

- DevScore: at each epoch end, the dev split decoded in score mode (one forward per post, always
  well-formed), its macro-F1, accuracy and score MAE added to the training log, and early stopping
  after `patience` evaluations without a better value of the chosen metric;
- Checkpoints: a checkpoint at every epoch end (besides --save-steps), marked complete once the Trainer
  has written all of it, the newest few and the best one kept (labeltune.checkpoints);
- Progress: a tqdm bar with ETA, loss and dev F1 on a terminal; plain lines otherwise (CI, log files,
  the notebook's child process).

Imports transformers at the top: import this module only where training runs, after Unsloth.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from labeltune import checkpoints
from labeltune.devscore import describe, dev_record


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class DevScore(TrainerCallback):
    """Dev macro-F1 / accuracy / score MAE at each epoch end, and early stopping on `metric`."""

    def __init__(self, prompter, examples, batch_size: int, metric: str, patience: int | None, say):
        self.prompter, self.examples, self.batch_size = prompter, examples, batch_size
        self.metric, self.patience, self.say = metric, patience, say

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        record = {
            "epoch": round(state.epoch or 0, 4),
            "step": state.global_step,
            **dev_record(model, self.prompter, self.examples, self.batch_size),
        }
        loss = (metrics or {}).get("eval_loss")
        if loss is not None:
            record["dev_loss"] = (
                loss  # breaks ties of the metric (not "eval_loss": that is the Trainer's record)
            )
        state.log_history.append(record)  # saved with the checkpoint (trainer_state.json), so kept on resume
        best = checkpoints.best_record(state.log_history, self.metric)
        waited = checkpoints.epochs_since_best(state.log_history, self.metric)
        if self.patience and waited >= self.patience:
            control.should_training_stop = True
            record["early_stop"] = True
        if state.is_world_process_zero:
            self.say(
                describe(record)
                + (" (best so far)" if best is record else f" (best: epoch {best['epoch']:g})")
                + (
                    f"; no better dev {self.metric} for {waited} epochs: stopping early"
                    if record.get("early_stop")
                    else ""
                )
            )
        return control


class EarlyStopOnLoss(TrainerCallback):
    """Early stopping on the dev loss (the unsloth backend, or --best-metric loss)."""

    def __init__(self, patience: int, say):
        self.patience, self.say = patience, say

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        waited = checkpoints.epochs_since_best(state.log_history, "loss")
        if waited >= self.patience:
            control.should_training_stop = True
            state.log_history[-1]["early_stop"] = True
            if state.is_world_process_zero:
                self.say(f"no better dev loss for {waited} epochs: stopping early")
        return control


class Checkpoints(TrainerCallback):
    """A checkpoint at every epoch end; each marked complete after the Trainer wrote it; rotation."""

    def __init__(self, ckpt_dir: Path, keep: int, metric: str, keep_epochs: bool = False):
        """`keep_epochs`: every epoch end's checkpoint stays too (the dev split is scored on them after
        training: labeltune.train.dev_scoring)."""
        self.ckpt_dir, self.keep, self.metric, self.keep_epochs = ckpt_dir, keep, metric, keep_epochs

    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return control
        path = self.ckpt_dir / f"{checkpoints.PREFIX}{state.global_step}"
        if path.is_dir():
            best = checkpoints.best_record(state.log_history, self.metric)
            checkpoints.mark_complete(
                path,
                {
                    "step": state.global_step,
                    "epoch": state.epoch,
                    "best_step": best["step"] if best else None,
                },
            )
            epochs = (
                frozenset(r["step"] for r in state.log_history if "eval_loss" in r)
                if self.keep_epochs
                else frozenset()
            )
            checkpoints.rotate(self.ckpt_dir, self.keep, best["step"] if best else None, epochs)
        return control


class Progress(TrainerCallback):
    """tqdm bar (terminal) or plain lines (anything else) with step, loss, learning rate and ETA."""

    def __init__(self, say, every: int):
        self.say, self.every = say, every
        self.bar = None
        self.started = time.time()
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.time(), state.global_step
        if state.is_world_process_zero and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc="training",
                unit="step",
                dynamic_ncols=True,
            )
        return control

    def _eta(self, state) -> str:
        done = state.global_step - self.first_step
        if done <= 0:
            return "?"
        return _duration((time.time() - self.started) / done * (state.max_steps - state.global_step))

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return control
        if self.bar is not None:
            dev = [r["dev_macro_f1"] for r in state.log_history if "dev_macro_f1" in r]
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", **({"dev_f1": f"{dev[-1]:.3f}"} if dev else {}))
        else:
            self.say(
                f"step {state.global_step}/{state.max_steps} (epoch {state.epoch:.2f}): "
                f"loss {logs['loss']:.4f}, lr {logs.get('learning_rate', 0):.2e}, "
                f"{_duration(time.time() - self.started)} elapsed, ETA {self._eta(state)}"
            )
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
        return control

    def write(self, line: str) -> None:
        """A line that does not break the bar."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, flush=True)
