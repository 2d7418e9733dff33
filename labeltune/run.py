"""A run directory: the one module that knows the files inside it.

    runs/<name>/
      config.yaml      TrainConfig as resolved (CONFIG)
      model.json       base model, backend, precision, steps, seconds; written first by train (INFO)
      adapter/         LoRA weights + tokenizer (ADAPTER)
      base/            the tiny preset's base model (BASE)
      model/           a merged16 export's merged model, instead of adapter/ (MERGED)
      data/            train/dev/test.jsonl + summary.json (DATA)
      calibration.json the fitted temperature (CALIBRATION)
      checkpoints/     training checkpoints (CHECKPOINTS; labeltune.checkpoints): resume, best epoch
      eval/<split>-<mode>-<n>/  one folder per `labeltune evaluate` (EVALS; new_eval_dir): metrics.json,
                       report.md/.html, plots, predictions_*.csv
      metrics.json, report.md, report.html  the latest evaluation's (its report shows that folder's plots)
      train_log.jsonl, versions.json

Trained runs and exports (adapter, merged16) are all runs. ``open_run`` reads what is cheap (config,
task, template, model.json); ``Run.load`` adds the model, its tokenizer and the prompter, always
through the hf backend (load_run).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from labeltune.config import TrainConfig, load_saved
from labeltune.features import Prompter
from labeltune.models import bnb_4bit_unavailable, cuda_available, ensure_pad_token, load_base
from labeltune.prompts import load_template
from labeltune.task import TaskSpec, load_task

CONFIG, INFO, ADAPTER, BASE, MERGED, DATA = "config.yaml", "model.json", "adapter", "base", "model", "data"
CALIBRATION, TRAIN_LOG, VERSIONS = "calibration.json", "train_log.jsonl", "versions.json"
TEMPLATE, TASK = "template.jinja", "task.yaml"  # an export's own copies of the template and task spec
CHECKPOINTS, EVALS = "checkpoints", "eval"


class RunError(ValueError):
    """A run directory that cannot be used as it is, said in labeltune's own words."""


class MissingRunFile(RunError, FileNotFoundError):
    pass


def read_info(run_dir: str | Path) -> dict:
    """model.json of a run; a folder without one is not a run (MissingRunFile)."""
    path = Path(run_dir) / INFO
    if not path.is_file():
        raise MissingRunFile(f"{run_dir}: no {INFO} (is this a run directory made by `labeltune train`?)")
    return json.loads(path.read_text(encoding="utf-8"))


def write_info(run_dir: str | Path, info: dict) -> None:
    (Path(run_dir) / INFO).write_text(json.dumps(info, indent=1), encoding="utf-8")


def load_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig a run directory was trained with; a path that is not a run says so."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--run {run_dir}: no such directory (runs are made by `labeltune train --output ...`)")
    if not (run_dir / CONFIG).is_file():
        raise FileNotFoundError(f"--run {run_dir}: not a labeltune run directory (no {CONFIG} in it)")
    return load_saved(TrainConfig, run_dir / CONFIG)


def read_training(run_dir: str | Path) -> dict | None:
    """The run's training log (train_log.jsonl records) and the epoch it kept (model.json), None for a
    run without a log (an export made before logs were carried, a foreign folder)."""
    path = Path(run_dir) / TRAIN_LOG
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        log = [json.loads(line) for line in f if line.strip()]
    info = read_info(run_dir) if (Path(run_dir) / INFO).is_file() else {}
    return {"log": log, "best": info.get("best")}


def load_calibration(run_dir: str | Path) -> tuple[float, dict[str, float] | None]:
    """(temperature, per-label biases) fitted by labeltune calibrate; (1.0, None) when it has none (a
    calibration.json from before biases has a temperature only). The file may come with a run from someone
    else: one that is damaged, or whose values would crash or silently change every label (a temperature
    that is not a number > 0, biases that are not numbers), is refused in one line naming it."""
    path = Path(run_dir) / CALIBRATION
    if not path.is_file():
        return 1.0, None
    redo = f"delete it, or fit it again with `labeltune calibrate --run {run_dir}`"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError: cut short or not a JSON file
        raise RunError(f"{path} is damaged ({type(e).__name__}: {e}); {redo}") from None

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and -float("inf") < v < float("inf")

    temperature = data.get("temperature") if isinstance(data, dict) else None
    if not number(temperature) or temperature <= 0:
        raise RunError(f"{path}: temperature {str(temperature)[:40]} is not a number > 0; {redo}")
    biases = data.get("biases")
    if biases is not None and not (isinstance(biases, dict) and all(number(v) for v in biases.values())):
        raise RunError(f"{path}: biases {str(biases)[:80]} are not label: number pairs; {redo}")
    return float(temperature), biases


def new_eval_dir(run_dir: str | Path, split: str, mode: str) -> Path:
    """A new, empty folder for one evaluation: eval/<split>-<mode>-<n>, n one more than any evaluation's
    before it (so earlier ones are never written over, and n orders them)."""
    evals = Path(run_dir) / EVALS
    taken = [int(p.name.rsplit("-", 1)[1]) for p in evals.glob("*-*") if p.name.rsplit("-", 1)[1].isdigit()]
    n = max(taken, default=0) + 1
    while True:
        folder = evals / f"{split}-{mode}-{n}"
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:  # another evaluation took it meanwhile
            n += 1


def save_temperature(run_dir: str | Path, result: dict) -> None:
    (Path(run_dir) / CALIBRATION).write_text(json.dumps(result, indent=1), encoding="utf-8")


@dataclass
class Run:
    dir: Path
    config: TrainConfig
    info: dict
    task: TaskSpec

    @property
    def merged(self) -> bool:
        """A merged16 export: no adapter to switch off, so no base-model comparison."""
        return bool(self.info.get("merged"))

    def template(self):
        """The run's prompt template: an export's own copy (TEMPLATE) where it has one, so an export of a
        custom template loads on a machine without the original file; else the config's name or path."""
        own = self.dir / TEMPLATE
        return load_template(str(own) if own.is_file() else self.config.template)

    def split(self, name: str) -> Path:
        return self.dir / DATA / f"{name}.jsonl"

    def load(self, merge: bool = False):
        """(model, prompter) of this run on this machine (the prompter holds the tokenizer)."""
        model, tokenizer = load_run(self.dir, merge)
        return model, Prompter(tokenizer, self.template(), self.task, self.config.max_length)


def open_run(run_dir: str | Path) -> Run:
    """A run directory's config, model.json and task (no model loaded); refuses what is not a run."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    own = run_dir / TASK  # an export's own copy of the task spec (see Run.template)
    return Run(run_dir, config, read_info(run_dir), load_task(str(own) if own.is_file() else config.task))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(run_dir: Path) -> str:
    """Digest of the run's trained weights: its adapter, or a merged export's (recorded at export time,
    where the weights may be many shards)."""
    run_dir = Path(run_dir)
    weights = run_dir / ADAPTER / "adapter_model.safetensors"
    if weights.is_file():
        return file_sha256(weights)
    info = read_info(run_dir) if (run_dir / INFO).is_file() else {}
    if info.get("merged") and info.get("weights_sha256"):
        return info["weights_sha256"]
    if (run_dir / MERGED / "model.safetensors").is_file():  # a merged export of an earlier version
        return file_sha256(run_dir / MERGED / "model.safetensors")
    raise FileNotFoundError(f"{run_dir}: no trained adapter or merged model (run `labeltune train` first)")


def base_path(run_dir: str | Path, info: dict | None = None) -> str:
    """Where a run's base model lives: its own `base/` (tiny) or the id recorded at training time."""
    info = read_info(run_dir) if info is None else info
    return str(Path(run_dir) / BASE) if info["base"] == BASE + "/" else info["base"]


def check_not_patched_by_unsloth(model) -> None:
    """Refuse to decode with a model class whose forward Unsloth replaced: Unsloth patches transformers'
    model classes process-wide when it loads a model, and its forward returns legacy tuple caches and
    takes its own single-token path, which score mode's cache and mask handling is not built for."""
    forward = getattr(type(model), "forward", None)
    if (getattr(forward, "__module__", "") or "").startswith("unsloth"):
        raise RunError(
            f"{type(model).__name__} was patched by Unsloth in this process (it trained here); label, "
            "evaluate and calibrate in a new process (the CLI, or restart the runtime), and train with "
            "`labeltune train` / labeltune.train.spawn so the notebook's process never imports Unsloth"
        )


def load_run(run_dir: str | Path, merge: bool = False):
    """load_run_files with a damaged run (a truncated or corrupted weight file, missing tokenizer files or
    base/) reported in one line naming the run and what to do, not a traceback from deep in a library."""
    try:
        return load_run_files(run_dir, merge)
    except RunError:
        raise
    except Exception as e:  # safetensors, tokenizers, transformers, json, OSError ... on files of the run
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ValueError(
            f"--run {run_dir}: its model cannot be loaded ({type(e).__name__}: {first}); check that the run's "
            "files are complete (train it again if they are damaged) and that a Hugging Face base can be downloaded"
        ) from e


def load_run_files(run_dir: str | Path, merge: bool = False):
    """(model with adapter, tokenizer) of a trained or merged run, in eval mode, on this machine.

    Always through the hf backend (transformers + PEFT), whatever backend trained it: an Unsloth adapter
    is a plain PEFT adapter, and every decode mode is tested on this backend. A run trained on a 4-bit
    base is loaded on that 4-bit base (bitsandbytes NF4, on a GPU or the CPU), so its labels are the ones
    its evaluation measured; on a CPU without a bitsandbytes that runs 4-bit there, a 4-bit preset's
    16-bit `full_id` is loaded in full precision instead, with a warning (labels may differ slightly).
    A merged export is loaded as saved (16-bit, never re-quantised). ``merge`` folds the LoRA weights
    into the base weights (16/32-bit base only), so inference pays no adapter overhead;
    ``disable_adapter()`` still gives the base model.
    """
    from peft import PeftModel

    run_dir = Path(run_dir)
    info = read_info(run_dir)
    if info.get("merged"):
        model, tokenizer = load_base(str(run_dir / MERGED), "hf", load_in_4bit=False)
        check_not_patched_by_unsloth(model)
        model.eval()
        return model, tokenizer
    if not (run_dir / ADAPTER).is_dir():
        raise MissingRunFile(f"{run_dir}: no {ADAPTER}/ (did `labeltune train` finish?)")
    base, four_bit = base_path(run_dir, info), bool(info.get("load_in_4bit"))
    why = bnb_4bit_unavailable(cuda_available()) if four_bit else None
    if why and info.get("full_id"):
        import warnings

        warnings.warn(f"{run_dir} was trained on a 4-bit base; {why}: loading the 16-bit {info['full_id']} in "
                      "full precision instead (labels may differ slightly from the run's evaluation)", stacklevel=2)
        base, four_bit = info["full_id"], False
    elif why:
        raise RunError(f"--run {run_dir} was trained on a 4-bit base, and loading it here needs 4-bit: {why}")
    model, tokenizer = load_base(base, "hf", info.get("max_length", 512), four_bit, tokenizer_from=run_dir / ADAPTER)
    check_not_patched_by_unsloth(model)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(model, run_dir / ADAPTER)
    check_not_patched_by_unsloth(model)
    ensure_pad_token(tokenizer, model)
    model.eval()
    if merge and not four_bit:
        model.merge_adapter()
    return model, tokenizer
