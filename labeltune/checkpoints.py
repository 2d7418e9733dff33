"""Training checkpoints of a run: which are complete, which to keep, which epoch was best.

    runs/<name>/checkpoints/checkpoint-<step>/   written by the Trainer (adapter weights, optimizer,
                                                 scheduler, RNG state, trainer_state.json)
                                 .../labeltune.json  written last, atomically: the checkpoint is complete

The Trainer writes a checkpoint's files one after the other, so a kill during a save leaves a folder
that looks like a checkpoint and is not; only a folder with labeltune.json counts (resume ignores and
removes the others). The best epoch is read from the dev records of the training log (labeltune.train
adds one per epoch end), never from counters, so it is the same after a resume.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

PREFIX = "checkpoint-"
MARKER = "labeltune.json"
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt", "training_args.bin")
# best-epoch metrics: the dev record's key and whether higher is better
METRICS = {
    "macro_f1": ("dev_macro_f1", True),
    "accuracy": ("dev_accuracy", True),
    "score_mae": ("dev_score_mae", False),
    "loss": ("eval_loss", False),
}


def step_of(path: Path) -> int:
    return int(path.name.removeprefix(PREFIX))


def _folders(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    found = [
        p
        for p in ckpt_dir.iterdir()
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()
    ]
    return sorted(found, key=step_of)


def complete(ckpt_dir: Path) -> list[Path]:
    """The complete checkpoints (labeltune.json written), oldest first."""
    return [p for p in _folders(ckpt_dir) if (p / MARKER).is_file()]


def latest_complete(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint, where a resume starts; its JSON files checked first (check_json)."""
    done = complete(ckpt_dir)
    if not done:
        return None
    check_json(done[-1], done[-2] if len(done) > 1 else None)
    return done[-1]


def check_json(path: Path, earlier: Path | None) -> None:
    """Refuse, in one line naming the file and what to do, a checkpoint with a JSON file that does not parse
    (trainer_state.json, labeltune.json, adapter_config.json, ... cut short by a full disk or a partial
    copy): the Trainer would stop on it with a bare parser message naming no file."""
    for file in sorted(path.glob("*.json")):
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            start = (
                f"the checkpoint before it ({earlier.name})"
                if earlier
                else "the start (no earlier checkpoint)"
            )
            raise ValueError(
                f"{file} is damaged ({type(e).__name__}: {e}); delete {path} and run the same train "
                f"command again to resume from {start}"
            ) from None


def remove_incomplete(ckpt_dir: Path) -> list[Path]:
    """Delete checkpoint folders a kill left half-written; returns them."""
    broken = [p for p in _folders(ckpt_dir) if not (p / MARKER).is_file()]
    for path in broken:
        shutil.rmtree(path, ignore_errors=True)
    return broken


def write_json_atomic(path: Path, data: dict) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def mark_complete(path: Path, record: dict) -> None:
    write_json_atomic(path / MARKER, record)


def best_record(log_history: list[dict], metric: str) -> dict | None:
    """The dev record (one per epoch end) with the best `metric`; ties (common on a small dev split) go to
    the lower dev loss, then the earlier epoch. None without any."""
    key, higher = METRICS[metric]
    records = [r for r in log_history if key in r and r[key] is not None]
    if not records:
        return None
    return max(records, key=lambda r: (r[key] if higher else -r[key], -r.get("dev_loss", 0.0), -r["step"]))


def epochs_since_best(log_history: list[dict], metric: str) -> int:
    """Dev evaluations after the best one (early stopping counts these)."""
    best = best_record(log_history, metric)
    key = METRICS[metric][0]
    return 0 if best is None else sum(1 for r in log_history if key in r and r["step"] > best["step"])


def rotate(ckpt_dir: Path, keep: int, best_step: int | None, also_keep: frozenset[int] = frozenset()) -> None:
    """Keep the newest `keep` complete checkpoints, the best one and those of `also_keep` steps; delete the
    rest."""
    done = complete(ckpt_dir)
    for path in done[:-keep] if keep else done:
        if step_of(path) != best_step and step_of(path) not in also_keep:
            shutil.rmtree(path, ignore_errors=True)


def finish(ckpt_dir: Path) -> None:
    """After training: drop what only resuming needs (optimizer, scheduler, RNG) from the kept
    checkpoints; their adapter weights stay (the best epoch's among them)."""
    for path in _folders(ckpt_dir):
        for name in TRAINING_STATE:
            (path / name).unlink(missing_ok=True)
