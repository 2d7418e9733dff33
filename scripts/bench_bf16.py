"""Labels in bf16 against fp32: the same run, the same posts, both precisions in one process, rounds
interleaved (prints agreement, macro-F1 where gold labels are given, and posts/s; no assertions).

    OMP_NUM_THREADS=1 python scripts/bench_bf16.py --run runs/demo-real --rows 300
    OMP_NUM_THREADS=1 python scripts/bench_bf16.py --run runs/real_livedoor/generative-gemma3-270m \\
        --data runs/real_livedoor/data/test.jsonl --rows 200

The fp32 model is the run as `label` loads it (LoRA merged); the bf16 one is a copy cast with
`model.to(torch.bfloat16)`, which is what `label --dtype bf16` does. This runs on any CPU: where bf16
is not native torch emulates it (products of bf16 numbers are exact in fp32 and summed in fp32, as AMX
and AVX512-BF16 do), so the agreement measured here holds for native bf16 too; the speed figures only
mean something on a CPU with AMX or AVX512-BF16.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def read_data(path: Path, rows: int) -> tuple[list[str], list[str]]:
    """`rows` texts and gold labels, evenly spaced, of a .jsonl (a run's data split) or a .csv with `text` and
    `label` columns."""
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        with path.open(encoding="utf-8", newline="") as f:
            records = list(csv.DictReader(f))
    if rows < len(records):  # evenly spaced: a split is often sorted by label
        records = [records[i * len(records) // rows] for i in range(rows)]
    return [str(r["text"]) for r in records], [str(r["label"]) for r in records]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/demo-real")
    p.add_argument("--data", default=None, help=".jsonl/.csv with text, label (default: real posts, no gold)")
    p.add_argument("--rows", type=int, default=300)
    p.add_argument("--modes", default="score,constrained")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1, help="rounds of each precision, interleaved")
    args = p.parse_args()

    import torch

    from labeltune import decode
    from labeltune.metrics import classification_metrics
    from labeltune.run import open_run

    decode.tune_cpu_allocator()
    if args.data:
        texts, gold = read_data(Path(args.data), args.rows)
        origin = args.data
    else:
        from bench import real_texts

        texts, origin = real_texts(args.rows)
        gold = None
    run = open_run(args.run)
    fp32, prompter = run.load(merge=True, dtype="fp32")
    models = {"fp32": fp32, "bf16": copy.deepcopy(fp32).to(torch.bfloat16)}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    speed: dict[tuple[str, str], list[float]] = {(m, d): [] for m in modes for d in models}
    answers = {}
    for _ in range(args.repeats):
        for mode in modes:
            for name, model in models.items():
                started = time.perf_counter()
                answers[mode, name] = decode.predict(
                    model, prompter, texts, batch_size=args.batch_size, mode=mode
                )
                speed[mode, name].append(len(texts) / (time.perf_counter() - started))
    labels = run.task.label_values
    print(
        f"{len(texts)} posts from {origin}; run {args.run}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)\n"
    )
    print(
        "| mode | same label | label-probability gap, max / mean | score gap (same label), max / mean | "
        "macro-F1 fp32 / bf16 | posts/s fp32 / bf16 |\n|---|---|---|---|---|---|"
    )
    for mode in modes:
        a, b = answers[mode, "fp32"], answers[mode, "bf16"]
        same = sum(x.label == y.label for x, y in zip(a, b))
        gaps = [abs(x.probs[k] - y.probs[k]) for x, y in zip(a, b) if x.probs and y.probs for k in x.probs]
        score_gaps = [  # a score belongs to its label: compared where both chose the same label
            abs(x.score - y.score)
            for x, y in zip(a, b)
            if x.label == y.label and x.score is not None and y.score is not None
        ]
        f1 = (
            " / ".join(
                f"{classification_metrics(gold, [x.label for x in answers[mode, d]], labels)['macro_f1']:.3f}"
                for d in models
            )
            if gold
            else "-"
        )
        per_s = " / ".join(f"{statistics.median(speed[mode, d]):.1f}" for d in models)
        gap = f"{max(gaps):.3f} / {statistics.mean(gaps):.4f}" if gaps else "-"
        score_gap = f"{max(score_gaps)} / {statistics.mean(score_gaps):.2f}" if score_gaps else "-"
        print(f"| {mode} | {same} of {len(a)} ({same / len(a):.1%}) | {gap} | {score_gap} | {f1} | {per_s} |")


if __name__ == "__main__":
    main()
