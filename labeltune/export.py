"""labeltune export: a trained run as an adapter, a merged 16-bit model, or GGUF.

    labeltune export --run runs/demo --format adapter  --output exports/demo-adapter
    labeltune export --run runs/demo --format merged16 --output exports/demo-merged
    labeltune export --run runs/gemma2 --format gguf --quant q4_k_m      # needs unsloth on a GPU
    HF_TOKEN=... labeltune export --run runs/demo --format merged16 --push-to-hub me/my-labeller

`adapter` and `merged16` outputs are themselves run directories (config.yaml, model.json, data/),
so `labeltune label --run <export>` and `labeltune evaluate --run <export>` work on them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

FORMATS = ("adapter", "merged16", "gguf")
RUN_FILES = ("config.yaml", "versions.json", "data")


def _copy_run_files(run_dir: Path, out: Path) -> None:
    for name in RUN_FILES:
        src = run_dir / name
        if src.is_dir():
            shutil.copytree(src, out / name, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, out / name)


def _push(out: Path, repo_id: str) -> None:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        raise ValueError("--push-to-hub needs a token in the environment: export HF_TOKEN=hf_...")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=True, exist_ok=True)
    api.upload_folder(folder_path=str(out), repo_id=repo_id)
    print(f"pushed {out} -> https://huggingface.co/{repo_id} (private)")


def export_adapter(run_dir: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _copy_run_files(run_dir, out)
    shutil.copytree(run_dir / "adapter", out / "adapter", dirs_exist_ok=True)
    info = json.loads((run_dir / "model.json").read_text(encoding="utf-8"))
    if info["base"] == "base/":  # tiny: the base travels with the adapter
        shutil.copytree(run_dir / "base", out / "base", dirs_exist_ok=True)
    (out / "model.json").write_text(json.dumps(info, indent=1), encoding="utf-8")


def export_merged16(run_dir: Path, out: Path, dtype: str = "float16") -> None:
    """Merge LoRA into a 16-bit copy of the base (the 16-bit `full_id` for 4-bit presets)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from labeltune.models import base_path

    info = json.loads((run_dir / "model.json").read_text(encoding="utf-8"))
    base = info.get("full_id") or base_path(run_dir)
    target = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    # tiny merges in fp32 then casts; real models load straight in 16-bit (an 8B in fp32 is 32 GB)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32 if info["base"] == "base/" else target)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    merged = PeftModel.from_pretrained(model, run_dir / "adapter").merge_and_unload()
    merged = merged.to(target)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    _copy_run_files(run_dir, out)
    merged_info = {**info, "base": "model/", "merged": True, "merged_dtype": dtype, "load_in_4bit": False}
    (out / "model.json").write_text(json.dumps(merged_info, indent=1), encoding="utf-8")


def export_gguf(run_dir: Path, out: Path, quant: str) -> None:
    from labeltune.models import cuda_available, unsloth_installed

    if not (cuda_available() and unsloth_installed()):
        raise ValueError(
            "GGUF export goes through Unsloth (it builds llama.cpp) and needs a CUDA GPU with "
            "`pip install -e '.[gpu]'`. Here: export --format merged16, then run llama.cpp's "
            "convert_hf_to_gguf.py and llama-quantize on <output>/model."
        )
    from unsloth import FastLanguageModel  # noqa: PLC0415  (GPU only)

    info = json.loads((run_dir / "model.json").read_text(encoding="utf-8"))
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(run_dir / "adapter"), max_seq_length=info.get("max_length", 512), load_in_4bit=True
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained_gguf(str(out), tokenizer, quantization_method=quant)


def main(cfg) -> Path:
    run_dir = Path(cfg.run)
    if not (run_dir / "model.json").is_file() or not (run_dir / "adapter").is_dir():
        raise FileNotFoundError(f"{run_dir}: not a trained run (no model.json / adapter/)")
    out = Path(cfg.output) if cfg.output else run_dir.parent / f"{run_dir.name}-{cfg.format}"
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite or choose another --output")
    if cfg.format == "adapter":
        export_adapter(run_dir, out)
    elif cfg.format == "merged16":
        export_merged16(run_dir, out, cfg.dtype)
    else:
        export_gguf(run_dir, out, cfg.quant)
    print(f"exported {run_dir} as {cfg.format} -> {out}")
    if cfg.push_to_hub:
        _push(out, cfg.push_to_hub)
    return out
