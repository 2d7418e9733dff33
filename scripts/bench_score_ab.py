"""Decode modes of an earlier commit's decode.py against the current one, on the same model and posts,
rounds interleaved in one process (prints a table and how many answers agree; no assertions).

    python scripts/bench_score_ab.py --run runs/demo --before fa0f910
    python scripts/bench_score_ab.py --run runs/demo --before fe0b471 --modes score,constrained,generate

The earlier decode.py is read with `git show <commit>:labeltune/decode.py` and loaded beside the current
one; both use the current rest of labeltune (the earlier file must still import against it).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--before", default="fa0f910", help="the earlier commit")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--modes", default="score", help="comma-separated decode modes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (None: torch's default)")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    from bench import real_texts

    from labeltune import decode as now
    from labeltune.run import open_run

    source = subprocess.run(
        ["git", "show", f"{args.before}:labeltune/decode.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decode_before.py"
        path.write_text(source, encoding="utf-8")
        spec = importlib.util.spec_from_file_location("decode_before", path)
        before = importlib.util.module_from_spec(spec)
        sys.modules["decode_before"] = before
        spec.loader.exec_module(before)
    now.tune_cpu_allocator()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model, prompter = open_run(args.run).load(merge=True)
    texts, origin = real_texts(args.rows)
    names = {f"{args.before} (before)": before, "now": now}
    keys = [(mode, name) for mode in modes for name in names]
    rounds = {k: [] for k in keys}
    out = {}
    for _ in range(args.repeats):
        for mode, name in keys:
            started = time.perf_counter()
            out[mode, name] = names[name].predict(
                model, prompter, texts, batch_size=args.batch_size, mode=mode
            )
            rounds[mode, name].append(len(texts) / (time.perf_counter() - started))
    print(f"{args.rows} posts from {origin}; batch {args.batch_size}; run {args.run}\n")
    print("| mode | decode.py | posts/s (best round) | all rounds | now / before |\n|---|---|---|---|---|")
    for mode, name in keys:
        values = rounds[mode, name]
        ratio = max(values) / max(rounds[mode, f"{args.before} (before)"])
        every = " / ".join(f"{v:.1f}" for v in values)
        print(f"| {mode} | {name} | {max(values):.1f} | {every} | {ratio:.2f} |")
    print()
    for mode in modes:
        a, b = (out[mode, name] for name in names)
        same = sum(
            (x.label, x.score, x.score_greedy, x.ok, x.raw) == (y.label, y.score, y.score_greedy, y.ok, y.raw)
            for x, y in zip(a, b)
        )
        gap = max(
            (abs(x.probs[k] - y.probs[k]) for x, y in zip(a, b) if x.probs and y.probs for k in x.probs),
            default=0.0,
        )
        print(
            f"{mode}: same label, score, greedy score, ok and answer text: {same} of {len(a)}; "
            f"largest label-probability difference {gap:.1e}"
        )


if __name__ == "__main__":
    main()
