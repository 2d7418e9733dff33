"""labeltune.engine: the engine `label` runs, its precision and thread settings."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from labeltune.models import auto_label_precision, check_dtype, cpu_has_native_bf16, train_precision

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample.csv"


@pytest.mark.parametrize(
    "dtype, on_gpu, capability, message",
    [
        ("fp16", False, None, "not supported on CPU"),
        ("bf16", True, (7, 5), "emulated and slow"),
        ("int8", False, None, "unknown --dtype"),
    ],
)
def test_precisions_a_device_cannot_compute_well_are_refused(dtype, on_gpu, capability, message):
    with pytest.raises(ValueError, match=message):
        check_dtype(dtype, on_gpu, capability)


def test_precisions_a_device_computes_are_accepted():
    for dtype in ("auto", "fp32"):
        check_dtype(dtype, False)
    check_dtype("bf16", True, (8, 0))
    check_dtype("fp16", True, (7, 5))


def test_training_precision_is_the_devices_unless_one_is_asked_for():
    assert train_precision("auto", None) == "fp32"
    assert train_precision("auto", (7, 5)) == "fp16"
    assert train_precision("auto", (8, 0)) == "bf16"
    assert train_precision("fp32", (8, 0)) == "fp32"
    with pytest.raises(ValueError, match="not supported on CPU"):
        train_precision("fp16", None)
    with pytest.raises(ValueError, match="emulated and slow"):
        train_precision("bf16", (7, 5))


@pytest.mark.train
@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AMX / AVX512-BF16)")
def test_training_in_bf16_on_a_cpu_loads_bf16_weights_trains_fp32_lora_and_records_it(tmp_path):
    """train --dtype bf16 on a CPU with native bf16: the base in bf16, the LoRA weights kept in fp32 (PEFT's
    autocast_adapter_dtype), the trainer's bf16 autocast, model.json says bf16, and the run labels."""
    import json

    import torch
    from safetensors.torch import load_file

    from labeltune import train
    from labeltune.config import TrainConfig, resolve
    from labeltune.engine import HfEngine
    from labeltune.run import open_run

    out = tmp_path / "run"
    train.main(
        resolve(
            TrainConfig, None, {"data": str(SAMPLE), "output": str(out), "max_steps": 12, "dtype": "bf16"}
        )
    )
    assert json.loads((out / "model.json").read_text())["precision"] == "bf16"
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert {t.dtype for name, t in adapter.items() if "lora_" in name} == {torch.float32}
    assert all(torch.isfinite(t).all() for t in adapter.values())
    predictions = HfEngine(open_run(out)).predict(["最高の一日でした", "最悪だ"], "score")
    assert all(p.ok for p in predictions)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from labeltune import train
    from labeltune.config import TrainConfig, resolve

    out = tmp_path_factory.mktemp("engine") / "run"
    train.main(resolve(TrainConfig, None, {"data": str(SAMPLE), "output": str(out), "max_steps": 60}))
    return out


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AMX / AVX512-BF16)")
def test_bf16_on_cpu_agrees_with_fp32(run):
    """--dtype bf16 halves the weights; its labels agree with fp32's on nearly every row (score mode)."""
    import torch

    from labeltune.engine import HfEngine
    from labeltune.run import open_run

    texts = [r["text"] for r in csv.DictReader(open(SAMPLE, encoding="utf-8", newline=""))][:200]
    opened = open_run(run)
    fp32 = HfEngine(opened, dtype="fp32").predict(texts, "score")
    bf16_engine = HfEngine(opened, dtype="bf16")
    assert next(bf16_engine.model.parameters()).dtype == torch.bfloat16
    bf16 = bf16_engine.predict(texts, "score")
    agree = sum(a.label == b.label for a, b in zip(fp32, bf16)) / len(texts)
    assert agree >= 0.95, agree
    assert all(p.ok for p in bf16)
    close = [abs(a.probs[a.label] - b.probs[a.label]) for a, b in zip(fp32, bf16)]
    assert max(close) < 0.1


def test_auto_labels_in_bf16_only_on_a_cpu_that_computes_it_natively():
    assert auto_label_precision(on_gpu=False, native_bf16=True, four_bit=False) == "bf16"
    assert auto_label_precision(on_gpu=False, native_bf16=False, four_bit=False) is None  # fp32 as loaded
    assert (
        auto_label_precision(on_gpu=False, native_bf16=True, four_bit=True) is None
    )  # a 4-bit base as it is
    assert auto_label_precision(on_gpu=True, native_bf16=True, four_bit=False) is None  # the run's own


@pytest.mark.parametrize("native", [True, False])
def test_the_engine_casts_to_bf16_by_default_where_the_cpu_has_native_bf16(run, monkeypatch, native):
    """HfEngine with --dtype auto: bf16 weights on a CPU with AMX/AVX512-BF16 (the flag read from
    /proc/cpuinfo is set here), fp32 elsewhere, and it says which; an explicit --dtype fp32 stays fp32."""
    import torch

    from labeltune import engine, models
    from labeltune.run import open_run

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: native)
    loaded = engine.HfEngine(open_run(run))
    expected = torch.bfloat16 if native else torch.float32
    assert {p.dtype for p in loaded.model.parameters()} == {expected}
    assert loaded.precision == ("bf16" if native else "fp32")
    assert all(p.ok for p in loaded.predict(["最高の一日でした", "最悪だ"], "score"))
    if native:
        assert engine.HfEngine(open_run(run), dtype="fp32").precision == "fp32"
        model, _ = open_run(run).load()  # evaluate, calibrate, compare and sweep cast as label does
        assert models.cast_for_labelling(model) == "bf16"
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_label_with_threads_and_dtype_options(run, tmp_path):
    """--threads 1 and --dtype fp32 (bf16 on a CPU with native bf16) run through the CLI and give the
    default's output (what auto means on this CPU); the settings are refused where they cannot apply."""
    source = tmp_path / "posts.csv"
    with open(source, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        writer.writerows([[r["text"]] for r in list(csv.DictReader(open(SAMPLE, encoding="utf-8")))[:30]])

    def label(out, *extra):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "labeltune.cli",
                "label",
                "--run",
                str(run),
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
            timeout=300,
        )

    default, tuned = tmp_path / "a.csv", tmp_path / "b.csv"
    assert label(default).returncode == 0
    auto = "bf16" if cpu_has_native_bf16() else "fp32"  # what --dtype auto computes in on this CPU
    done = label(tuned, "--threads", "1", "--dtype", auto)
    assert done.returncode == 0, done.stderr[-2000:]
    assert tuned.read_bytes() == default.read_bytes()
    refused = label(tmp_path / "c.csv", "--dtype", "fp16")
    assert refused.returncode == 2 and "fp16 is not supported on CPU" in refused.stderr
    assert not (tmp_path / "c.csv").exists()


def test_vllm_precision_follows_compute_capability_not_is_bf16_supported(monkeypatch):
    """A T4 answers torch.cuda.is_bf16_supported() True but only emulates bf16: vLLM gets fp16 there, bf16
    from compute capability 8, fp32 on CPU, as the hf engine decides (labeltune.models.select_precision)."""
    from labeltune import vllm_engine

    assert vllm_engine.resolve_dtype("auto", cuda=False) == "float32"
    for capability, expected in (((7, 5), "float16"), ((8, 0), "bfloat16")):
        monkeypatch.setattr(vllm_engine, "gpu_capability", lambda c=capability: c)
        assert vllm_engine.resolve_dtype("auto", cuda=True) == expected
    monkeypatch.setattr(vllm_engine, "gpu_capability", lambda: (7, 5))
    with pytest.raises(ValueError, match="emulated and slow"):
        vllm_engine.resolve_dtype("bf16", cuda=True)


def test_cpu_training_projects_only_the_answer_positions_with_the_same_loss_and_gradients(
    tmp_path, monkeypatch
):
    """labeltune.train.answer_positions_only: TRL's fused LM head on CPU scores the answer tokens only,
    as on a GPU, and the loss and LoRA gradients are those of scoring every position."""
    import torch
    import trl.trainer.utils as trl_utils

    if not hasattr(trl_utils, "_use_triton"):
        pytest.skip("this TRL has no fused LM head switch (TRL < 1.16 computes the loss its own way)")
    from labeltune.models import add_lora, build_tiny, load_base
    from labeltune.train import answer_positions_only

    base = build_tiny(["学習の文です。", "もう一つの文。"] * 20, tmp_path / "base", seed=0)
    model, _ = load_base(str(base), "hf", 64, False)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    model = add_lora(model, 4, 8, 0.0, ["q_proj", "v_proj"], 0)
    torch.manual_seed(0)
    input_ids = torch.randint(5, model.config.vocab_size, (3, 20))
    labels = torch.full_like(input_ids, -100)
    labels[:, -4:] = input_ids[:, -4:]  # the answer: the last 4 tokens of each row carry loss
    rows_seen = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(
        trl_utils._ChunkedLogProbFunction,
        "apply",
        lambda hidden, *rest: rows_seen.append(hidden.shape[0]) or apply(hidden, *rest),
    )

    def loss_and_grads(compact: bool):
        with answer_positions_only(compact):
            out = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad(set_to_none=True)
        return out.loss.detach(), grads

    every, every_grads = loss_and_grads(False)
    answer, answer_grads = loss_and_grads(True)
    assert rows_seen == [3 * 19, 3 * 4]  # every shifted position, then only those with a label
    assert torch.allclose(every, answer, atol=1e-6)
    assert all(torch.allclose(every_grads[n], answer_grads[n], atol=1e-6) for n in every_grads)
    assert trl_utils._use_triton(torch.device("cpu")) is False  # the switch is put back


def test_ray_replicas_get_a_whole_gpu_each_or_a_refusal_saying_how_many_fit():
    """Replica placement from a cluster's resources (what ray.cluster_resources() reports): one GPU each,
    never a shared cuda:0 (Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for an actor that asked for no GPU),
    an even CPU share where there is no GPU."""
    from labeltune.ray_label import replica_resources

    assert replica_resources({"CPU": 16.0, "GPU": 4.0}, 2) == {"num_gpus": 1, "num_cpus": 1, "threads": None}
    assert replica_resources({"CPU": 16.0, "GPU": 4.0}, 4)["num_gpus"] == 1
    assert replica_resources({"CPU": 8.0, "GPU": 1.0}, 1)["num_gpus"] == 1
    with pytest.raises(
        ValueError, match=r"--replicas 2: the Ray cluster has 1 GPU,.*use --replicas 1$"
    ) as refused:
        replica_resources({"CPU": 8.0, "GPU": 1.0}, 2)  # Colab or a one-GPU box with the default --replicas 2
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match=r"has 4 GPUs.*use --replicas 4$"):
        replica_resources({"CPU": 64.0, "GPU": 4.0}, 8)
    assert replica_resources({"CPU": 8.0}, 2) == {"num_gpus": 0, "num_cpus": 4, "threads": 4}
    assert replica_resources({"CPU": 2.0}, 4) == {"num_gpus": 0, "num_cpus": 1, "threads": 1}


def test_label_threads_follow_the_cores_other_work_leaves_free():
    """label's default threads on a CPU: the cores other processes leave free now (at least one): torch's
    one-per-core default collapses when another process keeps a core busy."""
    import subprocess
    import sys
    import time

    from labeltune.engine import busy_cores, choose_threads, usable_cores

    assert [choose_threads(2, b) for b in (0.0, 0.4, 1.0, 3.0)] == [2, 2, 1, 1]
    assert choose_threads(16, 4.0) == 12 and choose_threads(4, 1.6) == 2
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(usable_cores())]
    try:
        time.sleep(0.5)
        busy = busy_cores()
    finally:
        for hog in hogs:
            hog.kill()
    assert busy >= usable_cores() - 0.5, busy  # every hog is runnable whenever /proc/loadavg is read
    assert choose_threads(usable_cores(), busy) == 1
