"""Nothing lost, nothing silent: hostile-but-realistic inputs get a one-line refusal (exit 2, no traceback)
or a loud, counted warning; a user's file is never written unless it is the declared output."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample.csv"


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


@pytest.fixture
def run(tiny_run_3x48):
    """A tiny run trained for a few steps (its labels need not be good, only produced): the session's,
    read-only."""
    return tiny_run_3x48


def _posts(path: Path, texts: list[str]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows([[f"p{i}", t] for i, t in enumerate(texts)])
    return path


# ---------------------------------------------------------------- data destroyed or overwritten


def test_output_that_is_the_input_is_refused_before_anything_is_written(run, tmp_path):
    posts = _posts(tmp_path / "posts.csv", ["最高", "最悪"])
    before = posts.read_bytes()
    (tmp_path / "sub").mkdir()
    os.symlink(posts, tmp_path / "link.csv")
    for output in (posts, tmp_path / "sub" / ".." / "posts.csv", tmp_path / "link.csv"):
        refused(
            cli("label", "--run", run, "--input", posts, "--output", output, "--overwrite"),
            "is the input file",
        )
    assert posts.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "posts.csv", "sub"]


@pytest.mark.train
def test_train_never_writes_into_a_folder_of_the_users(tmp_path):
    project = tmp_path / "myproject"
    (project / "data").mkdir(parents=True)
    (project / "config.yaml").write_text("mine: true\n")
    (project / "data" / "train.jsonl").write_text("my data\n")
    refused(
        cli("train", "--output", project, "--max-steps", "1"),
        "already holds files that train did not write",
        "config.yaml",
    )
    assert (project / "config.yaml").read_text() == "mine: true\n" and (
        project / "data" / "train.jsonl"
    ).read_text() == "my data\n"
    (tmp_path / "afile").write_text("x")
    refused(cli("train", "--output", tmp_path / "afile", "--max-steps", "1"), "is a file")


def test_prepare_never_writes_into_a_folder_of_the_users(tmp_path):
    folder = tmp_path / "prepared"
    folder.mkdir()
    (folder / "README.md").write_text("# my notes\n")
    (folder / "train.jsonl").write_text("mine\n")
    src = tmp_path / "ann.csv"
    src.write_text("text,label,f1\nひどい,-1,2\n良い,1,0\n", encoding="utf-8")
    refused(
        cli(
            "data",
            "prepare",
            "--source",
            "annotated-csv",
            "--path",
            src,
            "--flag-columns",
            "f1",
            "--output",
            folder,
        ),
        "did not write",
        "README.md",
    )
    assert (folder / "README.md").read_text() == "# my notes\n" and (
        folder / "train.jsonl"
    ).read_text() == "mine\n"


def test_ctrl_c_keeps_the_old_output_says_how_to_continue_and_resumes(run, tmp_path):
    """--overwrite replaces the old output only once the new one is complete; Ctrl-C (SIGINT) stops with
    'run the same command to continue', exit 130; the same command then finishes; once more: a no-op."""
    rows = 2000  # the rest outlasts our look at the progress file on a quiet fast machine (400 did not)
    posts = _posts(tmp_path / "posts.csv", [f"投稿{i} 今日は晴れ" for i in range(rows)])
    out = tmp_path / "out.csv"
    out.write_text("my old output\n")
    argv = [
        sys.executable,
        "-m",
        "labeltune.cli",
        "label",
        "--run",
        str(run),
        "--input",
        str(posts),
        "--output",
        str(out),
        "--overwrite",
        "--chunk-size",
        "8",
        "--batch-size",
        "8",
        "--progress",
        "false",
    ]
    state = out.with_name("." + out.name + ".labeltune.json")
    proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if json.loads(state.read_text())["rows"] >= 16:
                break
        except (OSError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    # Freeze it first so it cannot finish the remaining rows between our look and the signal (a fast
    # machine did), then interrupt and let it run: the SIGINT lands mid-file.
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and f"of {rows} rows; run the same command to continue" in err, err[-2000:]
    assert out.read_text() == "my old output\n"  # untouched until the new output is complete
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=300
    )  # the same command: resumes
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(csv.DictReader(open(out, encoding="utf-8")))) == rows
    without = [a for a in argv if a != "--overwrite"]
    again = subprocess.run(without, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr[-2000:]


# ---------------------------------------------------------------- silently wrong or silently dropped


@pytest.mark.parametrize(
    "option, value, rule",
    [
        ("--chunk-size", "0", ">= 1"),
        ("--batch-size", "-4", ">= 1"),
        ("--max-new-tokens", "0", ">= 1"),
    ],
)
def test_label_option_values_are_validated(run, tmp_path, option, value, rule):
    posts = _posts(tmp_path / "posts.csv", ["a"])
    refused(
        cli("label", "--run", run, "--input", posts, "--output", tmp_path / "o.csv", f"{option}={value}"),
        option,
        rule,
    )
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / ".o.csv.labeltune.json").exists()


@pytest.mark.parametrize(
    "option, value",
    [
        ("--lr", "-1e-4"),
        ("--lr", "3"),
        ("--epochs", "0"),
        ("--max-length", "5"),
        ("--max-steps", "0"),
        ("--lora-dropout", "1.5"),
        ("--limit", "0"),
    ],
)
def test_train_option_values_are_validated(tmp_path, option, value):
    refused(cli("train", "--output", tmp_path / "r", f"{option}={value}"), option)
    assert not (tmp_path / "r").exists()


def test_mixed_encodings_are_refused_with_line_numbers(run, tmp_path):
    """One CP932 row in a UTF-8 file: refused naming both lines, not decoded as CP932 (garbling the rest)."""
    path = tmp_path / "mixed.csv"
    path.write_bytes("id,text\n1,最高の一日\n".encode() + "2,最悪だ\n".encode("cp932") + "3,普通\n".encode())
    refused(
        cli("label", "--run", run, "--input", path, "--output", tmp_path / "o.csv"),
        "mixed encodings",
        "line 3",
        "line 2",
    )
    refused(cli("train", "--data", path, "--output", tmp_path / "r"), "mixed encodings")
    # read on purpose in one encoding: rows kept, undecodable characters replaced and counted
    proc = cli(
        "label",
        "--run",
        run,
        "--input",
        path,
        "--output",
        tmp_path / "o.csv",
        "--encoding",
        "utf-8",
        "--progress",
        "false",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "o.csv", encoding="utf-8")))
    assert [r["id"] for r in rows] == ["1", "2", "3"] and rows[0]["text"] == "最高の一日"
    assert "characters could not be decoded in the given encoding and were replaced" in proc.stderr


def test_csv_shape_problems_are_reported_with_line_numbers(run, tmp_path):
    long_row = tmp_path / "long.csv"
    long_row.write_text("id,text\n1,ok\n2,one,two\n", encoding="utf-8")
    refused(
        cli("label", "--run", run, "--input", long_row, "--output", tmp_path / "o.csv"),
        "long.csv:3",
        "3 cells",
    )
    for header, needle in (
        ("id,text,note,note", "both named 'note'"),
        ("id,text,text", "both named 'text'"),
        (",text", "has no name"),
    ):
        path = tmp_path / "h.csv"
        path.write_text(header + "\n" + ",".join(["x"] * len(header.split(","))) + "\n", encoding="utf-8")
        refused(cli("label", "--run", run, "--input", path, "--output", tmp_path / "o.csv"), needle)
    # an unbalanced quote that the csv module cannot close is refused, naming the line where it opens (#24)
    quote = tmp_path / "quote.csv"
    quote.write_text('id,text\n1,"ひどい話\n2,普通\n3,楽しい\n4,最高\n5,"終わり"\n6,次\n', encoding="utf-8")
    refused(
        cli("label", "--run", run, "--input", quote, "--output", tmp_path / "q.csv"),
        "quote.csv:2",
        "closing quote",
    )
    # one closed by a later quote is valid CSV: labelled, and the lines that look like rows are reported
    quote.write_text('id,text\n1,"ひどい話\n2,普通\n3,楽しい\n4,最高"\n5,次\n', encoding="utf-8")
    proc = cli("label", "--run", run, "--input", quote, "--output", tmp_path / "q.csv", "--progress", "false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "quote may be unbalanced" in proc.stderr and "(lines 2)" in proc.stderr, proc.stderr[-1500:]


def test_jsonl_keeps_every_key_and_writes_nested_values_as_json(run, tmp_path):
    path = tmp_path / "posts.jsonl"
    records = [
        {"id": 1, "text": "最高"},
        {"id": 2, "text": "最悪", "user": {"name": "a", "tags": ["x"]}, "ok_flag": True},
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    proc = cli("label", "--run", run, "--input", path, "--output", tmp_path / "o.csv", "--progress", "false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "o.csv", encoding="utf-8")))
    assert list(rows[0])[:4] == ["id", "text", "user", "ok_flag"]
    assert json.loads(rows[1]["user"]) == {"name": "a", "tags": ["x"]} and rows[1]["ok_flag"] == "true"
    assert rows[0]["user"] == "" and rows[0]["ok_flag"] == ""


def _labelled(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "score"])
        writer.writerows(rows)
    return path


@pytest.mark.train
def test_data_that_gives_meaningless_results_is_refused_unless_allowed(tmp_path):
    one_class = _labelled(tmp_path / "one.csv", [(f"良い{i}", "1", "0") for i in range(60)])
    refused(
        cli("train", "--data", one_class, "--output", tmp_path / "a"),
        "only one label (positive)",
        "--allow-incomplete",
    )
    tiny = _labelled(
        tmp_path / "five.csv",
        [
            ("良い", "1", "0"),
            ("普通", "0", "0"),
            ("悪い", "-1", "50"),
            ("最高", "1", "0"),
            ("最悪", "-1", "90"),
        ],
    )
    refused(cli("train", "--data", tiny, "--output", tmp_path / "b"), "split is empty")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # allowed on purpose: trains, and says what is wrong and what was dropped
    # (an unknown label, an empty text)
    rows = [(f"良い{i}", "1", "0") for i in range(20)] + [(f"悪い{i}", "-1", "60") for i in range(20)]
    rows += [("謎", "maybe", "0"), ("", "1", "0")]
    data = _labelled(tmp_path / "allowed.csv", rows)
    proc = cli(
        "train",
        "--data",
        data,
        "--output",
        tmp_path / "c",
        "--split",
        "1,0,0",
        "--allow-incomplete",
        "--max-steps",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "the dev split is empty (--allow-incomplete)" in proc.stderr
        and "the test split is empty" in proc.stderr
    )
    assert (
        "label 0 (neutral) appears in no split" in proc.stderr
    )  # a warning, never an error (japanese-toxic has no 1)
    assert "2 of 42 rows dropped: 1 label_not_in_task, 1 empty_text" in proc.stderr, proc.stderr[-1500:]


def test_prepare_refuses_what_would_drop_everything_silently(tmp_path):
    src = tmp_path / "ann.csv"
    src.write_text("text,label,f1\nひどい,-1,2\n良い,1,0\n普通,0,0\n", encoding="utf-8")
    refused(
        cli("data", "prepare", "--source", "annotated-csv", "--path", src, "--output", tmp_path / "o"),
        "--flag-columns",
    )
    refused(
        cli(
            "data",
            "prepare",
            "--source",
            "annotated-csv",
            "--path",
            src,
            "--flag-columns",
            "f1,f9",
            "--output",
            tmp_path / "o",
        ),
        "no column(s) ['f9']",
    )
    jt = tmp_path / "jt.csv"
    jt.write_text("id,text,Not Toxic,Hard to Say,Toxic,annotation_num\n1,a,3,0,0,3\n", encoding="utf-8")
    refused(
        cli("data", "prepare", "--source", "japanese-toxic", "--path", jt, "--output", tmp_path / "o"),
        "'Very Toxic'",
    )


def test_japanese_toxic_votes_that_are_not_counts_are_dropped_and_announced(tmp_path):
    jt = tmp_path / "jt.csv"
    header = "id,text,Not Toxic,Hard to Say,Toxic,Very Toxic,annotation_num\n"
    good = "".join(f"{i},普通の投稿{i},3,0,0,0,3\n{i + 100},ひどい投稿{i},0,0,1,2,3\n" for i in range(20))
    jt.write_text(
        header + good + "900,負の票,3,0,-1,1,3\n901,無限,inf,0,0,0,3\n902,小数,1.5,0,0,1.5,3\n",
        encoding="utf-8",
    )
    proc = cli("data", "prepare", "--source", "japanese-toxic", "--path", jt, "--output", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 of 43 rows dropped: 3 votes_not_counts" in proc.stderr, proc.stderr[-1500:]
    scores = [
        json.loads(line)["score"]
        for name in ("train", "dev", "test")
        for line in open(tmp_path / "o" / f"{name}.jsonl")
    ]
    assert max(scores) <= 100


def test_excel_bound_output_neutralises_formulas(run, tmp_path):
    texts = ['=HYPERLINK("http://evil","click")', "+81 90 1234", "@SUM(A1)", "-calc", "-1", "普通の投稿"]
    posts = _posts(tmp_path / "posts.csv", texts)
    proc = cli(
        "label",
        "--run",
        run,
        "--input",
        posts,
        "--output",
        tmp_path / "excel.csv",
        "--bom",
        "--progress",
        "false",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 cells starting with =, +, -, @ were prefixed" in proc.stderr
    rows = list(csv.DictReader(open(tmp_path / "excel.csv", encoding="utf-8-sig")))
    assert [r["text"] for r in rows] == ["'" + t for t in texts[:4]] + texts[4:]
    plain = cli(
        "label", "--run", run, "--input", posts, "--output", tmp_path / "plain.csv", "--progress", "false"
    )
    assert plain.returncode == 0
    assert [
        r["text"] for r in csv.DictReader(open(tmp_path / "plain.csv", encoding="utf-8"))
    ] == texts  # verbatim


def test_output_rows_count_what_they_neutralise():
    """With --bom the input's cells and the raw answer are made text and counted in the session's tally;
    the parsed fields are written as they are; without --bom nothing changes."""
    from labeltune.answers import Answer
    from labeltune.label import Tally, _output_row
    from labeltune.task import load_task

    task, tally = load_task("sentiment_toxicity"), Tally()
    answers = [Answer("1", None, True, "", "=1+1", False), Answer(None, None, False, "no_label", "@x", True)]
    for answer, bom in zip(answers, (True, False)):
        cells, neutralised = _output_row({"text": "-calc", "n": "-1"}, answer, ["text", "n"], task, bom)
        tally.count(answer, neutralised)
        assert cells[:2] == (["'-calc", "-1"] if bom else ["-calc", "-1"])
        assert cells[8] == ("'=1+1" if bom else "@x") and cells[2] == ("1" if bom else "")
    assert (tally.ok, tally.failed, tally.truncated, tally.neutralised) == (1, 1, 1, 2)
    assert tally.per_label == {"1": 1, None: 1}


# ---------------------------------------------------------------- tracebacks instead of messages


def test_damaged_runs_are_one_line_errors(run, tmp_path):
    import shutil

    posts = _posts(tmp_path / "posts.csv", ["a"])
    damaged = [
        (
            "truncated adapter",
            lambda r: (r / "adapter" / "adapter_model.safetensors").write_bytes(
                (r / "adapter" / "adapter_model.safetensors").read_bytes()[:100]
            ),
        ),
        ("no tokenizer", lambda r: [p.unlink() for p in (r / "adapter").glob("tokenizer*")]),
        ("no base", lambda r: shutil.rmtree(r / "base")),
    ]
    for name, damage in damaged:
        copy = tmp_path / name.replace(" ", "_")
        shutil.copytree(run, copy)
        damage(copy)
        refused(
            cli("label", "--run", copy, "--input", posts, "--output", tmp_path / f"{copy.name}.csv"),
            str(copy),
            "cannot be loaded",
        )
    refused(
        cli("label", "--run", tmp_path / "nope", "--input", posts, "--output", tmp_path / "o.csv"),
        "no such directory",
    )
    refused(cli("evaluate", "--run", tmp_path), "not a labeltune run directory")


def test_bad_paths_and_files_are_one_line_errors(run, tmp_path):
    posts = _posts(tmp_path / "posts.csv", ["a"])
    (tmp_path / "dir.csv").mkdir()
    refused(cli("label", "--run", run, "--input", posts, "--output", tmp_path / "dir.csv"), "is a folder")
    assert list((tmp_path / "dir.csv").iterdir()) == [] and not list(tmp_path.glob("*.labeltune.json"))
    (tmp_path / "posts.xlsx").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    refused(
        cli("label", "--run", run, "--input", tmp_path / "posts.xlsx", "--output", tmp_path / "o.csv"),
        "spreadsheet",
        "CSV UTF-8",
    )
    import gzip

    (tmp_path / "posts.csv.gz").write_bytes(gzip.compress(posts.read_bytes()))
    refused(
        cli("label", "--run", run, "--input", tmp_path / "posts.csv.gz", "--output", tmp_path / "o.csv"),
        "gzip-compressed",
        "gunzip",
    )
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("lr: [1e-4\nepochs: 2\n")
    refused(cli("train", "--config", bad_yaml), "bad.yaml:", "not valid YAML")
    refused(cli("train", "--config", tmp_path / "missing.yaml"), "no such config file")


def test_a_post_longer_than_the_csv_field_limit_is_labelled(run, tmp_path):
    posts = _posts(tmp_path / "posts.csv", ["長" * 200_000, "短い"])
    proc = cli("label", "--run", run, "--input", posts, "--output", tmp_path / "o.csv", "--progress", "false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "o.csv", encoding="utf-8")))
    assert len(rows) == 2 and len(rows[0]["text"]) == 200_000 and rows[0]["truncated"] == "True"
    assert "1 texts were longer than the run's max_length" in proc.stderr  # counted and announced


def test_an_output_folder_that_cannot_be_written_is_refused_before_anything(monkeypatch, tmp_path):
    """A read-only folder (simulated: this machine runs the tests as root, for whom every folder is
    writable)."""
    from labeltune import label

    posts = _posts(tmp_path / "posts.csv", ["a"])
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: False if Path(path) == locked else real_access(path, mode)
    )
    with pytest.raises(ValueError, match=r"cannot write in .*locked \(permission denied\)"):
        label.check_paths(posts, locked / "sub" / "out.csv")
    assert list(locked.iterdir()) == []


def test_the_label_sidecar_is_hidden_and_an_earlier_visible_one_still_counts(tmp_path):
    from labeltune.label import OutputFiles, one_line

    files = OutputFiles(tmp_path / "out.csv")
    assert files.state == tmp_path / ".out.csv.labeltune.json"
    (tmp_path / "out.csv.labeltune.json").write_text("{}")  # left by an earlier version: resumed from
    assert files.state == tmp_path / "out.csv.labeltune.json"
    assert one_line("label : 1\nscore : 30") == "label : 1\\nscore : 30"
    assert one_line("a\\nb\r") == "a\\\\nb\\r"
