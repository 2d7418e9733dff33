"""labeltune label: stream a CSV/TSV/JSONL of texts through a trained run into a labelled CSV.

    labeltune label --run runs/demo --input posts.csv --output labelled.csv [--text-column text]

Every input row yields exactly one output row, in input order, with all original columns kept and
``label, score, ok, reason, truncated, raw, confidence`` and one ``p_<label name>`` probability
column per label added (prefixed ``pred_`` if the input already has one of those names; confidence
and probabilities are empty in ``generate`` mode, which has none). Output is UTF-8 (BOM with ``--bom``) whatever the input encoding.

Rows are processed in chunks; after each chunk the output is flushed to disk and a sidecar
``<output>.progress.json`` records the rows and bytes done. A killed run, started again with the
same arguments, cuts the output back to the last recorded chunk and continues: the finished file is
byte-identical to an uninterrupted run. The sidecar is removed when the file is complete. An output
file that belongs to another run or input is never appended to (``--overwrite`` replaces it).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from itertools import islice
from pathlib import Path

from labeltune.config import LabelConfig

PREDICTION_COLUMNS = ("label", "score", "ok", "reason", "truncated", "raw", "confidence")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(run_dir: Path) -> str:
    """Digest of the run's trained weights: its adapter, or a merged export's (recorded at export time,
    where the weights may be many shards)."""
    weights = run_dir / "adapter" / "adapter_model.safetensors"
    if weights.is_file():
        return file_sha256(weights)
    info_path = run_dir / "model.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    if info.get("merged") and info.get("weights_sha256"):
        return info["weights_sha256"]
    if (run_dir / "model" / "model.safetensors").is_file():  # a merged export of an earlier version
        return file_sha256(run_dir / "model" / "model.safetensors")
    raise FileNotFoundError(f"{run_dir}: no trained adapter or merged model (run `labeltune train` first)")


def output_columns(input_columns: list[str], label_names: list[str]) -> list[str]:
    """Input columns + predictions (`pred_`-prefixed if a name clashes) + one probability column per label."""
    names = [*PREDICTION_COLUMNS, *(f"p_{n}" for n in label_names)]
    prefix = "pred_" if set(names) & set(input_columns) else ""
    added = [prefix + c for c in names]
    if set(added) & set(input_columns):
        raise ValueError(f"input already has columns {sorted(set(added) & set(input_columns))}; rename them")
    return [*input_columns, *added]


def _csv_bytes(rows: list[list]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _write_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state), encoding="utf-8")
    os.replace(tmp, path)


def _cell(value) -> str:
    return "" if value is None else str(value)


def _prob(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def main(cfg: LabelConfig) -> Path:
    from tqdm import tqdm

    from labeltune.config import TrainConfig, load_saved
    from labeltune.data import detect_encoding, iter_rows, read_columns
    from labeltune.task import load_task

    run_dir, source, output = Path(cfg.run), Path(cfg.input), Path(cfg.output)
    if not source.is_file():
        raise FileNotFoundError(f"no such input file: {source}")
    encoding = cfg.encoding or detect_encoding(source)
    columns = read_columns(source, encoding)
    if cfg.text_column not in columns:
        raise ValueError(f"{source}: no column {cfg.text_column!r}; columns found: {columns} (use --text-column)")
    train_cfg = load_saved(TrainConfig, run_dir / "config.yaml")
    task = load_task(train_cfg.task)
    header = output_columns(columns, [lab.name for lab in task.labels])
    identity = {
        "input_sha256": file_sha256(source),
        "weights_sha256": weights_sha256(run_dir),
        "settings": {k: getattr(cfg, k) for k in ("text_column", "encoding", "bom", "batch_size", "chunk_size", "max_new_tokens", "mode", "calibrated")},
        "calibration": (run_dir / "calibration.json").read_text(encoding="utf-8") if (run_dir / "calibration.json").is_file() else None,
    }
    state_path = output.with_name(output.name + ".progress.json")

    state = None
    if state_path.exists() and not cfg.overwrite:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if state["identity"] != identity:
            raise ValueError(
                f"{output} is a partial output of a different run, input or settings; "
                "refusing to append (pass --overwrite to start it again)"
            )
    elif output.exists() and not cfg.overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    if state is not None and (not output.exists() or output.stat().st_size < state["bytes"]):
        state = None  # the output was removed or cut by hand: start it again
    output.parent.mkdir(parents=True, exist_ok=True)
    if state is None or state["rows"] == 0:
        state = {"identity": identity, "rows": 0, "bytes": 0}
        _write_state(state_path, state)  # before the output, so a kill at any point is resumable
        with open(output, "wb") as f:
            f.write(("\ufeff" if cfg.bom else "").encode("utf-8") + _csv_bytes([header]))
            f.flush()
            os.fsync(f.fileno())
            state["bytes"] = f.tell()
        _write_state(state_path, state)

    from labeltune.decode import predict
    from labeltune.features import Prompter
    from labeltune.models import load_run
    from labeltune.prompts import load_template

    from labeltune.calibrate import load_temperature

    temperature = load_temperature(run_dir) if cfg.calibrated else 1.0
    model, tokenizer = load_run(run_dir, merge=True)  # LoRA folded in: no adapter overhead per call
    prompter = Prompter(tokenizer, load_template(train_cfg.template), task, train_cfg.max_length)

    total = sum(1 for _ in iter_rows(source, encoding))
    rows = islice(iter_rows(source, encoding), state["rows"], None)
    bar = tqdm(total=total, initial=state["rows"], unit="row", disable=not cfg.progress, desc="label")
    counts = {"ok": 0, "failed": 0}
    with open(output, "r+b") as f:
        f.seek(state["bytes"])
        f.truncate()
        while chunk := list(islice(rows, cfg.chunk_size)):
            texts = [row.get(cfg.text_column) for row in chunk]
            predictions = predict(model, prompter, texts, cfg.max_new_tokens, cfg.batch_size, cfg.mode, temperature)
            lines = []
            for row, p in zip(chunk, predictions):
                counts["ok" if p.ok else "failed"] += 1
                probs = [_prob(p.probs.get(lab.value)) if p.probs else "" for lab in task.labels]
                lines.append(
                    [_cell(row.get(c)) for c in columns]
                    + [_cell(p.label), _cell(p.score), p.ok, p.reason, p.truncated, p.raw, _prob(p.confidence), *probs]
                )
            f.write(_csv_bytes(lines))
            f.flush()
            os.fsync(f.fileno())
            state.update(rows=state["rows"] + len(chunk), bytes=f.tell())
            _write_state(state_path, state)
            bar.update(len(chunk))
    bar.close()
    state_path.unlink()
    print(f"labelled {state['rows']} rows -> {output} (this session: {counts['ok']} ok, {counts['failed']} not ok)")
    return output
