"""Inference engines behind `labeltune label`: one object that turns texts into Predictions.

- ``hf`` (default): transformers + PEFT in this process (labeltune.decode), LoRA folded into the base;
  ``dtype`` picks the compute precision (auto: the device's, fp32 on CPU; bf16 on a CPU with native bf16
  (AMX / AVX512-BF16) halves the weights and speeds up matmuls), ``threads`` torch's intra-op threads.
- ``vllm``: vLLM (labeltune.vllm_engine), for GPUs: continuous batching, prefix caching, structured outputs.

Every engine is a class made as ``cls(run, dtype=, threads=, batch_size=)`` that answers
``predict(texts, mode, temperature, score_estimate, label_bias, max_new_tokens)`` with the meaning of
labeltune.decode.predict (a list of labeltune.answers.Answer), so label (and its Ray path,
labeltune.ray_label) treat them alike. Adding one: its module, an entry in ENGINE_CLASSES, its name in
config.ENGINES (the CLI's choices).
"""

from __future__ import annotations

import os
import time

from labeltune.models import check_dtype, loaded_precision


def choose_threads(cores: int, busy: float) -> int:
    """torch CPU threads for a labeller: the cores this process may use less those other processes keep busy
    (rounded), at least one. torch's default (one per core) collapses when another process holds a core:
    README, "Engines": 408 vs 763 posts/s with one of 2 cores busy."""
    return max(1, min(cores, round(cores - busy)))


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def busy_cores(samples: int = 5, interval: float = 0.05) -> float:
    """How many cores other processes keep busy now: the runnable count of /proc/loadavg (this process's
    own thread left out) averaged over a few samples; where there is none, the 1-minute load average."""
    try:
        counts = []
        for i in range(samples):
            with open("/proc/loadavg", encoding="ascii") as f:
                counts.append(max(0, int(f.read().split()[3].split("/")[0]) - 1))
            if i + 1 < samples:
                time.sleep(interval)
        return sum(counts) / len(counts)
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0


def auto_threads() -> tuple[int, str]:
    """(threads, why) for --threads auto on a CPU."""
    cores, busy = usable_cores(), busy_cores()
    threads = choose_threads(cores, busy)
    return threads, (
        f"{threads} CPU thread{'s' * (threads > 1)} of {cores} cores ({busy:.1f} kept busy by other work "
        "now; --threads N sets it)"
    )


BATCH_SIZE = 16  # the hf engine's prompts per batch when none is given


class HfEngine:
    """A run loaded with transformers (+ PEFT, LoRA merged where the base is 16/32-bit) in this process."""

    name = "hf"

    def __init__(self, run, dtype: str = "auto", threads: int | None = None, batch_size: int | None = None):
        """`threads`: torch's intra-op threads (None: torch's default); `batch_size`: prompts per forward
        batch (None: BATCH_SIZE)."""
        import torch

        from labeltune.models import gpu_capability

        capability = gpu_capability()
        check_dtype(dtype, capability is not None, capability)
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: engines are made by entry points (label, bench)
        # LoRA folded in (no adapter overhead per call), in the precision `dtype` asks (auto: bf16 if native)
        self.model, self.prompter = run.load(merge=True, dtype=dtype)
        self.precision = loaded_precision(self.model)
        self.dtype, self.batch_size = dtype, batch_size or BATCH_SIZE

    def predict(
        self,
        texts: list,
        mode: str,
        temperature: float = 1.0,
        score_estimate: str = "expected",
        label_bias: dict[str, float] | None = None,
        max_new_tokens: int | None = None,
    ):
        from labeltune.decode import predict

        return predict(
            self.model,
            self.prompter,
            texts,
            max_new_tokens,
            self.batch_size,
            mode,
            temperature,
            score_estimate,
            label_bias,
        )


def without_score(predictions: list) -> list:
    """The predictions with no score (a run trained without scores: its "score : 0" is a format filler)."""
    from dataclasses import replace

    return [replace(p, score=None, score_greedy=None) for p in predictions]


class WithoutScore:
    """An engine of a run whose training data had no scores: its predictions carry no score (the model's
    "score : 0" is a format filler, not a measurement), so label and predict leave the score empty."""

    def __init__(self, engine):
        self.engine, self.name = engine, engine.name

    def predict(self, texts: list, mode: str, **settings):
        return without_score(self.engine.predict(texts, mode, **settings))

    def __getattr__(self, name):  # close(), startup_s, ... of the engine itself
        return getattr(self.engine, name)


def _vllm_engine():
    from labeltune.vllm_engine import VllmEngine  # vLLM is imported only when its engine is asked for

    return VllmEngine


# engine name (config.ENGINES) -> a function returning its class, so that a heavy one is imported on use only
ENGINE_CLASSES = {"hf": lambda: HfEngine, "vllm": _vllm_engine}


def load_engine(
    run, engine: str = "hf", dtype: str = "auto", threads: int | None = None, batch_size: int | None = None
):
    """The named engine over an opened run (labeltune.run.open_run); `threads` and `batch_size` as the
    engine's class takes them (None: the engine's default)."""
    if engine not in ENGINE_CLASSES:
        raise ValueError(f"unknown --engine {engine!r}; available: {', '.join(ENGINE_CLASSES)}")
    loaded = ENGINE_CLASSES[engine]()(run, dtype=dtype, threads=threads, batch_size=batch_size)
    return loaded if run.score_trained or run.task.score is None else WithoutScore(loaded)
