"""labeltune train: LoRA SFT of a causal LM on prompt -> answer, loss on the answer + EOS only.

    labeltune train --model tiny --data data/sample.csv --output runs/demo
    labeltune train --config run.yaml --lr 1e-4

The run directory gets: config.yaml (resolved), model.json (base + backend), adapter/ (LoRA weights
and the tokenizer), base/ (tiny only), data/{train,dev,test}.jsonl + data/summary.json (counts,
dropped rows, leaks, fingerprint), train_log.jsonl, versions.json; with ``--report-to tensorboard``
also tensorboard/ (event files: ``tensorboard --logdir runs/``).
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path

from labeltune import data as data_mod
from labeltune.config import TrainConfig, save
from labeltune.models import Preset, add_lora, build_tiny, load_base, resolve_preset
from labeltune.prompts import load_template, render_prompt
from labeltune.task import TaskSpec, load_task

SPLIT_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl")


def with_preset_defaults(cfg: TrainConfig, preset: Preset) -> TrainConfig:
    """Fill every None training field from the preset."""
    fields = ("lr", "epochs", "batch_size", "grad_accum", "lora_r", "lora_alpha", "max_length")
    return replace(cfg, **{f: getattr(preset, f) for f in fields if getattr(cfg, f) is None})


def load_splits(cfg: TrainConfig, task: TaskSpec, warnings: list[str] | None = None,
                ) -> tuple[dict[str, list[data_mod.Example]], list[dict]]:
    """train/dev/test from a folder of split files, or a stratified split of one file; plus dropped rows.
    What reading changed or doubted (short rows, replaced characters) is appended to `warnings`."""
    source = Path(cfg.data)
    columns = dict(text_column=cfg.text_column, label_column=cfg.label_column, score_column=cfg.score_column)
    warnings = warnings if warnings is not None else []
    if source.is_dir():
        splits, dropped = {}, []
        for name in data_mod.SPLITS:
            files = [source / f"{name}{s}" for s in SPLIT_FILE_SUFFIXES if (source / f"{name}{s}").is_file()]
            if not files:
                raise FileNotFoundError(f"{source}: no {name}.csv/.tsv/.jsonl")
            report = data_mod.ReadReport(str(files[0]))
            splits[name], rows = data_mod.load_examples(files[0], task, encoding=cfg.encoding, report=report, **columns)
            dropped += [{"split": name, **r} for r in rows]
            warnings += report.warnings()
        return splits, dropped
    report = data_mod.ReadReport(str(source))
    examples, dropped = data_mod.load_examples(source, task, encoding=cfg.encoding, report=report, **columns)
    warnings += report.warnings()
    if not examples:
        raise ValueError(f"{source}: no usable rows ({data_mod.dropped_summary(dropped)})")
    return data_mod.split_examples(examples, cfg.split, cfg.seed), dropped


def check_leakage(cfg: TrainConfig, splits: dict) -> tuple[dict, list]:
    leaks = data_mod.find_leaks(splits)
    if leaks and cfg.leakage == "error":
        shown = "\n".join(f"  {lk.kind:10s} {lk.split}[{lk.index}] = train[{lk.train_index}]: {lk.text[:40]!r}" for lk in leaks[:10])
        raise ValueError(
            f"{len(leaks)} dev/test rows also appear in train (scores would be inflated):\n{shown}\n"
            "Deduplicate the data, or pass --leakage drop (remove them from train) or --leakage allow."
        )
    if leaks and cfg.leakage == "drop":
        splits = data_mod.drop_leaked_from_train(splits, leaks)
    return splits, leaks


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("labeltune", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "tokenizers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_splits(cfg: TrainConfig, splits: dict, dropped: list[dict], leaks: list, data_dir: Path) -> dict:
    """train/dev/test.jsonl + summary.json (source, fingerprint, label counts, dropped rows, leaks) in
    `data_dir`; summary.json is written last, so its presence means the split is complete."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, examples in splits.items():
        data_mod.write_jsonl(examples, data_dir / f"{name}.jsonl")
    summary = {
        "source": str(cfg.data),
        "fingerprint": data_mod.fingerprint(splits),
        "counts": {name: data_mod.label_counts(ex) for name, ex in splits.items()},
        "dropped": dropped,
        "leaks": [vars(lk) for lk in leaks],
        "leakage_policy": cfg.leakage,
    }
    (data_dir / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1), encoding="utf-8")
    return summary


def make_splits(cfg: TrainConfig, task: TaskSpec, warnings: list[str] | None = None) -> tuple[dict, list[dict], list]:
    """(splits, dropped rows, leaks) of `cfg.data`: loaded, leakage policy applied, train cut to --limit,
    checked to give meaningful results (check_splits)."""
    splits, dropped = load_splits(cfg, task, warnings)
    splits, leaks = check_leakage(cfg, splits)
    if cfg.limit:
        splits["train"] = splits["train"][: cfg.limit]
    check_splits(splits, task, cfg.allow_incomplete)
    return splits, dropped, leaks


def check_splits(splits: dict, task: TaskSpec, allow_incomplete: bool) -> None:
    """Refuse data whose results would mean nothing: no training rows, a task label the model never sees
    in training, an empty dev or test split (evaluation and model choice need them); with
    allow_incomplete the last two are warnings."""
    import sys

    if not splits["train"]:
        raise ValueError("no training examples (every row was dropped, or the train split is empty)")
    counts = data_mod.label_counts(splits["train"])
    problems = [f"label {v} ({task.label_name(v)}) has no training rows" for v in task.label_values if v not in counts]
    problems += [f"the {name} split is empty" for name in ("dev", "test") if not splits[name]]
    if problems and not allow_incomplete:
        raise ValueError("; ".join(problems) + " (more data, other split ratios, or --allow-incomplete to train anyway)")
    for problem in problems:
        print(f"labeltune: warning: {problem} (--allow-incomplete)", file=sys.stderr)


def split_once(cfg: TrainConfig, task: TaskSpec, data_dir: Path) -> dict:
    """Split `cfg.data` as `labeltune train` does (leakage policy, --limit) into `data_dir` unless a
    complete split is already there; returns its summary. sweep and compare hand this folder to every
    run (see on_split_folder), so all of them train and are measured on the same rows."""
    if (data_dir / "summary.json").is_file():
        return json.loads((data_dir / "summary.json").read_text(encoding="utf-8"))
    return write_splits(cfg, *make_splits(cfg, task), data_dir)


def on_split_folder(cfg: TrainConfig, data_dir: Path) -> TrainConfig:
    """`cfg` reading a folder written by split_once (jsonl files with text/label/score fields)."""
    return replace(cfg, data=str(data_dir), text_column="text", label_column="label", score_column="score", encoding=None)


TRACKERS = {"tensorboard": ("tensorboardX", "torch.utils.tensorboard"), "wandb": ("wandb",)}


def trackers(report_to: str) -> list[str]:
    """The requested trackers that are installed; a missing one is skipped with a warning (training
    never fails for want of a tracker: train_log.jsonl is always written)."""
    import warnings

    wanted = [t.strip() for t in report_to.split(",") if t.strip() and t.strip() != "none"]
    unknown = [t for t in wanted if t not in TRACKERS]
    if unknown:
        raise ValueError(f"report_to: unknown tracker(s) {unknown}; available: none, {', '.join(TRACKERS)}")
    found = []
    for name in wanted:
        modules = TRACKERS[name]
        if any(_installed(m) for m in modules):
            found.append(name)
        else:
            warnings.warn(f"report_to={name}: not installed (pip install {modules[0]}); skipped", stacklevel=2)
    return found


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # parent package missing (torch.utils.tensorboard needs `tensorboard`)
        return False


def tensorboard_callback(log_dir: Path):
    """transformers' TensorBoardCallback writing into the run directory (its default is ./runs/<date>,
    and where it looks differs between transformers versions, so the writer is made here)."""
    from transformers.integrations import TensorBoardCallback

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from tensorboardX import SummaryWriter
    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)))


def collate(batch: list[dict], pad_token_id: int) -> dict:
    """Right-pad input_ids (pad id) and labels (-100); attention mask 1 on real tokens."""
    from labeltune.features import IGNORE_INDEX, pad_ids

    input_ids, attention = pad_ids([row["input_ids"] for row in batch], pad_token_id)
    labels, _ = pad_ids([row["labels"] for row in batch], IGNORE_INDEX)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def check_machine(cfg: TrainConfig, preset: Preset, processes: int = 1) -> None:
    """Everything about this machine that would stop training, checked before anything is imported
    for training, downloaded or written: GPU-only preset on a CPU, several GPUs in one process, a TRL
    that cannot train on this device."""
    from importlib.metadata import version

    import torch

    from labeltune.models import check_fits_machine, check_one_gpu, check_trainer_supports

    cuda = torch.cuda.is_available()
    check_fits_machine(preset, cuda)
    if cuda:
        check_one_gpu(torch.cuda.device_count(), processes)
    check_trainer_supports(cuda, version("trl"))


def main(cfg: TrainConfig) -> Path:
    """Train; under `accelerate launch` (DDP) every rank trains and only rank 0 writes the run directory.

    With the unsloth backend, Unsloth is imported here before trl/transformers/peft (it patches them
    at import); in a process that imported those already (a notebook), use spawn(cfg) instead."""
    import os
    import sys

    import torch

    from labeltune.models import prepare_backend, trainer_precision

    preset = resolve_preset(cfg.model)
    cfg = with_preset_defaults(cfg, preset)
    cuda = torch.cuda.is_available()
    check_machine(cfg, preset, int(os.environ.get("WORLD_SIZE", "1")))  # before anything is downloaded or written
    backend = prepare_backend(cfg.backend)  # imports unsloth first when it is the backend

    from accelerate import PartialState
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from labeltune.features import Prompter

    task = load_task(cfg.task)
    template_name = cfg.template or task.default_template
    template = load_template(template_name)
    cfg = replace(cfg, template=template_name)

    run_dir = Path(cfg.output)
    if (run_dir / "adapter").exists():
        raise FileExistsError(f"{run_dir} already holds a trained run; choose another --output or delete it")
    data_mod.check_output_folder(run_dir, "model.json", "train")  # a folder of the user's is never written into
    warnings: list[str] = []
    splits, dropped, leaks = make_splits(cfg, task, warnings)
    if dropped:
        warnings.append(data_mod.dropped_summary(dropped, sum(map(len, splits.values())) + len(dropped))
                        + f" (each with its reason in {run_dir / 'data' / 'summary.json'})")
    if leaks and cfg.leakage != "error":
        what = "removed from train" if cfg.leakage == "drop" else "left in train (--leakage allow)"
        warnings.append(f"{len(leaks)} dev/test rows duplicate training rows: {what}")

    state = PartialState(cpu=not cuda)  # one process, or one per rank (gloo on CPU) under accelerate launch
    if state.num_processes > 1 and backend == "unsloth":
        raise ValueError("multi-process training runs on the hf backend: add --backend hf")
    is_main = state.is_main_process
    info = {
        "base": "base/" if preset.model_id is None else preset.model_id,
        "full_id": preset.full_id,
        "backend": backend,
        "load_in_4bit": cuda and preset.model_id is not None,
        "max_length": cfg.max_length,
        "preset": preset.name,
        "world_size": state.num_processes,
    }
    with state.main_process_first():
        if is_main:
            (run_dir / "data").mkdir(parents=True, exist_ok=True)
            (run_dir / "model.json").write_text(json.dumps(info, indent=1), encoding="utf-8")  # first: a run of ours
            save(cfg, run_dir / "config.yaml")
            write_splits(cfg, splits, dropped, leaks, run_dir / "data")
            (run_dir / "versions.json").write_text(json.dumps(package_versions(), indent=1), encoding="utf-8")
            if preset.model_id is None:  # tiny: base model + tokenizer built from the rendered training prompts
                corpus = [render_prompt(template, task, ex.text) for ex in splits["train"]] + task.all_answers()
                build_tiny(corpus, run_dir / "base", cfg.seed)
            (run_dir / "model.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    base = str(run_dir / "base") if preset.model_id is None else preset.model_id
    model, tokenizer = load_base(base, backend, cfg.max_length, info["load_in_4bit"])
    prompter = Prompter(tokenizer, template, task, cfg.max_length)

    def features(examples):
        return Dataset.from_list(
            [prompter.training_features(ex.text, task.render_answer(ex.label, ex.score)) for ex in examples]
        )

    train_ds, dev_ds = features(splits["train"]), features(splits["dev"]) if splits["dev"] else None
    model = add_lora(
        model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, preset.target_modules, cfg.seed,
        preset.modules_to_save, backend, preset.gradient_checkpointing,
    )

    precision = trainer_precision(backend, model)  # matches the model unsloth/hf loaded
    tracking = trackers(cfg.report_to)  # the Trainer logs to them from rank 0 only
    args = SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio of total steps
        weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        logging_steps=cfg.logging_steps,
        eval_strategy="epoch" if dev_ds is not None else "no",
        save_strategy="no",
        report_to=[t for t in tracking if t != "tensorboard"] or "none",
        run_name=run_dir.name,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        max_length=None,
        disable_tqdm=True,
        dataloader_pin_memory=cuda,
        use_cpu=not cuda,
        # unsloth applies its own checkpointing in get_peft_model; hf uses the Trainer's
        gradient_checkpointing=preset.gradient_checkpointing and backend == "hf",
        ddp_find_unused_parameters=False if state.num_processes > 1 else None,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=dev_ds,
        processing_class=tokenizer,
        data_collator=lambda batch: collate(batch, tokenizer.pad_token_id),
        callbacks=[tensorboard_callback(run_dir / "tensorboard")] if "tensorboard" in tracking and is_main else None,
    )
    started = time.time()
    trainer.train()
    seconds = time.time() - started

    if trainer.is_world_process_zero():
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # nothing is saved there (save_strategy=no)
        model.save_pretrained(run_dir / "adapter")
        tokenizer.save_pretrained(run_dir / "adapter")
        with open(run_dir / "train_log.jsonl", "w", encoding="utf-8") as f:
            for record in trainer.state.log_history:
                f.write(json.dumps(record) + "\n")
        info.update(train_seconds=round(seconds, 1), steps=trainer.state.global_step, precision=precision)
        (run_dir / "model.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
        print(f"trained {trainer.state.global_step} steps in {seconds:.0f}s on {backend}/{precision} -> {run_dir}")
        for warning in warnings:
            print(f"labeltune: warning: {warning}", file=sys.stderr)
    state.wait_for_everyone()
    return run_dir


def spawn(cfg: TrainConfig) -> Path:
    """`labeltune train` for `cfg` in a child process (its output streamed here, line by line): the
    way to train from a notebook, a sweep or a comparison. The child imports Unsloth (when it is the
    backend) before trl/transformers/peft whatever this process has imported, this process never gets
    Unsloth's process-wide patches of transformers' classes (so it can decode and build other models
    afterwards), and the GPU memory of each training run is freed when its process ends.
    A refusal in the child (bad option, existing run) is raised here as the same ValueError."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "train.yaml"
        save(cfg, config)
        proc = subprocess.Popen(
            [sys.executable, "-m", "labeltune.cli", "train", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", bufsize=1,
        )
        tail: list[str] = []
        for line in proc.stdout:
            print(line, end="", flush=True)
            tail = (tail + [line.rstrip("\n")])[-20:]
        code = proc.wait()
    if code != 0:
        refusal = next((t for t in reversed(tail) if t.startswith("labeltune: error: ")), None)
        if refusal is not None:
            raise ValueError(refusal.removeprefix("labeltune: error: "))
        raise RuntimeError(f"labeltune train exited with {code}:\n" + "\n".join(tail))
    return Path(cfg.output)
