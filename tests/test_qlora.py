"""The 4-bit (QLoRA) path a GPU user takes, run on CPU with bitsandbytes 4-bit, on random-init models
shaped like the two target families (Llama 3.1: GQA, llama3 RoPE scaling, untied output layer; Gemma 2:
tied embeddings, logit soft-capping, alternating sliding-window layers) with their real tokenizers
(../shared/tokenizers: 128,256 and 256,000 tokens), small enough for 2 cores.

Everything goes through the CLI a user runs: train --load-in-4bit true, calibrate, evaluate, label in
the three decode modes, export --format merged16. Asserted: the base really is 4-bit (bitsandbytes
Linear4bit), 0 malformed answers in constrained and score modes, identical answers across a reload,
and the merged16 export labelling every row as the 4-bit run does (it is merged into the NF4 weights
the adapter was trained against). A run laid out as Unsloth writes it (PEFT adapter + tokenizer, on a
pre-quantised bitsandbytes checkpoint like unsloth/*-bnb-4bit) loads through the same inference path.
"""

from __future__ import annotations

import csv
import json
from functools import cache
from pathlib import Path

import pytest

pytest.importorskip("bitsandbytes", reason="the 4-bit path needs bitsandbytes (the dev extra installs it)")

from labeltune.cli import run as cli  # noqa: E402
from labeltune.config import TrainConfig, resolve, save  # noqa: E402
from labeltune.models import bnb_4bit_unavailable  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOKENIZERS = ROOT.parent / "shared" / "tokenizers"
FAMILIES = ("llama3.1", "gemma2")
MODES = ("generate", "constrained", "score")
INIT = 0.02


def _skip_without_4bit_cpu():
    why = bnb_4bit_unavailable(cuda=False)
    if why:
        pytest.skip(f"4-bit on CPU: {why}")


@cache
def _real_tokenizer(family: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        TOKENIZERS / family, local_files_only=True
    )  # Gemma 2's: ~4 s to load


def _tokenizer(family: str):
    if not (TOKENIZERS / family / "tokenizer.json").is_file():
        pytest.skip(
            f"real tokenizer not found at {TOKENIZERS / family} "
            "(../shared/tokenizers is absent on this machine)"
        )
    return _real_tokenizer(family)


def build_shaped(family: str, out: Path) -> Path:
    """A random-init model of `family`'s architecture (tiny sizes) with the family's real tokenizer."""
    import torch

    tokenizer = _tokenizer(family)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        initializer_range=INIT,
    )
    if family == "llama3.1":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            **common,
            max_position_embeddings=131072,
            tie_word_embeddings=False,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        )
        cls = LlamaForCausalLM
    else:
        from transformers import Gemma2Config, Gemma2ForCausalLM

        # a sliding window shorter than the prompts, so the local-attention layers really slide
        config = Gemma2Config(
            **common,
            head_dim=16,
            max_position_embeddings=4096,
            sliding_window=32,
            query_pre_attn_scalar=16,
            final_logit_softcapping=30.0,
            attn_logit_softcapping=50.0,
            tie_word_embeddings=True,
        )
        cls = Gemma2ForCausalLM
    torch.manual_seed(0)
    model = cls(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _data(path: Path, n: int = 120) -> Path:
    with open(ROOT / "data" / "sample.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:n]
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "text", "label", "score"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _cli(*argv: str) -> None:
    assert cli(list(argv)) == 0, argv


def _label(run: Path, posts: Path, out: Path, mode: str) -> list[dict]:
    _cli(
        "label",
        "--run",
        str(run),
        "--input",
        str(posts),
        "--output",
        str(out),
        "--mode",
        mode,
        "--progress",
        "false",
        "--batch-size",
        "8",
    )
    with open(out, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _answers(rows: list[dict]) -> list[tuple]:
    return [(r["label"], r["score"], r["raw"], r["ok"], r["confidence"]) for r in rows]


def _posts(data: Path, path: Path, n: int) -> Path:
    """The first `n` texts of `data` without their gold columns: what a user labels."""
    with open(data, encoding="utf-8") as f:
        rows = [{"id": r["id"], "text": r["text"]} for r in csv.DictReader(f)][:n]
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "text"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module", params=FAMILIES)
def qlora_run(request, tmp_path_factory):
    """A 4-bit LoRA run of a `family`-shaped model trained on CPU through the CLI."""
    _skip_without_4bit_cpu()
    family = request.param
    tmp = tmp_path_factory.mktemp(family.replace(".", ""))
    base = build_shaped(family, tmp / "base")
    data = _data(tmp / "posts.csv", 60)
    run = tmp / "run"
    # a few steps: the vocabularies make every step cost seconds on 2 cores; what is checked is the path
    _cli(
        "train",
        "--model",
        str(base),
        "--load-in-4bit",
        "true",
        "--data",
        str(data),
        "--output",
        str(run),
        "--split",
        "0.6,0.2,0.2",
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--grad-accum",
        "1",
        "--lr",
        "1e-3",
        "--max-length",
        "384",
        "--logging-steps",
        "1",
    )
    return family, run, data


@pytest.mark.slow
@pytest.mark.train
def test_qlora_run_trains_labels_calibrates_evaluates_and_exports(qlora_run, tmp_path):
    from bitsandbytes.nn import Linear4bit

    from labeltune.run import open_run

    family, run, data = qlora_run
    info = json.loads((run / "model.json").read_text())
    assert info["load_in_4bit"] is True and info["precision"] == "fp32", info
    model, prompter = open_run(run).load()
    quantized = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert len(quantized) == 2 * 7, (
        f"{family}: every projection of both layers is 4-bit, got {len(quantized)}"
    )
    del model, prompter

    _cli("calibrate", "--run", str(run))
    assert (run / "calibration.json").is_file()
    _cli("evaluate", "--run", str(run), "--mode", "score", "--forgetting-limit", "8")
    metrics = json.loads((run / "metrics.json").read_text())
    n_test = sum(1 for _ in open(run / "data" / "test.jsonl", encoding="utf-8"))
    assert metrics["finetuned"]["malformed_rate"] == 0 and metrics["finetuned"]["n"] == n_test
    assert "forgetting" in metrics and (run / "report.html").is_file()

    posts = _posts(data, tmp_path / "posts.csv", 24)
    labelled = {mode: _label(run, posts, tmp_path / f"{mode}.csv", mode) for mode in MODES}
    for mode, rows in labelled.items():
        assert len(rows) == 24, mode
        if mode != "generate":
            assert all(r["ok"] == "True" for r in rows), (
                family,
                mode,
                [r for r in rows if r["ok"] != "True"][:3],
            )
    # a second load of the same run (a new process would do the same) gives the same answers
    for mode in ("constrained", "score"):
        again = _label(run, posts, tmp_path / f"{mode}-again.csv", mode)
        assert _answers(again) == _answers(labelled[mode]), (family, mode)

    merged = tmp_path / "merged"
    _cli("export", "--run", str(run), "--format", "merged16", "--output", str(merged))
    assert json.loads((merged / "model.json").read_text())["merged_from"].endswith("(dequantised NF4)")
    for mode in ("constrained", "score"):
        rows = _label(merged, posts, tmp_path / f"{mode}-merged.csv", mode)
        assert all(r["ok"] == "True" for r in rows)
        same = sum(a["label"] == b["label"] for a, b in zip(rows, labelled[mode]))
        assert same == len(rows), f"{family} {mode}: merged16 labels {same}/{len(rows)} rows as the 4-bit run"
        if mode != "score":
            continue
        # the same label probabilities, up to fp16 storage and bitsandbytes' bf16 CPU kernel
        drift = max(
            abs(float(a[c]) - float(b[c]))
            for a, b in zip(rows, labelled[mode])
            for c in a
            if c.startswith("p_")
        )
        assert drift < 0.02, (
            f"{family} {mode}: label probabilities of merged16 and the 4-bit run differ by {drift:.4f}"
        )


# ---------------------------------------------------------------- the merge starts from the NF4 weights


def test_nf4_round_trip_is_what_the_4bit_load_computes_with(tmp_path):
    """merge.nf4_round_trip of every weight export.linear_weights names equals the dequantised weight of
    the same checkpoint loaded 4-bit by labeltune (and nothing else is quantised)."""
    _skip_without_4bit_cpu()
    import torch
    from bitsandbytes.functional import dequantize_4bit
    from bitsandbytes.nn import Linear4bit
    from safetensors.torch import load_file

    from labeltune.export import linear_weights
    from labeltune.merge import Nf4, nf4_round_trip
    from labeltune.models import load_base

    base = build_shaped("gemma2", tmp_path / "base")
    names = linear_weights(base)
    model, _ = load_base(str(base), "hf", load_in_4bit=True)
    loaded = {f"{n}.weight": m.weight for n, m in model.named_modules() if isinstance(m, Linear4bit)}
    assert set(loaded) == names and len(names) == 14
    weights = load_file(str(base / "model.safetensors"))
    nf4 = Nf4(names, "float32")
    for name, param in loaded.items():
        assert torch.equal(
            nf4_round_trip(weights[name], nf4), dequantize_4bit(param.data, param.quant_state)
        ), name


@pytest.mark.parametrize("family", FAMILIES)
def test_unsloth_layout_run_on_a_prequantised_base_loads_and_merges(family, tmp_path, monkeypatch):
    """A run directory as `labeltune train --backend unsloth` leaves it on a GPU, checked against
    Unsloth 2026.10.7's source: FastLanguageModel.get_peft_model builds a PEFT LoraConfig (task_type
    CAUSAL_LM, the 7 projections, dropout 0, bias none, use_rslora False, loftq_config {}) and calls PEFT's
    get_peft_model; the model's save_pretrained is PEFT's (Unsloth's wrapper only maps
    safe_serialization=None to safetensors) and the tokenizer's adds only sentencepiece/eos/class
    fix-ups. The base is a pre-quantised bitsandbytes checkpoint, as unsloth/*-bnb-4bit are (made here by
    saving a 4-bit load). The inference path loads it 4-bit on CPU in all three modes, and the merged16
    export dequantises it and labels as the adapter does."""
    _skip_without_4bit_cpu()
    import torch
    from peft import LoraConfig, get_peft_model

    from labeltune.decode import predict
    from labeltune.models import load_base
    from labeltune.presets import LLAMA_TARGETS
    from labeltune.run import open_run
    from labeltune.task import load_task

    base16 = build_shaped(family, tmp_path / "base16")
    quantized, tokenizer = load_base(str(base16), "hf", load_in_4bit=True)
    prequantized = tmp_path / "bnb-4bit"
    quantized.save_pretrained(prequantized)
    tokenizer.save_pretrained(prequantized)
    assert json.loads((prequantized / "config.json").read_text())["quantization_config"]["load_in_4bit"]
    monkeypatch.setenv(
        "LABELTUNE_TRUSTED_BASES", str(prequantized)
    )  # a local base trained on elsewhere: named

    torch.manual_seed(1)
    config = LoraConfig(
        r=16,
        lora_alpha=16,
        target_modules=list(LLAMA_TARGETS),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        layers_to_transform=None,
        layers_pattern=None,
        init_lora_weights=True,
        loftq_config={},
        use_rslora=False,
        modules_to_save=None,
    )
    peft_model = get_peft_model(quantized, config)
    with torch.no_grad():  # a trained adapter: B is no longer zero
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    run = tmp_path / "run"
    peft_model.save_pretrained(run / "adapter", safe_serialization=True)
    tokenizer.save_pretrained(run / "adapter")
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = (
        "unsloth/gemma-2-9b-bnb-4bit"  # what Unsloth records: a hub id
    )
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_config))
    assert sorted(p.name for p in (run / "adapter").iterdir() if p.name.startswith("adapter")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    data = _data(tmp_path / "posts.csv", 40)
    (run / "data").mkdir()
    task = load_task("sentiment_toxicity")
    save(
        resolve(
            TrainConfig,
            None,
            {
                "model": str(prequantized),
                "backend": "unsloth",
                "max_length": 384,
                "data": str(data),
                "output": str(run),
                "template": task.default_template,
            },
        ),
        run / "config.yaml",
    )
    (run / "model.json").write_text(
        json.dumps(
            {
                "base": str(prequantized),
                "full_id": None,
                "backend": "unsloth",
                "load_in_4bit": True,
                "precision": "fp16",
                "max_length": 384,
            }
        )
    )

    with open(data, encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)][:12]
    model, prompter = open_run(run).load()
    assert getattr(model, "is_loaded_in_4bit", False) or model.base_model.model.is_loaded_in_4bit
    by_mode = {mode: predict(model, prompter, texts, None, 4, mode) for mode in MODES}
    assert all(p.ok for mode in ("constrained", "score") for p in by_mode[mode])
    del model

    merged = tmp_path / "merged"
    assert cli(["export", "--run", str(run), "--format", "merged16", "--output", str(merged)]) == 0
    merged_model, merged_prompter = open_run(merged).load()
    for mode in ("constrained", "score"):
        merged_predictions = predict(merged_model, merged_prompter, texts, None, 4, mode)
        assert [p.label for p in merged_predictions] == [p.label for p in by_mode[mode]], (family, mode)
        if mode != "score":
            continue
        drift = max(
            abs(a.probs[k] - b.probs[k]) for a, b in zip(merged_predictions, by_mode[mode]) for k in a.probs
        )
        assert drift < 0.02, (
            f"{family} {mode}: label probabilities of merged16 and the adapter differ by {drift:.4f}"
        )


def test_4bit_on_request_is_refused_where_bitsandbytes_cannot(monkeypatch):
    """--load-in-4bit true on a machine whose bitsandbytes cannot run 4-bit there: one clear line."""
    from importlib import metadata

    from labeltune import models, presets

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.45.0" if name == "bitsandbytes" else real(name))
    with pytest.raises(
        ValueError, match=r"\(--load-in-4bit true\): bitsandbytes 0.45.0 cannot run 4-bit on CPU"
    ):
        models.select_4bit(True, False, presets.resolve_preset("tiny"))
    assert models.select_4bit(None, False, presets.resolve_preset("llama3.1")) is False  # auto: not on CPU
    assert models.select_4bit(None, True, presets.resolve_preset("llama3.1")) is True  # auto on a GPU
    assert (
        models.select_4bit(None, True, presets.resolve_preset("tiny")) is False
    )  # built here in full precision
