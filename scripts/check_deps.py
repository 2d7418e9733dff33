"""Resolve labeltune's core deps together with the `gpu` extra (uv, metadata only: nothing is downloaded
or installed) and say whether a preinstalled torch (Colab's) would be kept by `pip install -e '.[gpu]'`.

    python scripts/check_deps.py                    # the torch installed here, if any
    python scripts/check_deps.py --torch 2.15.0     # as if torch 2.15.0 were preinstalled
    python scripts/check_deps.py --constraints pins.txt   # also write the resolution as pip constraints

Prints the versions the gpu extra resolves to, then one line on the preinstalled torch: kept, or
replaced (with the version it would get and uv's reason). Exit status 0 either way; 2 when the
resolution itself fails. Needs `uv` (pip install uv) and access to PyPI.

``--constraints`` writes every resolved version except torch's CUDA stack and the CUDA-only packages
(NOT_PINNED): `make env-gpu-pins` installs labeltune on CPU under them, so the tests run against the
library versions a GPU user gets. ``--train-trl FILE`` prints the TRL requirement that trains on CPU
with those pins (the pinned TRL if it can, else the first minor release that can).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHOWN = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "unsloth")
# Not pinned on CPU: torch and what comes with its CUDA build (the CPU wheel is installed instead; a CUDA
# torch from PyPI is several GB and cannot run here), and packages that only install or import with CUDA.
NOT_PINNED = re.compile(
    r"^(torch|torchvision|torchaudio|torchao|triton|nvidia-.*|cuda-.*|xformers|unsloth|unsloth-zoo|"
    r"cut-cross-entropy|flash-attn|vllm|bitsandbytes-cuda.*)$"
)
MIN_CPU_TRL = (
    "1.16"  # labeltune.models.MIN_CPU_TRL (not imported: this script runs before labeltune is installed)
)


def uv() -> str:
    exe = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(exe).exists():
        sys.exit("check_deps: uv is not installed (pip install uv)")
    return exe


def compile_gpu_extra(extra_requirements: list[str]) -> tuple[dict[str, str] | None, str]:
    """(name -> version of the resolution, or None when it fails; uv's message)."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = Path(tmp) / "extra.in"
        extra.write_text("\n".join(extra_requirements) + "\n", encoding="utf-8")
        cmd = [
            uv(),
            "pip",
            "compile",
            str(ROOT / "pyproject.toml"),
            str(extra),
            "--extra",
            "gpu",
            "--python-version",
            "3.11",
            "--python-platform",
            "x86_64-unknown-linux-gnu",
            "--quiet",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return None, proc.stderr.strip()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", proc.stdout, flags=re.M))
    return {k.lower(): v for k, v in pins.items()}, ""


def write_constraints(resolved: dict[str, str], path: Path) -> list[str]:
    """The resolution as pip constraints (name==version), NOT_PINNED left out; returns what was left out."""
    kept = {n: v for n, v in resolved.items() if not NOT_PINNED.match(n)}
    path.write_text("".join(f"{n}=={v}\n" for n, v in sorted(kept.items())), encoding="utf-8")
    return sorted(set(resolved) - set(kept))


def train_trl(constraints: Path) -> str:
    """The TRL requirement for training on CPU beside these pins: the pinned one when it trains on CPU."""
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", constraints.read_text(encoding="utf-8"), flags=re.M))
    pinned = pins.get("trl")
    major, minor = (int(x) for x in MIN_CPU_TRL.split("."))
    if pinned and tuple(int(x) for x in pinned.split(".")[:2]) >= (major, minor):
        return f"trl=={pinned}"
    return f"trl=={MIN_CPU_TRL}.*"


def installed_torch() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def verdict(
    preinstalled: str, resolved: dict[str, str] | None, pinned: dict[str, str] | None, reason: str
) -> str:
    """One line: is `preinstalled` kept by the gpu extra? `pinned` is the resolution with torch==preinstalled
    required (None if that is impossible), `resolved` the free resolution."""
    public = preinstalled.split("+")[0]
    if pinned is not None:
        return f"torch {preinstalled} preinstalled: kept (the gpu extra resolves with it)"
    got = resolved.get("torch", "?") if resolved else "?"
    # uv's explanation: the clause that names the package capping torch (e.g. "unsloth>=2026.10.1 depends
    # on torch>=2.4.0,<2.15.0"), else its last line
    clauses = [c.strip() for c in re.split(r"Because |, we can conclude| and (?=[a-z0-9_.-]+[<>=!])", reason)]
    named = [c for c in clauses if re.search(r"depends on torch", c) and not c.startswith("labeltune")]
    why = named[0] if named else (reason.splitlines()[-1].strip() if reason else "no resolution")
    return (
        f"torch {preinstalled} preinstalled: REPLACED by torch {got} when the gpu extra is installed "
        f"(torch=={public} does not resolve with it: {why})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--torch",
        default=None,
        help="check this preinstalled torch version (default: the one installed here)",
    )
    parser.add_argument(
        "--constraints", type=Path, default=None, help="write the resolution here as pip constraints"
    )
    parser.add_argument(
        "--train-trl",
        type=Path,
        default=None,
        metavar="FILE",
        help="print the TRL requirement that trains on CPU beside the constraints in FILE, and exit",
    )
    args = parser.parse_args()
    if args.train_trl:
        print(train_trl(args.train_trl))
        return
    resolved, reason = compile_gpu_extra([])
    if resolved is None:
        print(
            f"check_deps: the core deps and the gpu extra do not resolve together:\n{reason}", file=sys.stderr
        )
        sys.exit(2)
    print("gpu extra resolves to: " + ", ".join(f"{n} {resolved[n]}" for n in SHOWN if n in resolved))
    if args.constraints:
        left = write_constraints(resolved, args.constraints)
        print(
            f"wrote {args.constraints}: {len(resolved) - len(left)} pins (not pinned on CPU: "
            f"{', '.join(left)})"
        )
    preinstalled = args.torch or installed_torch()
    if preinstalled is None:
        print("no torch installed here: pip installs the one above")
        return
    pinned, why = compile_gpu_extra([f"torch=={preinstalled.split('+')[0]}"])
    print(verdict(preinstalled, resolved, pinned, why))


if __name__ == "__main__":
    main()
