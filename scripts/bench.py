"""Labelling throughput and memory benchmark (prints tables; no assertions).

    make bench                                   # = python scripts/bench.py --run runs/demo
    python scripts/bench.py --run runs/demo --rows 2000 --naive-rows 200 --rss-rows 2000,200000

Texts: real SNS-style posts from ../shared/data (japanese-toxic-dataset, WRIME sample), repeated to
--rows; data/sample.csv where ../shared is absent. Methods, all on the same prompts:
  naive      per row: render + tokenise the prompt, one `generate` call with max_new_tokens=64, decode,
             parse (how hand-made notebooks do it); timed on --naive-rows rows spread evenly over the
             texts, reported per post
  generate   batched free generation + parser (labeltune predict, mode generate)
  constrained batched generation limited to the task's answers
  score      label probabilities from forward passes, spec-written answer
  prefill    the limit: one batched forward over every prompt, no decoding
  prefill-shared  the same with the prompts' shared prefix (the template's instruction) computed
             once and reused, as score mode does: the limit for a prefix-caching decoder
Each method runs once per round (--repeats rounds, methods interleaved) and its best round is
reported, with every round's figure beside it: on a shared machine a slow spell then slows every
method alike instead of whichever happened to run in it. The process raises glibc's malloc thresholds
first (labeltune.decode.tune_cpu_allocator, what `predict` does on CPU), so every method runs under
the same allocator.
Then peak RSS of `labeltune label --mode score` on files of --rss-rows rows (separate processes).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"


def real_texts(n: int) -> tuple[list[str], str]:
    texts, source = [], []
    toxic = SHARED / "japanese-toxic-dataset" / "data" / "subset.csv"
    wrime = SHARED / "wrime-sample" / "sample.tsv"
    if toxic.is_file():
        texts += [r["text"] for r in csv.DictReader(open(toxic, encoding="utf-8", newline=""))]
        source.append("japanese-toxic-dataset")
    if wrime.is_file():
        texts += [
            r["投稿本文"] for r in csv.DictReader(open(wrime, encoding="utf-8", newline=""), delimiter="\t")
        ]
        source.append("WRIME sample")
    if not texts:
        texts = [
            r["text"]
            for r in csv.DictReader(open(ROOT / "data" / "sample.csv", encoding="utf-8", newline=""))
        ]
        source.append("data/sample.csv (../shared absent)")
    texts = [t for t in texts if t.strip()]
    return [texts[i % len(texts)] for i in range(n)], " + ".join(source)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def prefill(model, tokenizer, prompt_ids, batch_size, shared: bool):
    """One batched forward over every prompt (no decoding); with `shared`, the prompts' common prefix
    is computed once and each batch continues from it, as score mode does."""
    import torch

    from labeltune.decode import last_position, length_batches, prefill_inputs, shared_prefix

    device = next(model.parameters()).device
    with torch.inference_mode():
        k, shared_cache = shared_prefix(model, prompt_ids, device) if shared else (0, None)
        for index in length_batches(prompt_ids, batch_size):
            own, attention, positions, cache = prefill_inputs(
                [prompt_ids[i] for i in index], k, shared_cache, tokenizer.pad_token_id
            )
            own = own.to(device)
            model(
                input_ids=own,
                attention_mask=attention.to(device),
                position_ids=positions.to(device),
                past_key_values=cache,
                use_cache=shared_cache is not None,
                logits_to_keep=last_position(own),
            )


def naive(model, prompter, texts):
    """The hand-made notebook loop: per post, render and tokenise the prompt, generate, decode, parse."""
    import torch

    from labeltune.parse import parse

    tokenizer = prompter.tokenizer
    with torch.inference_mode():
        for text in texts:
            ids, _ = prompter.prompt_ids(text)
            out = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=64,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            parse(tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True), prompter.task)


def peak_rss_label(run: str, texts: list[str], rows: int, mode: str) -> float:
    """Peak RSS (MiB) of a `labeltune label` process over a file of `rows` rows."""
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "in.csv", Path(tmp) / "out.csv"
        with open(source, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "text"])
            for i in range(rows):
                writer.writerow([i, texts[i % len(texts)]])
        code = (
            "import resource, sys; from labeltune.cli import run; rc = run(sys.argv[1:]); "
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
        )
        started = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                "label",
                "--run",
                run,
                "--input",
                str(source),
                "--output",
                str(out),
                "--mode",
                mode,
                "--progress",
                "false",
                "--batch-size",
                "64",
                "--chunk-size",
                "512",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        seconds = time.perf_counter() - started
        kib = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("MAXRSS")))
        return kib / 1024, seconds


def method_table(model, prompter, texts, prompt_ids, args) -> None:
    """The hf engine's methods against the naive loop and the prefill limits, interleaved over rounds."""
    from labeltune.decode import common_prefix_length, predict

    tokenizer = prompter.tokenizer
    naive_texts = texts[:: max(1, args.rows // args.naive_rows)][
        : args.naive_rows
    ]  # spread over the whole set
    malformed: dict[str, float] = {}

    def label(mode):
        preds = predict(model, prompter, texts, batch_size=args.batch_size, mode=mode)
        malformed[mode] = sum(not p.ok for p in preds) / len(preds)

    methods = {
        "naive": lambda: naive(model, prompter, naive_texts),
        **{mode: lambda m=mode: label(m) for mode in ("generate", "constrained", "score")},
        "prefill": lambda: prefill(model, tokenizer, prompt_ids, args.batch_size, shared=False),
        "prefill-shared": lambda: prefill(model, tokenizer, prompt_ids, args.batch_size, shared=True),
    }
    rounds = {k: [] for k in methods}
    for _ in range(
        args.repeats
    ):  # rounds interleave the methods, so a slow spell on a shared machine hits them all
        for k, fn in methods.items():
            rounds[k].append((len(naive_texts) if k == "naive" else args.rows) / timed(fn))
    rate = {k: max(v) for k, v in rounds.items()}
    print(f"shared prompt prefix: {common_prefix_length(prompt_ids)} tokens\n")
    print(
        "| method | posts/s (best round) | all rounds | x naive | fraction of prefill limit | "
        "fraction of prefill-shared limit | malformed |"
    )
    print("|---|---|---|---|---|---|---|")
    for k in methods:
        note = f" (timed on {len(naive_texts)} rows)" if k == "naive" else ""
        bad = f"{malformed[k]:.1%}" if k in malformed else "-"
        print(
            f"| {k}{note} | {rate[k]:.1f} | {' / '.join(f'{r:.0f}' for r in rounds[k])} | "
            f"{rate[k] / rate['naive']:.1f} | {rate[k] / rate['prefill']:.2f} | "
            f"{rate[k] / rate['prefill-shared']:.2f} | {bad} |"
        )
    print(f"\nconstrained / batched generate: {rate['constrained'] / rate['generate']:.2f}")
    by_round = [s / n for s, n in zip(rounds["score"], rounds["naive"])]
    print(f"score / naive within each round: {' / '.join(f'{r:.1f}' for r in by_round)}")


def threads_under_load(model, prompter, texts, args) -> None:
    """Score mode with torch on 1 thread vs all cores, while a busy loop keeps one core busy (a shared
    machine): rounds interleaved, each figure shown."""
    import torch

    from labeltune.decode import predict
    from labeltune.engine import auto_threads

    every = torch.get_num_threads()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        auto, note = auto_threads()  # what `label` picks by default now, with the hog running
        rounds = {
            "1 torch thread (--threads 1)": 1,
            f"label's default: {note}": auto,
            f"torch's default ({every})": every,
        }
        figures = {name: [] for name in rounds}
        for _ in range(args.repeats):
            for name, n in rounds.items():
                torch.set_num_threads(n)
                figures[name].append(
                    len(texts)
                    / timed(lambda: predict(model, prompter, texts, batch_size=args.batch_size, mode="score"))
                )
    finally:
        hog.kill()
        torch.set_num_threads(every)
    print(
        "\n| score mode, one core kept busy by another process | posts/s (best round) | all rounds |\n"
        "|---|---|---|"
    )
    for name, values in figures.items():
        print(f"| {name} | {max(values):.0f} | {' / '.join(f'{v:.0f}' for v in values)} |")


def engine_table(args, run, texts) -> None:
    """Each engine started once (start-up timed apart), then its modes over the same texts, interleaved over
    rounds; the Ray path labels chunks of 256 texts over 2 replicas (hf, score) and its figure is a whole
    job: replica start-up included, as a user meets it."""
    from labeltune.engine import load_engine

    engines, startup = {}, {}
    names = [e.strip() for e in args.engines.split(",") if e.strip()]
    for name in (n for n in names if n in ("hf", "hf-bf16", "vllm")):
        started = time.perf_counter()
        engine, dtype = ("hf", "bf16") if name == "hf-bf16" else (name, "auto")
        batch_size = args.batch_size if engine == "hf" else None  # vLLM schedules its own batches
        engines[name] = load_engine(run, engine, dtype, batch_size=batch_size)
        startup[name] = time.perf_counter() - started
    methods, malformed = {}, {}

    def label(engine, mode, key):
        preds = engine.predict(texts, mode)
        malformed[key] = sum(not p.ok for p in preds) / len(preds)

    for name, engine in engines.items():
        modes = ("generate", "constrained", "score") if name == "vllm" else ("score", "constrained")
        for mode in modes:
            methods[f"{name} {mode}"] = lambda e=engine, m=mode, k=f"{name} {mode}": label(e, m, k)
    if "ray" in names:
        from labeltune.ray_label import connect, predict_chunks

        started = time.perf_counter()
        connect("local")
        startup["ray"] = time.perf_counter() - started  # the local cluster; each job also starts its replicas
        chunks = [texts[i : i + 256] for i in range(0, len(texts), 256)]

        def ray_job():
            preds = [
                p
                for chunk in predict_chunks(
                    "local", 2, str(run.dir), "hf", "auto", None, args.batch_size, {"mode": "score"}, chunks
                )
                for p in chunk
            ]
            malformed["ray 2x hf score (job)"] = sum(not p.ok for p in preds) / len(preds)

        methods["ray 2x hf score (job)"] = ray_job
    rounds = {k: [] for k in methods}
    for _ in range(args.repeats):
        for k, fn in methods.items():
            rounds[k].append(len(texts) / timed(fn))
    print("\n| engine | start-up s | posts/s (best round) | all rounds | malformed |\n|---|---|---|---|---|")
    for k, values in rounds.items():
        up = f"{startup[k.split()[0]]:.1f}"
        print(
            f"| {k} | {up} | {max(values):.0f} | {' / '.join(f'{v:.0f}' for v in values)} | "
            f"{malformed[k]:.1%} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="runs/demo", help="trained run (make demo makes runs/demo)")
    parser.add_argument("--rows", type=int, default=2000, help="texts for the throughput table")
    parser.add_argument("--naive-rows", type=int, default=200, help="rows timed for the naive per-row loop")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per batch")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timing rounds; every method runs once per round, the best round is reported",
    )
    parser.add_argument(
        "--rss-rows", default="2000,200000", help="comma-separated row counts for peak RSS; '' skips"
    )
    parser.add_argument(
        "--no-methods", action="store_true", help="skip the hf methods table (naive, modes, prefill)"
    )
    parser.add_argument(
        "--threads-under-load",
        action="store_true",
        help="score mode with 1 thread vs all threads while another process keeps one core busy",
    )
    parser.add_argument(
        "--engines",
        default="",
        help="comma-separated engines for the engine table: hf, hf-bf16, vllm (needs make env-vllm), ray "
        "(hf score mode over 2 Ray replicas on a local cluster); '' skips",
    )
    args = parser.parse_args()

    import torch

    from labeltune.decode import tune_cpu_allocator
    from labeltune.run import open_run

    try:
        run = open_run(args.run)
    except FileNotFoundError:
        sys.exit(f"{args.run} is not a trained run: run `make demo` first (or pass --run)")
    allocator = (
        tune_cpu_allocator()
    )  # what `labeltune label` does at its entry point; set first so every method runs under it
    texts, source = real_texts(args.rows)
    model, prompter = run.load(merge=True)  # as `labeltune label` loads it
    prompt_ids = [ids for ids, _ in prompter.prompt_ids_many(texts)]
    print(
        f"run {args.run}; {args.rows} texts from {source}; mean prompt "
        f"{sum(map(len, prompt_ids)) / len(prompt_ids):.0f} tokens; batch {args.batch_size}; torch threads "
        f"{torch.get_num_threads()}; malloc thresholds raised: {allocator}; best of {args.repeats} rounds\n"
    )

    if not args.no_methods:
        method_table(model, prompter, texts, prompt_ids, args)
    if args.threads_under_load:
        threads_under_load(model, prompter, texts, args)
    if args.engines:
        engine_table(args, run, texts)

    counts = [int(x) for x in args.rss_rows.split(",") if x.strip()]
    if counts:
        print("\n| rows labelled (score mode) | peak RSS MiB | seconds |\n|---|---|---|")
        for n in counts:
            rss, secs = peak_rss_label(args.run, texts, n, "score")
            print(f"| {n} | {rss:.0f} | {secs:.0f} |", flush=True)


if __name__ == "__main__":
    main()
