"""The walkthrough's journey from a fresh Colab runtime to a run of your own CSV, without Colab or training.

The notebook's own cells run here (found by their tags) with google.colab faked: files.upload writes the
upload into the working folder and returns it, drive.mount makes <root>/MyDrive a persistent folder (a
link, so a "new session" is a new /content with the same Drive), git clone and pip are recorded instead of
run, and train.spawn is a fake that writes a run directory. /content is a temporary folder (the cells'
"/content" paths are pointed there), as a user would edit the variables at the top of a cell.
"""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

import labeltune.notebook  # noqa: F401  (imported before a cell puts a fake checkout on sys.path)
from labeltune import train
from labeltune.config import TrainConfig, resolve, save, to_dict
from labeltune.data import load_examples
from labeltune.notebook import choose_csv, train_or_reuse
from labeltune.task import load_task

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"
JOURNEY = ("install", "settings", "drive", "upload", "data", "loss-mask", "train")
POSTS = "本文,感情\n" + "".join(
    f"{text}{i},{lab}\n"
    for i in range(12)
    for text, lab in (
        ("今日のランチ最高においしかった", "positive"),
        ("電車が遅れて最悪だった", "negative"),
        ("明日は雨らしい", "neutral"),
    )
)


def cells() -> dict[str, str]:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    return {c.metadata["tags"][0]: c.source for c in nb.cells if c.cell_type == "code"}


def set_var(source: str, name: str, value) -> str:
    """The cell with `NAME = value`, as a user edits it."""
    edited, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, count=1, flags=re.MULTILINE)
    assert n == 1, f"no {name} = ... line"
    return edited


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under folder: its bytes and mtime."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def make_checkout(folder: Path) -> None:
    (folder / "labeltune").mkdir(parents=True)
    (folder / "pyproject.toml").write_text("[project]\nname = 'labeltune'\n")
    (folder / "mine.txt").write_text("a file of the user's")


REAL_POPEN = subprocess.Popen  # the fake below replaces subprocess.Popen while a cell runs


class FakeColab:
    """google.colab with its files and drive modules, on a temporary /content."""

    def __init__(self, tmp: Path, gdrive: Path, uploads: list[tuple[str, bytes]] = ()):
        self.content, self.gdrive, self.queue = tmp / "content", gdrive, list(uploads)
        self.mounts, self.downloads, self.commands = [], [], []
        self.module = types.ModuleType("google.colab")
        self.module.files = types.SimpleNamespace(upload=self.upload, download=self.downloads.append)
        self.module.drive = types.SimpleNamespace(mount=self.mount)

    def upload(self) -> dict[str, bytes]:  # like files.upload(): the file lands in the working folder too
        if not self.queue:
            return {}
        name, data = self.queue.pop(0)
        Path(name).write_bytes(data)
        return {name: data}

    def mount(self, root: str) -> None:  # like drive.mount(root): the same Drive at root/MyDrive each session
        self.mounts.append(root)
        Path(root).mkdir(parents=True, exist_ok=True)
        if not (Path(root) / "MyDrive").exists():
            (Path(root) / "MyDrive").symlink_to(self.gdrive, target_is_directory=True)

    def popen(self, args, **kwargs):  # subprocess.Popen (the install cell streams pip): recorded
        self.commands.append([str(a) for a in args])
        return REAL_POPEN([sys.executable, "-c", "print('Successfully installed labeltune')"], **kwargs)

    def run(self, args, **kwargs):  # subprocess.run: git clone makes a checkout, pip is only recorded
        self.commands.append([str(a) for a in args])
        if list(args[:2]) == ["git", "clone"]:
            make_checkout(Path(args[-1]))
        return subprocess.CompletedProcess(args, 0, "", "")


class FakeTrain:
    """train.spawn: writes the run directory `labeltune train` would start (finished or not)."""

    def __init__(self, finish: bool):
        self.finish, self.calls = finish, []

    def __call__(self, cfg):
        self.calls.append(to_dict(cfg))
        task = load_task(cfg.task)
        self.examples, _ = load_examples(cfg.data, task, cfg.text_column, cfg.label_column, cfg.score_column)
        run = Path(cfg.output)
        run.mkdir(parents=True, exist_ok=True)
        if not (run / "config.yaml").exists():
            save(cfg, run / "config.yaml")
            (run / "model.json").write_text("{}")
        if self.finish:
            (run / "adapter").mkdir()
            (run / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
        return run


@pytest.fixture
def session(tmp_path, monkeypatch):
    """Runs the notebook's cells as a Colab session would: session(fake, edits, tags) -> (namespace,
    output)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("LABELTUNE_NB_RUNS", raising=False)
    monkeypatch.setenv("LABELTUNE_NB_MODEL", "tiny")  # the journey's mechanics, not the real CPU model's hour
    monkeypatch.setenv("MPLBACKEND", "Agg")
    sources = cells()

    def start(fake: FakeColab | None, edits: dict | None = None, tags=JOURNEY):
        if fake is None:
            monkeypatch.delitem(sys.modules, "google.colab", raising=False)
        else:
            monkeypatch.setitem(sys.modules, "google.colab", fake.module)
            monkeypatch.setattr(subprocess, "run", fake.run)
            monkeypatch.setattr(subprocess, "Popen", fake.popen)
        ns: dict = {"__name__": "__main__"}
        for tag in tags:
            source = sources[tag] if fake is None else sources[tag].replace('"/content', f'"{fake.content}')
            for (cell, name), value in (edits or {}).items():
                if cell == tag:
                    source = set_var(source, name, value)
            exec(compile(source, f"walkthrough[{tag}]", "exec"), ns)  # noqa: S102  (the notebook's own cell)
        import matplotlib.pyplot as plt

        plt.close("all")
        return ns

    return start


def test_badge_and_repo_url_name_the_same_repository():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    url = re.search(
        r'^REPO_URL = "https://github.com/([^/]+/[^/"]+?)(\.git)?"', cells()["install"], re.MULTILINE
    )
    assert url, "the install cell sets REPO_URL"
    assert (
        f"colab.research.google.com/github/{url.group(1)}/blob/main/notebooks/walkthrough.ipynb"
        in nb.cells[0].source
    )


def test_colab_journey_upload_train_disconnect_resume_reuse(tmp_path, session, monkeypatch, capsys):
    """Fresh runtime: clone, mount Drive, upload 本文/感情 posts, train (disconnected before the end);
    a new runtime resumes the same run from Drive; running everything again reuses it and changes nothing."""
    gdrive = tmp_path / "gdrive"
    gdrive.mkdir()
    edits = {("upload", "TEXT_COLUMN"): "本文", ("upload", "LABEL_COLUMN"): "感情"}

    # session 1: a fresh runtime
    (tmp_path / "vm1").mkdir()
    fake = FakeColab(tmp_path / "vm1", gdrive, uploads=[("posts.csv", POSTS.encode())])
    interrupted = FakeTrain(finish=False)
    monkeypatch.setattr(train, "spawn", interrupted)
    ns = session(fake, edits)
    out = capsys.readouterr().out
    drive_root = fake.content / "drive"
    assert [c[:2] for c in fake.commands if c[0] == "git"] == [["git", "clone"]]
    assert "https://github.com/" in fake.commands[0][3] and any("pip" in c for c in fake.commands)
    assert "Successfully installed labeltune" in out  # pip's own lines reach the cell as they come
    assert ns["REPO"] == fake.content / "labeltune" and "cloned from" in out
    assert fake.mounts == [str(drive_root)]
    runs = drive_root / "MyDrive" / "labeltune" / "runs"
    assert ns["RUN"] == runs / "notebook-tiny-posts" and ns["RUN"].resolve().is_relative_to(gdrive)
    data = drive_root / "MyDrive" / "labeltune" / "uploads" / "posts.csv"
    assert ns["DATA"] == data and data.read_text(encoding="utf-8") == POSTS
    [cfg] = interrupted.calls
    assert (cfg["data"], cfg["text_column"], cfg["label_column"], cfg["output"]) == (
        str(data),
        "本文",
        "感情",
        str(ns["RUN"]),
    )
    assert [e.label for e in interrupted.examples[:3]] == ["1", "-1", "0"]  # positive/negative/neutral
    assert len(interrupted.examples) == 36 and "tokenizer: the tiny model's own" in out
    assert f"set CSV_PATH = {str(data)!r}" in out

    # session 2: a new runtime (new /content, same Drive); the upload is reused by its path
    fake.content.rename(tmp_path / "vm1-gone")  # the old VM is gone; nothing of the Drive is touched
    fake2 = FakeColab(tmp_path / "vm1", gdrive)
    resumed = FakeTrain(finish=True)
    monkeypatch.setattr(train, "spawn", resumed)
    ns = session(fake2, {**edits, ("upload", "CSV_PATH"): str(data)})
    out = capsys.readouterr().out
    assert "unfinished: continuing" in out
    assert resumed.calls == [cfg]  # the same options, so `labeltune train` continues from its checkpoint
    assert (ns["RUN"] / "adapter").is_dir()

    # the same session runs every cell again: nothing cloned, trained, written or deleted
    before_drive, before_repo = snapshot(gdrive), snapshot(fake2.content / "labeltune")
    again = FakeTrain(finish=True)
    monkeypatch.setattr(train, "spawn", again)
    session(fake2, {**edits, ("upload", "CSV_PATH"): str(data)})
    out = capsys.readouterr().out
    assert again.calls == [] and "is trained already: reusing it" in out
    assert [c for c in fake2.commands if c[0] == "git"] == [
        ["git", "clone", "-q", fake.commands[0][3], str(fake2.content / "labeltune")]
    ]
    assert "found there, not cloned again" in out
    assert snapshot(gdrive) == before_drive and snapshot(fake2.content / "labeltune") == before_repo


@pytest.mark.parametrize("where", ["uploaded", "drive"])
def test_an_existing_checkout_is_used_never_cloned_over(tmp_path, session, where, capsys):
    gdrive = tmp_path / "gdrive"
    gdrive.mkdir()
    fake = FakeColab(tmp_path, gdrive)
    checkout = (gdrive / "code" / "labeltune") if where == "drive" else fake.content / "labeltune"
    make_checkout(checkout)
    before = snapshot(checkout)
    edits = (
        {("install", "DRIVE_REPO"): str(fake.content / "drive" / "MyDrive" / "code" / "labeltune")}
        if where == "drive"
        else {}
    )
    for _ in range(2):  # and again: the same
        ns = session(fake, edits, tags=("install",))
        assert ns["REPO"].resolve() == checkout.resolve() and Path.cwd() == checkout.resolve()
    assert not [c for c in fake.commands if c[0] == "git"]
    assert snapshot(checkout) == before
    assert fake.mounts == ([str(fake.content / "drive")] * 2 if where == "drive" else [])
    assert not (fake.content / "labeltune").exists() if where == "drive" else True
    assert (
        "on Google Drive" if where == "drive" else "found there, not cloned again"
    ) in capsys.readouterr().out


def test_a_folder_that_is_not_a_checkout_is_left_alone(tmp_path, session):
    (tmp_path / "gdrive").mkdir()
    fake = FakeColab(tmp_path, tmp_path / "gdrive")
    (fake.content / "labeltune").mkdir(parents=True)
    (fake.content / "labeltune" / "notes.txt").write_text("mine")
    before = snapshot(fake.content / "labeltune")
    with pytest.raises(FileExistsError, match="not a labeltune checkout"):
        session(fake, tags=("install",))
    with pytest.raises(FileNotFoundError, match="DRIVE_REPO"):
        session(
            fake,
            {("install", "DRIVE_REPO"): str(fake.content / "drive" / "MyDrive" / "nowhere")},
            tags=("install",),
        )
    assert not [c for c in fake.commands if c[0] == "git"] and snapshot(fake.content / "labeltune") == before


def test_locally_the_checkout_sample_and_runs_folder(session, monkeypatch, capsys):
    monkeypatch.chdir(ROOT / "notebooks")
    ns = session(None, tags=("install", "settings", "drive", "upload"))
    assert ns["REPO"] == ROOT and not ns["IN_COLAB"]
    assert ns["DATA"] == Path("data/sample.csv") and ns["RUN"] == Path("runs/notebook-tiny")
    assert "this checkout" in capsys.readouterr().out


def test_without_a_gpu_the_real_small_model_is_the_default(session, monkeypatch, capsys):
    """On CPU the notebook trains Gemma 3 270M (labels a reader can trust) with the short prompt and the
    measured 35 steps, unless LABELTUNE_NB_MODEL asks for the tiny test model."""
    monkeypatch.chdir(ROOT / "notebooks")
    monkeypatch.delenv("LABELTUNE_NB_MODEL")
    monkeypatch.delenv("LABELTUNE_NB_STEPS", raising=False)
    ns = session(None, tags=("install", "settings"))
    if ns["GPU"]:
        pytest.skip("a GPU is present: the notebook picks Gemma 2 9B")
    chosen = (ns["MODEL"], ns["MAX_STEPS"], ns["TEMPLATE"])
    assert chosen == ("gemma3-270m", 35, "short_ja_sentiment_toxicity")
    assert "MODEL=gemma3-270m  MAX_STEPS=35" in capsys.readouterr().out


def test_a_finished_run_is_reused_never_trained_over_or_deleted(tmp_path, capsys):
    data = tmp_path / "posts.csv"
    data.write_text(POSTS, encoding="utf-8")
    cfg = resolve(
        TrainConfig,
        None,
        {
            "model": "tiny",
            "data": str(data),
            "output": str(tmp_path / "run"),
            "text_column": "本文",
            "label_column": "感情",
            "max_steps": 80,
        },
    )
    FakeTrain(finish=True)(cfg)
    before = snapshot(tmp_path / "run")
    spawn = FakeTrain(finish=True)
    for changed in ({}, {"max_steps": 150}):  # other steps: noted, reused as it is
        assert (
            train_or_reuse(resolve(TrainConfig, None, {**to_dict(cfg), **changed}), spawn) == tmp_path / "run"
        )
    out = capsys.readouterr().out
    assert out.count("is trained already: reusing it") == 2 and "max_steps=80" in out
    other = tmp_path / "other.csv"
    other.write_text(POSTS, encoding="utf-8")
    with pytest.raises(ValueError, match="other data.*RUN_NAME"):  # another file in the same run folder
        train_or_reuse(resolve(TrainConfig, None, {**to_dict(cfg), "data": str(other)}), spawn)
    assert spawn.calls == [] and snapshot(tmp_path / "run") == before


def test_uploads_are_kept_never_overwritten(tmp_path):
    saved = tmp_path / "uploads"

    def upload(content: bytes):
        return lambda: {"posts.csv": content}

    first = choose_csv("", upload(b"a,b\n"), saved, "data/sample.csv", say=lambda _: None)
    before = snapshot(saved)
    assert (
        choose_csv("", upload(b"a,b\n"), saved, "data/sample.csv", say=lambda _: None) == first
    )  # the same upload
    assert snapshot(saved) == before
    other = choose_csv(
        "", upload(b"c,d\n"), saved, "data/sample.csv", say=lambda _: None
    )  # same name, other bytes
    assert other != first and other.read_bytes() == b"c,d\n" and first.read_bytes() == b"a,b\n"
    assert choose_csv("", dict, saved, "data/sample.csv", say=lambda _: None) == Path("data/sample.csv")
    assert choose_csv(str(first), None, saved, "data/sample.csv", say=lambda _: None) == first
    with pytest.raises(ValueError, match="one file"):
        choose_csv("", lambda: {"a.csv": b"", "b.csv": b""}, saved, "data/sample.csv", say=lambda _: None)
