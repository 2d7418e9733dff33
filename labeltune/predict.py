"""labeltune predict: label a few texts from the command line or stdin, one line each.

    labeltune predict --run runs/demo "今日は最高の一日" "最悪のサービスだった"
    cat posts.txt | labeltune predict --run runs/demo --json > labels.jsonl    # one text per line

Prints one line per text, in order: the label with its name, the score (tasks with one) and the
confidence (constrained and score modes), then the text; ``--json`` prints one JSON object per text
instead. Texts come from the arguments; with none, or ``-`` among them, from stdin (one per line, blank
lines skipped). For a file of posts with other columns, use `labeltune label`. The same code from
Python: ``labeltune.load_run(run).predict(texts)`` (labeltune.api).
"""

from __future__ import annotations

import io
import json
import sys
from typing import TextIO

from labeltune.api import Prediction, load_run
from labeltune.config import PredictConfig


def read_texts(texts: list[str] | None, stdin: TextIO) -> list[str]:
    """The texts given, with `-` (or no text at all) replaced by stdin's non-blank lines (stdin_lines)."""
    texts = list(texts or ["-"])
    if "-" in texts and stdin.isatty():
        raise ValueError(
            'no texts: give them after the options (labeltune predict --run R "text" ...) or pipe '
            "them in, one per line (cat posts.txt | labeltune predict --run R)"
        )
    for n, text in enumerate(texts, 1):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # bytes of the command line that were not UTF-8 (kept as surrogates)
            raise ValueError(f"text {n} of the command line is not UTF-8 text; give texts in UTF-8") from None
    lines = stdin_lines(stdin) if "-" in texts else []
    out = []
    for text in texts:
        out += lines if text == "-" else [text]
    if not out:
        raise ValueError("no texts to label: stdin was empty")
    return out


def stdin_lines(stdin: TextIO) -> list[str]:
    """stdin's non-blank lines (line ends \n, \r\n or \r), read as UTF-8 bytes whatever the locale, a leading
    BOM dropped; bytes that are not UTF-8 text (another encoding, a binary file) are refused in one line."""
    raw = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read()
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            raise ValueError(
                f"stdin: line {line} is not UTF-8 text (byte {raw[e.start]:#04x}); convert it first "
                "(iconv -f cp932 -t utf-8), or label the file with `labeltune label --input FILE` "
                "(it detects cp932 and UTF-16)"
            ) from None
    text = raw.removeprefix("\ufeff")
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ValueError(
            f"stdin: line {line} holds a NUL byte: binary data, not text; pipe in text, one post per line"
        )
    return [line.rstrip("\n") for line in io.StringIO(text, newline=None) if line.strip()]


def format_line(p: Prediction, width: int = 60) -> str:
    """`-1 (negative)  score 85  confidence 0.931  <text>`, tab-separated; a malformed answer says why."""
    if p.label is None:
        fields = [f"malformed ({p.reason})"]
    else:
        fields = [p.label if p.name in (None, p.label) else f"{p.label} ({p.name})"]
        if p.score is not None:
            fields.append(f"score {p.score}")
        if p.confidence is not None:
            fields.append(f"confidence {p.confidence:.3f}")
    text = " ".join(p.text.split())
    fields.append(text if len(text) <= width else text[:width] + "…")
    return "\t".join(fields)


def as_json(p: Prediction) -> str:
    record = {
        "label": p.label,
        "name": p.name,
        "score": p.score,
        "confidence": p.confidence,
        "probs": p.probs,
        "ok": p.ok,
        "reason": p.reason,
        "truncated": p.truncated,
        "text": p.text,
    }
    return json.dumps(record, ensure_ascii=False)


def main(cfg: PredictConfig, texts: list[str] | None = None) -> list[Prediction]:
    texts = read_texts(texts, sys.stdin)
    labeller = load_run(
        cfg.run,
        cfg.mode,
        score_estimate=cfg.score_estimate,
        calibrated=cfg.calibrated,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
    )
    predictions = labeller.predict(texts)
    for p in predictions:
        print(as_json(p) if cfg.json else format_line(p))
    return predictions
