"""Writes into a folder labeltune owns (a run) that never follow a link out of it.

A run or export may come from someone else, and a link planted in it (``metrics.json -> ~/.bashrc``,
``eval -> /etc``) must not redirect labeltune's writes. ``write_inside`` writes a temporary file in
the target's own folder and renames it over the target: a rename replaces a link itself, never the
file it points to, and a reader never sees half a file. The folder must resolve inside the root.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class OutsideRoot(ValueError):
    """A write that would land outside the folder it belongs to (a link in the path)."""


def check_inside(root: str | Path, path: str | Path) -> Path:
    """`path` itself (not resolved), after checking that its folder resolves inside `root` and that the
    path is not a link to a folder; refuses in one line naming the link."""
    root, path = Path(root), Path(path)
    real_root, parent = root.resolve(), path.parent.resolve()
    if parent != real_root and real_root not in parent.parents:
        raise OutsideRoot(
            f"{path.parent}: resolves to {parent}, outside {root} (a link in the run points out "
            f"of it); refusing to write there: remove the link"
        )
    if path.is_symlink() and path.is_dir():
        raise OutsideRoot(
            f"{path}: a link to a folder in {root}; refusing to write through it: remove the link"
        )
    return path


def write_inside(root: str | Path, path: str | Path, data: str | bytes) -> Path:
    """Write `data` (str as UTF-8) to `path` inside `root` atomically, replacing a link at `path`."""
    path = check_inside(root, path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def make_dir_inside(root: str | Path, path: str | Path) -> Path:
    """mkdir `path` (and missing parents) inside `root`, refusing a link anywhere on the way; the new
    folder is the last part, created here (FileExistsError when it already exists)."""
    root, path = Path(root), Path(path)
    relative = path.relative_to(root)
    current = root
    for part in relative.parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise OutsideRoot(f"{current}: a link in {root}; refusing to write through it: remove the link")
        current.mkdir(exist_ok=True)
    check_inside(root, path)
    path.mkdir()
    return path
