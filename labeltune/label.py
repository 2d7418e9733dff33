"""labeltune label: stream a CSV/TSV/JSONL of texts through a trained run into a labelled CSV.

    labeltune label --run runs/demo --input posts.csv --output labelled.csv [--text-column text]

Every input row yields exactly one output row, in input order, with all original columns kept and
``label, score, score_greedy, ok, reason, truncated, raw, confidence`` and one ``p_<label name>``
probability column per label added (prefixed ``pred_`` if the input already has one of those names;
score_greedy, confidence and probabilities are empty in ``generate`` mode, which has none; in
``score`` mode ``score`` is the --score-estimate, expected by default). Output is UTF-8 (BOM with
``--bom``) whatever the input encoding.

The output is written to ``<output>.partial`` and moved into place only when every row is in it, so
an existing file at ``--output`` (replaced only with ``--overwrite``) stays intact until then. Rows
are processed in chunks; after each chunk the partial file is flushed to disk and a sidecar
``.<output name>.labeltune.json`` (hidden) records the rows and bytes done. A killed or interrupted run,
started again with the same arguments, cuts the partial file back to the last recorded chunk and continues:
the finished file is byte-identical to an uninterrupted run. When the file is complete the sidecar
says so (with the run, input and settings that made it), so the same command again is a no-op. A
partial output of another run, input or setting is never appended to; one that fails before its
first row is labelled leaves no partial file or sidecar behind. The input is never written: an
``--output`` that is the input file is refused before anything is opened for writing. One process at
a time writes an output: it holds the lock file ``<output>.lock`` (labeltune.lock) while it runs.

With ``--bom`` (Excel-bound output) cells that start with ``=``, ``+``, ``-``, ``@``, tab or CR and are
not numbers get a leading ``'``, so a post such as ``=HYPERLINK(...)`` is shown as text instead of
running as a formula (CSV injection); the count is reported. Plain UTF-8 output is written verbatim.
JSON inputs' nested values are written as JSON.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from labeltune.config import LabelConfig, TrainConfig, load_saved
from labeltune.data import ReadReport, check_input_file, iter_rows, read_columns, shown_columns
from labeltune.lock import hold
from labeltune.run import (
    CALIBRATION,
    CONFIG,
    file_sha256,
    load_calibration,
    locate_run,
    open_run,
    weights_sha256,
)

PREDICTION_COLUMNS = ("label", "score", "score_greedy", "ok", "reason", "truncated", "raw", "confidence")


def output_columns(input_columns: list[str], label_names: list[str], words: bool = False) -> list[str]:
    """Input columns + predictions (`pred_`-prefixed if a name clashes) + one probability column per label;
    `words`: the label column holds the training data's words, and label_value the task's values."""
    predicted = (
        (*PREDICTION_COLUMNS[:1], "label_value", *PREDICTION_COLUMNS[1:]) if words else PREDICTION_COLUMNS
    )
    names = [*predicted, *(f"p_{n}" for n in label_names)]
    prefix = "pred_" if set(names) & set(input_columns) else ""
    added = [prefix + c for c in names]
    if set(added) & set(input_columns):
        raise ValueError(f"input already has columns {sorted(set(added) & set(input_columns))}; rename them")
    return [*input_columns, *added]


def _csv_bytes(rows: list[list]) -> bytes:
    """Rows as UTF-8 CSV lines ending in \\n. The writer is told lines end in \\r\\n, so that it quotes
    every cell holding a CR as well as an LF (told \\n, it leaves a bare CR unquoted, which readers take
    for a line end: more rows on reading than were written); each row's \\r\\n is then written as \\n."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    lines = []
    for row in rows:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(row)
        lines.append(buffer.getvalue()[:-2] + "\n")
    return "".join(lines).encode("utf-8")


def _write_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state), encoding="utf-8")
    os.replace(tmp, path)


def _cell(value) -> str:
    """A CSV cell of an input value: strings as they are, nested JSON values and booleans as JSON."""
    if value is None:
        return ""
    if isinstance(value, (dict, list, bool)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _prob(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def neutralise_formula(cell: str) -> str:
    """A cell Excel would run as a formula, made text with a leading apostrophe (OWASP CSV injection);
    numbers such as -1 are left as they are."""
    if cell.startswith(FORMULA_START) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def check_paths(source: Path, output: Path) -> None:
    """Refuse, before anything is written: an output that is the input (also through `..` or a link), an
    output that is a folder, a folder that cannot be written."""
    if output.is_dir():
        raise ValueError(f"--output {output} is a folder; give a file name, e.g. {output / 'labelled.csv'}")
    same = output.resolve() == source.resolve() or (output.exists() and os.path.samefile(output, source))
    if same:
        raise ValueError(
            f"--output {output} is the input file {source}; labeltune never writes its input: "
            "choose another output file"
        )
    parent = output.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise ValueError(
            f"--output {output}: cannot write in {parent} (permission denied); choose another folder"
        )


def resume_state(
    state_path: Path, partial: Path, output: Path, identity: dict, overwrite: bool
) -> dict | str | None:
    """What to do with an earlier attempt at this output: "complete" (the same command already finished:
    nothing to do), its progress state (resume it), or None (start afresh). Refuses to append to a
    partial output of another run, input or setting, and to replace an existing output, unless
    `overwrite`."""
    state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else None
    if state is not None and state.get("complete"):
        done = output.is_file() and output.stat().st_size == state["bytes"]
        if done and state["identity"] == identity and not overwrite:
            print(
                f"{output} is already complete ({state['rows']} rows, same run, input and settings): "
                "nothing to do"
            )
            return "complete"
        state = None  # made by another command, changed since, or to be replaced: not ours to resume
    elif state is not None and state["identity"] != identity:
        if not overwrite:
            raise ValueError(
                f"{partial} is a partial output of a different run, input or settings; refusing to append "
                "(pass --overwrite to start it again)"
            )
        state = None
    if state is None and output.exists() and not overwrite:
        raise FileExistsError(
            f"{output} exists; pass --overwrite to replace it (it is replaced only once the new "
            "output is complete), or choose another --output"
        )
    if state is not None and (not partial.is_file() or partial.stat().st_size < state["bytes"]):
        state = None  # the partial file was removed or cut by hand: start again
    return state


def text_chunks(cfg: LabelConfig, start: int) -> Iterator[list]:
    """The texts of the input's rows from row `start` on, `chunk_size` rows at a time (the checkpoint
    unit)."""
    rows = islice(iter_rows(Path(cfg.input), cfg.encoding), start, None)
    while chunk := list(islice(rows, cfg.chunk_size)):
        yield [row.get(cfg.text_column) for row in chunk]


def predicted_chunks(cfg: LabelConfig, run, engine, settings: dict, start: int) -> Iterator[list]:
    """The predictions of each chunk from row `start` on, in order: by `engine` in this process, or, with
    --ray, by replicas on a Ray cluster (labeltune.ray_label; the same chunks, so the same predictions)."""
    if cfg.ray:
        from labeltune.ray_label import predict_chunks

        yield from predict_chunks(
            cfg.ray,
            cfg.replicas,
            str(run.dir),
            cfg.engine,
            cfg.dtype,
            cfg.threads,
            cfg.batch_size,
            settings,
            list(text_chunks(cfg, start)),
        )
        return
    for texts in text_chunks(cfg, start):
        yield engine.predict(texts, **settings)


# the settings an output records (output_identity): another value makes another output
SETTINGS = (
    "text_column",
    "encoding",
    "bom",
    "batch_size",
    "chunk_size",
    "max_new_tokens",
    "mode",
    "score_estimate",
    "calibrated",
    "engine",
    "dtype",
)


@dataclass(frozen=True)
class OutputFiles:
    """--output and the files beside it while it is made: the rows so far (``<output>.partial``), the
    sidecar recording progress and then completion (``.<output name>.labeltune.json``) and the lock."""

    output: Path

    def _beside(self, suffix: str) -> Path:
        return self.output.with_name(self.output.name + suffix)

    @property
    def partial(self) -> Path:
        return self._beside(".partial")

    @property
    def state(self) -> Path:
        """A hidden file (``.<output name>.labeltune.json``), so a finished output has no visible sidecar; one
        an earlier version left beside the output (``<output>.labeltune.json``) is still read and updated."""
        legacy = self._beside(".labeltune.json")
        hidden = self.output.with_name("." + self.output.name + ".labeltune.json")
        return legacy if legacy.is_file() and not hidden.exists() else hidden

    @property
    def lock(self) -> Path:
        return self._beside(".lock")


@dataclass
class Tally:
    """What this session labelled: answers that parsed and did not, texts cut to the run's max_length,
    cells --bom neutralised, and rows per predicted label (None: no label)."""

    ok: int = 0
    failed: int = 0
    truncated: int = 0
    neutralised: int = 0
    per_label: Counter = field(default_factory=Counter)

    def count(self, prediction, neutralised: int) -> None:
        self.ok += bool(prediction.ok)
        self.failed += not prediction.ok
        self.truncated += prediction.truncated
        self.neutralised += neutralised
        self.per_label[prediction.label] += 1


def main(cfg: LabelConfig) -> Path:
    """Label cfg.input into cfg.output (the module docstring says how). One process at a time writes an
    output: it holds the lock file ``<output>.lock`` (labeltune.lock) while it runs, and a second one is
    refused naming the pid that holds it."""
    source, files = Path(cfg.input), OutputFiles(Path(cfg.output))
    check_input_file(source, cfg.encoding)
    check_paths(source, files.output)
    with hold(files.lock, f"--output {files.output}"):
        columns = read_columns(source, cfg.encoding)
        cfg = replace(cfg, run=str(locate_run(cfg.run)))  # a Hub repo id: its snapshot, downloaded once
        cfg = with_text_column(cfg, source, columns)
        total, report = count_rows(source, cfg.encoding)
        run = open_run(Path(cfg.run))
        words = run.label_words()  # the training data's words for the labels ({}: it wrote the values)
        header = output_columns(columns, [lab.name for lab in run.task.labels], bool(words))
        identity = output_identity(cfg, source, run.dir)
        state = resume_state(files.state, files.partial, files.output, identity, cfg.overwrite)
        if state == "complete":
            return files.output
        # the model and the calibration are loaded before anything is written, so a run or a setting that
        # cannot work writes nothing
        engine = load_label_engine(cfg, run)
        settings = decode_settings(cfg, run.dir)
        if state is None or state["rows"] == 0:  # no rows of an earlier attempt to keep
            state = {
                "identity": identity,
                "rows": 0,
                "bytes": 0,
                "complete": False,
                "output": files.output.name,
            }
        tally = label_rows(
            cfg,
            run,
            engine,
            settings,
            files=files,
            state=state,
            header=header,
            columns=columns,
            total=total,
            words=words,
        )
        complete(files, state, total, source)
        print_summary(run, files.output, state["rows"], tally, report)
    return files.output


def with_text_column(cfg: LabelConfig, source: Path, columns: list[str]) -> LabelConfig:
    """cfg with its text column: --text-column, else the column the run was trained on (its config.yaml),
    as the verbs' hints assume. Refuses an input without that column."""
    if cfg.text_column is None:  # the input is checked before the run (its problems are said first), so a
        # missing run leaves "text"
        saved = Path(cfg.run) / CONFIG
        trained = load_saved(TrainConfig, saved).text_column if saved.is_file() else "text"
        cfg = replace(cfg, text_column=trained)
    if cfg.text_column not in columns:
        raise ValueError(
            f"{source}: no column {cfg.text_column!r}; columns found: {shown_columns(columns)} "
            "(use --text-column)"
        )
    return cfg


def count_rows(source: Path, encoding: str | None) -> tuple[int, ReadReport]:
    """The input's rows, counted by reading the whole file, so that its shape is checked and its warnings
    said (on stderr) now, not after minutes of labelling; with the report of that reading."""
    report = ReadReport(str(source))
    total = sum(1 for _ in iter_rows(source, encoding, report))
    for warning in report.warnings():
        print(f"labeltune: warning: {warning}", file=sys.stderr)
    return total, report


def output_identity(cfg: LabelConfig, source: Path, run_dir: Path) -> dict:
    """What makes an output this output: the input's and the weights' hashes, the SETTINGS and the run's
    calibration. A partial output of another identity is never appended to (resume_state)."""
    calibration = run_dir / CALIBRATION
    return {
        "input_sha256": file_sha256(source),
        "weights_sha256": weights_sha256(run_dir),
        "settings": {k: getattr(cfg, k) for k in SETTINGS},
        "calibration": calibration.read_text(encoding="utf-8") if calibration.is_file() else None,
    }


def load_label_engine(cfg: LabelConfig, run):
    """The engine that labels in this process, its template checked before the model loads; with --ray,
    None once the cluster is connected to (its replicas load their own)."""
    if cfg.ray:
        from labeltune.ray_label import connect

        connect(cfg.ray)
        return None
    from labeltune.engine import auto_threads, load_engine
    from labeltune.models import cuda_available

    run.template()  # a template that may not run is refused before the model loads
    threads, note = cfg.threads, f"{cfg.threads} CPU threads" if cfg.threads else ""
    if threads is None and cfg.engine == "hf" and not cuda_available():
        threads, note = auto_threads()  # torch's default (every core) collapses when other work holds one
    print(
        f"label: loading {run.dir} on the {cfg.engine} engine" + (f", {note}" if note else ""),
        file=sys.stderr,
        flush=True,
    )
    engine = load_engine(run, cfg.engine, cfg.dtype, threads, cfg.batch_size)
    if cfg.dtype == "auto" and getattr(engine, "precision", None) == "bf16" and not cuda_available():
        print(
            "label: computing in bf16, native on this CPU (AMX/AVX512-BF16); --dtype fp32 for fp32",
            file=sys.stderr,
            flush=True,
        )
    return engine


def decode_settings(cfg: LabelConfig, run_dir: Path) -> dict:
    """The engine's predict settings: mode, score estimate, answer length, and the run's calibration
    (temperature and label biases) with --calibrated."""
    temperature, biases = load_calibration(run_dir) if cfg.calibrated else (1.0, None)
    return {
        "mode": cfg.mode,
        "temperature": temperature,
        "score_estimate": cfg.score_estimate,
        "label_bias": biases,
        "max_new_tokens": cfg.max_new_tokens,
    }


def label_rows(
    cfg: LabelConfig,
    run,
    engine,
    settings: dict,
    *,
    files: OutputFiles,
    state: dict,
    header: list[str],
    columns: list[str],
    total: int,
    words: dict[str, str],
) -> Tally:
    """Label the rows after the `state["rows"]` already done into the partial output, a chunk at a time:
    each chunk's rows are written, flushed to disk and recorded in `state` (and its sidecar) before the
    next. A fresh `state` (no rows) first gets a partial file holding the header; if it fails before its
    first row is labelled, neither file is left behind. Ctrl-C says how to continue and exits 130.
    Returns this session's tally."""
    fresh = state["rows"] == 0
    bar = tqdm(total=total, initial=state["rows"], unit="row", disable=not cfg.progress, desc="label")
    tally = Tally()
    try:
        if fresh:
            _start_partial(files.state, files.partial, state, header, cfg.bom)
        rows = islice(iter_rows(Path(cfg.input), cfg.encoding), state["rows"], None)
        results = predicted_chunks(cfg, run, engine, settings, state["rows"])
        with open(files.partial, "r+b") as f:
            f.seek(state["bytes"])
            f.truncate()
            for predictions in results:
                chunk = list(islice(rows, len(predictions)))
                lines = []
                for row, p in zip(chunk, predictions):
                    cells, neutralised = _output_row(row, p, columns, run.task, cfg.bom, words)
                    tally.count(p, neutralised)
                    lines.append(cells)
                f.write(_csv_bytes(lines))
                f.flush()
                os.fsync(f.fileno())
                state.update(rows=state["rows"] + len(chunk), bytes=f.tell())
                _write_state(files.state, state)
                bar.update(len(chunk))
    except BaseException as e:
        bar.close()
        if fresh and state["rows"] == 0:  # nothing labelled: leave nothing of this attempt behind
            files.partial.unlink(missing_ok=True)
            files.state.unlink(missing_ok=True)
        if isinstance(e, KeyboardInterrupt):
            print(
                f"labeltune: stopped after {state['rows']} of {total} rows; run the same command to continue",
                file=sys.stderr,
            )
            raise SystemExit(130) from None
        raise
    bar.close()
    return tally


def complete(files: OutputFiles, state: dict, total: int, source: Path) -> None:
    """The partial output moved into place once it holds every row, and its sidecar marked complete."""
    if state["rows"] != total:
        raise RuntimeError(
            f"{source}: {total} rows counted but {state['rows']} read; the file changed while labelling"
        )
    os.replace(files.partial, files.output)
    state["complete"] = True
    _write_state(files.state, state)


def print_summary(run, output: Path, rows: int, tally: Tally, report: ReadReport) -> None:
    """The rows labelled and this session's answers per label, what to do next, then the input's warnings
    again, truncated texts and neutralised cells (stderr)."""
    print(f"labelled {rows} rows -> {output} (this session: {tally.ok} ok, {tally.failed} not ok)")
    per_label = tally.per_label
    if per_label:
        shares = [f"{lab.value} ({lab.name}) {per_label[lab.value]}" for lab in run.task.labels]
        if per_label[None]:
            shares.append(f"no label {per_label[None]}")
        print("labels this session: " + ", ".join(shares))
    print(
        f"next: read a few rows of {output} by hand; to measure these labels against posts you labelled "
        f"yourself: labeltune evaluate --run {run.dir} --data your_labelled.csv"
    )
    for warning in report.warnings():
        print(f"labeltune: warning: {warning}", file=sys.stderr)
    if tally.truncated:
        print(
            f"labeltune: warning: {tally.truncated} texts were longer than the run's max_length "
            f"({run.config.max_length} tokens with the prompt) and were labelled from their start "
            "(truncated=True)",
            file=sys.stderr,
        )
    if tally.neutralised:
        print(
            f"labeltune: note: {tally.neutralised} cells starting with =, +, -, @ were prefixed with ' so "
            "Excel shows them as text (--bom output)",
            file=sys.stderr,
        )


def _start_partial(state_path: Path, partial: Path, state: dict, header: list[str], bom: bool) -> None:
    """A new partial output holding the header, and the state recording it (written first, so a kill at
    any point is resumable)."""
    _write_state(state_path, state)
    with open(partial, "wb") as f:
        f.write(("\ufeff" if bom else "").encode("utf-8") + _csv_bytes([header]))
        f.flush()
        os.fsync(f.fileno())
        state["bytes"] = f.tell()
    _write_state(state_path, state)


def one_line(text: str) -> str:
    """The model's raw answer on one line (line breaks written as \\n), so the cell does not span lines."""
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


def _output_row(
    row: dict, p, columns: list[str], task, bom: bool, words: dict | None = None
) -> tuple[list, int]:
    """The output cells of one input row and its prediction, and how many of them were neutralised: with
    `bom`, the input's cells and the raw answer are made safe from running as formulas."""
    texts = [*(_cell(row.get(c)) for c in columns), one_line(_cell(p.raw))]
    shown = [neutralise_formula(text) for text in texts] if bom else texts
    *cells, raw = shown
    probs = [_prob(p.probs.get(lab.value)) if p.probs else "" for lab in task.labels]
    row_cells = [
        *cells,
        *([_cell(words.get(p.label, p.label)), _cell(p.label)] if words else [_cell(p.label)]),
        _cell(p.score),
        _cell(p.score_greedy),
        p.ok,
        p.reason,
        p.truncated,
        raw,
        _prob(p.confidence),
        *probs,
    ]
    return row_cells, sum(a != b for a, b in zip(texts, shown))
