"""Fold a LoRA adapter into a 16-bit copy of its base, one tensor at a time (no model is built).

PEFT's ``merge_and_unload`` needs the whole base in memory: ~16 GB for Llama 3.1 8B, ~18.5 GB for
Gemma 2 9B, more than a free Colab VM's ~12.7 GB of RAM. Here the base's safetensors shards are read
tensor by tensor (memory-mapped), each LoRA target gets ``W + scale * B @ A`` (in fp32, then cast),
every other tensor is cast and copied, and the result is written in shards of at most ``shard_bytes``.
Peak memory is about one output shard plus the largest tensor in fp32, whatever the model's size.

The result is a standard Hugging Face checkpoint (config.json, model*.safetensors and, when sharded,
model.safetensors.index.json) that transformers (and vLLM) load as they load the base.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

SHARD_BYTES = 1 << 30  # output shard size: bounds the memory of the merge
ADAPTER_PREFIX = "base_model.model."
DTYPES = ("float16", "bfloat16")
BYTES_PER_PARAM = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclass(frozen=True)
class MergeNeeds:
    """What a merge needs of this machine, in bytes (known before anything is loaded)."""

    ram: int  # peak process memory of the merge
    disk: int  # size of the merged checkpoint written


def base_files(base_dir: Path) -> list[Path]:
    """The safetensors files of a local checkpoint, in order; refuses a checkpoint that has none."""
    files = sorted(base_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{base_dir}: no *.safetensors files (the streamed merge reads safetensors checkpoints only)")
    return files


def tensor_shapes(files: list[Path]) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of every tensor in `files`, read from the headers only."""
    shapes = {}
    for path in files:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        for name, meta in header.items():
            if name != "__metadata__":
                shapes[name] = (tuple(meta["shape"]), meta["dtype"])
    return shapes


def needs_for_params(n_params: float, largest_tensor: float, dtype: str, shard_bytes: int = SHARD_BYTES) -> MergeNeeds:
    """Memory and disk of a streamed merge of a model with `n_params` parameters whose largest tensor has
    `largest_tensor` elements: one output shard + the largest tensor in fp32 (+ its copy while cast)
    + working room for the Python process and the adapter."""
    out_bytes = BYTES_PER_PARAM[dtype]
    ram = shard_bytes + int(largest_tensor) * (4 + 4 + out_bytes) + (1 << 30)
    return MergeNeeds(ram=ram, disk=int(n_params * out_bytes))


def needs_for_files(files: list[Path], dtype: str, shard_bytes: int = SHARD_BYTES) -> MergeNeeds:
    shapes = tensor_shapes(files)
    sizes = [math.prod(shape) for shape, _ in shapes.values()]
    return needs_for_params(sum(sizes), max(sizes), dtype, shard_bytes)


def _adapter_scales(config: dict) -> float:
    if config.get("use_dora"):
        raise ValueError("the adapter uses DoRA, which the streamed merge does not fold; export --format adapter")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError("the adapter has per-module ranks (rank_pattern/alpha_pattern), which the streamed merge does not fold")
    if config.get("fan_in_fan_out"):
        raise ValueError("the adapter was trained with fan_in_fan_out (Conv1D layers), which the streamed merge does not fold")
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def read_adapter(adapter_dir: Path) -> tuple[dict, dict, float]:
    """(LoRA pairs: base tensor name -> (A, B), full tensors: base tensor name -> tensor, scale)."""
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    scale = _adapter_scales(config)
    pairs: dict[str, dict] = {}
    full: dict = {}
    for key, tensor in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        name = key.removeprefix(ADAPTER_PREFIX)
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.weight"
            if name.endswith(marker):
                pairs.setdefault(name[: -len(marker)] + ".weight", {})[part] = tensor
                break
        else:
            if ".lora_" in name:
                raise ValueError(f"{adapter_dir}: adapter tensor {key} is not a LoRA A/B weight; cannot merge it")
            full[name] = tensor  # modules_to_save (e.g. lm_head) and saved embedding layers: trained in full
    broken = [name for name, pair in pairs.items() if set(pair) != {"lora_A", "lora_B"}]
    if broken:
        raise ValueError(f"{adapter_dir}: LoRA weights without their A/B partner: {broken[:3]}")
    return {name: (p["lora_A"], p["lora_B"]) for name, p in pairs.items()}, full, scale


class _ShardWriter:
    """Writes tensors into numbered safetensors shards of at most `limit` bytes, then names them."""

    def __init__(self, out_dir: Path, limit: int):
        self.out_dir, self.limit = out_dir, limit
        self.current: dict = {}
        self.current_bytes = 0
        self.written: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, name: str, tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.current and self.current_bytes + size > self.limit:
            self.flush()
        self.current[name] = tensor.contiguous()
        self.current_bytes += size
        self.total += size

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.current:
            return
        path = self.out_dir / f"part-{len(self.written):05d}.safetensors.tmp"
        save_file(self.current, str(path), metadata={"format": "pt"})
        self.written.append((path, list(self.current)))
        self.current, self.current_bytes = {}, 0

    def finish(self) -> list[Path]:
        """Final names (model.safetensors, or model-0000i-of-0000n.safetensors + index); returns them."""
        self.flush()
        n = len(self.written)
        names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        weight_map = {}
        for (tmp, tensors), name in zip(self.written, names):
            os.replace(tmp, self.out_dir / name)
            weight_map.update({t: name for t in tensors})
        if n > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
            (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
        return [self.out_dir / name for name in names]


def merge_lora(base_dir: Path, adapter_dir: Path, out_dir: Path, dtype: str = "float16",
               shard_bytes: int = SHARD_BYTES) -> list[Path]:
    """Write base + LoRA merged, cast to `dtype`, as a checkpoint in `out_dir` (config.json and weights;
    the tokenizer is the caller's); returns the weight files. Every LoRA pair must find its base tensor."""
    import torch
    from safetensors import safe_open

    if dtype not in DTYPES:
        raise ValueError(f"merge dtype {dtype!r}; available: {', '.join(DTYPES)}")
    target = getattr(torch, dtype)
    files = base_files(base_dir)
    pairs, full, scale = read_adapter(adapter_dir)
    shapes = tensor_shapes(files)
    missing = sorted(set(pairs) - set(shapes))
    if missing:
        raise ValueError(f"{adapter_dir}: LoRA targets not in the base checkpoint {base_dir}: {missing[:3]}")
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    for name, tensor in full.items():
        if name in shapes and tuple(tensor.shape) != shapes[name][0]:
            raise ValueError(
                f"{adapter_dir}: {name} has shape {tuple(tensor.shape)}, the base has {shapes[name][0]} "
                "(a resized vocabulary); export --format adapter instead"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(out_dir, shard_bytes)
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if name in full:
                    tensor = full[name]
                elif name in pairs:
                    a, b = pairs[name]
                    weight = f.get_tensor(name).float()
                    tensor = weight.addmm_(b.float(), a.float(), alpha=scale)
                else:
                    tensor = f.get_tensor(name)
                writer.add(name, tensor.to(target))
    for name in sorted(set(full) - set(shapes)):  # e.g. a trained lm_head of a model that ties it to embeddings
        writer.add(name, full[name].to(target))
        if name == "lm_head.weight":
            config["tie_word_embeddings"] = False
    written = writer.finish()
    config.pop("quantization_config", None)
    config["dtype"] = dtype
    config.pop("torch_dtype", None)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if (base_dir / "generation_config.json").is_file():
        (out_dir / "generation_config.json").write_bytes((base_dir / "generation_config.json").read_bytes())
    return written


def files_sha256(files: list[Path]) -> str:
    """One digest of several weight files (their names and bytes, in order)."""
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
