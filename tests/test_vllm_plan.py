"""What the vLLM engine hands vLLM for each GPU preset's run on a simulated T4, L4, A100 and H100
(labeltune.vllm_engine.plan), decided before anything loads: the pure decisions here, in every environment;
the same arguments checked by vLLM's own validation functions where vLLM is installed (`make test-vllm`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labeltune.presets import PRESETS
from labeltune.run import ADAPTER, MERGED, RunInfo
from labeltune.vllm_engine import FP16_REFUSED, Device, VllmFacts, plan

DEVICES = {  # compute capability, total memory as torch reports it (GiB)
    "T4": Device(cuda=True, capability=(7, 5), memory_gib=14.6),
    "L4": Device(cuda=True, capability=(8, 9), memory_gib=22.0),
    "A100-40GB": Device(cuda=True, capability=(8, 0), memory_gib=39.4),
    "H100": Device(cuda=True, capability=(9, 0), memory_gib=79.1),
}
NO_BNB = VllmFacts(has_bitsandbytes=False, fp16_refused=FP16_REFUSED, gpu_memory_utilization=0.92)
GPU_PRESETS = [name for name, p in PRESETS.items() if p.model_id and p.full_id and p.name != "gemma3-270m"]


def qlora_run(root: Path, preset: str) -> Path:
    """A run as `train` writes it for a 4-bit GPU preset: model.json + a LoRA adapter (r=16)."""
    p = PRESETS[preset]
    run = root / preset
    (run / ADAPTER).mkdir(parents=True)
    (run / "model.json").write_text(
        json.dumps({"preset": p.name, "base": p.model_id, "full_id": p.full_id, "load_in_4bit": True}),
        encoding="utf-8",
    )
    (run / ADAPTER / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 16}), encoding="utf-8"
    )
    return run


def merged_run(root: Path, preset: str) -> Path:
    """A merged16 export of such a run: model/ with the model's config.json (float16, export's default)."""
    p = PRESETS[preset]
    run = root / f"{preset}-merged16"
    (run / MERGED).mkdir(parents=True)
    (run / "model.json").write_text(json.dumps({"preset": p.name, "merged": True}), encoding="utf-8")
    (run / MERGED / "config.json").write_text(
        json.dumps({"model_type": p.model_type, "torch_dtype": "float16"}), encoding="utf-8"
    )
    return run


def plans(root: Path, facts: VllmFacts):
    """(case, Plan or the refusal's text) for every GPU preset x run kind x simulated GPU."""
    for preset in GPU_PRESETS:
        for run in (qlora_run(root, preset), merged_run(root, preset)):
            info = RunInfo.load(run)
            for gpu, device in DEVICES.items():
                try:
                    yield (run.name, gpu), plan(run, info, "auto", device, facts)
                except ValueError as refused:
                    yield (run.name, gpu), str(refused)


def test_every_gpu_preset_is_served_or_refused_in_one_line_naming_what_works(tmp_path):
    got = dict(plans(tmp_path, NO_BNB))
    for case, outcome in got.items():
        if isinstance(outcome, str):
            assert "\n" not in outcome and "--engine hf" in outcome, (case, outcome)
    # a T4: Gemma 2 gets float32 (vLLM refuses float16 for gemma2; bf16 is emulated), which 9B does not fit
    assert "vLLM refuses float16 for gemma2" in got[("gemma2-9b", "T4")]
    assert (
        got[("gemma2-2b", "T4")].dtype == "float32" and got[("gemma2-2b-merged16", "T4")].dtype == "float32"
    )
    assert (
        "~14.9 GiB" in got[("llama3.1-8b", "T4")]
    )  # 8B in float16 does not fit a 15 GB T4 beside its KV cache
    assert got[("llama3.2-3b", "T4")].dtype == "float16"
    # from compute capability 8: bf16, and every preset fits an L4 (24 GB) and up
    for preset in GPU_PRESETS:
        for gpu in ("L4", "A100-40GB", "H100"):
            served = got[(preset, gpu)]
            assert served.dtype == "bfloat16", (preset, gpu, served)
            # no bitsandbytes in this vLLM: the adapter on the preset's 16-bit base,
            # with a warning that says so
            assert served.model == PRESETS[preset].full_id and served.adapter and "16-bit" in served.warning
            assert served.kwargs == {"enable_lora": True, "max_loras": 1, "max_lora_rank": 16}
            merged = got[(f"{preset}-merged16", gpu)]
            assert merged.model.endswith(MERGED) and merged.adapter is None and merged.kwargs == {}


def test_a_vllm_with_bitsandbytes_serves_the_4bit_base_the_run_trained_on(tmp_path):
    bnb = VllmFacts(has_bitsandbytes=True, fp16_refused=FP16_REFUSED, gpu_memory_utilization=0.92)
    run = qlora_run(tmp_path, "llama3.1-8b")
    served = plan(run, RunInfo.load(run), "auto", DEVICES["T4"], bnb)
    assert served.model == PRESETS["llama3.1-8b"].model_id and served.kwargs["quantization"] == "bitsandbytes"
    assert served.warning is None and served.weights_gib < 5


def test_asking_fp16_for_gemma2_is_refused_in_one_line(tmp_path):
    run = merged_run(tmp_path, "gemma2-2b")
    with pytest.raises(ValueError, match=r"vLLM refuses float16 for gemma2.*--dtype fp32") as refused:
        plan(run, RunInfo.load(run), "fp16", DEVICES["T4"], NO_BNB)
    assert "\n" not in str(refused.value)


@pytest.mark.vllm
def test_every_argument_planned_passes_vllms_own_validation(tmp_path):
    """Each non-refused plan, checked by the installed vLLM's own code: the dtype against the model type
    (vllm.config.model._check_valid_dtype), the quantization method against QUANTIZATION_METHODS, the LoRA
    settings through LoRAConfig, and every keyword through EngineArgs (nothing loads)."""
    from labeltune.vllm_engine import VllmUnavailable, import_vllm, vllm_facts

    try:
        import_vllm()
    except VllmUnavailable as e:
        pytest.skip(str(e))
    import torch
    from vllm.config import LoRAConfig
    from vllm.config.model import _check_valid_dtype
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    facts = vllm_facts()
    checked = 0
    for case, served in plans(tmp_path, facts):
        if isinstance(served, str):
            continue
        assert _check_valid_dtype(served.model_type, getattr(torch, served.dtype)), case
        if "quantization" in served.kwargs:
            assert served.kwargs["quantization"] in QUANTIZATION_METHODS, case
        if served.kwargs.get("enable_lora"):
            LoRAConfig(max_lora_rank=served.kwargs["max_lora_rank"], max_loras=served.kwargs["max_loras"])
        EngineArgs(model=served.model, tokenizer=served.tokenizer, dtype=served.dtype, **served.kwargs)
        checked += 1
    assert checked >= len(GPU_PRESETS) * 2 * 3
