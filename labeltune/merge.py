"""Fold a LoRA adapter into a 16-bit copy of its base, one tensor at a time (no model is built).

PEFT's ``merge_and_unload`` needs the whole base in memory: ~16 GB for Llama 3.1 8B, ~18.5 GB for
Gemma 2 9B, more than a free Colab VM's ~12.7 GB of RAM. Here the output shards are planned from the
base's safetensors headers, then every tensor is read, merged (each LoRA target gets
``W + scale * B @ A`` in fp32), cast, written straight into its shard file and freed. Peak memory is
the tensor in hand (the embeddings, for these models) plus the process, whatever the model's size.

The result is a standard Hugging Face checkpoint (config.json, model*.safetensors and, when sharded,
model.safetensors.index.json) that transformers (and vLLM) load as they load the base.

A run trained on a 4-bit base learnt its LoRA weights against the NF4 weights, not the 16-bit ones, so
its merge starts from those (the merged model then computes what the evaluated run computed): a
pre-quantised bitsandbytes checkpoint (``unsloth/*-bnb-4bit``) is dequantised tensor by tensor, and a
16-bit base that was quantised at load time goes through the same NF4 round trip (``Nf4``) first.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from labeltune.run import ADAPTER_CONFIG, ADAPTER_WEIGHTS

SHARD_BYTES = 2 << 30  # output shard size (files are written tensor by tensor: no memory cost)
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
        raise ValueError(
            f"{base_dir}: no *.safetensors files (the streamed merge reads safetensors checkpoints only)"
        )
    return files


def _header(path: Path) -> dict:
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(size))


def _index(files: list[Path]) -> dict[str, tuple[tuple[int, ...], str, Path]]:
    """name -> (shape, safetensors dtype, file) of every tensor in `files`, in file order, from the
    headers."""
    return {
        name: (tuple(meta["shape"]), meta["dtype"], path)
        for path in files
        for name, meta in _header(path).items()
        if name != "__metadata__"
    }


QUANT_STATE = ".quant_state.bitsandbytes__"  # + nf4/fp4: the packed bitsandbytes state of a 4-bit weight


def _quantized_weights(index: dict) -> dict[str, tuple[list[str], dict]]:
    """Pre-quantised bitsandbytes 4-bit weights of a checkpoint: weight name -> (its state tensors' names,
    its unpacked quant state: logical shape, dtype, blocksize, ...). Empty for a 16/32-bit checkpoint."""
    from safetensors import safe_open

    found = {}
    for name, (_, _, path) in index.items():
        if QUANT_STATE in name:
            weight = name[: name.index(QUANT_STATE)]
            with safe_open(str(path), framework="pt") as f:
                state = json.loads(bytes(f.get_tensor(name).tolist()).decode("utf-8"))
            found[weight] = ([n for n in index if n.startswith(weight + ".")], state)
    return found


def _logical_index(files: list[Path]) -> tuple[dict, dict]:
    """(name -> (shape, dtype, file) of every tensor as the model sees it: a pre-quantised 4-bit weight
    with its logical shape and dtype, its state tensors left out; the quantised weights)."""
    index = _index(files)
    quantized = _quantized_weights(index)
    for weight, (parts, state) in quantized.items():
        for part in parts:
            index.pop(part, None)
        kind = {"float16": "F16", "bfloat16": "BF16"}.get(state["dtype"], "F32")
        index[weight] = (tuple(state["shape"]), kind, index[weight][2])
    return index, quantized


def tensor_shapes(files: list[Path]) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, safetensors dtype) of every tensor in `files` (4-bit ones as the model sees them),
    in file order, from the headers (and the 4-bit states) only."""
    return {name: (shape, kind) for name, (shape, kind, _) in _logical_index(files)[0].items()}


@dataclass(frozen=True)
class Nf4:
    """The NF4 round trip a 16-bit base went through when it was loaded 4-bit for training (transformers'
    bitsandbytes defaults as labeltune.models.hf_load_kwargs sets them): these weights, cast to the load
    dtype, quantised (blocksize 64, double quantisation) and dequantised, as the trained model saw them."""

    weights: frozenset[str]
    dtype: str  # the dtype the base was loaded in before quantisation (fp32 on CPU, fp16 on a T4, bf16)
    blocksize: int = 64
    double_quant: bool = True


def nf4_round_trip(weight, nf4: Nf4):
    import torch
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    packed, state = quantize_4bit(
        weight.to(getattr(torch, nf4.dtype)).contiguous(),
        blocksize=nf4.blocksize,
        compress_statistics=nf4.double_quant,
        quant_type="nf4",
    )
    return dequantize_4bit(packed, state)


def dequantized(opened, weight: str, parts: list[str]):
    """A pre-quantised 4-bit weight of an open safetensors file, dequantised (in its recorded dtype)."""
    from bitsandbytes.functional import QuantState, dequantize_4bit

    state = QuantState.from_dict({part: opened.get_tensor(part) for part in parts}, device="cpu")
    return dequantize_4bit(opened.get_tensor(weight), state)


SAFETENSORS_BYTES = {
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F64": 8,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
SAFETENSORS_DTYPE = {"float16": "F16", "bfloat16": "BF16"}
LORA_TARGET_SUFFIXES = ("_proj.weight",)  # the linear layers LoRA targets in Llama / Gemma 2 checkpoints
PROCESS_BYTES = 1 << 30  # Python, torch and the adapter


def needs_for_params(
    n_params: float, largest: float, largest_target: float, dtype: str, source_bytes: int = 2
) -> MergeNeeds:
    """Memory and disk of a streamed merge of a model with `n_params` parameters, whose largest tensor has
    `largest` elements and largest LoRA target `largest_target`: the tensor in hand (a copied one: read +
    cast; a merged one: read + fp32 copy + cast) plus the process."""
    out_bytes = BYTES_PER_PARAM[dtype]
    in_hand = max(largest * (source_bytes + out_bytes), largest_target * (source_bytes + 4 + out_bytes))
    return MergeNeeds(ram=int(in_hand + PROCESS_BYTES), disk=int(n_params * out_bytes))


def needs_for_files(files: list[Path], dtype: str) -> MergeNeeds:
    shapes = tensor_shapes(files)
    sizes = {name: math.prod(shape) for name, (shape, _) in shapes.items()}
    targets = [n for name, n in sizes.items() if name.endswith(LORA_TARGET_SUFFIXES)] or [max(sizes.values())]
    source_bytes = max(SAFETENSORS_BYTES.get(kind, 4) for _, kind in shapes.values())
    return needs_for_params(sum(sizes.values()), max(sizes.values()), max(targets), dtype, source_bytes)


def _adapter_scales(config: dict) -> float:
    if config.get("use_dora"):
        raise ValueError(
            "the adapter uses DoRA, which the streamed merge does not fold; export --format adapter"
        )
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError(
            "the adapter has per-module ranks (rank_pattern/alpha_pattern), which the streamed merge does "
            "not fold"
        )
    if config.get("fan_in_fan_out"):
        raise ValueError(
            "the adapter was trained with fan_in_fan_out (Conv1D layers), which the streamed merge does not "
            "fold"
        )
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def read_adapter(adapter_dir: Path) -> tuple[dict, dict, float]:
    """(LoRA pairs: base tensor name -> (A, B), full tensors: base tensor name -> tensor, scale)."""
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    scale = _adapter_scales(config)
    pairs: dict[str, dict] = {}
    full: dict = {}
    for key, tensor in load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items():
        name = key.removeprefix(ADAPTER_PREFIX)
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.weight"
            if name.endswith(marker):
                pairs.setdefault(name[: -len(marker)] + ".weight", {})[part] = tensor
                break
        else:
            if ".lora_" in name:
                raise ValueError(
                    f"{adapter_dir}: adapter tensor {key} is not a LoRA A/B weight; cannot merge it"
                )
            full[name] = tensor  # modules_to_save (e.g. lm_head) and saved embedding layers: trained in full
    broken = [name for name, pair in pairs.items() if set(pair) != {"lora_A", "lora_B"}]
    if broken:
        raise ValueError(f"{adapter_dir}: LoRA weights without their A/B partner: {broken[:3]}")
    return {name: (p["lora_A"], p["lora_B"]) for name, p in pairs.items()}, full, scale


def plan_shards(sizes: dict[str, int], limit: int) -> list[list[str]]:
    """Tensor names (in order) grouped into shards of at most `limit` bytes (a larger tensor: its own)."""
    shards: list[list[str]] = []
    used = 0
    for name, size in sizes.items():
        if not shards or (used + size > limit and shards[-1]):
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def _write_shard(path: Path, names: list[str], shapes: dict, dtype: str, tensor_of) -> None:
    """A safetensors file of `names` in `dtype`, its header written first (from the planned shapes), then
    each tensor as `tensor_of(name)` makes it, written and dropped one at a time."""
    import torch

    itemsize = BYTES_PER_PARAM[dtype]
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in names:
        size = math.prod(shapes[name]) * itemsize
        header[name] = {
            "dtype": SAFETENSORS_DTYPE[dtype],
            "shape": list(shapes[name]),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    target = getattr(torch, dtype)
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for name in names:
            tensor = tensor_of(name).to(target).contiguous()
            if tuple(tensor.shape) != tuple(shapes[name]):
                raise ValueError(f"{name}: shape {tuple(tensor.shape)}, planned {shapes[name]}")
            f.write(memoryview(tensor.view(torch.uint8).numpy()))
            del tensor


def merge_lora(
    base_dir: Path,
    adapter_dir: Path,
    out_dir: Path,
    dtype: str = "float16",
    shard_bytes: int = SHARD_BYTES,
    nf4: Nf4 | None = None,
    progress=None,
) -> list[Path]:
    """Write base + LoRA merged, cast to `dtype`, as a checkpoint in `out_dir` (config.json and weights;
    the tokenizer is the caller's); returns the weight files. Every LoRA pair must find its base tensor.
    A pre-quantised 4-bit base is dequantised; `nf4` names the weights of a 16-bit base to put through
    the NF4 round trip first (a run trained on it loaded 4-bit). `progress(line)`, where given, is told
    each shard as it is written (a 9B merge takes minutes)."""
    from safetensors import safe_open

    if dtype not in DTYPES:
        raise ValueError(f"merge dtype {dtype!r}; available: {', '.join(DTYPES)}")
    files = base_files(base_dir)
    pairs, full, scale = read_adapter(adapter_dir)
    index, quantized = _logical_index(files)
    if nf4 is not None and (unknown := sorted(nf4.weights - set(index))):
        raise ValueError(f"{base_dir}: weights to quantise that the checkpoint lacks: {unknown[:3]}")
    source = {name: path for name, (_, _, path) in index.items()}
    shapes = {name: shape for name, (shape, _, _) in index.items()}
    missing = sorted(set(pairs) - set(shapes))
    if missing:
        raise ValueError(f"{adapter_dir}: LoRA targets not in the base checkpoint {base_dir}: {missing[:3]}")
    for name, tensor in full.items():
        if name in shapes and tuple(tensor.shape) != shapes[name]:
            raise ValueError(
                f"{adapter_dir}: {name} has shape {tuple(tensor.shape)}, the base has {shapes[name]} "
                "(a resized vocabulary); export --format adapter instead"
            )
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    for name in full:  # e.g. a trained lm_head of a model that ties it to its embeddings
        if name not in shapes:
            shapes[name] = tuple(full[name].shape)
            if name == "lm_head.weight":
                config["tie_word_embeddings"] = False
    out_dir.mkdir(parents=True, exist_ok=True)
    opened: dict = {}  # one source file mapped at a time: the planned order follows the files' order

    def tensor_of(name: str):
        if name in full:
            return full[name]
        path = source[name]
        if path not in opened:
            opened.clear()  # unmaps the previous file: its pages stop counting against this process
            opened[path] = safe_open(str(path), framework="pt")
        if name in quantized:
            weight = dequantized(opened[path], name, quantized[name][0])
        else:
            weight = opened[path].get_tensor(name)
            if nf4 is not None and name in nf4.weights:
                weight = nf4_round_trip(weight, nf4)
        if name in pairs:
            a, b = pairs[name]
            weight = weight.float().addmm_(b.float(), a.float(), alpha=scale)
        return weight

    shards = plan_shards(
        {name: math.prod(shape) * BYTES_PER_PARAM[dtype] for name, shape in shapes.items()}, shard_bytes
    )
    n = len(shards)
    names = (
        ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    )
    for i, (shard, name) in enumerate(zip(shards, names), 1):
        tmp = out_dir / (name + ".tmp")
        _write_shard(tmp, shard, shapes, dtype, tensor_of)
        os.replace(tmp, out_dir / name)
        if progress is not None:
            size = sum(math.prod(shapes[t]) * BYTES_PER_PARAM[dtype] for t in shard) / (1 << 30)
            progress(f"merged16: shard {i}/{n} written ({size:.2f} GiB, {len(shard)} tensors)")
    opened.clear()
    if n > 1:
        weight_map = {tensor: name for shard, name in zip(shards, names) for tensor in shard}
        total = sum(math.prod(shape) * BYTES_PER_PARAM[dtype] for shape in shapes.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
    config.pop("quantization_config", None)
    config.pop("torch_dtype", None)
    config["dtype"] = dtype
    (out_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if (base_dir / "generation_config.json").is_file():
        (out_dir / "generation_config.json").write_bytes((base_dir / "generation_config.json").read_bytes())
    return [out_dir / name for name in names]


def files_sha256(files: list[Path]) -> str:
    """One digest of several weight files (their names and bytes, in order)."""
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
