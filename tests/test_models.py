"""Presets, backend and precision choice, fail-fast on CPU, and unsloth never imported on the CPU path."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labeltune.models import check_fits_machine, select_backend, select_precision
from labeltune.presets import ALIASES, PRESETS, Preset, resolve_preset

ROOT = Path(__file__).resolve().parent.parent


def test_presets_and_aliases():
    for name in ("tiny", "llama3.1-8b", "gemma2-9b", "gemma2-2b", "llama3.2-1b", "llama3.2-3b", "swallow-8b"):
        assert resolve_preset(name).name == name
    assert resolve_preset("llama3.1") is PRESETS["llama3.1-8b"]
    assert resolve_preset("gemma2") is PRESETS["gemma2-9b"]
    assert set(ALIASES.values()) <= set(PRESETS)
    for p in PRESETS.values():
        assert 0 < p.lr <= 2e-3, "LoRA learning rates above ~1e-3 diverge on real models"
        if p.model_id:
            assert p.lr <= 1e-3 and p.full_id and p.max_length >= 256 and p.batch_size * p.grad_accum >= 8


def test_any_hub_id_or_path_is_accepted(tmp_path):
    assert resolve_preset("org/some-model").model_id == "org/some-model"
    assert resolve_preset(str(tmp_path)).model_id == str(tmp_path)


def test_unknown_model_lists_presets():
    with pytest.raises(ValueError, match=r"unknown model 'llama9'.*gemma2-9b.*tiny"):
        resolve_preset("llama9")


@pytest.mark.parametrize(
    "requested, cuda, has_unsloth, expected",
    [
        ("auto", True, True, "unsloth"),
        ("auto", True, False, "hf"),
        ("auto", False, True, "hf"),
        ("auto", False, False, "hf"),
        ("hf", True, True, "hf"),
        ("unsloth", True, True, "unsloth"),
    ],
)
def test_backend_selection(requested, cuda, has_unsloth, expected):
    assert select_backend(requested, cuda, has_unsloth) == expected


def test_backend_selection_errors():
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        select_backend("unsloth", False, True)
    with pytest.raises(ValueError, match=r"pip install -e '\.\[gpu\]'"):
        select_backend("unsloth", True, False)
    with pytest.raises(ValueError, match="available: auto, hf, unsloth"):
        select_backend("vllm", True, True)


def test_precision_choice():
    """From compute capability (simulated devices and both backends' flags: test_gpu_journeys)."""
    assert select_precision(None) == "fp32"  # CPU
    assert select_precision((7, 5)) == "fp16"  # T4
    assert select_precision((8, 0)) == "bf16"  # A100; L4 (8, 9), H100 (9, 0)


def test_big_model_on_cpu_fails_fast_with_advice():
    check_fits_machine(PRESETS["gemma2-9b"], cuda=True)
    check_fits_machine(PRESETS["tiny"], cuda=False)
    with pytest.raises(ValueError, match=r"gemma2-9b \(9.2B parameters\) needs a CUDA GPU.*--model tiny"):
        check_fits_machine(PRESETS["gemma2-9b"], cuda=False)


def test_cli_train_gemma2_fails_fast_without_download(tmp_path):
    """`labeltune train --model gemma2` on this CPU machine: exit 2 with the advice, nothing written."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from labeltune.cli import main; main()",
            "train",
            "--model",
            "gemma2",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stderr and "--model tiny" in proc.stderr
    assert not out.exists()


@pytest.mark.train
def test_unsloth_never_imported_on_cpu_path(tmp_path):
    """With an unsloth package present that raises on import (as the real one does without a GPU),
    CPU training still picks hf and never imports it."""
    fake = tmp_path / "site" / "unsloth"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        'raise NotImplementedError("Unsloth cannot find any torch accelerator")\n'
    )
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path / "site")!r})
        from labeltune.models import unsloth_installed
        assert unsloth_installed()
        from labeltune import train
        from labeltune.config import TrainConfig, resolve
        cfg = resolve(TrainConfig, None, {{"output": {str(tmp_path / "run")!r}, "max_steps": 2, "limit": 32}})
        train.main(cfg)
        assert "unsloth" not in sys.modules, "unsloth was imported"
        import json
        assert json.load(open({str(tmp_path / "run" / "model.json")!r}))["backend"] == "hf"
        print("OK")
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK" in proc.stdout


def test_generic_preset_defaults():
    p = resolve_preset("org/x")
    assert isinstance(p, Preset) and not p.needs_gpu and p.lr <= 1e-3


def test_gemma2_loads_with_the_attention_that_applies_its_soft_capping(tmp_path):
    """Gemma 2 soft-caps its attention logits; transformers 5.17 (the gpu extra's) loads it with sdpa by
    default, whose path drops the cap. load_base asks for eager wherever the config soft-caps (Gemma 2),
    and leaves other models to transformers' default."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    from labeltune.models import build_tiny_tokenizer, load_base

    tokenizer = build_tiny_tokenizer(["こんにちは 世界", "テスト の 投稿"], vocab_size=300)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    for name, model in (
        ("gemma2", Gemma2ForCausalLM(Gemma2Config(**common, head_dim=8))),
        ("llama", LlamaForCausalLM(LlamaConfig(**common))),
    ):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    gemma2, _ = load_base(str(tmp_path / "gemma2"), "hf", load_in_4bit=False)
    assert gemma2.config.attn_logit_softcapping and gemma2.config._attn_implementation == "eager"
    llama, _ = load_base(str(tmp_path / "llama"), "hf", load_in_4bit=False)
    assert llama.config._attn_implementation != "eager" or not hasattr(
        torch.nn.functional, "scaled_dot_product_attention"
    )
