"""The streamed merged16 export (labeltune.merge) equals PEFT's in-memory merge, and an export that the
machine cannot hold is refused before anything is loaded or downloaded."""

import json
import math
from pathlib import Path

import pytest

from labeltune.merge import merge_lora, needs_for_files, plan_shards, tensor_shapes


def _model(family: str, out: Path):
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    common = dict(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    else:
        model = Gemma2ForCausalLM(Gemma2Config(**common, head_dim=16))  # ties lm_head to the embeddings
    model.to(torch.bfloat16).save_pretrained(out, max_shard_size="60KB")  # several shards
    return model


def _adapter(model, out: Path, modules_to_save=None, rslora=False):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
        modules_to_save=modules_to_save,
        use_rslora=rslora,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model.float(), config)
    if modules_to_save:
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "modules_to_save" in name:
                    p.add_(torch.randn_like(p))
    peft_model.save_pretrained(out)
    return peft_model


@pytest.mark.parametrize(
    "family, modules_to_save, rslora",
    [
        ("llama", None, False),
        ("llama", ["lm_head"], True),
        ("gemma2", None, False),
        ("gemma2", ["lm_head"], False),
    ],
)
def test_streamed_merge_equals_peft_merge(tmp_path, family, modules_to_save, rslora):
    import torch
    from transformers import AutoModelForCausalLM

    base = _model(family, tmp_path / "base")
    assert len(list((tmp_path / "base").glob("*.safetensors"))) > 1
    reference = _adapter(base, tmp_path / "adapter", modules_to_save, rslora).merge_and_unload()
    files = merge_lora(
        tmp_path / "base", tmp_path / "adapter", tmp_path / "merged", "float16", shard_bytes=50_000
    )
    assert len(files) > 1 and (tmp_path / "merged" / "model.safetensors.index.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert merged.dtype == torch.float16
    ids = torch.tensor([[1, 5, 17, 42, 99, 250, 3]])
    with torch.no_grad():
        want = reference.float()(ids).logits
        got = merged.float()(ids).logits
    assert torch.allclose(got, want, atol=0.05, rtol=0.01), (got - want).abs().max()
    ref_state = {k: v for k, v in reference.state_dict().items()}
    for name, tensor in merged.state_dict().items():
        assert torch.allclose(tensor.float(), ref_state[name].float(), atol=2e-3, rtol=2e-3), name


def test_merge_refuses_a_target_missing_from_the_base(tmp_path):
    base = _model("llama", tmp_path / "base")
    _adapter(base, tmp_path / "adapter")
    index = json.loads((tmp_path / "base" / "model.safetensors.index.json").read_text())
    for path in (tmp_path / "base").glob("*.safetensors"):
        path.unlink()
    (tmp_path / "base" / "model.safetensors.index.json").unlink()
    import torch
    from safetensors.torch import save_file

    save_file(
        {"model.embed_tokens.weight": torch.zeros(320, 64)}, str(tmp_path / "base" / "model.safetensors")
    )
    assert index["weight_map"]
    with pytest.raises(ValueError, match="LoRA targets not in the base checkpoint"):
        merge_lora(tmp_path / "base", tmp_path / "adapter", tmp_path / "merged")


def test_needs_are_read_from_headers(tmp_path):
    _model("llama", tmp_path / "base")
    files = sorted((tmp_path / "base").glob("*.safetensors"))
    shapes = tensor_shapes(files)
    assert shapes["model.embed_tokens.weight"][0] == (320, 64)
    needs = needs_for_files(files, "float16")
    n = sum(math.prod(s) for s, _ in shapes.values())
    assert needs.disk == 2 * n
    # the tensor in hand: the 320 x 64 embedding read in bf16 and cast to fp16, or a merged MLP projection
    # (96 x 64: read + fp32 + cast), whichever is larger, plus the process
    assert needs.ram == (1 << 30) + max(320 * 64 * (2 + 2), 96 * 64 * (2 + 4 + 2))


def test_shards_are_planned_within_the_limit():
    assert plan_shards({"a": 40, "b": 40, "c": 40, "big": 500, "d": 10}, 100) == [
        ["a", "b"],
        ["c"],
        ["big"],
        ["d"],
    ]
    assert plan_shards({"a": 1}, 100) == [["a"]]


def _run_of_preset(tmp_path: Path, preset: str, full_id: str) -> Path:
    from labeltune.presets import PRESETS

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    info = {"base": PRESETS[preset].model_id, "full_id": full_id, "preset": preset, "load_in_4bit": True}
    (run / "model.json").write_text(json.dumps(info))
    return run


@pytest.mark.parametrize(
    "preset, full_id", [("gemma2-9b", "unsloth/gemma-2-9b"), ("llama3.1-8b", "unsloth/Meta-Llama-3.1-8B")]
)
def test_merged16_of_a_9b_preset_is_refused_when_memory_is_short(tmp_path, monkeypatch, preset, full_id):
    """A Colab-sized machine that is short of RAM: refused with what is needed, nothing loaded or fetched."""
    from labeltune import export
    from labeltune.config import ExportConfig, resolve

    run = _run_of_preset(tmp_path, preset, full_id)
    monkeypatch.setattr(export, "available_ram", lambda: 3 << 30)
    monkeypatch.setattr(export, "free_disk", lambda path: 500 << 30)
    fetched = []
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: fetched.append(a))
    with pytest.raises(
        ValueError, match=r"needs \d+\.\d GiB of free RAM \(this machine has 3\.0 GiB available\)"
    ):
        export.main(
            resolve(
                ExportConfig, None, {"run": str(run), "format": "merged16", "output": str(tmp_path / "out")}
            )
        )
    assert not fetched and not (tmp_path / "out").exists()


def test_merged16_of_a_9b_preset_fits_a_colab_vm_and_checks_disk(tmp_path, monkeypatch):
    """Streamed, the 9B merge needs well under a free Colab VM's ~12.7 GB; a short disk is refused too."""
    from labeltune import export
    from labeltune.run import RunInfo

    info = RunInfo(preset="gemma2-9b", full_id="unsloth/gemma-2-9b")
    monkeypatch.setattr(export, "available_ram", lambda: 11 << 30)
    monkeypatch.setattr(export, "free_disk", lambda path: 500 << 30)
    export.check_merge_fits(info, "unsloth/gemma-2-9b", tmp_path / "out", "float16")  # fits
    monkeypatch.setattr(export, "free_disk", lambda path: 20 << 30)
    with pytest.raises(ValueError, match=r"GiB of free disk .*free: 20\.0 GiB"):
        export.check_merge_fits(info, "unsloth/gemma-2-9b", tmp_path / "out", "float16")
