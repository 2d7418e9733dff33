"""The walkthrough notebook's decisions (notebooks/walkthrough.ipynb), apart from the environment.

Each function takes what differs between Colab and a laptop as arguments (an upload function, a Drive
mount function, where Drive is mounted) so that tests can pass fakes. Nothing here deletes or
overwrites a file: an existing run, upload or checkout is used as it is. (Finding the checkout runs
before labeltune is installed, so that function lives in the notebook's install cell.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

# Options a finished run must share with the train cell's to be reused: the training data
DATA_OPTIONS = ("data", "task", "text_column", "label_column", "score_column")


def runs_folder(
    keep_on_drive: bool,
    mount: Callable[[str], object] | None = None,
    drive_root: str | Path = "/content/drive",
    local: str | Path = "runs",
) -> Path:
    """Where the notebook's runs go: <Drive>/MyDrive/labeltune/runs (Drive mounted at `drive_root` first)
    when kept on Drive, so that a new Colab session finds them; else `local`."""
    if not keep_on_drive:
        return Path(local)
    if mount is None:
        raise ValueError("keeping runs on Drive needs a mount function (google.colab.drive.mount)")
    mount(str(drive_root))
    runs = Path(drive_root) / "MyDrive" / "labeltune" / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    return runs


def choose_csv(
    path: str | Path | None,
    upload: Callable[[], dict] | None,
    save_dir: str | Path,
    default: str | Path,
    name: str = "CSV_PATH",
    say: Callable[[str], object] = print,
) -> Path:
    """The labelled (or to-be-labelled) file to use: `path` when set; else, with an upload function
    (google.colab.files.upload), the uploaded file, kept in `save_dir`; else (or nothing uploaded) `default`.

    An upload is written to save_dir/<its name>; a file of that name with the same bytes is used as it is
    (re-running the cell changes nothing), one with other bytes is kept and the upload goes to
    <stem>-<sha256 prefix><suffix>."""
    if path:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        say(f"data: {path}")
        return path
    if upload is None:
        say(f"data: {default}")
        return Path(default)
    uploaded = upload() or {}
    if not uploaded:
        say(f"nothing uploaded: data: {default}")
        return Path(default)
    if len(uploaded) > 1:
        raise ValueError(f"upload one file at a time (got {', '.join(sorted(uploaded))})")
    ((filename, content),) = uploaded.items()
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    dest = save_dir / Path(filename).name
    if dest.exists() and dest.read_bytes() != content:
        dest = save_dir / f"{dest.stem}-{hashlib.sha256(content).hexdigest()[:8]}{dest.suffix}"
    if dest.exists() and dest.read_bytes() == content:
        say(f"data: {dest} (uploaded before: the same bytes, used as it is)")
    else:
        dest.write_bytes(content)
        say(f"data: {dest} (uploaded)")
    say(f"next session: set {name} = {str(dest)!r} to skip the upload")
    return dest


def run_name(model: str, data: str | Path, sample: str | Path = "data/sample.csv") -> str:
    """notebook-<model> for the bundled sample, notebook-<model>-<file stem> for a file of your own."""
    same = Path(data) == Path(sample) or (
        Path(data).is_file() and Path(sample).is_file() and Path(data).resolve() == Path(sample).resolve()
    )
    return f"notebook-{model}" if same else f"notebook-{model}-{Path(data).stem}"


def text_column_of(path: str | Path, preferred: str, fallback: str = "text") -> str:
    """`preferred` when the file has that column, else `fallback`; neither is an error naming the columns."""
    from labeltune.data import read_columns

    columns = read_columns(path)
    for column in (preferred, fallback):
        if column in columns:
            return column
    raise ValueError(f"{path}: no column {preferred!r} (nor {fallback!r}); columns found: {columns}")


def is_finished(run: str | Path) -> bool:
    """A run whose training completed (adapter/ is written last)."""
    from labeltune.run import ADAPTER

    return (Path(run) / ADAPTER).exists()


def train_or_reuse(cfg, spawn: Callable, say: Callable[[str], object] = print) -> Path:
    """Train `cfg` (a TrainConfig) with `spawn` (labeltune.train.spawn) unless cfg.output holds a finished
    run: that one is reused as it is, never trained over or deleted. An unfinished run is continued from
    its last checkpoint (by `labeltune train` itself). A finished run trained on other data is an error
    (choose another run name); other options (steps, learning rate) are noted and the run is reused."""
    from labeltune.config import to_dict
    from labeltune.run import INFO, load_config

    run = Path(cfg.output)
    if is_finished(run):
        saved, now = to_dict(load_config(run)), to_dict(cfg)
        differ = [k for k in now if k != "output" and saved.get(k) != now[k]]
        data = [f"{k} {saved.get(k)!r} (now {now[k]!r})" for k in differ if k in DATA_OPTIONS]
        if data:
            raise ValueError(
                f"{run} is a finished run trained with other data: "
                + "; ".join(data)
                + ". It is kept as it is: choose another run name (RUN_NAME) to train on this data"
            )
        note = (
            f" (trained with {', '.join(f'{k}={saved.get(k)!r}' for k in differ)}; kept as it is)"
            if differ
            else ""
        )
        say(f"{run} is trained already: reusing it{note}. To train again, set another RUN_NAME")
        return run
    if (run / INFO).is_file():
        say(f"{run} is unfinished: continuing it from its last checkpoint")
    else:
        say(f"training a new run in {run}")
    return spawn(cfg)
