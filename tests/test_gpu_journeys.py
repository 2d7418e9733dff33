"""The Colab T4 and GPU-box journeys, checked on CPU: simulated device probes (a T4 is sm_75 and answers
True to torch.cuda.is_bf16_supported(); an A100 is sm_80), a fake `unsloth` package that records what
was imported before it, bitsandbytes 4-bit on CPU for the inference backend, `make -n` of both install
journeys, and the refusals that must come before anything is downloaded."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labeltune import models, presets
from labeltune import run as run_mod

ROOT = Path(__file__).resolve().parent.parent
T4, A100 = (7, 5), (8, 0)


def simulate_gpu(monkeypatch, capability, count: int = 1):
    """Patch the torch.cuda probes as a machine with `count` GPUs of `capability` answers them. bitsandbytes
    (and peft, which imports it) are imported first, on the real probes: it loads CUDA kernels when it
    sees a GPU."""
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: True
    )  # a T4 says True


# Run at the start of a child process: the same probes, simulated there. bitsandbytes is imported
# first, on the real (CPU) probes: it loads its CUDA kernels at import when it sees a GPU.
SIMULATE_GPU = """
import bitsandbytes
import torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.current_device = lambda: 0
torch.cuda.get_device_capability = lambda device=None: {capability}
torch.cuda.is_bf16_supported = lambda including_emulation=True: True
"""


# ----------------------------------------------------------- 1. precision


@pytest.mark.parametrize(
    "capability, expected",
    [(T4, "fp16"), ((7, 0), "fp16"), (A100, "bf16"), ((8, 9), "bf16"), ((9, 0), "bf16")],
)
def test_precision_follows_compute_capability_not_is_bf16_supported(monkeypatch, capability, expected):
    simulate_gpu(monkeypatch, capability)
    assert models.device_precision() == expected
    assert models.select_precision(capability) == expected


def test_precision_on_cpu_is_fp32():
    assert models.select_precision(None) == "fp32"


@pytest.mark.parametrize("capability, dtype", [(T4, "float16"), (A100, "bfloat16")])
def test_hf_backend_loads_in_the_devices_precision(capability, dtype):
    import torch

    kwargs = models.hf_load_kwargs(capability, load_in_4bit=True)
    assert kwargs["dtype"] == getattr(torch, dtype)
    assert kwargs["quantization_config"].bnb_4bit_compute_dtype == getattr(torch, dtype)
    assert kwargs["device_map"] == {"": 0}
    assert "quantization_config" not in models.hf_load_kwargs(capability, load_in_4bit=False)


def _model_in(dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config).to(getattr(torch, dtype))


@pytest.mark.parametrize(
    "capability, unsloth_dtype, expected",
    [
        (T4, "float16", "fp16"),
        (A100, "bfloat16", "bf16"),
        (
            A100,
            "float16",
            "fp16",
        ),  # Unsloth 2026.10.7 picked fp16 on every GPU when any visible one was older: follow the model
    ],
)
def test_trainer_flags_match_the_model_on_both_backends(monkeypatch, capability, unsloth_dtype, expected):
    simulate_gpu(monkeypatch, capability)
    assert models.trainer_precision("unsloth", _model_in(unsloth_dtype)) == expected
    assert models.trainer_precision("hf", _model_in("float32")) == models.select_precision(capability)


def test_unsloth_is_asked_to_choose_the_dtype(monkeypatch):
    """load_base on the unsloth backend passes dtype=None (Unsloth picks fp16 below sm_80)."""
    calls = {}

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            calls.update(kwargs)
            from labeltune.models import build_tiny_tokenizer

            return _model_in("float16"), build_tiny_tokenizer(["a b c"], 300)

    fake = type(sys)("unsloth")
    fake.FastLanguageModel = FastLanguageModel
    monkeypatch.setitem(sys.modules, "unsloth", fake)
    simulate_gpu(monkeypatch, T4)
    model, _ = models.load_base("some/model", "unsloth", 512)
    assert calls["dtype"] is None and calls["load_in_4bit"] is True
    assert models.precision_of(model) == "fp16"


# ----------------------------------------------------------- 2. unsloth first


def _fake_unsloth(site: Path, record: Path) -> Path:
    """An `unsloth` package that writes which of trl/transformers/peft were imported before it, then stops
    the process (as the real one would be the first heavy import)."""
    pkg = site / "unsloth"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        textwrap.dedent(f"""
        import json, sys
        with open({str(record)!r}, "w") as f:
            json.dump(sorted(m for m in ("trl", "transformers", "peft") if m in sys.modules), f)
        raise SystemExit("fake unsloth: imported, stopping here")
    """)
    )
    return site


def _cli_in_child(argv: list[str], site: Path, capability, tmp_path: Path) -> subprocess.CompletedProcess:
    script = (
        f"import sys\nsys.path.insert(0, {str(site)!r})\n"
        + SIMULATE_GPU.format(capability=capability)
        + f"sys.argv = ['labeltune', *{argv!r}]\nfrom labeltune.cli import main\nmain()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_cli_train_imports_unsloth_before_trl_transformers_peft(tmp_path):
    record = tmp_path / "record.json"
    site = _fake_unsloth(tmp_path / "site", record)
    proc = _cli_in_child(
        ["train", "--backend", "unsloth", "--output", str(tmp_path / "run"), "--limit", "16"],
        site,
        T4,
        tmp_path,
    )
    assert "fake unsloth: imported" in proc.stderr, proc.stderr[-2000:]
    assert json.loads(record.read_text()) == []  # nothing Unsloth patches was imported before it
    assert not (tmp_path / "run").exists()


def test_train_main_imports_unsloth_first_when_it_is_chosen_by_auto(tmp_path):
    """The notebook/library path: train.main picks unsloth (auto, GPU, installed) and imports it first."""
    record = tmp_path / "record.json"
    site = _fake_unsloth(tmp_path / "site", record)
    script = (
        f"import sys\nsys.path.insert(0, {str(site)!r})\n"
        + SIMULATE_GPU.format(capability=A100)
        + textwrap.dedent(f"""
        from labeltune import train
        from labeltune.config import TrainConfig, resolve
        train.main(resolve(TrainConfig, None, {{"output": {str(tmp_path / "run")!r}}}))
    """)
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert "fake unsloth: imported" in proc.stderr, proc.stderr[-2000:]
    assert json.loads(record.read_text()) == []


def test_late_unsloth_import_is_named(monkeypatch):
    """Imported after trl (a notebook that imported it first), Unsloth cannot patch it: say so."""
    import trl  # noqa: F401

    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    with pytest.warns(UserWarning, match=r"trl.* imported before unsloth"), pytest.raises(ImportError):
        models.import_unsloth()  # not installed on this CPU machine: the warning comes first


# ----------------------------------------------------------- 3. inference never through Unsloth


def _tiny_run(trained: Path, tmp_path: Path, backend: str) -> Path:
    """A copy of a run directory of the tiny preset trained for 2 steps on CPU, its model.json marked
    `backend`."""
    run = Path(shutil.copytree(trained, tmp_path / "run", symlinks=True))
    info = json.loads((run / "model.json").read_text())
    info.update(backend=backend)
    (run / "model.json").write_text(json.dumps(info))
    return run


@pytest.fixture(scope="module")
def unsloth_run(tiny_run_2x32, tmp_path_factory, share_run):
    return share_run(_tiny_run(tiny_run_2x32, tmp_path_factory.mktemp("unsloth_run"), "unsloth"))


def test_label_of_an_unsloth_run_on_a_gpu_never_imports_unsloth(unsloth_run, tmp_path):
    """Simulated T4, unsloth installed, a run trained with it: labelling loads through the hf backend
    (it gets as far as placing the model on the simulated GPU, which this CPU cannot do)."""
    record = tmp_path / "record.json"
    site = _fake_unsloth(tmp_path / "site", record)
    proc = _cli_in_child(
        [
            "label",
            "--run",
            str(unsloth_run),
            "--input",
            str(ROOT / "data" / "new_posts.csv"),
            "--output",
            str(tmp_path / "out.csv"),
            "--mode",
            "score",
        ],
        site,
        T4,
        tmp_path,
    )
    assert not record.exists(), f"unsloth was imported for inference: {record.read_text()}"
    assert "fake unsloth" not in proc.stderr
    # it stopped where the hf backend puts the model on the GPU this CPU machine does not have
    # (said in one line)
    assert proc.returncode == 2 and "its model cannot be loaded (RuntimeError" in proc.stderr, proc.stderr[
        -2000:
    ]
    assert "accelerator" in proc.stderr or "CUDA" in proc.stderr


def test_label_of_an_unsloth_run_on_cpu_works_without_importing_unsloth(unsloth_run, tmp_path):
    record = tmp_path / "record.json"
    site = _fake_unsloth(tmp_path / "site", record)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(site)!r})
        from labeltune import label
        from labeltune.config import LabelConfig, resolve
        for mode in ("generate", "constrained", "score"):
            label.main(resolve(LabelConfig, None, {{"run": {str(unsloth_run)!r},
                       "input": {str(ROOT / "data" / "new_posts.csv")!r},
                       "output": {str(tmp_path)!r} + "/" + mode + ".csv", "mode": mode, "progress": False}}))
        assert "unsloth" not in sys.modules
        print("OK")
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]
    assert not record.exists()


def test_a_model_class_patched_by_unsloth_is_refused_for_decoding(unsloth_run, monkeypatch):
    """After Unsloth trained in a process its forward replaces transformers' own (legacy tuple caches, its
    own single-token path): decoding there is refused with what to do, not crashed or wrong."""
    from transformers import LlamaForCausalLM

    def forward(self, *args, **kwargs):  # what Unsloth's pre_patch installs, by module name
        raise AssertionError("never called")

    forward.__module__ = "unsloth.models.llama"
    monkeypatch.setattr(LlamaForCausalLM, "forward", forward)
    with pytest.raises(ValueError, match="patched by Unsloth in this process.*new process"):
        run_mod.load_run(unsloth_run)


def test_all_decode_modes_on_a_4bit_model(tmp_path):
    """The inference backend on a GPU is transformers + bitsandbytes 4-bit: every decode mode runs on a
    4-bit (NF4, bitsandbytes on CPU) model, constrained and score answers are well-formed, and score mode's
    shared-prefix cache gives the same result as whole prompts."""
    import torch
    from bitsandbytes.nn import Linear4bit
    from transformers import LlamaConfig, LlamaForCausalLM

    from labeltune import decode
    from labeltune.features import Prompter
    from labeltune.models import build_tiny_tokenizer
    from labeltune.prompts import load_template, render_prompt
    from labeltune.task import load_task

    task = load_task("sentiment_toxicity")
    template = load_template(task.default_template)
    texts = [
        "最高の一日だった",
        "電車が遅れて最悪だ",
        "明日は雨らしい",
        "了解",
        "あいつは本当に無能すぎる",
        "",
    ]
    tokenizer = build_tiny_tokenizer(
        [render_prompt(template, task, t) for t in texts] + task.all_answers(), 1000
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    model, tokenizer = models.load_base(str(tmp_path / "m"), "hf", load_in_4bit=True)
    assert isinstance(model.model.layers[0].self_attn.q_proj, Linear4bit)
    prompter = Prompter(tokenizer, template, task, max_length=512)
    for mode in decode.MODES:
        predictions = decode.predict(model.eval(), prompter, texts, None, 4, mode)
        assert len(predictions) == len(texts) and predictions[-1].reason == "empty_input"
        if mode != "generate":
            assert all(p.ok and p.probs for p in predictions[:-1]), (mode, predictions)
    prompts = [prompter.prompt_ids(t)[0] for t in texts[:-1]]
    cached = decode.score_decode(model, tokenizer, prompts, prompter.answer_trie, batch_size=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decode, "MIN_SHARED_PREFIX", 10**9)
        whole = decode.score_decode(model, tokenizer, prompts, prompter.answer_trie, batch_size=2)
    assert cached[1] == whole[1]
    for a, b in zip(cached[0], whole[0]):
        assert a == pytest.approx(b, abs=1e-4)


# ----------------------------------------------------------- 4. make: Colab and GPU-box journeys


def _make_n(target: str, tmp_path: Path, py: str, gpu: bool, venv: Path | None = None) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    smi = bindir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho 'GPU 0: Tesla T4 (UUID: GPU-00000000)'\n" if gpu else "#!/bin/sh\nexit 9\n"
    )
    smi.chmod(0o755)
    # a bare interpreter finds no labeltune: without PYTHONPATH (a checkout on it makes make use it as it is)
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        "PATH": f"{bindir}:{os.environ['PATH']}",
    }
    proc = subprocess.run(
        ["make", "-n", target, "MODEL=gemma2", f"PY={py}", f"VENV={venv or tmp_path / 'venv'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("target", ["train", "label", "eval", "export"])
def test_make_on_colab_uses_the_installed_environment(tmp_path, target):
    """Colab: `pip install -e '.[gpu]'` into its python, then `make train MODEL=gemma2`: that python
    runs labeltune; no venv, no torch install."""
    out = _make_n(target, tmp_path, sys.executable, gpu=True)
    commands = "\n".join(line for line in out.splitlines() if not line.startswith("echo"))
    assert "-m venv" not in commands and "pip install" not in commands and "torch" not in commands
    assert f"{sys.executable} -m labeltune.cli" in out


def test_bare_make_eval_label_export_after_make_train_open_the_run_train_wrote(tmp_path):
    """`make train MODEL=gemma2` then a bare `make eval` / `make label` / `make export` (MODEL back at its
    default) opens runs/gemma2, not runs/gemma3-270m; RUN= still picks another run."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    last = tmp_path / "last-run"

    def make_n(*args: str) -> str:
        proc = subprocess.run(
            ["make", "-n", *args, f"PY={sys.executable}", f"LAST_RUN_FILE={last}"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    train = make_n("train", "MODEL=gemma2")
    assert "train --model gemma2" in train and "--output runs/gemma2" in train
    assert f"echo 'runs/gemma2' > {last}" in train
    assert "--run runs/gemma3-270m" in make_n("eval")  # nothing trained yet: the default model's run
    last.write_text("runs/gemma2\n")  # what the train recipe writes
    assert "evaluate --run runs/gemma2" in make_n("eval")
    assert "label --run runs/gemma2 --input data/new_posts.csv --output runs/gemma2/labelled.csv" in make_n(
        "label"
    )
    assert "export --run runs/gemma2 --format merged16" in make_n("export")
    assert "evaluate --run runs/other" in make_n("eval", "RUN=runs/other")
    assert "--output runs/llama3.1" in make_n("train", "MODEL=llama3.1")  # train never reuses the last run


def test_make_on_a_bare_gpu_box_installs_cuda_torch_and_the_gpu_extra(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    out = _make_n("train", tmp_path, str(bare / "bin" / "python"), gpu=True)
    assert "-m venv" in out and ".[dev,gpu]" in out
    assert "torch==2.13.0" not in out  # no CPU wheel: pip resolves CUDA torch with the gpu extra's pins
    assert f"{tmp_path / 'venv'}/bin/python -m labeltune.cli train --model gemma2" in out


def test_make_on_a_cpu_machine_installs_the_cpu_wheel(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    out = _make_n("install", tmp_path, str(bare / "bin" / "python"), gpu=False)
    assert "pip install -q torch==2.13.0" in out and ".[dev]" in out and "gpu" not in out


# ----------------------------------------------------------- 5. merged export loaded as saved


def test_merged_export_on_a_gpu_is_not_requantised(monkeypatch, tmp_path):
    """A merged16 export's model.json says load_in_4bit: false; on a (simulated) T4 it is loaded 16-bit."""
    from types import SimpleNamespace

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "export"
    (run / "model").mkdir(parents=True)
    (run / "model.json").write_text(json.dumps({"base": "model/", "merged": True, "load_in_4bit": False}))
    seen = {}

    class Loaded(Exception):
        pass

    def from_pretrained(path, **kwargs):
        seen.update(kwargs)
        raise Loaded

    simulate_gpu(monkeypatch, T4)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: None)
    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda *a, **k: SimpleNamespace())  # not pre-quantised
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    with pytest.raises(ValueError, match="cannot be loaded") as raised:
        run_mod.load_run(run)
    assert isinstance(raised.value.__cause__, Loaded)
    import torch

    assert "quantization_config" not in seen and seen["dtype"] == torch.float16


# ----------------------------------------------------------- 6. torch not capped by the core deps


def test_core_deps_do_not_cap_torch():
    """A cap would make pip replace a newer preinstalled torch (Colab's) even without the gpu extra."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(d for d in deps if d.replace(" ", "").startswith("torch>") or d.startswith("torch<"))
    assert "<" not in torch_req, torch_req


def test_check_deps_says_whether_a_preinstalled_torch_is_kept():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import check_deps
    finally:
        sys.path.pop(0)
    resolved = {"torch": "2.14.1"}
    assert "kept" in check_deps.verdict("2.14.1+cu126", resolved, {"torch": "2.14.1"}, "")
    uv_says = (
        "Because unsloth>=2026.10.1 depends on torch>=2.4.0,<2.15.0 and labeltune depends on torch==2.15.0, "
        "we can conclude that your requirements and unsloth>=2026.10.1 are incompatible.\n"
        "And because labeltune depends on unsloth>=2026.10, "
        "we can conclude that your requirements are unsatisfiable."
    )
    line = check_deps.verdict("2.15.0", resolved, None, uv_says)
    assert "REPLACED by torch 2.14.1" in line and "unsloth>=2026.10.1 depends on torch>=2.4.0,<2.15.0" in line


# ----------------------------------------------------------- 7 and 9. refused before anything is loaded


def test_two_visible_gpus_are_refused_before_anything_is_written(monkeypatch, tmp_path):
    from labeltune import train
    from labeltune.config import TrainConfig, resolve

    simulate_gpu(monkeypatch, T4, count=2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(
        ValueError, match=r"2 GPUs are visible.*CUDA_VISIBLE_DEVICES=0.*accelerate launch --num_processes 2"
    ):
        train.main(
            resolve(TrainConfig, None, {"model": "gemma2", "backend": "hf", "output": str(tmp_path / "run")})
        )
    assert not (tmp_path / "run").exists()
    models.check_one_gpu(2, processes=2)  # under accelerate launch: one GPU per process, fine
    models.check_one_gpu(1, processes=1)


def test_trl_that_cannot_train_on_cpu_is_refused_up_front(monkeypatch, tmp_path):
    import importlib.metadata

    from labeltune import train
    from labeltune.config import TrainConfig, resolve

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.15.0" if name == "trl" else real(name))
    with pytest.raises(ValueError, match=r"trl 1\.15\.0 cannot train on a CPU.*trl>=1\.16"):
        train.main(resolve(TrainConfig, None, {"output": str(tmp_path / "run")}))
    assert not (tmp_path / "run").exists()
    models.check_trainer_supports(cuda=True, trl_version="1.15.0")  # on a GPU it trains
    models.check_trainer_supports(cuda=False, trl_version="1.16.0")


# ----------------------------------------------------------- 8. Unsloth's patches stay in a child process


@pytest.mark.train
def test_spawn_trains_in_a_child_process(tmp_path):
    """sweep, compare and the notebook train through train.spawn: the training stack (and, on a GPU,
    Unsloth's process-wide patches) lives in the child; refusals come back as the same ValueError."""
    script = textwrap.dedent(f"""
        import sys
        from labeltune import train
        from labeltune.config import TrainConfig, resolve
        cfg = resolve(TrainConfig, None, {{"output": {str(tmp_path / "run")!r}, "max_steps": 2, "limit": 32}})
        run = train.spawn(cfg)
        assert (run / "adapter" / "adapter_model.safetensors").is_file()
        heavy = [m for m in ("trl", "transformers", "peft", "unsloth") if m in sys.modules]
        assert not heavy, heavy
        try:
            train.spawn(cfg)
        except ValueError as e:
            assert "already holds a trained run" in str(e), e
            print("OK")
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:] + proc.stdout[-2000:]
    assert "trained 2 steps" in proc.stdout  # the child's output is streamed to the caller


@pytest.mark.train
def test_sweep_and_compare_train_in_a_child_process(monkeypatch, tmp_path):
    """With training made impossible in this process, a sweep trial and compare's generative run still
    train: in a child process (labeltune.train.spawn)."""
    from labeltune import compare, sweep, train
    from labeltune.config import SweepConfig, TrainConfig, resolve

    def in_process(cfg):
        raise AssertionError("trained in the calling process")

    monkeypatch.setattr(train, "main", in_process)
    shared = resolve(TrainConfig, None, {"max_steps": 2, "limit": 32})
    sweep_cfg = resolve(SweepConfig, None, {"output": str(tmp_path / "sweep"), "mode": "score"})
    metrics = sweep.run_trial(shared, {"lr": 1e-3}, tmp_path / "sweep" / "trial", sweep_cfg)
    assert "macro_f1" in metrics and (tmp_path / "sweep" / "trial" / "adapter").is_dir()
    tcfg = resolve(
        TrainConfig, None, {"max_steps": 2, "limit": 32, "output": str(tmp_path / "compare" / "gen")}
    )
    compare.ensure_run(tcfg, presets.resolve_preset("tiny"), ["generative"], tmp_path / "compare")
    assert (tmp_path / "compare" / "gen" / "adapter").is_dir()


def test_train_reads_and_checks_the_data_before_any_model_library_loads(tmp_path):
    """A wrong column is refused, and dropped rows are said, before torch, transformers, TRL or Unsloth are
    imported (what made the refusal take 13-17 s): a wrong column in a process that never imports them; the
    drop summary printed before the (fake) Unsloth import stops the run."""
    script = textwrap.dedent(f"""
        import sys
        sys.argv = ['labeltune', 'train', '--data', {str(ROOT / "data" / "sample.csv")!r},
                    '--text-column', 'nope', '--output', {str(tmp_path / "run")!r}]
        from labeltune.cli import main
        try:
            main()
        except SystemExit as e:
            heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'unsloth') if m in sys.modules)
            print('exit', e.code, 'heavy', heavy)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert "no column 'nope'" in proc.stderr and "exit 2 heavy []" in proc.stdout, (
        proc.stdout + proc.stderr[-2000:]
    )

    posts = tmp_path / "posts.csv"
    rows = (ROOT / "data" / "sample.csv").read_text(encoding="utf-8").splitlines()
    posts.write_text(
        "\n".join(rows[:41] + ["p9999,とても良い,very-positive,0,0,0,0,0,0,plain"]) + "\n", encoding="utf-8"
    )
    record = tmp_path / "record.json"
    site = _fake_unsloth(tmp_path / "site", record)
    proc = _cli_in_child(
        ["train", "--backend", "unsloth", "--data", str(posts), "--output", str(tmp_path / "run2")],
        site,
        T4,
        tmp_path,
    )
    assert "fake unsloth: imported" in proc.stderr, proc.stderr[-2000:]
    said = proc.stderr[: proc.stderr.index("fake unsloth: imported")]
    assert "1 of 41 rows dropped" in said and "label_not_in_task" in said, said[-2000:]
