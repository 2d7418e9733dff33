"""The vLLM engine (labeltune.vllm_engine) against the hf engine (labeltune.decode.predict) on the same model.

Runs where vLLM imports (`make test-vllm`, in .venv-vllm); skipped with the reason elsewhere. The model: the
run named by $LABELTUNE_DEMO_RUN (a trained run, exported merged16 here, or a merged16 export), else a tiny
run trained here (as tests/test_pipeline.py does, about a minute) and exported merged16. One vLLM engine is
shared by the module (its start-up takes 25-60 s on CPU).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from labeltune import train
from labeltune.answers import Answer
from labeltune.config import TrainConfig, resolve
from labeltune.decode import predict
from labeltune.export import export_merged16
from labeltune.run import ADAPTER, open_run
from labeltune.vllm_engine import VllmEngine, VllmUnavailable, import_vllm

try:
    import_vllm()
except VllmUnavailable as e:
    pytest.skip(str(e), allow_module_level=True)

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample.csv"
AGREEMENT = 0.95  # share of test rows whose label the two engines must agree on


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A trained run: $LABELTUNE_DEMO_RUN, else a tiny one trained here (named run_dir so that conftest marks
    the tests that use it `train`, skipped where TRL cannot train)."""
    if os.environ.get("LABELTUNE_DEMO_RUN"):
        return Path(os.environ["LABELTUNE_DEMO_RUN"])
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train.main(
        resolve(
            TrainConfig, None, {"data": str(SAMPLE), "output": str(out), "max_steps": 70, "logging_steps": 10}
        )
    )
    return out


@pytest.fixture(scope="module")
def merged(run_dir, tmp_path_factory) -> Path:
    """The run as a merged16 export (the run itself when it is one)."""
    if open_run(run_dir).merged:
        return run_dir
    out = tmp_path_factory.mktemp("exports") / "merged16"
    export_merged16(run_dir, out, include_data=True)  # the tests label its test split
    return out


@pytest.fixture(scope="module")
def engine(merged):
    with VllmEngine(merged) as served:
        print(f"vLLM start-up: {served.startup_s:.1f} s")
        yield served


@pytest.fixture(scope="module")
def hf(merged):
    """(model, prompter) of the same merged run on the hf engine."""
    return open_run(merged).load(dtype="fp32")  # as vLLM computes on a CPU


@pytest.fixture(scope="module")
def texts(merged) -> list[str]:
    lines = open_run(merged).split("test").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


def _compare(mode: str, engine, hf, texts) -> tuple[list[Answer], list[Answer], list[str]]:
    """Both engines' predictions in `mode`, and a line per row whose label differs."""
    served = engine.predict(texts, mode)
    reference = predict(hf[0], hf[1], texts, mode=mode)
    differences = [
        f"{i}: vllm {v.label!r} {v.raw!r} / hf {h.label!r} {h.raw!r} ({texts[i][:30]!r})"
        for i, (v, h) in enumerate(zip(served, reference))
        if v.label != h.label
    ]
    agreed = 1 - len(differences) / len(texts)
    print(
        f"{mode}: labels agree on {len(texts) - len(differences)}/{len(texts)} ({agreed:.1%})",
        *differences,
        sep="\n  ",
    )
    assert agreed >= AGREEMENT, differences
    return served, reference, differences


def test_score_mode_agrees_with_hf_engine(engine, hf, texts):
    served, reference, _ = _compare("score", engine, hf, texts)
    assert all(p.ok for p in served)  # score mode writes the answer from the task spec: never malformed
    same = [(v, h) for v, h in zip(served, reference) if v.label == h.label]
    # the same label's probabilities and score distribution: equal up to float rounding
    assert max(abs(v.probs[k] - h.probs[k]) for v, h in same for k in v.probs) < 1e-3
    assert sum(v.score == h.score and v.score_greedy == h.score_greedy for v, h in same) >= AGREEMENT * len(
        same
    )
    assert all(v.raw == engine.run.task.render_answer(v.label, v.score) for v in served)


def test_constrained_mode_is_never_malformed(engine, hf, texts):
    served, reference, _ = _compare("constrained", engine, hf, texts)
    assert all(p.ok for p in served), [p.raw for p in served if not p.ok]
    with_probs = [(v, h) for v, h in zip(served, reference) if v.probs and h.probs and v.label == h.label]
    assert all(abs(v.probs[k] - h.probs[k]) < 1e-3 for v, h in with_probs for k in v.probs)


def test_generate_mode_parses_like_hf_engine(engine, hf, texts):
    served, reference, _ = _compare("generate", engine, hf, texts)
    assert sum(p.ok for p in served) >= 0.9 * len(texts)  # the run learned the format
    for p in served:
        assert p.ok == (p.reason == "") and p.probs is None
    assert sum(v.raw == h.raw for v, h in zip(served, reference)) >= AGREEMENT * len(texts)


def test_empty_texts_are_not_decoded(engine, texts):
    empty = Answer(None, None, False, "empty_input", "", False)
    for mode in ("generate", "constrained", "score"):
        out = engine.predict(["", None, " \n", texts[0]], mode)
        assert out[:3] == [empty] * 3 and out[3].ok, mode
    assert engine.predict([], "score") == []
    with pytest.raises(ValueError, match="unknown mode"):
        engine.predict(texts[:1], "beam")


def test_adapter_training_lm_head_is_refused_before_vllm_starts(run_dir):
    if not (run_dir / ADAPTER).is_dir():
        pytest.skip(f"{run_dir} has no adapter/ (a merged export)")
    config = json.loads((run_dir / ADAPTER / "adapter_config.json").read_text(encoding="utf-8"))
    if not config.get("modules_to_save"):
        pytest.skip(f"{run_dir}'s adapter trains no full module")
    with pytest.raises(
        ValueError, match=r"lm_head in full \(modules_to_save\).*--format merged16"
    ) as refused:
        VllmEngine(run_dir)
    assert "\n" not in str(refused.value)


def _lora_only(run_dir: Path, out: Path) -> Path:
    """A copy of the run whose adapter keeps its LoRA weights only (modules_to_save dropped): the kind of
    adapter the GPU presets train, which vLLM serves as a LoRA on the base."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(run_dir, out, ignore=shutil.ignore_patterns("checkpoints", "predictions_*", "labelled*"))
    config_path = out / ADAPTER / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["modules_to_save"] = None
    config_path.write_text(json.dumps(config), encoding="utf-8")
    weights = out / ADAPTER / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(weights).items() if "lora_" in k}, weights)
    return out


def test_a_4bit_run_on_a_gpu_is_refused_in_one_line_where_vllm_has_no_bitsandbytes(
    run_dir, tmp_path, monkeypatch
):
    """A run trained on a 4-bit base served with --engine vllm on a GPU, whose preset names no 16-bit base
    (the tiny run marked 4-bit): vLLM 0.32-0.34 list no bitsandbytes method, so the engine says so before
    vLLM starts and names the export that serves (merged16). The GPU is simulated at labeltune's device
    probe (a T4's compute capability). A preset with a 16-bit base is served on it:
    tests/test_vllm_plan.py."""
    from labeltune import vllm_engine

    if not (run_dir / ADAPTER).is_dir():
        pytest.skip(f"{run_dir} has no adapter/ (a merged export)")
    if vllm_engine.vllm_has_bitsandbytes():
        pytest.skip("this vLLM lists a bitsandbytes quantization method")
    out = _lora_only(run_dir, tmp_path / "qlora-run")
    info = json.loads((out / "model.json").read_text(encoding="utf-8"))
    (out / "model.json").write_text(json.dumps({**info, "load_in_4bit": True}), encoding="utf-8")
    monkeypatch.setattr(vllm_engine, "cuda_available", lambda: True)
    monkeypatch.setattr(vllm_engine, "gpu_capability", lambda: (7, 5))
    with pytest.raises(ValueError, match=r"4-bit \(bitsandbytes\) base.*--format merged16") as refused:
        VllmEngine(out)
    assert "\n" not in str(refused.value)


def test_lora_adapter_is_served_on_its_base(run_dir, tmp_path, texts):
    if not (run_dir / ADAPTER).is_dir():
        pytest.skip(f"{run_dir} has no adapter/ (a merged export)")
    lora_run = _lora_only(run_dir, tmp_path / "lora")
    model, prompter = open_run(lora_run).load()
    with VllmEngine(lora_run) as served:
        assert served.lora is not None
        print(f"vLLM start-up with LoRA: {served.startup_s:.1f} s")
        _compare("score", served, (model, prompter), texts)


def test_label_cli_with_vllm_on_ray_writes_the_single_process_file(merged, tmp_path):
    """`label --engine vllm --ray local`: a Ray actor serving the run with vLLM writes the bytes a
    single-process `label --engine vllm` writes, which label as the hf engine does."""
    import csv
    import subprocess
    import sys

    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'labeltune[ray]')")
    source = ROOT / "data" / "new_posts.csv"

    def label(out, *extra):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "labeltune.cli",
                "label",
                "--run",
                str(merged),
                "--input",
                str(source),
                "--output",
                str(out),
                "--mode",
                "score",
                "--progress",
                "false",
                *extra,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return list(csv.DictReader(open(out, encoding="utf-8", newline="")))

    single = label(tmp_path / "single.csv", "--engine", "vllm")
    on_ray = label(tmp_path / "ray.csv", "--engine", "vllm", "--ray", "local", "--replicas", "1")
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "single.csv").read_bytes()
    hf = label(tmp_path / "hf.csv", "--dtype", "fp32")  # as vLLM computes on a CPU (auto: bf16 where native)
    assert len(single) == len(hf) == len(on_ray)
    agree = sum(a["label"] == b["label"] for a, b in zip(single, hf)) / len(hf)
    assert agree >= AGREEMENT, agree
