"""A short real training run of the tiny model, then label/evaluate with it (no mocks).

One run is trained per test session (about a minute on 2 cores) and shared by these tests.
"""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labeltune import evaluate, label, train
from labeltune.config import EvalConfig, LabelConfig, TrainConfig, resolve

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample.csv"


@pytest.fixture
def run_dir(tiny_run_70):
    """The tiny model trained 70 steps on the sample: the session's, read-only (copy_run it to write into
    it)."""
    return tiny_run_70


def _write_posts(path: Path, n: int, encoding: str = "utf-8") -> list[dict]:
    rows = list(csv.DictReader(open(SAMPLE, encoding="utf-8", newline="")))[:n]
    posts = [{"post_id": r["id"], "body": r["text"], "note": f"n{i}"} for i, r in enumerate(rows)]
    if n > 3:
        posts[3]["body"] = ""  # an empty text still gets its row
    with open(path, "w", encoding=encoding, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["post_id", "body", "note"])
        writer.writeheader()
        writer.writerows(posts)
    return posts


def test_run_directory_is_complete(run_dir):
    for name in ("config.yaml", "model.json", "versions.json", "train_log.jsonl", "adapter", "base", "data"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "data" / "summary.json").read_text(encoding="utf-8"))
    assert len(summary["fingerprint"]) == 64
    assert sum(summary["counts"]["train"].values()) > 400
    log = [json.loads(line) for line in open(run_dir / "train_log.jsonl")]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0] / 3  # it learned something
    assert json.loads((run_dir / "versions.json").read_text())["torch"]


def test_training_learns_the_format(run_dir, copy_run):
    run_dir = copy_run(run_dir)  # evaluate writes its metrics and report into the run
    metrics = evaluate.main(resolve(EvalConfig, None, {"run": str(run_dir), "split": "dev"}))
    assert metrics["base"]["malformed_rate"] >= 0.5  # the untuned (random) model cannot answer
    assert metrics["finetuned"]["malformed_rate"] <= 0.1
    assert (run_dir / "report.md").read_text(encoding="utf-8").startswith("# Evaluation")
    saved = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert {"base", "finetuned", "majority_baseline"} <= set(saved)


def test_evaluate_warns_when_the_result_means_little(run_dir, copy_run, capsys):
    """The tiny random-init model on 15 test rows: each system's macro-F1 gets a 95% bootstrap interval, too
    wide there to tell the model from the majority class; the warnings its numbers call for (that one, and
    worse than the majority class or the base where it is) are printed at the end, kept in metrics.json and
    shown in the report."""
    run_dir = copy_run(run_dir)  # evaluate writes its metrics and report into the run

    metrics = evaluate.main(resolve(EvalConfig, None, {"run": str(run_dir), "forgetting": None, "limit": 15}))
    tuned, majority, base = metrics["finetuned"], metrics["majority_baseline"], metrics["base"]
    low, high = tuned["macro_f1_interval"]
    assert low <= tuned["macro_f1"] <= high and low <= majority["macro_f1"] <= high, (tuned, majority)
    expected = [
        "the fine-tuned model is worse than the majority class"
        if tuned["macro_f1"] < majority["macro_f1"]
        else None,
        "the fine-tuned model is worse than the untuned base"
        if tuned["macro_f1"] < base["macro_f1"]
        else None,
        f"15 test rows cannot tell these apart: macro-F1 {tuned['macro_f1']:.2f} [{low:.2f}, {high:.2f}]",
    ]
    expected = [e for e in expected if e]
    printed = [
        line.removeprefix("labeltune: warning: ")
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("labeltune: warning: ")
    ]
    assert len(printed) == len(expected) and all(w.startswith(e) for w, e in zip(printed, expected)), printed
    saved = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert saved["warnings"] == printed and saved["finetuned"]["macro_f1_interval"] == [low, high]
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert (
        f"| fine-tuned | 15 | {tuned['accuracy']:.3f} | {tuned['macro_f1']:.3f} [{low:.2f}, {high:.2f}] |"
        in report
    )
    assert all(f"- {w}" in report for w in printed)


def test_refuses_to_overwrite_a_trained_run(run_dir, copy_run):
    run_dir = copy_run(run_dir)  # should the refusal ever fail, the shared run is not lost
    with pytest.raises(FileExistsError):
        train.main(resolve(TrainConfig, None, {"output": str(run_dir), "max_steps": 1}))


@pytest.mark.train
def test_leaked_rows_stop_training(tmp_path):
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    rows = list(csv.DictReader(open(SAMPLE, encoding="utf-8", newline="")))
    for name, part in (("train", rows[:50]), ("dev", rows[50:60]), ("test", rows[60:70] + rows[:2])):
        with open(split_dir / f"{name}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(part)
    with pytest.raises(ValueError, match="2 dev/test rows also appear in train"):
        train.main(resolve(TrainConfig, None, {"data": str(split_dir), "output": str(tmp_path / "r")}))
    assert not (tmp_path / "r" / "adapter").exists()


def test_label_keeps_rows_columns_and_order(run_dir, tmp_path, capsys):
    source = tmp_path / "posts_cp932.csv"
    posts = _write_posts(source, 12, encoding="cp932")
    out = tmp_path / "out.csv"
    label.main(
        resolve(
            LabelConfig,
            None,
            {
                "run": str(run_dir),
                "input": str(source),
                "output": str(out),
                "text_column": "body",
                "progress": False,
            },
        )
    )
    raw = out.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(open(out, encoding="utf-8", newline="")))
    assert [r["post_id"] for r in rows] == [p["post_id"] for p in posts]
    assert [r["body"] for r in rows] == [p["body"] for p in posts]
    assert list(rows[0]) == [
        "post_id",
        "body",
        "note",
        "label",
        "score",
        "score_greedy",
        "ok",
        "reason",
        "truncated",
        "raw",
        "confidence",
        "p_positive",
        "p_neutral",
        "p_negative",
    ]
    assert rows[3]["ok"] == "False" and rows[3]["reason"] == "empty_input"
    assert sum(r["ok"] == "True" for r in rows) >= 9
    assert not out.with_name(out.name + ".partial").exists()
    # the sidecar that makes a rerun a no-op is hidden: beside the finished output only the output shows
    assert json.loads(out.with_name("." + out.name + ".labeltune.json").read_text())["complete"] is True
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name)) == [out.name]
    assert "\n" not in "".join(r["raw"] for r in rows) and any("label : " in r["raw"] for r in rows)
    said = (
        capsys.readouterr().out
    )  # how many of each label it wrote (a collapse shows here), and what to do next
    counted = re.search(
        r"labels this session: 1 \(positive\) (\d+), 0 \(neutral\) (\d+), -1 \(negative\) (\d+)"
        r"(?:, no label (\d+))?",
        said,
    )
    assert counted, said
    for value, n in zip(("1", "0", "-1", ""), counted.groups()):
        assert int(n or 0) == sum(r["label"] == value for r in rows)
    assert f"next: read a few rows of {out}" in said and f"labeltune evaluate --run {run_dir} --data" in said
    # the same command again: already complete, nothing rewritten
    before = out.stat().st_mtime_ns
    label.main(
        resolve(
            LabelConfig,
            None,
            {"run": str(run_dir), "input": str(source), "output": str(out), "text_column": "body"},
        )
    )
    assert out.stat().st_mtime_ns == before
    # other settings: a finished output is not silently replaced or appended to
    with pytest.raises(FileExistsError):
        label.main(
            resolve(
                LabelConfig,
                None,
                {
                    "run": str(run_dir),
                    "input": str(source),
                    "output": str(out),
                    "text_column": "body",
                    "mode": "score",
                },
            )
        )


def test_label_missing_column_writes_nothing(run_dir, tmp_path):
    source = tmp_path / "posts.csv"
    _write_posts(source, 3)
    out = tmp_path / "out.csv"
    with pytest.raises(ValueError, match=r"no column 'text'.*post_id"):
        label.main(
            resolve(LabelConfig, None, {"run": str(run_dir), "input": str(source), "output": str(out)})
        )
    assert not out.exists() and not out.with_name("." + out.name + ".labeltune.json").exists()


def _label_cmd(run_dir, source, out, *extra):
    code = "from labeltune.cli import main; main()"
    return [
        sys.executable,
        "-c",
        code,
        "label",
        "--run",
        str(run_dir),
        "--input",
        str(source),
        "--output",
        str(out),
        "--text-column",
        "body",
        "--chunk-size",
        "4",
        "--batch-size",
        "4",
        "--progress",
        "false",
        *extra,
    ]


def test_resume_after_kill_is_byte_identical(run_dir, tmp_path):
    source = tmp_path / "posts.csv"
    _write_posts(source, 40)
    reference, resumed = tmp_path / "reference.csv", tmp_path / "resumed.csv"
    subprocess.run(_label_cmd(run_dir, source, reference), check=True, cwd=ROOT)

    state = resumed.with_name("." + resumed.name + ".labeltune.json")
    partial = resumed.with_name(resumed.name + ".partial")
    proc = subprocess.Popen(_label_cmd(run_dir, source, resumed), cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill -9 once a few chunks are on disk
        if state.exists():
            try:
                if json.loads(state.read_text())["rows"] >= 12:
                    break
            except (json.JSONDecodeError, KeyError):
                pass
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists(), "the run finished before it could be killed"
    done = json.loads(state.read_text())["rows"]
    assert 12 <= done < 40
    assert not resumed.exists()  # the output appears only when complete
    with open(partial, "ab") as f:  # a half-written row, as a kill in mid-write leaves it
        f.write(b"p9999,half a row")
    subprocess.run(_label_cmd(run_dir, source, resumed), check=True, cwd=ROOT)
    assert resumed.read_bytes() == reference.read_bytes()
    assert json.loads(state.read_text())["complete"] and not partial.exists()


def test_refuses_to_append_to_foreign_partial_output(run_dir, tmp_path):
    source = tmp_path / "posts.csv"
    _write_posts(source, 8)
    out = tmp_path / "out.csv"
    state = out.with_name("." + out.name + ".labeltune.json")
    partial = out.with_name(out.name + ".partial")
    partial.write_text("a,b\n1,2\n", encoding="utf-8")
    state.write_text(json.dumps({"identity": {"input_sha256": "other"}, "rows": 1, "bytes": 8}))
    with pytest.raises(ValueError, match="refusing to append"):
        label.main(
            resolve(
                LabelConfig,
                None,
                {"run": str(run_dir), "input": str(source), "output": str(out), "text_column": "body"},
            )
        )
    assert partial.read_text(encoding="utf-8") == "a,b\n1,2\n"
    label.main(
        resolve(
            LabelConfig,
            None,
            {
                "run": str(run_dir),
                "input": str(source),
                "output": str(out),
                "text_column": "body",
                "overwrite": True,
                "progress": False,
            },
        )
    )
    assert len(list(csv.DictReader(open(out, encoding="utf-8", newline="")))) == 8


def test_export_adapter_and_merged_label_the_same(run_dir, tmp_path):
    from labeltune import export
    from labeltune.config import ExportConfig

    source = tmp_path / "posts.csv"
    _write_posts(source, 24)
    outputs = {}
    for fmt in ("adapter", "merged16"):
        exported = export.main(
            resolve(ExportConfig, None, {"run": str(run_dir), "format": fmt, "output": str(tmp_path / fmt)})
        )
        out = tmp_path / f"labelled-{fmt}.csv"
        label.main(
            resolve(
                LabelConfig,
                None,
                {
                    "run": str(exported),
                    "input": str(source),
                    "output": str(out),
                    "text_column": "body",
                    "progress": False,
                },
            )
        )
        outputs[fmt] = list(csv.DictReader(open(out, encoding="utf-8", newline="")))
    reference = tmp_path / "labelled-run.csv"
    label.main(
        resolve(
            LabelConfig,
            None,
            {
                "run": str(run_dir),
                "input": str(source),
                "output": str(reference),
                "text_column": "body",
                "progress": False,
            },
        )
    )
    expected = [(r["label"], r["ok"]) for r in csv.DictReader(open(reference, encoding="utf-8", newline=""))]
    assert [(r["label"], r["ok"]) for r in outputs["adapter"]] == expected
    assert [(r["label"], r["ok"]) for r in outputs["merged16"]] == expected
    assert json.loads((tmp_path / "merged16" / "model.json").read_text())["merged"] is True
    # a merged export is a run: evaluate works on it (no adapter to switch off: the tuned model only), on
    # labelled posts of the user's: the export carries no training data
    labelled = tmp_path / "labelled.csv"
    labelled.write_text(
        "".join(open(SAMPLE, encoding="utf-8").readlines()[:17]), encoding="utf-8"
    )  # header + 16
    with pytest.raises(ValueError, match=r"no dev split .*--include-data.*--data FILE") as refused:
        evaluate.main(
            resolve(EvalConfig, None, {"run": str(tmp_path / "merged16"), "split": "dev", "forgetting": None})
        )
    assert "\n" not in str(refused.value)
    metrics = evaluate.main(
        resolve(
            EvalConfig, None, {"run": str(tmp_path / "merged16"), "data": str(labelled), "forgetting": None}
        )
    )
    assert "finetuned" in metrics and "base" not in metrics and metrics["finetuned"]["n"] == 16


def test_exports_leave_the_training_data_out_unless_asked(run_dir, tmp_path, capsys):
    """The splits hold every labelled post: an export keeps data/summary.json (sizes, label counts,
    fingerprint) and says so in its card and its last line; --include-data adds the splits."""
    from labeltune import export
    from labeltune.config import ExportConfig

    plain = export.main(resolve(ExportConfig, None, {"run": str(run_dir), "output": str(tmp_path / "plain")}))
    assert sorted(p.name for p in (plain / "data").iterdir()) == ["summary.json"]
    assert not list(plain.rglob("*.jsonl")) or all(
        p.name == "train_log.jsonl" for p in plain.rglob("*.jsonl")
    )
    card = (plain / "README.md").read_text(encoding="utf-8")
    assert "The data itself is not part of this export" in card and "--data FILE" in card
    assert "without its training data" in capsys.readouterr().out
    full = export.main(
        resolve(
            ExportConfig, None, {"run": str(run_dir), "output": str(tmp_path / "full"), "include_data": True}
        )
    )
    for split in ("train", "dev", "test"):
        assert (full / "data" / f"{split}.jsonl").read_bytes() == (
            run_dir / "data" / f"{split}.jsonl"
        ).read_bytes()
    assert "This export carries the data splits" in (full / "README.md").read_text(encoding="utf-8")
    # the majority baseline of an export's evaluation comes from the counts it keeps
    from labeltune.run import open_run

    assert sorted(open_run(plain).train_labels()) == sorted(open_run(run_dir).train_labels())


def test_export_gguf_without_gpu_says_what_to_do(run_dir, tmp_path):
    import torch

    from labeltune import export
    from labeltune.config import ExportConfig

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="merged16"):
        export.main(
            resolve(
                ExportConfig, None, {"run": str(run_dir), "format": "gguf", "output": str(tmp_path / "g")}
            )
        )


def test_gguf_export_converts_the_merged16_weights_the_run_was_evaluated_with(run_dir, tmp_path, monkeypatch):
    """GGUF = the run's merged16 export (labeltune.merge, in the run's precision) handed to Unsloth's
    llama.cpp converter with arguments from model.json; the converter (Unsloth, GPU only) is replaced by a
    stand-in that records what it was given. Nothing looks complete until the .gguf exists; a converter
    failure is one line and keeps the merged export."""
    from labeltune import export
    from labeltune.merge import files_sha256
    from labeltune.run import MERGED, RunInfo

    monkeypatch.setattr(export, "cuda_available", lambda: True)  # the probes a GPU machine answers
    monkeypatch.setattr(export, "unsloth_installed", lambda: True)
    info = RunInfo.load(run_dir)
    dtype = export.GGUF_DTYPE[info.precision]
    export.export_merged16(run_dir, tmp_path / "reference", dtype)
    reference = files_sha256(sorted((tmp_path / "reference" / MERGED).glob("*.safetensors")))
    seen = {}

    def convert(**kwargs):
        seen.update(
            kwargs, weights=files_sha256(sorted(Path(kwargs["model_directory"]).glob("*.safetensors")))
        )
        assert not (tmp_path / "g").exists()  # not complete-looking while converting
        (Path(kwargs["gguf_directory"]) / "model.Q4_K_M.gguf").write_bytes(b"GGUF")

    export.export_gguf(run_dir, tmp_path / "g", "Q4_K_M", convert=convert)
    assert seen["weights"] == reference  # the very weights `--format merged16` writes (and evaluate measured)
    assert (
        seen["model_dtype"] == dtype
        and seen["model_type"] == "llama"
        and seen["quantization_method"] == ["q4_k_m"]
    )
    assert (tmp_path / "g" / "model.Q4_K_M.gguf").is_file() and (tmp_path / "g" / "config.yaml").is_file()
    assert not (tmp_path / "g.partial").exists() and not (tmp_path / "g" / "merged16").exists()

    def broken(**kwargs):
        raise RuntimeError("Unsloth: GGUF conversion failed: llama.cpp could not be built\ncmake: not found")

    with pytest.raises(
        ValueError,
        match=r"\(RuntimeError: Unsloth: GGUF conversion failed: llama.cpp could not be built\); "
        "the merged16 export it converts is kept",
    ) as failed:
        export.export_gguf(run_dir, tmp_path / "h", "q8_0", convert=broken)
    assert "\n" not in str(failed.value) and not (tmp_path / "h").exists()
    assert (tmp_path / "h.partial" / "merged16" / MERGED).is_dir()


def test_decode_modes_agree_and_constrained_modes_are_always_well_formed(run_dir):
    from labeltune.config import TrainConfig, load_saved
    from labeltune.data import load_examples
    from labeltune.decode import predict
    from labeltune.features import Prompter
    from labeltune.prompts import load_template
    from labeltune.run import load_run
    from labeltune.task import load_task

    cfg = load_saved(TrainConfig, run_dir / "config.yaml")
    task = load_task(cfg.task)
    examples, _ = load_examples(run_dir / "data" / "dev.jsonl", task)
    texts = [ex.text for ex in examples[:40]]
    model, tokenizer = load_run(run_dir)
    prompter = Prompter(tokenizer, load_template(cfg.template), task, cfg.max_length)
    by_mode = {
        mode: predict(model, prompter, texts, batch_size=8, mode=mode)
        for mode in ("generate", "constrained", "score")
    }
    for mode in ("constrained", "score"):
        assert all(p.ok for p in by_mode[mode])
    for p in by_mode["score"]:
        assert abs(sum(p.probs.values()) - 1) < 1e-6 and p.confidence == max(p.probs.values())
        assert p.raw == task.render_answer(p.label, p.score)
    agree = [
        g.label == s.label == c.label
        for g, s, c in zip(by_mode["generate"], by_mode["score"], by_mode["constrained"])
        if g.ok
    ]
    assert len(agree) >= 36 and sum(agree) / len(agree) >= 0.95
    with model.disable_adapter():  # the untuned base: well-formed by construction, not by training
        for mode in ("constrained", "score"):
            assert all(p.ok for p in predict(model, prompter, texts, batch_size=8, mode=mode))


def test_calibrate_then_label_applies_the_temperature(run_dir, copy_run, tmp_path):
    """calibration.json's temperature and label biases are what label applies in score mode: the
    probabilities are softmax(log p / T + b) of the uncalibrated ones, and the label their argmax."""
    from labeltune import calibrate
    from labeltune.config import CalibrateConfig
    from labeltune.metrics import adjust

    run_dir = copy_run(run_dir)  # calibrate writes calibration.json into the run

    result = calibrate.main(resolve(CalibrateConfig, None, {"run": str(run_dir)}))
    assert (run_dir / "calibration.json").is_file() and result["nll_after"] <= result["nll_before"] + 1e-9
    source = tmp_path / "posts.csv"
    _write_posts(source, 10)
    rows = {}
    for calibrated in (False, True):
        out = tmp_path / f"out-{calibrated}.csv"
        label.main(
            resolve(
                LabelConfig,
                None,
                {
                    "run": str(run_dir),
                    "input": str(source),
                    "output": str(out),
                    "text_column": "body",
                    "mode": "score",
                    "calibrated": calibrated,
                    "progress": False,
                },
            )
        )
        rows[calibrated] = list(csv.DictReader(open(out, encoding="utf-8", newline="")))
    names = {"p_positive": "1", "p_neutral": "0", "p_negative": "-1"}
    assert set(result["biases"]) == set(names.values())
    for raw, cal in zip(rows[False], rows[True]):
        if raw["ok"] == "True":
            expected = adjust(
                {v: float(raw[k]) for k, v in names.items()}, result["temperature"], result["biases"]
            )
            assert [float(cal[k]) for k in names] == pytest.approx(
                [expected[v] for v in names.values()], abs=1e-3
            )
            assert float(cal["confidence"]) == pytest.approx(max(float(cal[k]) for k in names), abs=1e-4)
            assert cal["label"] == max(expected, key=expected.get)
    (run_dir / "calibration.json").unlink()  # leave the shared run as the other tests expect it


def test_merged_adapter_labels_like_the_adapter_and_still_disables(run_dir):
    """label loads the run with the LoRA weights folded in: same answers and probabilities as the
    unmerged adapter, and disable_adapter() still gives the base model."""
    from labeltune.config import TrainConfig, load_saved
    from labeltune.decode import predict
    from labeltune.features import Prompter
    from labeltune.prompts import load_template
    from labeltune.run import load_run
    from labeltune.task import load_task

    cfg = load_saved(TrainConfig, run_dir / "config.yaml")
    texts = [r["text"] for r in csv.DictReader(open(SAMPLE, encoding="utf-8", newline=""))][:24]
    tuned, base = {}, {}
    for merge in (False, True):
        model, tokenizer = load_run(run_dir, merge=merge)
        assert any(getattr(m, "merged", False) for m in model.modules()) is merge
        prompter = Prompter(tokenizer, load_template(cfg.template), load_task(cfg.task), cfg.max_length)
        tuned[merge] = predict(model, prompter, texts, mode="score")  # merged weights, when merge
        with model.disable_adapter():
            base[merge] = predict(model, prompter, texts, mode="score")
    for a_list, b_list in ((tuned[False], tuned[True]), (base[False], base[True])):
        assert [(p.label, p.score) for p in a_list] == [(p.label, p.score) for p in b_list]
        for a, b in zip(a_list, b_list):
            assert a.probs == pytest.approx(b.probs, abs=1e-4)
    assert [p.probs for p in tuned[True]] != [p.probs for p in base[True]]  # the adapter really acts


@pytest.mark.train
def test_labels_trained_as_words_come_back_as_those_words(tmp_path):
    """Training data that writes its labels as words ("positive") gets them back in the label column, with
    the task's values beside it (label_value); the run keeps the words in data/summary.json."""
    rows = list(csv.DictReader(open(ROOT / "data" / "sample.csv", encoding="utf-8")))
    words = {"1": "positive", "0": "neutral", "-1": "negative"}
    data = tmp_path / "words.csv"
    with open(data, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label", "score"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": words[r["label"]], "score": r["score"]} for r in rows)
    run_dir = train.main(
        resolve(
            TrainConfig,
            None,
            {"data": str(data), "output": str(tmp_path / "run"), "max_steps": 2, "limit": 48},
        )
    )
    summary = json.loads((run_dir / "data" / "summary.json").read_text(encoding="utf-8"))
    assert summary["label_words"] == words
    posts = tmp_path / "posts.csv"
    posts.write_text('text\n最高の一日\n最悪だ\n""\n', encoding="utf-8")
    out = tmp_path / "out.csv"
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
    labelled = list(csv.DictReader(open(out, encoding="utf-8", newline="")))
    assert list(labelled[0])[:3] == ["text", "label", "label_value"] and len(labelled) == 3
    assert all(words[r["label_value"]] == r["label"] for r in labelled if r["ok"] == "True")
    assert labelled[2]["label"] == labelled[2]["label_value"] == ""  # the empty post: no label
