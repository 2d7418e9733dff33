"""Training step time of a real model on CPU, fp32 against bf16 (what `train --dtype bf16` does), rounds
interleaved in one process (prints a table; no assertions).

    python scripts/bench_train_dtype.py  # gemma3-270m, 16 sample posts per step, 3 rounds
    python scripts/bench_train_dtype.py --rounds 5 --batch 8

Each method is one LoRA model as `labeltune train` builds it (the preset's r, alpha and target modules; base
weights in that dtype, LoRA weights in fp32, bf16 autocast for bf16 as the Trainer's bf16 flag does); a step
is forward + backward + AdamW on the same batch of rendered prompts + answers. The first step of each method
is a warm-up and is not counted.
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
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch

    from labeltune.features import pad_ids
    from labeltune.models import add_lora, cpu_has_native_bf16, load_base
    from labeltune.presets import resolve_preset
    from labeltune.prompts import load_template, render_prompt
    from labeltune.task import load_task

    if not cpu_has_native_bf16():
        sys.exit("this CPU has no native bf16 (AMX / AVX512-BF16): train --dtype bf16 is refused here")
    preset, task, template = (
        resolve_preset(args.model),
        load_task("sentiment_toxicity"),
        load_template(args.template),
    )
    rows = list(csv.DictReader(open(args.data, encoding="utf-8", newline="")))[: args.batch]
    methods = {}
    for precision in ("fp32", "bf16"):
        model, tokenizer = load_base(args.model, "hf", preset.max_length, False, precision=precision)
        model = add_lora(model, preset.lora_r, preset.lora_alpha, 0.0, preset.target_modules, 0)
        ids = [
            tokenizer(
                render_prompt(template, task, r["text"])
                + task.render_answer(r["label"], int(r.get("score") or 0))
                + tokenizer.eos_token,
                add_special_tokens=True,
            )["input_ids"]
            for r in rows
        ]
        input_ids, attention = pad_ids(ids, tokenizer.pad_token_id)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        methods[precision] = (model, optimizer, input_ids, attention)
    tokens = int(methods["fp32"][3].sum())
    print(
        f"{args.model}: LoRA r={preset.lora_r} on {', '.join(preset.target_modules)}; {len(rows)} sequences, "
        f"{tokens} tokens per step; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    def step(precision: str) -> float:
        model, optimizer, input_ids, attention = methods[precision]
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=input_ids, attention_mask=attention, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    for precision in methods:
        step(precision)  # warm-up
    times: dict[str, list[float]] = {p: [] for p in methods}
    for _ in range(args.rounds):
        for precision in methods:
            times[precision].append(step(precision))
    print("| method | seconds per step, each round | median | best | speed-up vs fp32 (median) |")
    print("|---|---|---|---|---|")
    base = statistics.median(times["fp32"])
    for precision, seconds in times.items():
        median = statistics.median(seconds)
        print(
            f"| {precision} | {', '.join(f'{s:.1f}' for s in seconds)} | {median:.1f} | {min(seconds):.1f} | "
            f"{base / median:.2f}x |"
        )


if __name__ == "__main__":
    main()
