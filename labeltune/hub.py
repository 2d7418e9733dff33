"""A run on the Hugging Face Hub: `--run org/name` (or `org/name@revision`) downloaded into the Hugging Face
cache with huggingface_hub.snapshot_download, so `labeltune export --push-to-hub` can be used where it landed.

labeltune.run decides when a --run names a Hub repo (no local path of that name), which files a run needs,
and checks that what came down is a run; this module only talks to huggingface_hub and says each of its
failures in one line. Downloads go where huggingface_hub puts them (HF_HOME, HF_HUB_CACHE; HF_ENDPOINT,
HF_TOKEN and HF_HUB_OFFLINE as it reads them); a second use takes the cached snapshot, offline too.
Everything this module reaches inside huggingface_hub (its cache layout, its error classes) is here, and
tests/test_hub.py runs it against a local stand-in of the Hub's HTTP API.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

# org/name, then an optional @revision (a branch, tag or commit; a branch may hold a slash: refs/pr/1)
HUB_RUN = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?")


class HubError(ValueError):
    """A Hub repo that cannot be used as a run, said in one line."""


@dataclass(frozen=True)
class HubRun:
    repo_id: str  # org/name
    revision: str | None  # None: the repo's default branch (main)

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_hub_run(spec: str) -> HubRun | None:
    """`spec` as a Hub model repo (org/name[@revision]), or None where it cannot be one."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    match = HUB_RUN.fullmatch(spec)
    if match is None:
        return None
    try:
        validate_repo_id(match["repo"])
    except HFValidationError:
        return None
    return HubRun(match["repo"], match["revision"])


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub read it."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cache_folder(hub: HubRun) -> Path:
    """The repo's folder in the Hugging Face cache (HF_HUB_CACHE/models--org--name)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=hub.repo_id, repo_type="model")


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.is_dir() else set()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _cause(e: BaseException) -> str:
    """What huggingface_hub's error wraps (a connection error ...), as `Type: first line`."""
    cause = e.__cause__ or e
    return f"{type(cause).__name__}: {_first_line(cause)}"


def download(hub: HubRun, needs: tuple[str, ...], allow_patterns: list[str]) -> Path:
    """The repo's snapshot (the files matching `allow_patterns`) in the Hugging Face cache: downloaded, or
    the cached one (offline, or nothing new); says which on stderr. First the files in `needs` alone (no
    progress bars): a repo without them is refused before anything else comes down. Every failure is one
    HubError line."""
    before = _files(cache_folder(hub) / "snapshots")
    snapshot = _snapshot(hub, hub.revision, list(needs), quiet=True)
    missing = [name for name in needs if not (snapshot / name).is_file()]
    if missing:
        raise HubError(
            f"--run {hub}: the Hub repo holds no labeltune run or export (no {' or '.join(missing)} in it; "
            "`labeltune export --push-to-hub` pushes one, and a GGUF export loads with llama.cpp)"
        )
    snapshots = snapshot.parent
    path = _snapshot(hub, snapshot.name, allow_patterns, cached=snapshot)  # that commit: no second look-up
    new = sorted(f for f in _files(snapshots) - before if (snapshots / f).is_file())
    if new:
        size = sum(os.path.getsize(snapshots / f) for f in new)
        said = f"downloaded {len(new)} files ({size / 2**20:.1f} MiB) into {path}"
    else:
        said = f"already in the local cache: {path}" + (
            " (HF_HUB_OFFLINE is set: not checked for a newer revision)" if offline() else ""
        )
    print(f"labeltune: --run {hub}: revision {path.name[:12]} {said}", file=sys.stderr)
    return path


def _snapshot(
    hub: HubRun,
    revision: str | None,
    allow_patterns: list[str],
    quiet: bool = False,
    cached: Path | None = None,
) -> Path:
    """huggingface_hub.snapshot_download, its failures said in one HubError line each (the classes read in
    huggingface_hub 2.4; IncompleteSnapshotError is new in 2.x, where a cached snapshot missing files is
    refused instead of returned). `cached`: the snapshot folder the first call found, so a file missing
    from it offline is said as an incomplete copy (with a commit as revision, huggingface_hub lists the
    files from its cache and fails on the missing one: LocalEntryNotFoundError)."""
    from huggingface_hub import errors, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    incomplete = getattr(errors, "IncompleteSnapshotError", ())

    where = f"--run {hub}: no such local directory, and the Hub repo {hub.repo_id}"
    said = logging.getLogger("huggingface_hub._snapshot_download")  # "No files matched ...": a repo
    level = said.level  # without a run, which download says in its own words
    said.setLevel(logging.ERROR if quiet else level)
    try:
        path = snapshot_download(
            hub.repo_id,
            revision=revision,
            allow_patterns=allow_patterns,
            tqdm_class=_Silent if quiet else None,
        )
    except RevisionNotFoundError:
        raise HubError(f"{where} has no revision {revision!r} (a branch, tag or commit)") from None
    except GatedRepoError:
        raise HubError(
            f"{where} is gated: accept its terms on the Hub and set HF_TOKEN "
            "(or run `hf auth login`) with a token that may read it"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"--run {hub}: no such local directory, and no Hub model repo {hub.repo_id} is readable from "
            "here (it does not exist, or it is private: set HF_TOKEN or run `hf auth login` with a token "
            "that may read it)"
        ) from None
    except LocalEntryNotFoundError as e:
        why = (
            "HF_HUB_OFFLINE is set (unset it to download)"
            if offline()
            else f"the Hub is not reachable ({_cause(e)})"
        )
        if isinstance(e, incomplete) or (cached is not None and cached.is_dir()):
            raise HubError(
                f"--run {hub}: its copy in the local cache ({cached or cache_folder(hub)}) is incomplete "
                f"(a download cut off) and {why}; run it again online to finish the download"
            ) from None
        raise HubError(f"{where} is not in the local cache ({cache_folder(hub)}) and {why}") from None
    except Exception as e:  # the Hub failing (HTTP 5xx), a download cut off (the HTTP library's error) ...
        raise HubError(
            f"--run {hub}: downloading it from the Hub failed ({type(e).__name__}: {_first_line(e)}); "
            "run it again (a download resumes)"
        ) from e
    finally:
        said.setLevel(level)
    return Path(path)


class _Silent(tqdm):
    """A progress bar that never shows (snapshot_download's tqdm_class for the first, tiny files)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "disable": True})


def in_cache(run_dir: Path) -> bool:
    """Whether `run_dir` is a snapshot in the Hugging Face cache (<cache>/models--org--name/snapshots/<sha>),
    whose files are links into that repo's blobs/ and belong to the cache."""
    real = Path(run_dir).resolve()
    return real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--")


def cached_revision(snapshot: Path) -> tuple[str, str]:
    """(org/name, commit) of a snapshot in the Hugging Face cache (in_cache)."""
    real = Path(snapshot).resolve()
    return "/".join(real.parent.parent.name.split("--")[1:]), real.name


def foreign_link(run_dir: Path, path: Path) -> bool:
    """Whether `path` in the run is a link a run may not hold: any link but one the Hugging Face cache made
    (in a snapshot, a link to a file in its own repo's blobs/)."""
    if not Path(path).is_symlink():
        return False
    if not in_cache(run_dir):
        return True
    blobs = Path(run_dir).resolve().parent.parent / "blobs"
    target = Path(path).resolve()
    return not (target.parent == blobs and target.is_file())
