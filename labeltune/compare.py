"""labeltune compare: every system trained and measured on one split, in one table.

    labeltune compare --data data/sample.csv --models tiny --output runs/compare
    labeltune compare --config configs/compare.yaml
    labeltune compare --models gemma2-2b,llama3.2-1b --train '{epochs: 1}'      (GPU)

Systems (``--systems``): generative (LLM + LoRA SFT: this project's main path), cls_head (the same
base LLM + LoRA with a classification head, labeltune.classify), encoder (BERT-style full fine-tune),
majority (the most frequent training label, with the median training score of that label) and
zero_shot (the generative run's model with its adapter disabled, i.e. the untuned base; near chance
for the random-init tiny preset). With several --models each model gets its generative, cls_head and
zero_shot rows; the encoder takes its training settings (epochs, batch size, max_length, seed) from
the first model.

The split is written once to <output>/data/{train,dev,test}.jsonl (the splitting, leakage check and
limit of `labeltune train`) and every system trains and is measured on it; each generative run is
given that folder as its data. Outputs in <output>: one folder per system (system_metrics.json,
predictions.csv, and its run, adapter or model), results.csv, results.md, confusions.png (one panel
per system), report.html and metrics.json. A system whose folder holds system_metrics.json is not
run again, so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from labeltune import classify
from labeltune.answers import Answer
from labeltune.config import COMPARE_SYSTEMS, CompareConfig, TrainConfig, load_saved, resolve, save, to_dict
from labeltune.data import Example, load_examples
from labeltune.decode import predict
from labeltune.metrics import calibration_metrics, macro_f1_interval, majority_baseline, system_metrics
from labeltune.models import base_to_load, select_4bit
from labeltune.perplexity import forgetting_check, load_general_texts
from labeltune.presets import Preset, resolve_preset, with_preset_defaults
from labeltune.report import format_cell, md_table, plot_confusions, render_html, write_predictions
from labeltune.run import ADAPTER, BASE, DATA, DATA_SUMMARY, open_run, split_file
from labeltune.splits import on_split_folder, split_once
from labeltune.task import TaskSpec, load_task
from labeltune.train import spawn

SYSTEMS = COMPARE_SYSTEMS
LLM_SYSTEMS = ("generative", "cls_head", "zero_shot")  # one row per model
METRICS_FILE = "system_metrics.json"
# Changing one of these makes finished systems stale; changing models or systems only adds or drops rows,
# and changing the encoder's settings (ENCODER_FIELDS) trains the encoder row again.
RESULT_FIELDS = ("data", "train", "mode", "split", "forgetting", "forgetting_limit")
ENCODER_FIELDS = ("encoder", "encoder_lr", "encoder_epochs")
COLUMNS = (
    "system",
    "model",
    "n",
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "macro_f1_ci",
    "malformed_rate",
    "score_mae",
    "score_spearman",
    "score_at_ends",
    "ece",
    "train_seconds",
    "posts_per_s",
)
RECALL_AFTER = "macro_f1_ci"  # per-class recall columns (recall_<label name>) follow this one


def slug(model: str) -> str:
    """An ASCII folder-name form of a preset name, id or path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_")


def system_key(system: str, model: str | None) -> str:
    """The system's folder name (and row key): <system>-<model> for LLM systems, else <system>."""
    return f"{system}-{slug(model)}" if system in LLM_SYSTEMS else system


def train_config(cfg: CompareConfig, model: str, output: Path, data: str) -> TrainConfig:
    """TrainConfig of `model` from cfg.train (checked like a YAML file), preset defaults filled in."""
    reserved = sorted({"model", "data", "output"} & set(cfg.train))
    if reserved:
        raise ValueError(f"train: {reserved} are set by compare itself (use --models / --data / --output)")
    tcfg = resolve(TrainConfig, None, {**cfg.train, "model": model, "output": str(output), "data": data})
    return with_preset_defaults(tcfg, resolve_preset(model))


def run_config(cfg: CompareConfig, model: str, out: Path) -> TrainConfig:
    """TrainConfig of `model`'s generative run: reads the comparison's split folder (written by
    labeltune.splits.split_once)."""
    return on_split_folder(
        train_config(cfg, model, out / system_key("generative", model), cfg.data), out / DATA
    )


def check_resume(cfg: CompareConfig, out: Path) -> None:
    """Refuse to mix results: once `out` holds a split, the result-defining options must stay the same."""
    saved_path = out / "config.yaml"
    if not (out / DATA / DATA_SUMMARY).is_file():
        return
    saved, now = to_dict(load_saved(CompareConfig, saved_path)), to_dict(cfg)
    changed = [k for k in RESULT_FIELDS if saved[k] != now[k]]
    if changed:
        raise ValueError(
            f"{out} holds a comparison with other {changed}; choose another --output or delete it"
        )


def read_split(data_dir: Path, name: str, task: TaskSpec) -> list[Example]:
    examples, _ = load_examples(data_dir / split_file(name), task)
    if not examples:
        raise ValueError(f"{data_dir / split_file(name)}: no examples")
    return examples


# ---------------------------------------------------------------- systems


def finished(system_dir: Path) -> dict | None:
    """The saved result of a finished system, or None."""
    path = system_dir / METRICS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def timed(fn, *args):
    """(fn(*args), seconds it took): the labelling speed of a system."""
    started = time.perf_counter()
    return fn(*args), time.perf_counter() - started


def save_result(
    system_dir: Path,
    system: str,
    model: str,
    task: TaskSpec,
    examples: list[Example],
    predictions: list[Answer],
    label_seconds: float | None = None,
    **extra,
) -> None:
    """Metrics (labeltune.metrics.system_metrics, the same for every system, with macro-F1's 95% bootstrap
    interval and the ECE of the label probabilities) + labelling speed + predictions.csv."""
    system_dir.mkdir(parents=True, exist_ok=True)
    gold = [ex.label for ex in examples]
    metrics = system_metrics(
        gold,
        [ex.score for ex in examples],
        predictions,
        task.label_values,
        task.score_ends,
        task.scored_labels,
    )
    metrics["macro_f1_ci"] = macro_f1_interval(gold, [p.label for p in predictions], task.label_values)
    metrics["ece"] = calibration_metrics(predictions, gold).get("ece")
    speed = round(len(examples) / label_seconds, 2) if label_seconds else None
    record = {
        "system": system,
        "model": model,
        "train_seconds": None,
        "posts_per_s": speed,
        **extra,
        **metrics,
    }
    write_predictions(system_dir / "predictions.csv", examples, predictions)
    (system_dir / METRICS_FILE).write_text(json.dumps(record, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"{system} ({model}): accuracy {record['accuracy']:.3f}, macro-F1 {record['macro_f1']:.3f}")


def ensure_run(tcfg: TrainConfig, preset: Preset, systems: list[str], out: Path) -> None:
    """Train the model's generative run when a system still to do needs it: generative and zero_shot
    decode with it, and the tiny preset's cls_head starts from the base the run built. It trains in a
    child process (labeltune.train.spawn): training on the unsloth backend patches transformers' model
    classes process-wide, and this process goes on to decode and to build a classification model."""
    users = [s for s in ("generative", "zero_shot") if s in systems]
    if "cls_head" in systems and preset.model_id is None:
        users.append("cls_head")
    pending = [s for s in users if finished(out / system_key(s, tcfg.model)) is None]
    if pending and not (Path(tcfg.output) / ADAPTER).is_dir():
        spawn(tcfg)


def forgetting(cfg: CompareConfig, model, tokenizer, max_length: int) -> dict | None:
    """Perplexity of base vs tuned on general text (labeltune.perplexity); None when switched off."""
    if cfg.forgetting is None:
        return None
    texts, source = load_general_texts(cfg.forgetting, cfg.forgetting_limit)
    return {"source": source, **forgetting_check(model, tokenizer, texts, max_length, cfg.batch_size)}


def run_generative(
    cfg: CompareConfig,
    model_name: str,
    systems: list[str],
    task: TaskSpec,
    examples: list[Example],
    out: Path,
) -> None:
    """generative and zero_shot rows of one model: decode the split with the run's adapter on and off."""
    run_dir = out / system_key("generative", model_name)
    todo = [
        s
        for s in ("generative", "zero_shot")
        if s in systems and finished(out / system_key(s, model_name)) is None
    ]
    if not todo:
        return
    run = open_run(run_dir)
    model, prompter = run.load()
    texts = [ex.text for ex in examples]
    if "zero_shot" in todo:
        with model.disable_adapter():
            predictions, seconds = timed(predict, model, prompter, texts, None, cfg.batch_size, cfg.mode)
        save_result(
            out / system_key("zero_shot", model_name),
            "zero_shot",
            model_name,
            task,
            examples,
            predictions,
            seconds,
        )
    if "generative" in todo:
        predictions, seconds = timed(predict, model, prompter, texts, None, cfg.batch_size, cfg.mode)
        check = forgetting(cfg, model, prompter.tokenizer, run.config.max_length)
        save_result(
            run_dir,
            "generative",
            model_name,
            task,
            examples,
            predictions,
            seconds,
            train_seconds=run.info.train_seconds,
            forgetting=check,
        )


def llm_base(preset: Preset, tcfg: TrainConfig, cuda: bool) -> tuple[str, bool]:
    """(base model the generative run started from, load it 4-bit?), as `labeltune train` loads it."""
    four_bit = select_4bit(tcfg.load_in_4bit, cuda, preset)
    return base_to_load(preset, four_bit) or str(Path(tcfg.output) / BASE), four_bit


def run_cls_head(
    cfg: CompareConfig,
    tcfg: TrainConfig,
    task: TaskSpec,
    train_ex: list[Example],
    examples: list[Example],
    out: Path,
    cuda: bool,
) -> None:
    """LoRA + classification head on the generative run's base model; adapter saved in its folder."""
    system_dir = out / system_key("cls_head", tcfg.model)
    if finished(system_dir) is not None:
        return
    preset = resolve_preset(tcfg.model)
    base, four_bit = llm_base(preset, tcfg, cuda)
    model, tokenizer = classify.load_llm_classifier(base, task, tcfg, preset.target_modules, four_bit)
    stats = classify.fit(model, tokenizer, train_ex, task, tcfg, tcfg.lr)
    predictions, seconds = timed(
        classify.predict,
        model,
        tokenizer,
        [ex.text for ex in examples],
        task,
        tcfg.max_length,
        cfg.batch_size,
    )
    model.save_pretrained(system_dir / ADAPTER)
    tokenizer.save_pretrained(system_dir / ADAPTER)
    save_result(
        system_dir,
        "cls_head",
        tcfg.model,
        task,
        examples,
        predictions,
        seconds,
        base=base,
        lr=tcfg.lr,
        **stats,
    )


def run_encoder(
    cfg: CompareConfig,
    tcfg: TrainConfig,
    task: TaskSpec,
    train_ex: list[Example],
    examples: list[Example],
    out: Path,
    cuda: bool,
) -> None:
    """Full fine-tune of an encoder classifier (e5-small on CPU by default); model saved in its folder."""
    system_dir = out / "encoder"
    asked = {k: getattr(cfg, k) for k in ENCODER_FIELDS}
    done = finished(system_dir)
    if done is not None:
        before = done.get("settings", {})
        if all(before.get(k) == v for k, v in asked.items()):
            return
        changed = ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in asked.items() if before.get(k) != v)
        print(
            f"compare: the encoder's settings changed ({changed}): training it again in {system_dir}",
            file=sys.stderr,
        )
        (system_dir / METRICS_FILE).unlink()
    name, model, tokenizer, lr = classify.build_encoder(
        cfg.encoder, [ex.text for ex in train_ex], task, max_length=tcfg.max_length, seed=tcfg.seed, cuda=cuda
    )
    settings = replace(
        tcfg,
        max_length=min(tcfg.max_length, model.config.max_position_embeddings),
        epochs=cfg.encoder_epochs or tcfg.epochs,
    )
    lr = cfg.encoder_lr or lr
    stats = classify.fit(model, tokenizer, train_ex, task, settings, lr)
    texts = [ex.text for ex in examples]
    predictions, seconds = timed(
        classify.predict, model, tokenizer, texts, task, settings.max_length, cfg.batch_size
    )
    classify.save_encoder(name, model, tokenizer, system_dir / "model")
    save_result(
        system_dir,
        "encoder",
        name,
        task,
        examples,
        predictions,
        seconds,
        lr=lr,
        epochs=settings.epochs,
        settings=asked,
        **stats,
    )


def run_majority(task: TaskSpec, train_ex: list[Example], examples: list[Example], out: Path) -> None:
    """The most frequent training label (labeltune.metrics.majority_baseline) for every row, with the
    median training score of that label; probabilities = the training label frequencies."""
    system_dir = out / "majority"
    if finished(system_dir) is not None:
        return
    train_labels = [ex.label for ex in train_ex]
    label = majority_baseline(train_labels, [ex.label for ex in examples], task.label_values)["label"]
    score = None
    if task.score is not None:
        known = [ex.score for ex in train_ex if ex.label == label and ex.score is not None]
        score = round(statistics.median(known)) if known else None
    counts = Counter(train_labels)
    probs = {lab: counts[lab] / len(train_labels) for lab in task.label_values}
    prediction = Answer(label, score, True, "", task.render_answer(label, score), False, probs)
    save_result(system_dir, "majority", "-", task, examples, [prediction] * len(examples))


# ---------------------------------------------------------------- outputs


def collect(out: Path, systems: list[str], models: list[str]) -> dict[str, dict]:
    """{folder name: saved result} in table order (the order of --systems, then of --models)."""
    keys = [system_key(s, m) for s in systems for m in (models if s in LLM_SYSTEMS else [None])]
    return {key: finished(out / key) for key in keys}


def columns(task: TaskSpec) -> list[str]:
    """COLUMNS with one recall_<label name> column per label after macro_f1_ci (is a class starved?)."""
    at = COLUMNS.index(RECALL_AFTER) + 1
    return [*COLUMNS[:at], *[f"recall_{lab.name}" for lab in task.labels], *COLUMNS[at:]]


def cell_values(r: dict, task: TaskSpec) -> dict:
    """One result's values by column; a column a result lacks (saved by an older labeltune) is None; a
    recall of a label with no gold row is None (nothing to recall)."""
    per_class = r.get("per_class", {})
    recalls = {
        f"recall_{lab.name}": per_class[lab.value]["recall"]
        if per_class.get(lab.value, {}).get("support")
        else None
        for lab in task.labels
    }
    return {c: recalls[c] if c in recalls else r.get(c) for c in columns(task)}


def table_rows(results: dict[str, dict], task: TaskSpec) -> list[list[str]]:
    return [[format_cell(c, v) for c, v in cell_values(r, task).items()] for r in results.values()]


def forgetting_lines(results: dict[str, dict]) -> list[str]:
    """One sentence per system that has a forgetting check."""
    out = []
    for key, r in results.items():
        f = r.get("forgetting")
        if f:
            out.append(
                f"{key}: perplexity on general text {f['base_ppl']:.1f} (base) -> "
                f"{f['tuned_ppl']:.1f} (tuned), "
                f"{f['n_texts']} texts / {f['n_tokens']} tokens from {f['source']}"
            )
    return out


def write_csv(path: Path, results: dict[str, dict], task: TaskSpec) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns(task))
        for r in results.values():
            values = cell_values(r, task)
            ci = values["macro_f1_ci"]
            values["macro_f1_ci"] = f"{ci[0]:.4f}-{ci[1]:.4f}" if ci else None
            writer.writerow(values.values())


def write_html(
    path: Path, cfg: CompareConfig, task: TaskSpec, summary: dict, results: dict[str, dict]
) -> None:
    """report.html from labeltune/html/compare.html.jinja."""
    html = render_html(
        "compare.html.jinja",
        dict(
            cfg=to_dict(cfg),
            task=task,
            summary=summary,
            columns=columns(task),
            rows=table_rows(results, task),
            results=results,
            forgetting=forgetting_lines(results),
            image="confusions.png",
        ),
    )
    path.write_text(html, encoding="utf-8")


def write_outputs(
    cfg: CompareConfig, out: Path, task: TaskSpec, summary: dict, results: dict[str, dict]
) -> str:
    """results.csv/.md, confusions.png, report.html, metrics.json; returns the Markdown table."""
    table = "\n".join(md_table(columns(task), table_rows(results, task)))
    n = next(iter(results.values()))["n"]
    notes = [
        f"Task {task.name}, {cfg.split} split of {summary['source']} "
        f"(n={n}, fingerprint {summary['fingerprint'][:12]}).",
        *forgetting_lines(results),
    ]
    md = [
        f"# Comparison on {cfg.split} (n={n})",
        "",
        table,
        "",
        *[f"- {line}" for line in notes],
        "",
        "![confusion matrices](confusions.png)",
        "",
    ]
    (out / "results.md").write_text("\n".join(md), encoding="utf-8")
    write_csv(out / "results.csv", results, task)
    names = {lab.value: lab.name for lab in task.labels}
    confusions = {key: r["confusion"] for key, r in results.items()}
    plot_confusions(confusions, out / "confusions.png", f"{task.name}, {cfg.split} split (n={n})", names)
    write_html(out / "report.html", cfg, task, summary, results)
    metrics = {
        "config": to_dict(cfg),
        "task": task.name,
        "split": cfg.split,
        "data": summary,
        "systems": results,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=1), encoding="utf-8")
    return table


def main(cfg: CompareConfig) -> dict[str, dict]:
    """Split once, run every requested system on it (skipping finished ones), write the tables and plots."""
    import torch

    systems, models = cfg.systems, cfg.models
    out = Path(cfg.output)
    check_resume(cfg, out)
    first = train_config(cfg, models[0], out / system_key("generative", models[0]), cfg.data)
    task = load_task(first.task)
    out.mkdir(parents=True, exist_ok=True)
    save(cfg, out / "config.yaml")
    summary = split_once(first, task, out / DATA)
    train_ex, examples = read_split(out / DATA, "train", task), read_split(out / DATA, cfg.split, task)
    cuda = torch.cuda.is_available()
    for model_name in models:
        tcfg = run_config(cfg, model_name, out)
        ensure_run(tcfg, resolve_preset(model_name), systems, out)
        run_generative(cfg, model_name, systems, task, examples, out)
        if "cls_head" in systems:
            run_cls_head(cfg, tcfg, task, train_ex, examples, out, cuda)
    if "encoder" in systems:
        run_encoder(cfg, run_config(cfg, models[0], out), task, train_ex, examples, out, cuda)
    if "majority" in systems:
        run_majority(task, train_ex, examples, out)
    results = collect(out, systems, models)
    print(write_outputs(cfg, out, task, summary, results))
    print(f"wrote {out}/results.md, results.csv; report: {out / 'report.html'}")
    return results
