"""Inference engines behind `labeltune label`: one object that turns texts into Predictions.

- ``hf`` (default): transformers + PEFT in this process (labeltune.decode), LoRA folded into the base;
  ``dtype`` picks the compute precision (auto: the device's, fp32 on CPU; bf16 on a CPU with native bf16
  (AMX / AVX512-BF16) halves the weights and speeds up matmuls), ``threads`` torch's intra-op threads.
- ``vllm``: vLLM (labeltune.vllm_engine), for GPUs: continuous batching, prefix caching, structured outputs.

Both answer ``predict(texts, mode, temperature, score_estimate, label_bias, max_new_tokens)`` with the
meaning of labeltune.decode.predict, so label (and its Ray path, labeltune.ray_label) treat them alike.
"""

from __future__ import annotations

from pathlib import Path

from labeltune.config import DTYPES, ENGINES
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16); without it torch emulates bf16,
    slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def check_dtype(dtype: str, on_gpu: bool, capability: tuple[int, int] | None = None) -> None:
    """Refuse a precision this device cannot compute well, in one line naming the alternative."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown --dtype {dtype!r}; available: {', '.join(DTYPES)}")
    if on_gpu:
        if dtype == "bf16" and capability is not None and capability[0] < 8:
            raise ValueError(f"--dtype bf16 on a GPU of compute capability {capability[0]}.{capability[1]} (e.g. a T4) is "
                             "emulated and slow; use --dtype fp16 or auto")
        return
    if dtype == "fp16":
        raise ValueError("--dtype fp16 is not supported on CPU (no fp16 matmul kernels); use bf16 or fp32")
    if dtype == "bf16" and not cpu_has_native_bf16():
        raise ValueError("--dtype bf16: this CPU has no native bf16 (AMX or AVX512-BF16), so it would be slower than "
                         "fp32; use --dtype fp32")


class HfEngine:
    """A run loaded with transformers (+ PEFT, LoRA merged where the base is 16/32-bit) in this process."""

    name = "hf"

    def __init__(self, run, dtype: str = "auto", threads: int | None = None, batch_size: int = 16):
        import torch

        from labeltune.models import gpu_capability

        capability = gpu_capability()
        check_dtype(dtype, capability is not None, capability)
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: engines are made by entry points (label, bench)
        self.model, self.prompter = run.load(merge=True)  # LoRA folded in: no adapter overhead per call
        if dtype != "auto":
            if getattr(self.model, "is_loaded_in_4bit", False) or getattr(getattr(self.model, "base_model", None),
                                                                          "is_loaded_in_4bit", False):
                raise ValueError(f"--run {run.dir} computes on a 4-bit base; --dtype {dtype} applies to 16/32-bit models "
                                 "only (use --dtype auto)")
            self.model.to(getattr(torch, TORCH_DTYPES[dtype]))
        self.dtype, self.batch_size = dtype, batch_size

    def predict(self, texts: list, mode: str, temperature: float = 1.0, score_estimate: str = "expected",
                label_bias: dict[str, float] | None = None, max_new_tokens: int | None = None):
        from labeltune.decode import predict

        return predict(self.model, self.prompter, texts, max_new_tokens, self.batch_size, mode, temperature,
                       score_estimate, label_bias)


def load_engine(run, engine: str = "hf", dtype: str = "auto", threads: int | None = None, batch_size: int = 16):
    """The named engine over an opened run (labeltune.run.open_run)."""
    if engine == "hf":
        return HfEngine(run, dtype, threads, batch_size)
    if engine == "vllm":
        from labeltune.vllm_engine import VllmEngine

        return VllmEngine(run.dir, dtype=dtype)
    raise ValueError(f"unknown --engine {engine!r}; available: {', '.join(ENGINES)}")
