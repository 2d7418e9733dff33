"""Reading rows and turning them into Examples.

Readers stream CSV/TSV (UTF-8, UTF-8 with BOM, UTF-16 with BOM, CP932/Shift_JIS; detected or
given) and JSONL. ``load_examples`` maps columns to ``Example`` and reports every dropped row with a
reason. Splitting and the leakage check live in labeltune.splits.
"""

from __future__ import annotations

import codecs
import csv
import json
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from labeltune.lock import FOLDER_LOCK
from labeltune.task import TaskSpec

SPLITS = ("train", "dev", "test")
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


@dataclass
class Example:
    text: str
    label: str
    score: int | None = None
    meta: dict = field(default_factory=dict)  # the row's other columns, kept through to outputs
    written: str | None = field(default=None, compare=False)  # the label as the data spelt it ("positive")


# ---------------------------------------------------------------- reading

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # posts longer than the csv module's 131,072 default

SPREADSHEET_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods", ".numbers")
COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"(\xb5/\xfd": "zstd"}
BINARY = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF-": "a PDF",
    b"\x7fELF": "a program",
}


@dataclass
class ReadReport:
    """What reading a file changed or doubted, for the warnings at the end of a command."""

    path: str
    short_rows: list[int] = field(
        default_factory=list
    )  # lines of rows with fewer cells than the header (filled)
    long_cells: list[int] = field(
        default_factory=list
    )  # lines where one cell spans lines that look like rows
    replaced: int = 0  # characters not decodable in the given --encoding, replaced by U+FFFD
    replaced_lines: list[int] = field(default_factory=list)  # the lines where they were

    def count_replaced(self, line: int, text: str) -> None:
        if "\ufffd" in text:
            self.replaced += text.count("\ufffd")
            self.replaced_lines.append(line)

    def warnings(self) -> list[str]:
        out = []
        if self.short_rows:
            out.append(
                f"{self.path}: {len(self.short_rows)} rows have fewer cells than the header (lines "
                f"{_lines(self.short_rows)}); their missing cells were read as empty"
            )
        if self.long_cells:
            out.append(
                f"{self.path}: {len(self.long_cells)} cells run over several lines that look like rows "
                f"(lines {_lines(self.long_cells)}): a quote may be unbalanced there, merging rows into one "
                "cell"
            )
        if self.replaced:
            out.append(
                f"{self.path}: {self.replaced} characters could not be decoded in the given encoding and "
                f"were replaced by U+FFFD (lines {_lines(self.replaced_lines)}); if that is not the file's "
                "encoding, pass the right --encoding"
            )
        return out


def _lines(numbers: list[int], shown: int = 5) -> str:
    return ", ".join(map(str, numbers[:shown])) + (
        f" and {len(numbers) - shown} more" if len(numbers) > shown else ""
    )


def check_input_file(path: str | Path, encoding: str | None = None) -> Path:
    """The path of a readable text table; spreadsheets, compressed files, other binary files (NUL bytes in
    the first 8 KiB, unless UTF-16/32 with a BOM or given as `encoding`), folders and an unknown
    `encoding` are refused in one line with what to do instead."""
    path = Path(path)
    try:
        codec = codecs.lookup(encoding).name if encoding else None
    except LookupError:
        raise ValueError(f"unknown --encoding {encoding!r}; e.g. utf-8, utf-8-sig, cp932, utf-16") from None
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a CSV, TSV or JSONL file")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, "rb") as f:
        head = f.read(8192)
    if path.suffix.lower() in SPREADSHEET_SUFFIXES or head.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):
        raise ValueError(
            f"{path} is a spreadsheet or zip file, not a text table: save it as CSV UTF-8 "
            "(Excel: File > Save As > CSV UTF-8) and pass the .csv file"
        )
    for magic, kind in COMPRESSED.items():
        if head.startswith(magic):
            raise ValueError(
                f"{path} is {kind}-compressed: decompress it first (e.g. gunzip -k {path}) and pass the "
                "result"
            )
    kind = next((kind for magic, kind in BINARY.items() if head.startswith(magic)), None)
    wide = head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or (codec or "").startswith(
        ("utf-16", "utf-32")
    )
    if kind is not None or (b"\x00" in head and not wide):
        raise ValueError(
            f"{path} is not a text file (CSV/TSV/JSONL): it is {kind or 'binary (it holds NUL bytes)'}; "
            "give the table as CSV UTF-8"
            + ("" if kind else " (a UTF-16 file without a BOM: pass --encoding utf-16-le)")
        )
    return path


def shown_columns(columns: list[str], shown: int = 20, width: int = 40) -> str:
    """Column names for a message, each cut to `width` characters and at most `shown` of them."""
    names = [repr(c if len(c) <= width else c[:width] + "...") for c in map(str, columns[:shown])]
    more = f", and {len(columns) - shown} more" if len(columns) > shown else ""
    return "[" + ", ".join(names) + more + "]"


def _first_non_utf8_lines(path: Path) -> tuple[int | None, int | None]:
    """(first line that is not valid UTF-8, first non-ASCII line that is), 1-based; None where none."""
    bad = good = None
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if line.isascii():
                continue
            try:
                line.decode("utf-8")
                good = good or lineno
            except UnicodeDecodeError:
                bad = bad or lineno
            if bad and good:
                break
    return bad, good


def detect_encoding(path: str | Path) -> str:
    """BOM if present; else UTF-8 if the whole file decodes as UTF-8; else CP932 if every non-ASCII line
    fails UTF-8 and the file decodes as CP932. A file that mixes encodings (some lines UTF-8, some
    not) is refused with the first line of each kind: decoding it either way would garble rows. Each
    file version (path, size, mtime) is read for this once per process: every reader of it asks again."""
    path = check_input_file(path)
    stat = path.stat()
    return _detect_encoding(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _detect_encoding(name: str, size: int, mtime_ns: int) -> str:
    path = Path(name)
    with open(path, "rb") as f:
        head = f.read(4)
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    if _decodes(path, "utf-8"):
        return "utf-8"
    bad, good = _first_non_utf8_lines(path)
    if good is not None:
        raise ValueError(
            f"{path}: mixed encodings: line {bad} is not UTF-8 but line {good} is; fix line {bad} (or save "
            "the whole file as UTF-8), or pass --encoding to read it in one encoding with undecodable "
            "characters replaced"
        )
    if _decodes(path, "cp932"):
        return "cp932"
    raise ValueError(f"{path}: line {bad} is not UTF-8, UTF-16 or CP932; pass --encoding")


def _decodes(path: Path, encoding: str) -> bool:
    decoder = codecs.getincrementaldecoder(encoding)()
    with open(path, "rb") as f:
        try:
            while chunk := f.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".json")


def _open_text(path: Path, encoding: str | None):
    """(text file, whether the encoding was given): a given encoding reads with replacement (counted)."""
    if encoding:
        return open(
            path, encoding=encoding, errors="replace", newline="" if not _is_jsonl(path) else None
        ), True
    return open(path, encoding=detect_encoding(path), newline="" if not _is_jsonl(path) else None), False


def _check_header(path: Path, header: list[str]) -> None:
    empty = [i + 1 for i, name in enumerate(header) if not name.strip()]
    if empty:
        raise ValueError(
            f"{path}: column {empty[0]} of the header has no name; name every column "
            "(from pandas: to_csv(..., index=False))"
        )
    seen: dict[str, int] = {}
    for i, name in enumerate(header, 1):
        if name in seen:
            raise ValueError(
                f"{path}: columns {seen[name]} and {i} are both named {shown_columns([name])[1:-1]}; "
                "rename one (their cells would be merged)"
            )
        seen[name] = i


def read_columns(path: str | Path, encoding: str | None = None) -> list[str]:
    """Column names of a CSV/TSV (its header, checked: named, unique) or JSONL (every key of every
    record, in first-seen order)."""
    path = check_input_file(path, encoding)
    if _is_jsonl(path):
        columns: dict[str, None] = {}
        for row in iter_rows(path, encoding):
            columns.update(dict.fromkeys(row))
        return list(columns)
    f, _ = _open_text(path, encoding)
    with f:
        header = next(csv.reader(f, delimiter=_delimiter(path)), [])
    _check_header(path, header)
    return header


def iter_rows(
    path: str | Path, encoding: str | None = None, report: ReadReport | None = None
) -> Iterator[dict]:
    """Stream rows as dicts of strings (CSV/TSV) or JSON values (JSONL), in file order.

    A CSV row with more cells than the header is an error naming its line (its extra cells would be
    lost), as is a quoted cell that never closes or has text after its closing quote (an unbalanced
    quote: the rows after it would be merged into one cell). A row with fewer cells is read with empty
    cells and noted in `report`, as are quoted cells that run over lines looking like rows (a quote that
    may be unbalanced, closed by another one further on) and characters replaced in a given encoding,
    with their lines."""
    path = check_input_file(path, encoding)
    report = report if report is not None else ReadReport(str(path))
    f, given = _open_text(path, encoding)
    with f:
        if _is_jsonl(path):
            for lineno, line in enumerate(f, 1):
                if given:
                    report.count_replaced(lineno, line)
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{lineno}: not a JSON object: {e}") from None
                    if not isinstance(record, dict):
                        raise ValueError(f"{path}:{lineno}: not a JSON object")
                    yield record
            return
        delimiter = _delimiter(path)
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        records = _records(path, reader)
        _, header = next(records, (1, None))
        if header is None:
            return
        _check_header(path, header)
        if given:
            report.count_replaced(1, "".join(header))
        width = len(header)
        for line, cells in records:
            if not cells:  # a blank line
                continue
            if len(cells) > width:
                raise ValueError(
                    f"{path}:{line}: {len(cells)} cells but the header has {width}; quote cells that "
                    "contain the delimiter, or fix the row (its extra cells would be lost)"
                )
            if len(cells) < width:
                report.short_rows.append(line)
                cells = cells + [""] * (width - len(cells))
            if reader.line_num > line and any(_looks_like_rows(c, delimiter, width) for c in cells):
                report.long_cells.append(line)
            if given:
                report.count_replaced(line, "".join(cells))
            yield dict(zip(header, cells))


def _records(path: Path, reader) -> Iterator[tuple[int, list[str]]]:
    """(the line a record starts on, its cells) of each record of a strict csv reader; a quote the csv
    module cannot close is an error naming the line where its record starts."""
    start = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            end = reader.line_num
            if "unexpected end of data" in str(e):
                raise ValueError(
                    f"{path}:{start}: a quoted cell in the row starting on this line is never closed (the "
                    f"file ends inside it, {end - start} lines further on); close the quote, and write a "
                    'quote inside a quoted cell twice ("")'
                ) from None
            where = "" if end == start else f" at line {end}, swallowing the lines between into one cell"
            raise ValueError(
                f"{path}:{start}: a quoted cell in the row starting on this line has text after its "
                f"closing quote{where} ({e}); a quote is unbalanced: close it where the cell ends, and "
                'write a quote inside a quoted cell twice ("")'
            ) from None
        yield start, cells
        start = reader.line_num + 1


def _looks_like_rows(cell: str, delimiter: str, width: int) -> bool:
    """Whether a multi-line cell holds two or more lines with the delimiter count of a whole row."""
    if width < 2 or "\n" not in cell:
        return False
    return sum(line.count(delimiter) >= width - 1 for line in cell.split("\n")[1:]) >= 2


# ---------------------------------------------------------------- examples


def score_from_flags(flags: list[int], max_level: int = 3) -> int:
    """Toxicity score from annotators' severity flags (each 0..max_level): round(100 * mean / max_level).

    Used for the bundled sample (five annotators, levels 0 none / 1 rude / 2 abusive / 3 severe), so
    the possible scores are multiples of 100/15. Python's round (half to even) is used.
    """
    if not flags:
        raise ValueError("no annotator flags")
    if any(not 0 <= f <= max_level for f in flags):
        raise ValueError(f"flags must be in 0..{max_level}: {flags}")
    return round(100 * sum(flags) / (max_level * len(flags)))


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def load_examples(
    path: str | Path,
    task: TaskSpec,
    text_column: str = "text",
    label_column: str = "label",
    score_column: str | None = "score",
    encoding: str | None = None,
    report: ReadReport | None = None,
) -> tuple[list[Example], list[dict]]:
    """Examples of a labelled file, and the dropped rows as ``{"row": i, "reason": ...}``.

    Missing text or label column is an error naming the columns found. A missing score column is
    allowed (score None); a score present on a row must be an integer in the task's range, and is
    set to 0 on labels the task gives no score (outside its ``only_for``). What reading changed or
    doubted (filled short rows, replaced characters) goes into `report`.
    """
    columns = read_columns(path, encoding)
    for needed in (text_column, label_column):
        if needed not in columns:
            raise ValueError(f"{path}: no column {needed!r}; columns found: {shown_columns(columns)}")
    has_score = task.score is not None and score_column is not None and score_column in columns
    examples, dropped = [], []
    for i, row in enumerate(iter_rows(path, encoding, report)):
        text, raw_label = row.get(text_column), row.get(label_column)
        if _missing(text):
            dropped.append({"row": i, "reason": "empty_text"})
            continue
        label = task.normalize_label(raw_label)
        if label is None:
            dropped.append({"row": i, "reason": f"label_not_in_task:{raw_label}"})
            continue
        score = None
        if has_score and not _missing(row.get(score_column)):
            try:
                number = float(row[score_column])
                if not number.is_integer():
                    raise ValueError
                score = int(number)
            except (ValueError, OverflowError):
                dropped.append({"row": i, "reason": f"score_not_an_integer:{row[score_column]}"})
                continue
            if not task.score.min <= score <= task.score.max:
                dropped.append({"row": i, "reason": f"score_out_of_range:{score}"})
                continue
            if not task.score_allowed(label):
                score = 0  # the task spec: labels outside `only_for` have score 0
        meta = {k: v for k, v in row.items() if k not in (text_column, label_column, score_column)}
        written = str(raw_label).strip()
        examples.append(Example(text=str(text), label=label, score=score, meta=meta, written=written))
    return examples, dropped


def label_words(examples: list[Example]) -> dict[str, str]:
    """{value: the spelling the data used most for it} when the data wrote its labels as words
    ("positive") rather than the task's values ("1"); {} when it wrote the values (or nothing is known)."""
    spelt = Counter((ex.label, ex.written) for ex in examples if ex.written is not None)
    words: dict[str, str] = {}
    for (value, word), _ in spelt.most_common():
        words.setdefault(value, word)
    return words if any(word != value for value, word in words.items()) else {}


def write_jsonl(examples: list[Example], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            record = {"text": ex.text, "label": ex.label, "score": ex.score, **ex.meta}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def label_counts(examples: list[Example]) -> dict[str, int]:
    return dict(Counter(ex.label for ex in examples))


def check_output_folder(out: Path, marker: str, verb: str) -> None:
    """Refuse to write into an existing folder that holds files and is not one of ours (it has no
    `marker`, the file our verb writes first): the user's files there would be overwritten. Our lock
    file alone (labeltune.lock.FOLDER_LOCK: a verb is starting in the folder) does not make it the user's."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} is a file; {verb} writes a folder: choose another --output")
    held = [p.name for p in out.iterdir() if p.name != FOLDER_LOCK] if out.is_dir() else []
    if held and not (out / marker).exists():
        shown = ", ".join(sorted(held)[:5])
        raise ValueError(
            f"--output {out} already holds files that {verb} did not write ({shown}); choose a new "
            "or empty folder (labeltune never writes into a folder of yours)"
        )


def dropped_summary(dropped: list[dict], total: int | None = None) -> str:
    """One line: how many rows were dropped and why,
    e.g. '3 rows dropped: 2 empty_text, 1 label_not_in_task'."""
    reasons = Counter(d["reason"].split(":")[0] for d in dropped)
    of = f" of {total}" if total is not None else ""
    return f"{len(dropped)}{of} rows dropped: " + ", ".join(
        f"{n} {reason}" for reason, n in reasons.most_common()
    )
