"""Labelling throughput and memory benchmark (prints tables; no assertions).

    make bench                                   # = python scripts/bench.py --run runs/demo
    python scripts/bench.py --run runs/demo --rows 2000 --naive-rows 200 --rss-rows 2000,200000
    python scripts/bench.py --model 140m --rows 200 --naive-rows 0 --rss-rows '' --threads 1 --engines hf

--model tiny|140m|gemma3-270m makes (once) and reuses a run under runs/bench/ instead of --run: tiny = the
tiny preset trained as `make demo` trains it; 140m = a random-init Llama-shaped model of 136M parameters
(768 wide, 6 layers, tied 128k-token embedding) with the real Llama 3.1 tokenizer (../shared/tokenizers),
trained 2 steps; gemma3-270m = the real Gemma 3 270M preset (262k vocabulary) trained 2 steps. The
random-init models' labels mean nothing; their speed is what real models of their shape get. With vllm
among --engines, --model benches the run's merged16 export instead (runs/bench/<model>-merged16, made
once): vLLM serves that, and every engine and table then labels with the same weights.

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
The engine table (--engines) gives each engine's modes in process and, with --whole-command, the same
as one `labeltune label` command (start-up, reading and writing the CSV included).
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


BENCH_RUNS = ROOT / "runs" / "bench"
LLAMA_TOKENIZER = ROOT.parent / "shared" / "tokenizers" / "llama3.1"
TRAIN = {  # --model -> the `labeltune train` arguments of its run (after --output)
    "tiny": ["--model", "tiny", "--data", "data/sample.csv"],
    "140m": ["--model", str(BENCH_RUNS / "base-140m"), "--data", "data/sample.csv", "--max-steps", "2"]
    + ["--batch-size", "2", "--grad-accum", "1"],
    "gemma3-270m": ["--model", "gemma3-270m", "--data", "data/sample.csv", "--max-steps", "2"]
    + ["--batch-size", "2", "--grad-accum", "1"],
}


def build_140m(out: Path) -> None:
    """A random-init Llama-shaped base of 136M parameters with the real Llama 3.1 tokenizer (128k tokens)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if not (LLAMA_TOKENIZER / "tokenizer.json").is_file():
        sys.exit(f"--model 140m needs the Llama 3.1 tokenizer in {LLAMA_TOKENIZER} (../shared); it is absent")
    tokenizer = AutoTokenizer.from_pretrained(LLAMA_TOKENIZER)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=6,
        num_attention_heads=12,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def bench_run(model: str, merged: bool = False) -> str:
    """The run of --model under runs/bench/ (made on first use: a few minutes of training on a CPU); with
    `merged`, its merged16 export runs/bench/<model>-merged16 (made on first use), which vLLM serves
    (it cannot serve the tiny preset's adapter: it trains lm_head in full) and the hf engine loads too,
    so every engine labels with the same weights."""
    out, export = BENCH_RUNS / model, BENCH_RUNS / f"{model}-merged16"
    # model.json is an export's last file (a folder without it: an interrupted export); the export alone
    # suffices (copied from another checkout, say)
    if merged and (export / "model.json").is_file():
        return str(export)
    if not (out / "adapter").is_dir():
        if model == "140m" and not (BENCH_RUNS / "base-140m" / "config.json").is_file():
            build_140m(BENCH_RUNS / "base-140m")
        print(f"making {out} (once): labeltune train {' '.join(TRAIN[model])}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "labeltune.cli", "train", *TRAIN[model], "--output", str(out)],
            cwd=ROOT,
            check=True,
        )
    if not merged:
        return str(out)
    command = ["export", "--run", str(out), "--format", "merged16", "--output", str(export)]
    print(f"making {export} (once): labeltune {' '.join(command)}", flush=True)
    subprocess.run([sys.executable, "-m", "labeltune.cli", *command, "--overwrite"], cwd=ROOT, check=True)
    return str(export)


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


def write_posts(source: Path, texts: list[str], rows: int) -> None:
    with open(source, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        for i in range(rows):
            writer.writerow([i, texts[i % len(texts)]])


def labeltune_command(argv: list[str]) -> None:
    """One `labeltune ...` process (this interpreter), failing loudly."""
    proc = subprocess.run(
        [sys.executable, "-m", "labeltune.cli", *argv], capture_output=True, text=True, cwd=ROOT
    )
    if proc.returncode:
        sys.exit(f"labeltune {' '.join(argv)} failed:\n{proc.stderr[-2000:]}")


def peak_rss_label(run: str, texts: list[str], rows: int, mode: str) -> float:
    """Peak RSS (MiB) of a `labeltune label` process over a file of `rows` rows."""
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "in.csv", Path(tmp) / "out.csv"
        write_posts(source, texts, rows)
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
    every = max(1, args.rows // max(args.naive_rows, 1))
    naive_texts = texts[::every][: args.naive_rows]  # spread over the whole set
    malformed: dict[str, float] = {}

    def label(mode):
        preds = predict(model, prompter, texts, batch_size=args.batch_size, mode=mode)
        malformed[mode] = sum(not p.ok for p in preds) / len(preds)

    methods = {
        **({"naive": lambda: naive(model, prompter, naive_texts)} if naive_texts else {}),
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
        x_naive = f"{rate[k] / rate['naive']:.1f}" if "naive" in rate else "-"
        print(
            f"| {k}{note} | {rate[k]:.1f} | {' / '.join(f'{r:.1f}' for r in rounds[k])} | "
            f"{x_naive} | {rate[k] / rate['prefill']:.2f} | "
            f"{rate[k] / rate['prefill-shared']:.2f} | {bad} |"
        )

    def within(a: str, b: str) -> str:
        return " / ".join(f"{x / y:.2f}" for x, y in zip(rounds[a], rounds[b]))

    print(f"\nconstrained / batched generate: {rate['constrained'] / rate['generate']:.2f}")
    print(f"constrained / score within each round: {within('constrained', 'score')}")
    print(f"generate / score within each round: {within('generate', 'score')}")
    print(f"score / prefill-shared within each round: {within('score', 'prefill-shared')}")
    if "naive" in rounds:
        print(f"score / naive within each round: {within('score', 'naive')}")


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


def comma_list(text: str) -> list[str]:
    return [e.strip() for e in text.split(",") if e.strip()]


# --engines names -> (engine, --dtype); hf is label's default (auto: bf16 on a native-bf16 CPU, else fp32)
ENGINE_DTYPES = {
    "hf": ("hf", "auto"),
    "hf-fp32": ("hf", "fp32"),
    "hf-bf16": ("hf", "bf16"),
    "vllm": ("vllm", "auto"),
}


def engine_table(args, run, texts) -> None:
    """Each engine started once (start-up timed apart), then its modes over the same texts, interleaved over
    rounds; the Ray path labels chunks of 256 texts over 2 replicas (hf, score) and its figure is a whole
    job: replica start-up included, as a user meets it."""
    from labeltune.engine import load_engine

    engines, startup = {}, {}
    names = comma_list(args.engines)
    for name in (n for n in names if n in ENGINE_DTYPES):
        started = time.perf_counter()
        engine, dtype = ENGINE_DTYPES[name]
        batch_size = args.batch_size if engine == "hf" else None  # vLLM schedules its own batches
        engines[name] = load_engine(run, engine, dtype, batch_size=batch_size)
        startup[name] = time.perf_counter() - started
    methods, malformed = {}, {}

    def label(engine, mode, key):
        preds = engine.predict(texts, mode)
        malformed[key] = sum(not p.ok for p in preds) / len(preds)

    for name, engine in engines.items():
        for mode in args.engine_modes:
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
    whole = {k: [] for k in methods if k.split()[0] in ENGINE_DTYPES} if args.whole_command else {}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.csv"
        write_posts(source, texts, len(texts))
        for _ in range(args.repeats):
            for k, fn in methods.items():
                rounds[k].append(len(texts) / timed(fn))
            for k in whole:  # the same as one command: start-up, CSV in and out included
                name, mode = k.split()
                engine, dtype = ENGINE_DTYPES[name]
                extra = ["--batch-size", str(args.batch_size)] if engine == "hf" else []
                extra += ["--threads", str(args.threads)] if args.threads and engine == "hf" else []
                command = ["label", "--run", str(run.dir), "--input", str(source), "--output"]
                command += [str(Path(tmp) / "out.csv"), "--overwrite", "--mode", mode, "--engine", engine]
                command += ["--dtype", dtype, "--progress", "false", *extra]
                whole[k].append(len(texts) / timed(lambda c=command: labeltune_command(c)))
    print(
        "\n| engine | start-up s | posts/s in process (best round) | all rounds | whole command posts/s "
        "(best round) | all rounds | malformed |\n|---|---|---|---|---|---|---|"
    )
    for k, values in rounds.items():
        up = f"{startup[k.split()[0]]:.1f}"
        w = whole.get(k)
        cmd = f"{max(w):.1f} | {' / '.join(f'{v:.1f}' for v in w)}" if w else "- | -"
        print(
            f"| {k} | {up} | {max(values):.1f} | {' / '.join(f'{v:.1f}' for v in values)} | {cmd} | "
            f"{malformed[k]:.1%} |"
        )
    ratios = [  # each hf engine against vLLM in the same mode: round by round, as the rounds interleave
        (k, f"vllm {k.split()[1]}") for k in rounds if k.startswith("hf") and f"vllm {k.split()[1]}" in rounds
    ]
    for k, v in ratios:
        each = " / ".join(f"{a / b:.2f}" for a, b in zip(rounds[k], rounds[v]))
        print(f"{k} / {v}: {max(rounds[k]) / max(rounds[v]):.2f}x (best rounds); by round {each}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="runs/demo", help="trained run (make demo makes runs/demo)")
    parser.add_argument(
        "--model",
        choices=sorted(TRAIN),
        default=None,
        help="bench a run of this model under runs/bench/ (made on first use) instead of --run; with vllm "
        "among --engines, its merged16 export (made on first use)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads, here and in --whole-command (None: default)"
    )
    parser.add_argument(
        "--whole-command",
        action="store_true",
        help="engine table: also time each engine's modes as one `labeltune label` command",
    )
    parser.add_argument("--rows", type=int, default=2000, help="texts for the throughput table")
    parser.add_argument(
        "--naive-rows", type=int, default=200, help="rows timed for the naive per-row loop (0 skips it)"
    )
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
        help="comma-separated engines for the engine table: hf (label's default dtype), hf-fp32, hf-bf16, "
        "vllm (needs make env-vllm), ray "
        "(hf score mode over 2 Ray replicas on a local cluster); '' skips",
    )
    parser.add_argument(
        "--engine-modes",
        default="score,constrained,generate",
        help="comma-separated modes each engine of the engine table runs (a random-init model's generate "
        "runs to the token limit: the slowest and least telling)",
    )
    args = parser.parse_args()
    args.engine_modes = comma_list(args.engine_modes)
    if unknown := sorted(set(args.engine_modes) - {"score", "constrained", "generate"}):
        parser.error(f"--engine-modes: unknown mode {', '.join(unknown)} (score, constrained, generate)")

    import torch

    if args.model:  # vLLM serves a merged16 export; then every engine (and table) labels with it
        args.run = bench_run(args.model, merged="vllm" in comma_list(args.engines))
    if args.threads:
        torch.set_num_threads(args.threads)

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
