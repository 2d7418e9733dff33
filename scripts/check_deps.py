"""Resolve labeltune's core deps together with the `gpu` extra (uv, metadata only: nothing is downloaded
or installed) and say whether a preinstalled torch (Colab's) would be kept by `pip install -e '.[gpu]'`.

    python scripts/check_deps.py                    # the torch installed here, if any
    python scripts/check_deps.py --torch 2.15.0     # as if torch 2.15.0 were preinstalled

Prints the versions the gpu extra resolves to, then one line on the preinstalled torch: kept, or
replaced (with the version it would get and uv's reason). Exit status 0 either way; 2 when the
resolution itself fails. Needs `uv` (pip install uv) and access to PyPI.
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
        cmd = [uv(), "pip", "compile", str(ROOT / "pyproject.toml"), str(extra), "--extra", "gpu",
               "--python-version", "3.11", "--python-platform", "x86_64-unknown-linux-gnu", "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return None, proc.stderr.strip()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", proc.stdout, flags=re.M))
    return {k.lower(): v for k, v in pins.items()}, ""


def installed_torch() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def verdict(preinstalled: str, resolved: dict[str, str] | None, pinned: dict[str, str] | None, reason: str) -> str:
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
    return (f"torch {preinstalled} preinstalled: REPLACED by torch {got} when the gpu extra is installed "
            f"(torch=={public} does not resolve with it: {why})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch", default=None, help="check this preinstalled torch version (default: the one installed here)")
    args = parser.parse_args()
    resolved, reason = compile_gpu_extra([])
    if resolved is None:
        print(f"check_deps: the core deps and the gpu extra do not resolve together:\n{reason}", file=sys.stderr)
        sys.exit(2)
    print("gpu extra resolves to: " + ", ".join(f"{n} {resolved[n]}" for n in SHOWN if n in resolved))
    preinstalled = args.torch or installed_torch()
    if preinstalled is None:
        print("no torch installed here: pip installs the one above")
        return
    pinned, why = compile_gpu_extra([f"torch=={preinstalled.split('+')[0]}"])
    print(verdict(preinstalled, resolved, pinned, why))


if __name__ == "__main__":
    main()
