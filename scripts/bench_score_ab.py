"""score mode of an earlier commit's decode.py against the current one, on the same model and posts,
rounds interleaved in one process (prints a table; no assertions).

    python scripts/bench_score_ab.py --run runs/demo --before fa0f910

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
    args = parser.parse_args()

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
    model, prompter = open_run(args.run).load(merge=True)
    texts, origin = real_texts(args.rows)
    names = {f"{args.before} (before)": before, "now": now}
    rounds = {k: [] for k in names}
    out = {}
    for _ in range(args.repeats):
        for name, module in names.items():
            started = time.perf_counter()
            out[name] = module.predict(model, prompter, texts, batch_size=args.batch_size, mode="score")
            rounds[name].append(len(texts) / (time.perf_counter() - started))
    print(f"{args.rows} posts from {origin}; batch {args.batch_size}; run {args.run}\n")
    print("| score mode | posts/s (best round) | all rounds |\n|---|---|---|")
    for name, values in rounds.items():
        print(f"| {name} | {max(values):.0f} | {' / '.join(f'{v:.0f}' for v in values)} |")
    a, b = out.values()
    same = sum((x.label, x.score, x.score_greedy) == (y.label, y.score, y.score_greedy) for x, y in zip(a, b))
    print(f"\nsame label, score and greedy score: {same} of {len(a)}")


if __name__ == "__main__":
    main()
