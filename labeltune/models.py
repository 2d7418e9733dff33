"""Model presets and backends.

A preset names a base model and its sensible training defaults. ``tiny`` is built locally: a small
Llama-shaped model with random weights and a byte-level BPE tokenizer trained on the run's own texts,
so the whole pipeline runs with no network. Anything that is not a preset name is taken as a Hugging
Face id or a local path.

Backends: ``hf`` = transformers + PEFT LoRA (full precision on CPU). Heavy imports (torch,
transformers, peft) happen inside the functions that need them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PAD_CANDIDATES = ("<pad>", "<|finetune_right_pad_id|>", "[PAD]", "<|pad|>", "<|reserved_special_token_0|>")


@dataclass(frozen=True)
class Preset:
    name: str
    model_id: str | None  # Hugging Face id or path; None = built locally (tiny)
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
ALIASES: dict[str, str] = {}


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


# ---------------------------------------------------------------- tiny model


def build_tiny_tokenizer(texts: list[str], vocab_size: int = 2000):
    """Byte-level BPE trained on `texts`, with <bos> added to every encoding and distinct <eos>/<pad>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<bos>", "<eos>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Merges may span spaces (so the fixed template lines become a few tokens and sequences stay short)
    # but never newlines, digits or "-": text, template and each digit of an answer stay apart.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\n|[0-9]|-"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def build_tiny(texts: list[str], out_dir: str | Path, seed: int, hidden: int = 128, layers: int = 3) -> Path:
    """Build and save the tiny base model (random init) and its tokenizer to `out_dir`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------- loading


def ensure_pad_token(tokenizer, model=None) -> None:
    """Give the tokenizer a pad token distinct from eos (so EOS is never masked as padding)."""
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        vocab = tokenizer.get_vocab()
        found = next((t for t in PAD_CANDIDATES if t in vocab and vocab[t] != tokenizer.eos_token_id), None)
        if found:
            tokenizer.pad_token = found
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            if model is not None:
                model.resize_token_embeddings(len(tokenizer))
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id


def load_base(path_or_id: str, backend: str = "hf"):
    """(model, tokenizer) of a base model on the current device, full precision on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if backend != "hf":
        raise ValueError(f"unknown backend {backend!r}; available: hf")
    tokenizer = AutoTokenizer.from_pretrained(path_or_id)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path_or_id, dtype=dtype).to(device)
    ensure_pad_token(tokenizer, model)
    return model, tokenizer


def add_lora(model, r: int, alpha: int, dropout: float, target_modules, seed: int, modules_to_save=()):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        task_type="CAUSAL_LM",
        modules_to_save=list(modules_to_save) or None,
    )
    return get_peft_model(model, config)


def base_path(run_dir: str | Path) -> str:
    """Where a run's base model lives: its own `base/` (tiny) or the id recorded at training time."""
    info = json.loads((Path(run_dir) / "model.json").read_text(encoding="utf-8"))
    return str(Path(run_dir) / "base") if info["base"] == "base/" else info["base"]


def load_run(run_dir: str | Path):
    """(model with adapter, tokenizer) of a trained run, in eval mode."""
    from peft import PeftModel

    run_dir = Path(run_dir)
    if not (run_dir / "adapter").is_dir():
        raise FileNotFoundError(f"{run_dir}: no adapter/ (is this a run directory made by `labeltune train`?)")
    info = json.loads((run_dir / "model.json").read_text(encoding="utf-8"))
    model, _ = load_base(base_path(run_dir), info.get("backend", "hf"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(model, run_dir / "adapter")
    ensure_pad_token(tokenizer, model)
    model.eval()
    return model, tokenizer
