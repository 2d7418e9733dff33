"""Peak memory of the streamed merged16 export (labeltune.merge) against the bound the export checks.

    python scripts/merge_memory.py --shape gemma2-9b  # Gemma 2 9B's embedding + lm_head, 2 real-sized layers
    python scripts/merge_memory.py --shape llama3.1-8b --layers 4

Writes a synthetic bf16 checkpoint (random weights, the real tensor shapes) and a rank-16 LoRA adapter
on every projection into --work, then merges it in a fresh process and prints its peak RSS, the bound
(`needs_for_files`) and the time. The peak is set by the largest tensor (the embeddings) and the output
shard, not by the number of layers, so a few layers stand for the whole model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {  # vocab, hidden, intermediate, tied embeddings
    "llama3.1-8b": (128256, 4096, 14336, False),
    "gemma2-9b": (256000, 3584, 14336, True),
}


def build(work: Path, shape: str, layers: int) -> None:
    import torch
    from safetensors.torch import save_file

    vocab, hidden, inter, tied = SHAPES[shape]
    base, adapter = work / "base", work / "adapter"
    base.mkdir(parents=True)
    adapter.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    lora = {}
    save_file(
        {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g).bfloat16()},
        str(base / "model-embed.safetensors"),
    )
    for layer in range(layers):
        shard = {}
        for name, (out, inp) in {
            "self_attn.q_proj": (hidden, hidden),
            "self_attn.k_proj": (hidden // 4, hidden),
            "self_attn.v_proj": (hidden // 4, hidden),
            "self_attn.o_proj": (hidden, hidden),
            "mlp.gate_proj": (inter, hidden),
            "mlp.up_proj": (inter, hidden),
            "mlp.down_proj": (hidden, inter),
        }.items():
            shard[f"model.layers.{layer}.{name}.weight"] = torch.randn(out, inp, generator=g).bfloat16()
            lora[f"base_model.model.model.layers.{layer}.{name}.lora_A.weight"] = torch.randn(
                16, inp, generator=g
            )
            lora[f"base_model.model.model.layers.{layer}.{name}.lora_B.weight"] = torch.randn(
                out, 16, generator=g
            )
        save_file(shard, str(base / f"model-layer{layer:03d}.safetensors"))
    last = {"model.norm.weight": torch.ones(hidden).bfloat16()}
    if not tied:
        last["lm_head.weight"] = torch.randn(vocab, hidden, generator=g).bfloat16()
    save_file(last, str(base / "model-last.safetensors"))
    (base / "config.json").write_text(
        json.dumps({"model_type": shape.split(".")[0], "tie_word_embeddings": tied})
    )
    save_file(lora, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 16}))


def merge(work: Path) -> None:
    """The child: merge, then print the measurements."""
    import shutil

    from labeltune.merge import base_files, merge_lora, needs_for_files

    shutil.rmtree(work / "merged", ignore_errors=True)
    files = base_files(work / "base")
    needs = needs_for_files(files, "float16")
    started = time.time()
    merge_lora(work / "base", work / "adapter", work / "merged", "float16")
    seconds = time.time() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    size = sum(f.stat().st_size for f in files)
    print(
        f"checkpoint {size / 2**30:.2f} GiB; merge {seconds:.1f} s; peak RSS {peak / 2**30:.2f} GiB; "
        f"bound checked by the export {needs.ram / 2**30:.2f} GiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gemma2-9b")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--work", default="runs/merge-memory")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work) / f"{args.shape}-{args.layers}l"
    if args.child:
        merge(work)
        return
    if not (work / "adapter" / "adapter_config.json").is_file():
        build(work, args.shape, args.layers)
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            "--shape",
            args.shape,
            "--layers",
            str(args.layers),
            "--work",
            args.work,
        ],
        check=True,
    )  # a fresh process: its peak RSS is the merge's


if __name__ == "__main__":
    main()
