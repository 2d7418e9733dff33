"""Input files, label's output and one writer per output (#24): nothing lost or garbled silently, errors
that say where, nothing left behind by a failed start, and a second writer refused while one runs."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from labeltune.data import ReadReport, iter_rows, load_examples
from labeltune.label import _csv_bytes
from labeltune.lock import FOLDER_LOCK, hold
from labeltune.task import load_task

ROOT = Path(__file__).resolve().parent.parent


def cli(*argv, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "labeltune.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The one-line refusal of `proc` (exit 2, no traceback), which must name every needle."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("labeltune: error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def _posts(path: Path, texts: list[str]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)  # \r\n line ends: cells holding a CR or LF are quoted
        writer.writerow(["id", "text"])
        writer.writerows([[f"p{i}", t] for i, t in enumerate(texts)])
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------- 1. an unbalanced quote


EIGHT = [f"{i},投稿{i}です,{i % 3 - 1}" for i in range(1, 9)]


def test_an_unclosed_quote_is_refused_naming_the_line_where_it_opens(tmp_path):
    """One quote never closed swallowed records 4-8 into record 3's cell (3 rows of 8, exit 0): refused."""
    path = tmp_path / "posts.csv"
    lines = ["id,text,label", *EIGHT]
    lines[3] = '3,"投稿3です,1'
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"posts\.csv:4: a quoted cell .* never closed .*close the quote"):
        list(iter_rows(path))
    with pytest.raises(ValueError, match=r"posts\.csv:4: "):
        load_examples(path, load_task("sentiment_toxicity"))


def test_a_quote_closed_by_a_later_one_is_refused_naming_both_lines(tmp_path):
    path = tmp_path / "posts.csv"
    lines = ["id,text,label", *EIGHT]
    lines[2], lines[7] = '2,"投稿2です,0', '7,"引用" と書いた,1'
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"posts\.csv:3: a quoted cell .* text after its closing quote at line 8"
    ):
        list(iter_rows(path))
    # the same text written correctly (a quote inside a quoted cell doubled) reads as 8 rows
    path.write_text(
        "id,text,label\n" + "\n".join(EIGHT[:6]) + '\n7,"""引用"" と書いた",1\n8,x,0\n', encoding="utf-8"
    )
    rows = list(iter_rows(path))
    assert len(rows) == 8 and rows[6]["text"] == '"引用" と書いた'


@pytest.mark.train  # runs `labeltune train`, which first refuses a TRL that cannot train here
def test_label_and_train_refuse_an_unbalanced_quote_in_one_line(tmp_path):
    path = tmp_path / "posts.csv"
    path.write_text('id,text,label\n1,a,1\n2,"b,0\n3,c,1\n4,d,0\n', encoding="utf-8")
    refused(
        cli("label", "--run", tmp_path / "run", "--input", path, "--output", tmp_path / "out" / "o.csv"),
        "posts.csv:3",
        "never closed",
        "close the quote",
    )
    assert not (tmp_path / "out").exists()
    refused(cli("train", "--data", path, "--output", tmp_path / "r"), "posts.csv:3", "never closed")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- 2. a bare CR in a post


AWKWARD = [
    "old\rmac",
    "unix\nline",
    "dos\r\nline",
    "ends with cr\r",
    "\rstarts with cr",
    'a "quote", a comma',
    "  spaces  ",
    "タブ\tあり",
    "=1+2",
    "",
]


def test_output_cells_with_a_bare_cr_reread_as_the_same_rows():
    """label wrote a post holding a bare CR unquoted: readers took the CR for a line end (more rows)."""
    rows = [["id", "text"], *[[str(i), text] for i, text in enumerate(AWKWARD)]]
    data = _csv_bytes(rows)
    assert b"\r\n" not in data.replace(b'"dos\r\nline"', b"")  # rows still end in \n
    assert list(csv.reader(io.StringIO(data.decode("utf-8"), newline=""))) == rows
    pandas = pytest.importorskip("pandas")
    for engine in ("c", "python"):
        frame = pandas.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, engine=engine)
        assert frame.values.tolist() == rows[1:], engine


# ---------------------------------------------------------------- 3. a given encoding that does not fit


def test_replaced_characters_are_reported_with_their_lines(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_bytes(
        "id,text\n1,最高\n".encode() + "2,最悪だ\n".encode("cp932") + "3,普通\n".encode() + b"4,x\xff\n"
    )
    report = ReadReport(str(path))
    assert len(list(iter_rows(path, "utf-8", report))) == 4
    assert report.replaced_lines == [3, 5] and "(lines 3, 5)" in report.warnings()[0]
    jsonl = tmp_path / "mixed.jsonl"
    jsonl.write_bytes(b'{"text": "a"}\n' + '{"text": "最悪"}\n'.encode("cp932"))
    report = ReadReport(str(jsonl))
    assert len(list(iter_rows(jsonl, "utf-8", report))) == 2 and report.replaced_lines == [2]


def test_label_with_a_given_encoding_names_the_bad_lines_before_labelling(tmp_path):
    """--encoding utf-8 on a file with one bad byte labelled the whole file (minutes) and then said only how
    many characters were replaced; now the lines are named before the run is even opened."""
    path = tmp_path / "posts.csv"
    path.write_bytes(
        b"id,text\n" + b"".join(f"{i},post {i}\n".encode() for i in range(5000)) + b"5000,bad \xff byte\n"
    )
    proc = cli(
        "label",
        "--run",
        tmp_path / "no_run",
        "--input",
        path,
        "--output",
        tmp_path / "o.csv",
        "--encoding",
        "utf-8",
    )
    refused(proc, "no_run")  # the run is missing: nothing labelled, but the input was read and reported first
    assert "replaced by U+FFFD (lines 5002)" in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------- 4. binary inputs


@pytest.mark.train  # runs `labeltune train`, which first refuses a TRL that cannot train here
def test_a_binary_input_is_one_short_line(tmp_path):
    png = tmp_path / "posts.csv"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 20)
    blob = tmp_path / "blob.csv"
    blob.write_bytes(b"\x00" + b"".join(bytes([65 + i % 26, 44]) for i in range(4000)))  # 4,000 'columns'
    for path in (png, blob):
        for encoding in ((), ("--encoding", "utf-8")):
            line = refused(
                cli(
                    "label",
                    "--run",
                    tmp_path / "run",
                    "--input",
                    path,
                    "--output",
                    tmp_path / "o.csv",
                    *encoding,
                ),
                str(path),
                "is not a text file (CSV/TSV/JSONL)",
            )
            assert len(line) < 300, line
    refused(cli("train", "--data", png, "--output", tmp_path / "r"), "a PNG image")
    utf16 = tmp_path / "utf16.csv"  # NUL bytes, but text: read when its encoding is given
    utf16.write_bytes("id,text\n1,最高\n".encode("utf-16-le"))
    assert list(iter_rows(utf16, "utf-16-le")) == [{"id": "1", "text": "最高"}]


def test_an_unknown_encoding_is_one_line(tmp_path):
    posts = _posts(tmp_path / "posts.csv", ["a"])
    refused(
        cli(
            "label",
            "--run",
            tmp_path / "run",
            "--input",
            posts,
            "--output",
            tmp_path / "o.csv",
            "--encoding",
            "utf-9",
        ),
        "unknown --encoding 'utf-9'",
    )


# ---------------------------------------------------------------- 5. one writer per output


def test_a_second_label_on_one_output_is_refused_naming_the_pid(tmp_path):
    posts = _posts(tmp_path / "posts.csv", ["a"])
    out = tmp_path / "out.csv"
    lock = out.with_name(out.name + ".lock")
    with hold(lock, f"--output {out}"):
        line = refused(
            cli("label", "--run", tmp_path / "run", "--input", posts, "--output", out),
            str(lock),
            f"pid {os.getpid()}",
        )
        assert "in use by another labeltune process" in line
        assert json.loads(lock.read_text())["pid"] == os.getpid()  # still ours
    assert not lock.exists() and not out.exists()


def test_a_second_train_on_one_run_folder_is_refused_naming_the_pid(tmp_path):
    run = tmp_path / "runs" / "r"
    with hold(run / FOLDER_LOCK, f"--output {run}"):
        refused(
            cli("train", "--output", run, "--max-steps", "1"), str(run / FOLDER_LOCK), f"pid {os.getpid()}"
        )
        assert [p.name for p in run.iterdir()] == [FOLDER_LOCK]  # nothing written beside the lock
    assert not (tmp_path / "runs").exists()  # the folders made for the lock are gone with it


@pytest.mark.train  # runs `labeltune train`, which first refuses a TRL that cannot train here
def test_a_stale_lock_is_taken_over_with_a_note(tmp_path):
    posts = _posts(tmp_path / "posts.csv", ["a"])
    out = tmp_path / "out.csv"
    lock = out.with_name(out.name + ".lock")
    pid = _dead_pid()
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    proc = cli("label", "--run", tmp_path / "no_run", "--input", posts, "--output", out)
    refused(proc, "no_run")  # got past the lock, to the missing run
    assert f"took over the lock {lock} (pid {pid} no longer runs)" in proc.stderr
    assert not lock.exists()
    run = tmp_path / "r"
    run.mkdir()
    (run / FOLDER_LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    proc = cli("train", "--data", tmp_path / "missing.csv", "--output", run)
    refused(proc, "missing.csv")
    assert "took over the lock" in proc.stderr and not (run / FOLDER_LOCK).exists()


def test_lock_is_released_on_errors_and_ctrl_c_and_refuses_a_live_holder(tmp_path):
    lock = tmp_path / "a" / "b" / "x.lock"
    for error in (ValueError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)), hold(lock, "x"):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
            raise error
        assert not (tmp_path / "a").exists()  # lock and the folders made for it removed
    # held, by this very process: still refused
    with (
        hold(lock, "x"),
        pytest.raises(FileExistsError, match=rf"x is in use .*pid {os.getpid()} .*{lock}"),
        hold(lock, "x"),
    ):
        pass
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.parent.mkdir(parents=True)
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(FileExistsError, match=f"pid {sleeper.pid}"), hold(lock, "x"):
            pass
        assert json.loads(lock.read_text())["pid"] == sleeper.pid  # a live holder's lock is left alone
    finally:
        sleeper.kill()
        sleeper.wait()
    with hold(lock, "x"):  # its holder is gone now: taken over
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_an_unwritten_lock_is_taken_over_only_when_old(tmp_path):
    lock = tmp_path / "x.lock"
    lock.write_text("")  # a holder killed between creating and writing it, or one writing it right now
    with pytest.raises(FileExistsError), hold(lock, "x"):
        pass
    os.utime(lock, (0, 0))
    with hold(lock, "x"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


# ---------------------------------------------------------------- label end to end (a trained run)


@pytest.fixture
def run(tiny_run_3x48):
    """A tiny run trained for a few steps (its labels need not be good, only produced): the session's,
    read-only."""
    return tiny_run_3x48


def _label(run, source, out, **options):
    from labeltune import label
    from labeltune.config import LabelConfig, resolve

    return label.main(
        resolve(
            LabelConfig,
            None,
            {"run": str(run), "input": str(source), "output": str(out), "progress": False, **options},
        )
    )


def test_label_output_rereads_as_the_input_rows(run, tmp_path):
    source = _posts(tmp_path / "posts.csv", AWKWARD)
    jsonl = tmp_path / "posts.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(AWKWARD)),
        encoding="utf-8",
    )
    for path in (source, jsonl):
        out = _label(run, path, tmp_path / f"{path.stem}-{path.suffix[1:]}.csv")
        rows = list(csv.DictReader(open(out, encoding="utf-8", newline="")))
        assert [r["text"] for r in rows] == AWKWARD


def test_a_failed_start_leaves_nothing_but_a_resumable_partial_is_kept(run, tmp_path, monkeypatch):
    """A failure before the first row is written (here: the engine fails on its first chunk, as an
    out-of-memory error would) removes the partial file and sidecar it started; a partial with rows in
    it, of an earlier attempt, is never removed."""
    from labeltune.engine import HfEngine

    source = _posts(tmp_path / "posts.csv", [f"投稿{i}" for i in range(6)])
    out = tmp_path / "new" / "out.csv"
    partial, state = out.with_name(out.name + ".partial"), out.with_name("." + out.name + ".labeltune.json")
    real = HfEngine.predict
    calls = []

    def fails_at(n):
        def predict(self, texts, *args, **kwargs):
            calls.append(len(texts))
            if len(calls) >= n:
                raise RuntimeError("out of memory")
            return real(self, texts, *args, **kwargs)

        return predict

    monkeypatch.setattr(HfEngine, "predict", fails_at(1))
    with pytest.raises(RuntimeError, match="out of memory"):
        _label(run, source, out, chunk_size=2)
    assert not (
        tmp_path / "new"
    ).exists()  # no partial, no sidecar, no lock, not even the folder made for them
    calls.clear()
    monkeypatch.setattr(HfEngine, "predict", fails_at(2))
    with pytest.raises(RuntimeError):
        _label(run, source, out, chunk_size=2)
    assert json.loads(state.read_text())["rows"] == 2 and partial.is_file()
    kept = partial.read_bytes()
    calls.clear()
    monkeypatch.setattr(HfEngine, "predict", fails_at(1))
    with pytest.raises(RuntimeError):
        _label(run, source, out, chunk_size=2)  # resumes, fails at once: the earlier rows are kept
    assert partial.read_bytes() == kept and json.loads(state.read_text())["rows"] == 2
    monkeypatch.setattr(HfEngine, "predict", real)
    _label(run, source, out, chunk_size=2)
    assert len(list(csv.DictReader(open(out, encoding="utf-8", newline="")))) == 6 and not partial.exists()
