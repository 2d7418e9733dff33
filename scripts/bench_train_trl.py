"""Training throughput: `labeltune train` against plain TRL SFTTrainer + PEFT, the same data and settings
(prints a table; no assertions).

    OMP_NUM_THREADS=1 python scripts/bench_train_trl.py --model gemma3-270m --steps 12 --rounds 2

Plain TRL is what a user writes from TRL's documentation: the base loaded with AutoModelForCausalLM, a
prompt/completion dataset (the prompt rendered by the same template, the answer as the completion; TRL
tokenises it, adds EOS and keeps the loss on the completion: its default for such data),
`SFTTrainer(peft_config=LoraConfig(...))` with labeltune's settings (fp32 on a CPU without native bf16, no
gradient checkpointing, as the gemma3-270m preset trains), and with `--trl-defaults` again with TRL's own
defaults (bf16 autocast, gradient checkpointing). labeltune is
`labeltune.train.main` on the same rows (its dev split: one held-out row, scored at the epoch's end).
All: the preset's LoRA (r, alpha, target modules), batch --batch, lr, cosine schedule with 5 % warm-up,
no dropout, --steps optimizer steps, seed 0. Each method runs in its own
process (one model in memory at a time), methods interleaved over --rounds; the time is the trainer's
own (model loading excluded). Tokens are those the method fed (padding excluded), so tokens/s compares
like with like even if the two tokenised a row differently; their totals are printed. The loss of each
logged step is printed for both: the same data in the same order should give the same curve within
noise.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAME = "plain TRL SFTTrainer + PEFT, fp32, no gradient checkpointing"
DEFAULTS = "plain TRL SFTTrainer + PEFT, TRL's defaults (bf16 autocast, gradient checkpointing)"
LABELTUNE = "labeltune train"


def rows_of(args) -> list[dict]:
    with open(args.data, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[: min(args.steps * args.batch, len(rows) - 1)]  # the last row is labeltune's dev/test row


def plain_trl(args, rows: list[dict]) -> dict:
    """The TRL-documentation way: prompt/completion text, SFTTrainer with a peft_config."""
    import time

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from labeltune.models import resolve_base
    from labeltune.presets import resolve_preset
    from labeltune.prompts import load_template, render_prompt
    from labeltune.task import load_task

    preset, task = resolve_preset(args.model), load_task("sentiment_toxicity")
    template = load_template(args.template)
    base = resolve_base(preset.model_id)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    data = Dataset.from_list(
        [
            {
                "prompt": render_prompt(template, task, r["text"]),
                "completion": task.render_answer(r["label"], int(r["score"]) if r.get("score") else None),
            }
            for r in rows
        ]
    )
    config = SFTConfig(
        output_dir=args.work + "/trl",
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr or preset.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        use_cpu=True,
        max_length=preset.max_length,
        disable_tqdm=True,
        # TRL's SFTConfig defaults: bf16 autocast and gradient checkpointing; labeltune's gemma3-270m preset
        # trains in fp32 on a CPU without native bf16, without checkpointing
        **({"gradient_checkpointing": False, "bf16": False} if args.child == SAME else {}),
    )
    lora = LoraConfig(
        r=preset.lora_r,
        lora_alpha=preset.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(preset.target_modules),
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=lora
    )
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"seconds": seconds, "tokens_per_epoch": tokens, "rows": len(rows), "losses": losses}


def labeltune_train(args, rows: list[dict]) -> dict:
    from labeltune import train
    from labeltune.config import TrainConfig, resolve
    from labeltune.data import Example, write_jsonl
    from labeltune.features import Prompter
    from labeltune.models import resolve_base
    from labeltune.presets import resolve_preset
    from labeltune.prompts import load_template
    from labeltune.task import load_task

    work = Path(args.work)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    examples = [
        Example(text=r["text"], label=r["label"], score=int(r["score"]) if r.get("score") else None, meta={})
        for r in rows
    ]
    write_jsonl(examples, data / "train.jsonl")
    with open(args.data, encoding="utf-8", newline="") as f:
        last = list(csv.DictReader(f))[-1]  # dev and test need a row (unused here; not a training row)
    held = Example(
        text=last["text"], label=last["label"], score=int(last["score"]) if last.get("score") else None
    )
    write_jsonl([held], data / "dev.jsonl")
    write_jsonl([held], data / "test.jsonl")
    cfg = resolve(
        TrainConfig,
        None,
        {
            "model": args.model,
            "data": str(data),
            "output": str(work / "run"),
            "template": args.template,
            "max_steps": args.steps,
            "batch_size": args.batch,
            "grad_accum": 1,
            "logging_steps": 1,
            "seed": 0,
            "allow_incomplete": True,
            **({"lr": args.lr} if args.lr else {}),
        },
    )
    run = train.main(cfg)
    info = json.loads((run / "model.json").read_text())
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    from transformers import AutoTokenizer

    preset, task = resolve_preset(args.model), load_task("sentiment_toxicity")
    tokenizer = AutoTokenizer.from_pretrained(resolve_base(preset.model_id))
    prompter = Prompter(tokenizer, load_template(args.template), task, preset.max_length)
    tokens = sum(
        len(prompter.training_features(e.text, task.render_answer(e.label, e.score))["input_ids"])
        for e in examples
    )
    return {
        "seconds": info["train_seconds"],
        "tokens_per_epoch": tokens,
        "rows": len(rows),
        "losses": [r["loss"] for r in log if "loss" in r],
    }


def child(args) -> None:
    rows = rows_of(args)
    result = (labeltune_train if args.child == LABELTUNE else plain_trl)(args, rows)
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gemma3-270m", help="a preset with a pretrained base (gemma3-270m)")
    p.add_argument("--data", default=str(ROOT / "data" / "sample.csv"))
    p.add_argument("--template", default="short_ja_sentiment_toxicity")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=None, help="default: the preset's")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--trl-defaults",
        action="store_true",
        help="also plain TRL with its defaults (bf16 autocast: emulated, slow, on a CPU without native bf16)",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        methods = [SAME, *([DEFAULTS] if args.trl_defaults else []), LABELTUNE]
        results: dict[str, list[dict]] = {m: [] for m in methods}
        for r in range(args.rounds):
            for method in methods:
                work = Path(tmp) / f"{r}-{methods.index(method)}"
                argv = [sys.executable, __file__, "--child", method, "--work", str(work)]
                argv += ["--model", args.model, "--data", args.data, "--template", args.template]
                argv += ["--steps", str(args.steps), "--batch", str(args.batch)]
                argv += ["--lr", str(args.lr)] if args.lr else []
                out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
                line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
                if out.returncode or not line:
                    sys.exit(f"{method} failed:\n{out.stderr[-3000:]}")
                results[method].append(json.loads(line[-1][len("RESULT ") :]))
                print(f"round {r + 1}, {method}: {results[method][-1]['seconds']:.1f} s", flush=True)
    first = results[SAME][0]
    print(
        f"\n{args.model}, {args.steps} steps of {args.batch} rows ({first['rows']} rows of {args.data}), "
        f"template {args.template}, {args.rounds} rounds interleaved\n"
    )
    print("| method | tokens per epoch | train seconds, each round | tokens/s (median) | speed-up |")
    print("|---|---|---|---|---|")
    speeds = {}
    for method, runs in results.items():
        epochs = args.steps * args.batch / runs[0]["rows"]
        speeds[method] = statistics.median(x["tokens_per_epoch"] * epochs / x["seconds"] for x in runs)
    for method, runs in results.items():
        each = ", ".join(f"{x['seconds']:.1f}" for x in runs)
        print(
            f"| {method} | {runs[0]['tokens_per_epoch']} | {each} | {speeds[method]:.0f} | "
            f"{speeds[method] / speeds[SAME]:.2f}x |"
        )
    print("\n| step | " + " | ".join(f"loss: {m}" for m in methods) + " |")
    print("|---|" + "---|" * len(methods))
    for i in range(args.steps):
        cells = []
        for method in methods:
            values = [x["losses"][i] for x in results[method] if i < len(x["losses"])]
            cells.append(" / ".join(f"{v:.4f}" for v in values))
        print(f"| {i + 1} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
