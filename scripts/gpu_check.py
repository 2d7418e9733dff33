"""GPU check: 4-bit LoRA training + labelling through both backends on Llama-3.1- and Gemma-2-shaped
models built locally (random weights, real tokenizers, real hidden sizes, a few layers), so no
weights are downloaded. Prints a Markdown table and writes it to --out.

    python scripts/gpu_check.py --out docs/gpu-check.md                 # CUDA GPU: unsloth and hf
    python scripts/gpu_check.py --full-size --families llama3.1 --steps 10 --memory-cap-gib 15
                                                                        # stretch: 8B-shaped, T4 budget
    python scripts/gpu_check.py --cpu-smoke                             # CPU: the code path, tiny shapes

Each (model, backend) pair runs in its own process (this script again, with --one): Unsloth patches
transformers' model classes process-wide when it loads a model, so an hf row measured in a process
that ran the unsloth backend would not be plain hf.

Needs ../shared/tokenizers/{llama3.1,gemma2} and, on a GPU, `pip install -e '.[gpu]'`.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {  # real hidden sizes of the 8B / 9B models
    "llama3.1": dict(
        hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8
    ),
    "gemma2": dict(
        hidden_size=3584, intermediate_size=14336, num_attention_heads=16, num_key_value_heads=8, head_dim=256
    ),
}
FULL_LAYERS = {"llama3.1": 32, "gemma2": 42}


def build_model(family: str, layers: int, out: Path, tokenizers: Path, smoke: bool) -> Path:
    import torch
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizers / family, local_files_only=True)
    shape = dict(SHAPES[family])
    if smoke:
        shape.update(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
        shape.pop("head_dim", None)
    common = dict(
        vocab_size=len(tokenizer),
        num_hidden_layers=layers,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=8192,
    )
    if family == "llama3.1":
        config, cls = (
            LlamaConfig(**shape, **common, rope_theta=500000.0, tie_word_embeddings=False),
            LlamaForCausalLM,
        )
    else:
        config, cls = Gemma2Config(**shape, **common), Gemma2ForCausalLM
    torch.manual_seed(0)
    model = cls(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def posts(path: Path, n: int) -> Path:
    rows = list(csv.DictReader(open(ROOT / "data" / "sample.csv", encoding="utf-8", newline="")))
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        for i in range(n):
            writer.writerow([i, rows[i % len(rows)]["text"]])
    return path


def _peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def check_train(model_dir: Path, backend: str, work: Path, steps: int, max_length: int) -> dict:
    """Train `steps` LoRA steps on `backend` (this process does nothing else)."""
    from labeltune import train
    from labeltune.config import TrainConfig, resolve
    from labeltune.run import TRAIN_LOG, read_info

    run = work / f"run-{model_dir.name}-{backend}"
    shutil.rmtree(run, ignore_errors=True)
    cfg = resolve(
        TrainConfig,
        None,
        {
            "model": str(model_dir),
            "backend": backend,
            "output": str(run),
            "max_steps": steps,
            "batch_size": 4,
            "grad_accum": 1,
            "max_length": max_length,
            "logging_steps": 1,
        },
    )
    train.main(cfg)
    info = read_info(run)
    log = [json.loads(line) for line in open(run / TRAIN_LOG)]
    tokens = max(r.get("num_tokens", 0) for r in log)
    return {
        "model": model_dir.name,
        "backend": backend,
        "precision": info.get("precision"),
        "steps": info["steps"],
        "s_per_step": info["train_seconds"] / max(info["steps"], 1),
        "train_tokens_per_s": tokens / info["train_seconds"],
        "train_peak_gib": _peak_gib(),
    }


def check_label(model_dir: Path, backend: str, work: Path, rows: int) -> dict:
    """Label `rows` posts with the run trained on `backend` (loaded through hf, as `labeltune label` does)."""
    from labeltune import label
    from labeltune.config import LabelConfig, resolve

    run = work / f"run-{model_dir.name}-{backend}"
    source = posts(work / "posts.csv", rows)
    started = time.time()
    label.main(
        resolve(
            LabelConfig,
            None,
            {
                "run": str(run),
                "input": str(source),
                "output": str(run / "labelled.csv"),
                "overwrite": True,
                "progress": False,
                "batch_size": 64,
            },
        )
    )
    return {"label_posts_per_s": rows / (time.time() - started), "label_peak_gib": _peak_gib()}


def run_child(args, one: str) -> dict:
    """One phase (MODEL_DIR:BACKEND:train|label) in a fresh process; its output streamed here."""
    import subprocess

    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--one",
        one,
        "--steps",
        str(args.steps),
        "--rows",
        str(args.rows),
        "--max-length",
        str(args.max_length),
        "--work",
        args.work,
    ]
    if args.cpu_smoke:
        cmd.append("--cpu-smoke")
    if args.memory_cap_gib:
        cmd += ["--memory-cap-gib", str(args.memory_cap_gib)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    result = None
    for line in proc.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
        else:
            print(line, end="", flush=True)
    if proc.wait() != 0 or result is None:
        sys.exit(f"gpu_check: {one} failed (exit {proc.returncode})")
    return result


def table(results: list[dict]) -> str:
    lines = [
        "| model | backend | precision | steps | s/step | train tokens/s | train peak GiB | label posts/s | "
        "label peak GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['precision']} | {r['steps']} | {r['s_per_step']:.2f} | "
            f"{r['train_tokens_per_s']:.0f} | {r['train_peak_gib']:.2f} | {r['label_posts_per_s']:.1f} | "
            f"{r['label_peak_gib']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default="llama3.1,gemma2", help="comma-separated: llama3.1, gemma2")
    parser.add_argument(
        "--backends", default=None, help="comma-separated; default unsloth,hf on GPU, hf on CPU"
    )
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the random model")
    parser.add_argument(
        "--full-size", action="store_true", help="all layers (8B/9B-shaped): the T4 memory stretch"
    )
    parser.add_argument(
        "--memory-cap-gib", type=float, default=None, help="cap this process's GPU memory (T4: 15)"
    )
    parser.add_argument("--steps", type=int, default=30, help="training steps per backend")
    parser.add_argument("--rows", type=int, default=256, help="posts to label per backend")
    parser.add_argument("--max-length", type=int, default=512, help="sequence length")
    parser.add_argument("--tokenizers", default=str(ROOT.parent / "shared" / "tokenizers"))
    parser.add_argument("--work", default="runs/gpu-check", help="where models and runs go")
    parser.add_argument("--out", default=None, help="also write the Markdown report here")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes, 2 steps, 16 rows, hf on CPU")
    parser.add_argument(
        "--one", default=None, help=argparse.SUPPRESS
    )  # MODEL_DIR:BACKEND, run by this script in a child
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    if args.cpu_smoke:
        args.steps, args.rows, args.layers, args.max_length = 2, 16, 1, 256
    elif not cuda:
        sys.exit("no CUDA GPU visible: run with --cpu-smoke to check the code path on CPU")
    backends = (args.backends or ("unsloth,hf" if cuda else "hf")).split(",")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.one:  # a child: one phase of one (model, backend) pair, its result as JSON on a RESULT line
        model_dir, backend, phase = args.one.rsplit(":", 2)
        if phase == "train" and backend == "unsloth":
            from labeltune.models import import_unsloth

            import_unsloth()  # first, before trl/transformers/peft
        if args.memory_cap_gib and cuda:
            total = torch.cuda.get_device_properties(0).total_memory / 2**30
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib / total))
        if phase == "train":
            result = check_train(Path(model_dir), backend, work, args.steps, args.max_length)
        else:
            result = check_label(Path(model_dir), backend, work, args.rows)
        print("RESULT " + json.dumps(result))
        return
    results = []
    for family in args.families.split(","):
        layers = FULL_LAYERS[family] if args.full_size else args.layers
        model_dir = build_model(
            family, layers, work / f"{family}-{layers}l", Path(args.tokenizers), args.cpu_smoke
        )
        for backend in backends:
            result = run_child(args, f"{model_dir}:{backend}:train")
            results.append({**result, **run_child(args, f"{model_dir}:{backend}:label")})
            print(table(results[-1:]), flush=True)
    import platform

    from labeltune.train import package_versions

    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})"
    report = [
        f"GPU check on {device}; layers={args.layers if not args.full_size else 'full'}, steps={args.steps}, "
        f"rows={args.rows}, max_length={args.max_length}, memory cap={args.memory_cap_gib or 'none'} GiB",
        "",
        "Command: `python " + " ".join(sys.argv) + "`",
        "",
        table(results),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()),
    ]
    print("\n".join(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(report) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
