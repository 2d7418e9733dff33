"""labeltune train: LoRA SFT of a causal LM on prompt -> answer, loss on the answer + EOS only.

    labeltune train --model tiny --data data/sample.csv --output runs/demo
    labeltune train --config run.yaml --lr 1e-4

The run directory gets: config.yaml (resolved), model.json (base + backend), adapter/ (LoRA weights
and the tokenizer), base/ (tiny only), data/{train,dev,test}.jsonl + data/summary.json (counts,
dropped rows, leaks, fingerprint), train_log.jsonl, versions.json; with ``--report-to tensorboard``
also tensorboard/ (event files: ``tensorboard --logdir runs/``); of gemma3-270m, the Gemma notice and
terms (labeltune.gemma3.NOTICE_FILES).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from labeltune import checkpoints, gemma3
from labeltune import data as data_mod
from labeltune import run as run_files
from labeltune.config import TrainConfig, save, to_dict
from labeltune.features import IGNORE_INDEX, Prompter, pad_ids
from labeltune.lock import FOLDER_LOCK, hold
from labeltune.models import (
    add_lora,
    base_to_load,
    build_tiny,
    check_fits_machine,
    check_one_gpu,
    check_trainer_supports,
    cpu_has_native_bf16,
    full_modules_in_fp32,
    gpu_capability,
    load_base,
    prepare_backend,
    select_4bit,
    train_precision,
    trainer_precision,
)
from labeltune.presets import Preset, resolve_preset, with_preset_defaults
from labeltune.prompts import load_template, render_prompt
from labeltune.splits import fingerprint, make_splits, write_splits
from labeltune.task import load_task, task_path


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("labeltune", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "tokenizers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


TRACKERS = {"tensorboard": ("tensorboardX", "torch.utils.tensorboard"), "wandb": ("wandb",)}


def trackers(report_to: list[str]) -> list[str]:
    """The requested trackers that are installed; a missing one is skipped with a warning (training
    never fails for want of a tracker: train_log.jsonl is always written)."""
    import warnings

    wanted = [t for t in report_to if t != "none"]  # names checked where the config is parsed
    found = []
    for name in wanted:
        modules = TRACKERS[name]
        if any(_installed(m) for m in modules):
            found.append(name)
        else:
            warnings.warn(
                f"report_to={name}: not installed (pip install {modules[0]}); skipped", stacklevel=2
            )
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
    input_ids, attention = pad_ids([row["input_ids"] for row in batch], pad_token_id)
    labels, _ = pad_ids([row["labels"] for row in batch], IGNORE_INDEX)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def check_machine(preset: Preset, processes: int = 1) -> None:
    """Everything about this machine that would stop training, checked before anything is imported
    for training, downloaded or written: GPU-only preset on a CPU, several GPUs in one process, a TRL
    that cannot train on this device."""
    from importlib.metadata import version

    import torch

    cuda = torch.cuda.is_available()
    check_fits_machine(preset, cuda)
    if cuda:
        check_one_gpu(torch.cuda.device_count(), processes)
    check_trainer_supports(cuda, version("trl"))


def check_base_installed(preset: Preset) -> None:
    """A preset whose base comes from a PyPI package (gemma3-270m): refused in one line naming the install
    command when the package is missing, before anything is written."""
    if preset.name == gemma3.NAME:
        gemma3.package_data()


def read_data(cfg: TrainConfig, task, run_dir: Path) -> tuple[dict, list[dict], list, list[str]]:
    """(splits, dropped rows, leaks, warnings for the end of the command) of cfg.data (labeltune.splits)."""
    warnings: list[str] = []
    splits, dropped, leaks = make_splits(cfg, task, warnings)
    if dropped:
        warnings.append(
            data_mod.dropped_summary(dropped, sum(map(len, splits.values())) + len(dropped))
            + f" (each with its reason in {run_dir / run_files.DATA / run_files.DATA_SUMMARY})"
        )
    if leaks and cfg.leakage != "error":
        what = "removed from train" if cfg.leakage == "drop" else "left in train (--leakage allow)"
        warnings.append(f"{len(leaks)} dev/test rows duplicate training rows: {what}")
    return splits, dropped, leaks, warnings


def write_run_dir(
    cfg: TrainConfig, preset: Preset, task, template, info: run_files.RunInfo, data: tuple, run_dir: Path
) -> None:
    """Everything of the run directory before training: model.json first (the folder is ours from then
    on), config, splits, versions and, for tiny, the base model built from the rendered training prompts."""
    splits, dropped, leaks = data
    (run_dir / run_files.DATA).mkdir(parents=True, exist_ok=True)
    info.save(run_dir)
    save(cfg, run_dir / run_files.CONFIG)
    write_splits(cfg, splits, dropped, leaks, run_dir / run_files.DATA)
    (run_dir / run_files.VERSIONS).write_text(json.dumps(package_versions(), indent=1), encoding="utf-8")
    # the run's own template and task spec: it labels as trained where the original files are not, and never
    # reads a file outside itself (run.Run.template)
    shutil.copyfile(template.filename, run_dir / run_files.TEMPLATE)
    shutil.copyfile(task_path(cfg.task), run_dir / run_files.TASK)
    if preset.name == gemma3.NAME:  # the Gemma Terms of Use travel with everything made from the weights
        gemma3.copy_notice(run_dir)
    if preset.model_id is None:
        corpus = [render_prompt(template, task, ex.text) for ex in splits["train"]] + task.all_answers()
        build_tiny(corpus, run_dir / run_files.BASE, cfg.seed)


def sft_config(
    cfg: TrainConfig,
    preset: Preset,
    backend: str,
    precision: str,
    tracking: list[str],
    run_dir: Path,
    cuda: bool,
    processes: int,
    has_dev: bool,
):
    """TRL's SFTConfig of this run: pre-tokenised data (labeltune builds prompt | answer + EOS and the loss
    mask itself), cosine schedule, eval on dev each epoch, the precision of the loaded model."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(run_dir / run_files.CHECKPOINTS),
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
        eval_strategy="epoch" if has_dev else "no",
        # checkpoints at every epoch end (callbacks.Checkpoints) and every --save-steps; rotation is
        # labeltune's
        save_strategy="steps" if cfg.save_steps else "epoch",
        save_steps=cfg.save_steps or 500,
        save_total_limit=None,
        save_only_model=False,
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
        ddp_find_unused_parameters=False if processes > 1 else None,
    )


def best_epoch(log_history: list[dict], metric: str, last_step: int) -> dict | None:
    """model.json's record of the kept epoch: the best dev record by `metric`, with the last epoch's value
    and why it won; None when there was no dev evaluation (the last weights are kept)."""
    best = checkpoints.best_record(log_history, metric)
    if best is None:
        return None
    key = checkpoints.METRICS[metric][0]
    last = [r for r in log_history if key in r][-1]
    why = f"best dev {metric} {best[key]:.4f} at epoch {best['epoch']:g}" + (
        "" if best is last else f" (last evaluated epoch {last['epoch']:g}: {last[key]:.4f})"
    )
    return {
        "metric": metric,
        "epoch": best["epoch"],
        "step": best["step"],
        "value": best[key],
        "last_value": last[key],
        "is_last_step": best["step"] == last_step,
        "why": why,
    }


def dev_scoring(backend: str, metric: str, has_dev: bool) -> str | None:
    """Where the dev split is decoded to choose the kept epoch by `metric`: "loop" (at each epoch end, in
    training: labeltune.callbacks.DevScore), "after" (the unsloth backend: its forward is not one score mode
    decodes through, so each epoch's checkpoint is scored in a fresh process after training), or None (no
    dev split, or --best-metric loss: the Trainer's dev loss)."""
    if not has_dev or metric == "loss":
        return None
    return "after" if backend == "unsloth" else "loop"


def score_checkpoints(run_dir: Path, log_history: list[dict], say) -> list[dict]:
    """The dev record of each epoch-end checkpoint, each scored by `python -m labeltune.devscore` in a child
    process (one that never imports Unsloth), with that epoch's dev loss."""
    import subprocess

    from labeltune.devscore import describe

    records = []
    losses = {r["step"]: r["eval_loss"] for r in log_history if "eval_loss" in r}
    for path in checkpoints.complete(run_dir / run_files.CHECKPOINTS):
        step = checkpoints.step_of(path)
        if step not in losses:  # a --save-steps checkpoint, not an epoch end
            continue
        proc = subprocess.run(
            [sys.executable, "-m", "labeltune.devscore", str(run_dir), str(path)],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
            raise RuntimeError(f"scoring the dev split with {path} failed (exit {proc.returncode}):\n{tail}")
        epoch = json.loads((path / checkpoints.MARKER).read_text(encoding="utf-8"))["epoch"]
        record = {
            "epoch": round(epoch or 0, 4),
            "step": step,
            **json.loads(proc.stdout.strip().splitlines()[-1]),
            "dev_loss": losses[step],
        }
        say(describe(record) + " (scored after training, in a fresh process)")
        records.append(record)
    return records


def save_adapter(model, tokenizer, run_dir: Path, best: dict | None) -> None:
    """adapter/: the best epoch's checkpoint weights, or the model in memory when that is the best (or
    there was no dev evaluation); written beside and renamed, so a kill never leaves a half adapter/ that
    would make the run look finished. `model` None (freed: dev scored after training): the best epoch's
    checkpoint, whichever it is."""
    tmp = run_dir / (run_files.ADAPTER + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    source = (
        run_dir / run_files.CHECKPOINTS / f"{checkpoints.PREFIX}{best['step']}"
        if best and (model is None or not best["is_last_step"])
        else None
    )
    if source is not None and (source / run_files.ADAPTER_WEIGHTS).is_file():
        tmp.mkdir(parents=True)
        for name in (run_files.ADAPTER_WEIGHTS, run_files.ADAPTER_CONFIG):
            shutil.copy2(source / name, tmp / name)
    else:
        model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, run_dir / run_files.ADAPTER)


def save_run(
    state,
    model,
    tokenizer,
    info: run_files.RunInfo,
    run_dir: Path,
    metric: str,
    seconds: float,
    warnings: list[str],
) -> None:
    """The adapter of the best epoch (+ tokenizer), the training log and model.json's training record
    (steps, seconds, which epoch was kept and why); then the warnings and the next command. `state`: the
    Trainer's state."""
    best = best_epoch(state.log_history, metric, state.global_step)
    with open(run_dir / run_files.TRAIN_LOG, "w", encoding="utf-8") as f:
        for record in state.log_history:
            f.write(json.dumps(record) + "\n")
    stopped = any(r.get("early_stop") for r in state.log_history)
    info.train_seconds, info.steps = round(seconds, 1), state.global_step
    info.epochs_run, info.best, info.early_stopped = round(state.epoch or 0, 4), best, stopped
    info.save(run_dir)
    save_adapter(model, tokenizer, run_dir, best)  # last: adapter/ is what makes the run finished
    checkpoints.finish(run_dir / run_files.CHECKPOINTS)
    print(
        f"trained {state.global_step} steps in {seconds:.0f}s on {info.backend}/{info.precision} -> {run_dir}"
    )
    if best:
        print(f"kept epoch {best['epoch']:g}: {best['why']}" + ("; stopped early" if stopped else ""))
    for warning in warnings:
        print(f"labeltune: warning: {warning}", file=sys.stderr)
    print(f"next: labeltune evaluate --run {run_dir}")


RESUME_IGNORED = ("output",)  # how the same run directory was named may differ between two shells


def check_resume(cfg: TrainConfig, run_dir: Path, splits: dict) -> None:
    """Refuse to resume an unfinished run with other options or other data than it started with."""
    saved = to_dict(run_files.load_config(run_dir))
    now = to_dict(cfg)
    changed = [
        f"--{k.replace('_', '-')} {now[k]!r} (the run has {saved.get(k)!r})"
        for k in now
        if k not in RESUME_IGNORED and saved.get(k) != now[k]
    ]
    if changed:
        raise ValueError(
            f"{run_dir} is an unfinished run started with other options: "
            + "; ".join(changed)
            + ". Rerun with the run's options (its config.yaml: --config "
            + str(run_dir / run_files.CONFIG)
            + ") to resume it, or choose another --output"
        )
    summary = json.loads((run_dir / run_files.DATA / run_files.DATA_SUMMARY).read_text(encoding="utf-8"))
    if summary.get("fingerprint") != fingerprint(splits):
        raise ValueError(
            f"{run_dir} is an unfinished run whose data has changed since it started ({cfg.data} no "
            "longer gives the same train/dev/test rows); restore the data, or choose another --output"
        )


def remove_new_files(run_dir: Path, before: set[str] | None) -> None:
    """Take back what a failed start wrote into `run_dir` (`before`: the names it held before; None: it did
    not exist), so the folder is as it was and the command, corrected or not, can be run again."""
    if not run_dir.is_dir():
        return
    for path in run_dir.iterdir():
        if before is None or path.name not in before:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if before is None and not any(run_dir.iterdir()):
        run_dir.rmdir()


def say(line: str) -> None:
    print(line, flush=True)


def main(cfg: TrainConfig) -> Path:
    """Train; under `accelerate launch` (DDP) every rank trains and only rank 0 writes the run directory.
    Run again on an unfinished run (same options, same data), it resumes from the last complete checkpoint.
    One process trains into a run directory at a time: rank 0 holds its .labeltune.lock (labeltune.lock)
    from before anything is written to the end; a second one is refused naming the pid that holds it.

    With the unsloth backend, Unsloth is imported here before trl/transformers/peft (it patches them
    at import); in a process that imported those already (a notebook), use spawn(cfg) instead."""
    run_dir = Path(cfg.output)
    check_base_installed(resolve_preset(cfg.model))  # before the lock: a refusal writes nothing
    if int(os.environ.get("RANK", "0")) != 0:  # rank 0 holds the lock for every rank
        return _train(cfg)
    data_mod.check_output_folder(
        run_dir, run_files.INFO, "train"
    )  # never a lock file in a folder of the user's
    with hold(run_dir / FOLDER_LOCK, f"--output {run_dir}"):
        return _train(cfg)


def _train(cfg: TrainConfig) -> Path:
    preset = resolve_preset(cfg.model)
    cfg = with_preset_defaults(cfg, preset)
    # the data first, before torch, transformers, TRL (or Unsloth) load: a wrong column or file is refused
    # in a second or two, and the rows dropped are said before a model is loaded, not after training
    task = load_task(cfg.task)
    cfg = replace(cfg, template=cfg.template or task.default_template)
    template = load_template(cfg.template)
    run_dir = Path(cfg.output)
    if (run_dir / run_files.ADAPTER).exists():
        raise FileExistsError(f"{run_dir} already holds a trained run; choose another --output or delete it")
    data_mod.check_output_folder(
        run_dir, run_files.INFO, "train"
    )  # a folder of the user's is never written into
    splits, dropped, leaks, warnings = read_data(cfg, task, run_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        for warning in warnings:  # said again at the end, beside the result
            print(f"labeltune: warning: {warning}", file=sys.stderr, flush=True)

    import torch

    cuda = torch.cuda.is_available()
    check_machine(preset, int(os.environ.get("WORLD_SIZE", "1")))  # before anything is downloaded or written
    precision = train_precision(
        cfg.dtype, gpu_capability() if cuda else None
    )  # a refused --dtype writes nothing
    if not cuda and cfg.dtype == "auto" and preset.model_id is not None and cpu_has_native_bf16():
        print(
            "labeltune: note: this CPU computes bf16 natively (AMX/AVX512-BF16): --dtype bf16 trains a real "
            "model ~1.6x faster than the fp32 default (measured with Gemma 3 270M)",
            file=sys.stderr,
        )
    backend = prepare_backend(cfg.backend)  # imports unsloth first when it is the backend

    from accelerate import PartialState
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTTrainer

    from labeltune.callbacks import Checkpoints, DevScore, EarlyStopOnLoss, Progress

    resuming = (run_dir / run_files.INFO).is_file()  # ours (model.json) and unfinished (no adapter/)
    if resuming:
        check_resume(cfg, run_dir, splits)

    state = PartialState(cpu=not cuda)  # one process, or one per rank (gloo on CPU) under accelerate launch
    if state.num_processes > 1 and backend == "unsloth":
        raise ValueError("multi-process training runs on the hf backend: add --backend hf")
    four_bit = select_4bit(cfg.load_in_4bit, cuda, preset)
    info = run_files.RunInfo(
        base=base_to_load(preset, four_bit) or run_files.BASE + "/",
        full_id=preset.full_id,
        backend=backend,
        load_in_4bit=four_bit,
        max_length=cfg.max_length,
        preset=preset.name,
        world_size=state.num_processes,
    )
    if task.score is not None:
        info.score_trained = any(ex.score is not None for ex in splits["train"])
        if not info.score_trained and state.is_main_process:
            print(
                f"labeltune: note: no training row has a score (no {cfg.score_column!r} column, or it is "
                f"empty): the model learns the labels only, and label/predict leave its score empty; add a "
                f"{task.score.min}-{task.score.max} score column (--score-column) to train the score",
                file=sys.stderr,
            )
    fresh = state.is_main_process and not resuming  # this attempt writes the run directory
    before = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else None
    with state.main_process_first():
        if fresh:
            write_run_dir(cfg, preset, task, template, info, (splits, dropped, leaks), run_dir)

    if info.base != run_files.BASE + "/" and Path(info.base).exists():
        run_files.trust_base(info.base)  # the user named this folder: runs of it load on this machine
    try:  # loading the model: a failure here leaves no half-made run that would refuse the next attempt
        model, tokenizer = load_base(
            run_files.base_path(run_dir, info),
            backend,
            cfg.max_length,
            four_bit,
            precision=None if backend == "unsloth" and cfg.dtype == "auto" else precision,
        )
        prompter = Prompter(tokenizer, template, task, cfg.max_length)
        train_ds, dev_ds = (
            Dataset.from_list(
                [prompter.training_features(ex.text, task.render_answer(ex.label, ex.score)) for ex in rows]
            )
            if rows
            else None
            for rows in (splits["train"], splits["dev"])
        )
        model = add_lora(
            model,
            cfg.lora_r,
            cfg.lora_alpha,
            cfg.lora_dropout,
            preset.target_modules,
            cfg.seed,
            preset.modules_to_save,
            backend,
            preset.gradient_checkpointing,
        )
    except BaseException:
        if fresh:
            remove_new_files(run_dir, before)
        raise
    info.precision = trainer_precision(backend, model, precision)  # matches the model unsloth/hf loaded
    tracking = trackers(cfg.report_to)  # the Trainer logs to them from rank 0 only
    metric, scoring = cfg.best_metric, dev_scoring(backend, cfg.best_metric, dev_ds is not None)
    if scoring == "after" and state.is_main_process:
        print(
            f"labeltune: note: on the unsloth backend every epoch's checkpoint is kept and scored on the dev "
            f"split after training (in a fresh process) to keep the best by {metric}"
            + ("; early stopping follows the dev loss" if cfg.early_stopping_patience else ""),
            file=sys.stderr,
        )
    progress = Progress(say, cfg.logging_steps)
    # scored after training: every epoch end's checkpoint stays until then (the best one decides what is kept)
    after = scoring == "after"
    extra = [
        Checkpoints(
            run_dir / run_files.CHECKPOINTS, cfg.keep_checkpoints, "loss" if after else metric, after
        ),
        progress,
    ]
    if scoring == "loop":
        extra.insert(
            0,
            DevScore(
                prompter, splits["dev"], cfg.batch_size, metric, cfg.early_stopping_patience, progress.write
            ),
        )
    elif dev_ds is not None and cfg.early_stopping_patience:
        extra.insert(0, EarlyStopOnLoss(cfg.early_stopping_patience, progress.write))
    trainer = SFTTrainer(
        model=model,
        args=sft_config(
            cfg,
            preset,
            backend,
            info.precision,
            tracking,
            run_dir,
            cuda,
            state.num_processes,
            dev_ds is not None,
        ),
        train_dataset=train_ds,
        eval_dataset=dev_ds,
        processing_class=tokenizer,
        data_collator=lambda batch: collate(batch, tokenizer.pad_token_id),
        callbacks=extra
        + (
            [tensorboard_callback(run_dir / run_files.TENSORBOARD)]
            if "tensorboard" in tracking and state.is_main_process
            else []
        ),
    )
    trainer.remove_callback(PrinterCallback)  # raw dicts; Progress says it in words
    full_modules_in_fp32(model, info.precision)  # after TRL's bf16 cast of a 4-bit model's trainable weights
    resume_from = checkpoints.latest_complete(run_dir / run_files.CHECKPOINTS) if resuming else None
    if resuming and state.is_main_process:
        checkpoints.remove_incomplete(run_dir / run_files.CHECKPOINTS)
        print(
            f"resuming {run_dir} from {resume_from.name}"
            if resume_from
            else f"resuming {run_dir}: no complete checkpoint yet, training from the start"
        )
    started = time.time()
    with answer_positions_only(not cuda):
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds, trained = time.time() - started, trainer.state
    if scoring == "after":  # unsloth: one process, so rank 0
        del trainer
        model = free_model(model)  # the child loads the base again: one copy on the GPU at a time
        trained.log_history += score_checkpoints(run_dir, trained.log_history, progress.write)
        checkpoints.rotate(
            run_dir / run_files.CHECKPOINTS,
            cfg.keep_checkpoints,
            (checkpoints.best_record(trained.log_history, metric) or {}).get("step"),
        )
    if state.is_main_process:
        save_run(trained, model, tokenizer, info, run_dir, metric, seconds, warnings)
    state.wait_for_everyone()
    return run_dir


def free_model(model) -> None:
    """Drop the training process's model and give its GPU memory back; returns None (the new `model`)."""
    import gc

    import torch

    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def answer_positions_only(enabled: bool = True):
    """While open, TRL's fused LM head projects only the positions whose next token carries loss (the
    answer and EOS), as it does on CUDA/XPU with Triton. TRL 1.16 (trl/trainer/utils.py, add_fused_lm_head)
    scores every position elsewhere (`compact = _use_triton(device)`: a fixed tile shape avoids recompiles
    on Neuron), so on CPU each step ran the whole prompt through the LM head, in fp32
    (trl/kernels/chunked_logprob.py, _addmm_fp32) -- for Gemma 3's 262k-token head most of a step. The
    loss and gradients are the same (masked positions are zeroed either way); scripts/bench_train_lmhead.py
    measures both. A TRL without `_use_triton` (1.15 and older compute the loss their own way) is left as
    it is."""
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if not enabled or original is None:
        yield
        return
    trl_utils._use_triton = lambda device: (
        True
    )  # read by add_fused_lm_head's forward only (utils.py: compact)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def spawn(cfg: TrainConfig) -> Path:
    """`labeltune train` for `cfg` in a child process (its output streamed here, line by line): the
    way to train from a notebook, a sweep or a comparison. The child imports Unsloth (when it is the
    backend) before trl/transformers/peft whatever this process has imported, this process never gets
    Unsloth's process-wide patches of transformers' classes (so it can decode and build other models
    afterwards), and the GPU memory of each training run is freed when its process ends.
    A refusal in the child (bad option, existing run) is raised here as the same ValueError."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "train.yaml"
        save(cfg, config)
        proc = subprocess.Popen(
            [sys.executable, "-m", "labeltune.cli", "train", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
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
