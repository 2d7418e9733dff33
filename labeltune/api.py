"""Label texts from Python (a notebook, a script) with a trained run: what `labeltune predict` runs.

    import labeltune

    labeller = labeltune.load_run("runs/demo")               # score mode, the run's calibration applied
    for p in labeller.predict(["今日は最高の一日", "最悪のサービスだった"]):
        print(p.label, p.name, p.score, p.confidence)         # -1 negative 85 0.93

A run is loaded once (LoRA folded into the base, labeltune.engine's hf engine) and predicts any number
of batches. ``mode`` is a decode mode of labeltune.decode: ``score`` (default: label probabilities from
forward passes, always well-formed), ``constrained`` or ``generate`` (free generation + the strict
parser; a malformed answer has ``label`` None and says why in ``reason``). Exports (adapter, merged16)
load the same way, also from the Hugging Face Hub by repo id (``load_run("me/labeller")``,
``"me/labeller@v1"``: downloaded once into the Hugging Face cache, labeltune.run.locate_run).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from labeltune.config import MODES, SCORE_ESTIMATES
from labeltune.engine import load_engine
from labeltune.run import Run, load_calibration, open_run


@dataclass(frozen=True)
class Prediction:
    """One text's answer."""

    text: str  # the text labelled ("" for a missing one: None, NaN)
    label: str | None  # the label value the model writes ("-1", "ポジティブ"); None: malformed answer
    name: str | None  # the label's name in the task spec ("negative"); None with label
    score: int | None  # None for a task without a score, or a malformed answer
    confidence: float | None  # probability of the label (constrained and score modes; None in generate)
    probs: dict[str, float] | None  # every label's probability (constrained and score modes)
    ok: bool  # a well-formed answer
    reason: str  # why not ok ("" when ok): a parser reason, "no_eos" or "empty_input"
    truncated: bool  # the text was longer than the run's max_length and was labelled from its start


def as_text(value, index: int = 0) -> str:
    """A text to label: a str as it is, bytes decoded as UTF-8 (a leading BOM dropped), a number as written;
    a missing one (None, NaN: an empty cell of a pandas column) is "", answered as `labeltune label` answers
    an empty cell (label None, ok False, reason "empty_input"). Anything else is refused, naming its index."""
    if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):  # None, NaN
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"texts[{index}]: bytes that are not UTF-8 text (byte {value[e.start]:#04x} at offset "
                f"{e.start}); decode them first, e.g. data.decode('cp932')"
            ) from None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return str(value)
    raise ValueError(
        f"texts[{index}]: a {type(value).__name__}, not a text (str, UTF-8 bytes, or None for a missing one)"
    )


NOISY_LOGGERS = (
    "bitsandbytes.backends.cpu.ops",
    "kernels",
)  # notes at import that the CLI silences too (labeltune.cli)


@contextmanager
def quiet():
    """As quiet as the CLI (labeltune.cli.quiet_libraries) while labeltune loads a run and predicts, and
    the caller's settings as they were afterwards: no FutureWarning / DeprecationWarning from the libraries,
    no transformers progress bars or info/warning log lines ("Loading weights", deprecation notes), no
    bitsandbytes / kernels notes at import. Errors still raise."""
    import logging
    import warnings

    import transformers

    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    log = transformers.logging
    verbosity, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        log.set_verbosity_error()
        log.disable_progress_bar()
        try:
            yield
        finally:
            log.set_verbosity(verbosity)
            if bars:
                log.enable_progress_bar()
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


class Labeller:
    """A loaded run and the decode settings its predictions use (make one with load_run)."""

    def __init__(self, run: Run, engine, mode: str, settings: dict):
        self.run, self.engine, self.mode, self.settings = run, engine, mode, settings

    @property
    def labels(self) -> dict[str, str]:
        """Label value -> name, in the task's order."""
        return {lab.value: lab.name for lab in self.run.task.labels}

    def predict(self, texts: str | bytes | Iterable) -> list[Prediction]:
        """One Prediction per text, in order (a single str or bytes is one text); each text as as_text reads
        it."""
        texts = [texts] if isinstance(texts, (str, bytes, bytearray)) else list(texts)
        texts = [as_text(t, i) for i, t in enumerate(texts)]
        if not texts:
            return []
        names = self.labels
        with quiet():
            out = self.engine.predict(texts, self.mode, **self.settings)
        return [
            Prediction(
                text, p.label, names.get(p.label), p.score, p.confidence, p.probs, p.ok, p.reason, p.truncated
            )
            for text, p in zip(texts, out)
        ]


def load_run(
    path: str | Path,
    mode: str = "score",
    *,
    score_estimate: str = "expected",
    calibrated: bool = True,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    dtype: str = "auto",
    threads: int | None = None,
) -> Labeller:
    """A run directory (or export; or a Hub repo id org/name[@revision] an export was pushed to, where no
    such local path exists) ready to label texts: ``load_run(path).predict(texts)``.

    ``calibrated`` applies the run's calibration.json (temperature and label biases, as `labeltune label`
    does); ``dtype`` and ``threads`` are labeltune.engine's (compute precision, torch CPU threads)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of: {', '.join(MODES)}")
    if score_estimate not in SCORE_ESTIMATES:
        raise ValueError(f"score_estimate {score_estimate!r} is not one of: {', '.join(SCORE_ESTIMATES)}")
    run = open_run(path)
    temperature, biases = load_calibration(run.dir) if calibrated else (1.0, None)
    with quiet():
        engine = load_engine(run, "hf", dtype, threads, batch_size)
    settings = dict(
        temperature=temperature,
        score_estimate=score_estimate,
        label_bias=biases,
        max_new_tokens=max_new_tokens,
    )
    return Labeller(run, engine, mode, settings)
