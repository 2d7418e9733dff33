"""Training step time of a real model on CPU: TRL's fused LM head over every position (what TRL 1.16 does
off CUDA/XPU) against the answer positions only (what it does on a GPU with Triton, and what
labeltune.train asks for on CPU), rounds interleaved in one process (prints a table; no assertions).

    python scripts/bench_train_lmhead.py  # gemma3-270m, bf16, 8 sample posts per step, 3 rounds
    python scripts/bench_train_lmhead.py --precision fp32 --rounds 5

One LoRA model as `labeltune train` builds it, TRL's fused LM head added as SFTTrainer adds it
(trl/trainer/sft_trainer.py: log_probs, entropy, is_top1); labels mask the prompt (-100) as labeltune's
features do, so only the answer and EOS carry loss. A step is forward + backward + AdamW on the same batch;
the losses of both methods are printed beside the times (they must agree: the same tokens carry loss).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--data", default=str(ROOT / "data" / "sample.csv"))
    parser.add_argument("--template", default="short_ja_sentiment_toxicity")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch
    from trl.trainer.utils import add_fused_lm_head

    from labeltune.features import Prompter, pad_ids
    from labeltune.models import add_lora, load_base
    from labeltune.presets import resolve_preset
    from labeltune.prompts import load_template
    from labeltune.task import load_task
    from labeltune.train import answer_positions_only

    preset, task, template = (
        resolve_preset(args.model),
        load_task("sentiment_toxicity"),
        load_template(args.template),
    )
    rows = list(csv.DictReader(open(args.data, encoding="utf-8", newline="")))[: args.batch]
    model, tokenizer = load_base(args.model, "hf", preset.max_length, False, precision=args.precision)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    model = add_lora(model, preset.lora_r, preset.lora_alpha, 0.0, preset.target_modules, 0)
    prompter = Prompter(tokenizer, template, task, preset.max_length)
    features = [
        prompter.training_features(r["text"], task.render_answer(r["label"], int(r.get("score") or 0)))
        for r in rows
    ]
    input_ids, attention = pad_ids([f["input_ids"] for f in features], tokenizer.pad_token_id)
    labels, _ = pad_ids([f["labels"] for f in features], -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    answer = int((labels != -100).sum())
    print(
        f"{args.model} ({args.precision}): LoRA r={preset.lora_r}; {len(rows)} sequences, "
        f"{int(attention.sum())} tokens per step, {answer} of them answer tokens; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )

    def step(method: str) -> tuple[float, float]:
        started = time.perf_counter()
        with answer_positions_only(method == "answer positions"):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                out = model(input_ids=input_ids, attention_mask=attention, labels=labels, fused_lm_head=True)
            out.loss.backward()
        optimizer.zero_grad(set_to_none=True)  # no optimizer.step(): both methods see the same weights
        return time.perf_counter() - started, float(out.loss)

    methods = ("every position (TRL on CPU)", "answer positions")
    for method in methods:
        step(method)  # warm-up
    times: dict[str, list[float]] = {m: [] for m in methods}
    losses: dict[str, float] = {}
    for _ in range(args.rounds):
        for method in methods:
            seconds, losses[method] = step(method)
            times[method].append(seconds)
    print("| method | seconds per step, each round | median | best | loss | speed-up (median) |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(times[methods[0]])
    for method, seconds in times.items():
        median = statistics.median(seconds)
        print(
            f"| {method} | {', '.join(f'{s:.2f}' for s in seconds)} | {median:.2f} | {min(seconds):.2f} | "
            f"{losses[method]:.5f} | {base / median:.2f}x |"
        )


if __name__ == "__main__":
    main()
