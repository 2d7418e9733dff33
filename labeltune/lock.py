"""One writer per output: an exclusive lock file that holds its owner's pid and host.

    with hold(output.with_name(output.name + ".lock"), f"--output {output}"):
        ...  # only this process writes the output

The lock file is created with O_CREAT | O_EXCL, so of two processes only one gets it; the other is
refused with one line naming the lock file and the pid holding it. A lock left by a process that no
longer runs on this host (killed, machine restarted) is taken over with a note. The lock is removed when
the block ends, also on an exception or Ctrl-C; folders made to hold it are removed again if left empty.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FOLDER_LOCK = ".labeltune.lock"  # the lock file inside a folder that a verb writes (train: the run directory)
UNWRITTEN_GRACE_S = (
    10  # a lock file still empty after this long was left by a process killed while creating it
)
_held: set[Path] = set()  # the locks this process holds (a lock naming our pid but not in here is an old one)


@contextmanager
def hold(path: str | Path, what: str) -> Iterator[Path]:
    """Hold the lock file `path` for the block; `what` names the guarded thing in the refusal."""
    path = Path(path).absolute()
    made = _make_folders(path.parent)
    try:
        owner = _acquire(path, what)
    except BaseException:
        _remove_empty(made)
        raise
    _held.add(path)
    try:
        yield path
    finally:
        _held.discard(path)
        if _read(path)[0] == owner:  # ours still (never another process's, whatever happened meanwhile)
            path.unlink(missing_ok=True)
        _remove_empty(made)


def _acquire(path: Path, what: str) -> str:
    """Create the lock file (taking over a stale one); its text."""
    owner = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            content, holder = _read(path)
            if content is None:
                continue  # released between our two looks: try again
            why = _stale(path, holder)
            if why is None:
                raise FileExistsError(_refusal(path, what, holder)) from None
            if _read(path)[0] == content:  # still the same old lock: remove it and try again
                path.unlink(missing_ok=True)
                print(f"labeltune: note: took over the lock {path} ({why})", file=sys.stderr)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(owner)
        return owner


def _read(path: Path) -> tuple[str | None, dict]:
    """(the lock file's text, or None where it is gone; its owner, {} where unreadable)."""
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, {}
    try:
        holder = json.loads(content)
    except ValueError:
        return content, {}
    return content, holder if isinstance(holder, dict) else {}


def _stale(path: Path, holder: dict) -> str | None:
    """Why the lock is left over from a process that has ended, or None when its owner may still run."""
    pid, host = holder.get("pid"), holder.get("host")
    if not isinstance(pid, int):
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        return f"its owner never wrote it, {age:.0f} s ago" if age > UNWRITTEN_GRACE_S else None
    if host != socket.gethostname():
        return None  # another machine's process: it cannot be checked from here
    if pid == os.getpid():
        return None if path in _held else f"pid {pid} is this process, which does not hold it"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"pid {pid} no longer runs"
    except PermissionError:
        return None  # runs, as another user
    return None


def _refusal(path: Path, what: str, holder: dict) -> str:
    pid, host = holder.get("pid", "unknown"), holder.get("host", "unknown host")
    return (
        f"{what} is in use by another labeltune process (pid {pid} on {host} holds the lock file {path}); "
        f"wait until it ends, or delete {path} if pid {pid} is not a labeltune process"
    )


def _make_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; the ones created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir(exist_ok=True)
    return missing[::-1]


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders `_make_folders` created, innermost first, where nothing was put in them."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:  # not empty (an output was written there), or gone
            return
