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
      train_log.jsonl, versions.json, training_curves.png, tensorboard/ (--report-to tensorboard)
      template.jinja, task.yaml  the run's own copies of its prompt template and task spec
      README.md        an export's model card (labeltune.card)

Trained runs and exports (adapter, merged16) are all runs. ``open_run`` reads what is cheap (config,
task, template, model.json); ``Run.load`` adds the model, its tokenizer and the prompter, always
through the hf backend (load_run). A run may also be a Hugging Face Hub repo an export was pushed to
(`org/name`, `org/name@revision`, where no local path has that name): ``locate_run`` downloads the files of
HUB_FILES into the Hugging Face cache (labeltune.hub) and every verb reads that snapshot; the verbs that
write into a run (evaluate, calibrate) refuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from labeltune import gemma3, hub
from labeltune.atomic import make_dir_inside, write_inside
from labeltune.config import TrainConfig, load_saved
from labeltune.data import iter_rows
from labeltune.features import Prompter
from labeltune.models import (
    bnb_4bit_unavailable,
    cast_for_labelling,
    cuda_available,
    ensure_pad_token,
    load_base,
    resolve_base,
)
from labeltune.presets import PRESETS
from labeltune.prompts import available_templates, load_template, render_prompt
from labeltune.task import TaskSpec, load_task

CONFIG, INFO, ADAPTER, BASE, MERGED, DATA = "config.yaml", "model.json", "adapter", "base", "model", "data"
CALIBRATION, TRAIN_LOG, VERSIONS = "calibration.json", "train_log.jsonl", "versions.json"
TEMPLATE, TASK = "template.jinja", "task.yaml"  # an export's own copies of the template and task spec
CHECKPOINTS, EVALS = "checkpoints", "eval"
METRICS, REPORT_MD, REPORT_HTML = "metrics.json", "report.md", "report.html"  # the run's and each eval/'s
TRAINING_CURVES = "training_curves.png"  # the report's plot of train_log.jsonl
TENSORBOARD = "tensorboard"  # train --report-to tensorboard's event files
DATA_SUMMARY = "summary.json"  # in data/: source, fingerprint, label counts, dropped rows; written last
MODEL_CARD = "README.md"  # an export's model card (labeltune.card)
SWEEP_DEV_METRICS, SWEEP_TEST_METRICS = "dev_metrics.json", "test_metrics.json"  # a sweep trial's (sweep.py)
# PEFT's and transformers' own names inside adapter/ and model/ (what labeltune reads and hashes there)
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
PEFT_FILE_PREFIX = "adapter_"  # PEFT's files in adapter/ (the others there are the tokenizer's)
MERGED_WEIGHTS = "model.safetensors"  # a single-shard merged model (merge.py names the shards of larger ones)
# what a run from the Hub needs: an adapter/merged16 export's files (not eval/, checkpoints/, a .gguf ...)
HUB_FILES = [
    CONFIG,
    INFO,
    CALIBRATION,
    TEMPLATE,
    TASK,
    VERSIONS,
    TRAIN_LOG,
    MODEL_CARD,
    *gemma3.NOTICE_FILES,
    *(f"{folder}/*" for folder in (ADAPTER, BASE, MERGED, DATA)),
]


def split_file(name: str) -> str:
    """A split's file in data/ (train, dev, test)."""
    return f"{name}.jsonl"


def predictions_file(system: str) -> str:
    """An evaluation's predictions of one system (finetuned, base, majority ...) in its eval/ folder."""
    return f"predictions_{system}.csv"


class RunError(ValueError):
    """A run directory that cannot be used as it is, said in labeltune's own words."""


class MissingRunFile(RunError, FileNotFoundError):
    pass


@dataclass
class RunInfo:
    """model.json: what a run was trained on and how. `train` writes the first record before the model loads
    (base .. world_size, score_trained), the training record at the end (precision .. early_stopped); a
    merged16 export adds merged .. weights_sha256. A run of an earlier version may lack later keys: they
    take the defaults below, which are what the code used when a key was missing."""

    # what loads: a preset's model id, a Hugging Face id, a local folder, "base/" (tiny's own) or "model/" (a
    # merged16 export); None only in a model.json labeltune did not write
    base: str | None = None
    full_id: str | None = None  # a 4-bit preset's 16-bit model (loaded where 4-bit cannot be); None: none
    backend: str = "hf"  # hf or unsloth (what trained it; every run loads through hf)
    load_in_4bit: bool = False  # trained on a bitsandbytes NF4 base (a merged16 export: False, it is 16-bit)
    max_length: int = 512  # the config's (512: what a run that did not record it loads with)
    preset: str | None = None  # the model preset's name (labeltune.models.PRESETS)
    world_size: int = 1  # training processes (accelerate launch)
    # False: no training row had a score; None: not recorded (a task without a score, or a run of an earlier
    # version), which counts as trained (Run.score_trained)
    score_trained: bool | None = None
    precision: str | None = None  # fp32, fp16 or bf16 (the trainer's); None before training: readers assume
    train_seconds: float | None = None  # the training record, written together at the end of training
    steps: int | None = None
    epochs_run: float | None = None
    best: dict | None = None  # the kept epoch (train.best_epoch); None: no dev evaluation, the last weights
    early_stopped: bool = False
    merged: bool = False  # a merged16 export: model/ instead of adapter/
    merged_dtype: str | None = None
    merged_from: str | None = None
    weights_sha256: str | None = None  # a merged export's weights (run.weights_sha256)
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as they were

    # to_dict: the first record is written always, the training record once it has steps
    FIRST = ("base", "full_id", "backend", "load_in_4bit", "max_length", "preset", "world_size")
    TRAINING = ("train_seconds", "steps", "epochs_run", "best", "early_stopped")

    @classmethod
    def from_dict(cls, data: dict) -> RunInfo:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in data.items() if k in known},
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_dict(self) -> dict:
        """model.json's keys as labeltune writes them: the first record always; score_trained, precision and
        the merged16 keys when set; the training record once training finished; unknown keys last."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra":
                continue
            if f.name in self.TRAINING:
                written = self.steps is not None
            elif f.name == "merged":
                written = value
            else:
                written = f.name in self.FIRST or value is not None
            if written:
                out[f.name] = value
        return {**out, **self.extra}

    @classmethod
    def load(cls, run_dir: str | Path) -> RunInfo:
        """model.json of a run; a folder without one is not a run (MissingRunFile)."""
        path = Path(run_dir) / INFO
        if not path.is_file():
            raise MissingRunFile(f"{run_dir}: no {INFO} (is this a run directory made by `labeltune train`?)")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def save(self, run_dir: str | Path) -> None:
        write_inside(run_dir, Path(run_dir) / INFO, json.dumps(self.to_dict(), indent=1))


def load_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig a run directory was trained with; a path that is not a run says so."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"--run {run_dir}: no such directory (runs are made by `labeltune train --output ...`)"
        )
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
    info = RunInfo.load(run_dir) if (Path(run_dir) / INFO).is_file() else RunInfo()
    return {"log": log, "best": info.best}


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


def check_eval_parent(run_dir: str | Path) -> None:
    """Refuse, before any work, a run whose eval/ folder is a link (new_eval_dir would refuse it after)."""
    evals = Path(run_dir) / EVALS
    if evals.is_symlink():
        raise RunError(f"{evals}: a link in {run_dir}; refusing to write through it: remove the link")


def new_eval_dir(run_dir: str | Path, split: str, mode: str) -> Path:
    """A new, empty folder for one evaluation: eval/<split>-<mode>-<n>, n one more than any evaluation's
    before it (so earlier ones are never written over, and n orders them)."""
    evals = Path(run_dir) / EVALS
    taken = [int(p.name.rsplit("-", 1)[1]) for p in evals.glob("*-*") if p.name.rsplit("-", 1)[1].isdigit()]
    n = max(taken, default=0) + 1
    while True:
        folder = evals / f"{split}-{mode}-{n}"
        try:
            return make_dir_inside(run_dir, folder)  # a link planted in the run is refused, never followed
        except FileExistsError:  # another evaluation took it meanwhile
            n += 1


def save_temperature(run_dir: str | Path, result: dict) -> None:
    write_inside(run_dir, Path(run_dir) / CALIBRATION, json.dumps(result, indent=1))


@dataclass
class Run:
    dir: Path
    config: TrainConfig
    info: RunInfo
    task: TaskSpec

    @property
    def merged(self) -> bool:
        """A merged16 export: no adapter to switch off, so no base-model comparison."""
        return self.info.merged

    def template(self):
        """The run's prompt template: its own copy (TEMPLATE; train and export write one), so a run of a
        custom template loads on a machine without the original file; else the config's bundled name. A
        custom file of a run made before runs kept their own copy must lie inside the run: a shared run
        cannot point labeltune at a file elsewhere on this machine. Files of a run render sandboxed."""
        own = self.dir / TEMPLATE
        if hub.foreign_link(self.dir, own):
            raise RunError(
                f"--run {self.dir}: its {TEMPLATE} is a link (to {os.readlink(own)}); a run's template must "
                "be a file of the run: replace the link by the file if you trust it"
            )
        name = self.config.template
        if own.is_file():
            template = load_template(str(own))
        elif name in available_templates():
            return load_template(name)
        else:
            path = Path(name) if Path(name).is_absolute() else self.dir / name
            try:
                path.resolve().relative_to(self.dir.resolve())
            except ValueError:
                raise RunError(
                    f"--run {self.dir}: its config.yaml names the template {name}, outside the run; a run "
                    f"uses its own {TEMPLATE} or a bundled template: copy the file to {own} if you trust it"
                ) from None
            template = load_template(str(path))
        render_prompt(
            template, self.task, "テスト"
        )  # a template that tries what it may not is refused here, up front
        return template

    @property
    def score_trained(self) -> bool:
        """Whether training taught the task's score (False: no training row had one, so the model writes 0 and
        labeltune leaves the score empty); runs of earlier versions: True."""
        return self.task.score is not None and self.info.score_trained is not False

    def split(self, name: str) -> Path:
        return self.dir / DATA / split_file(name)

    def held_split(self, name: str, verb: str) -> Path:
        """The split file `verb` reads, or a one-line ValueError: an export carries no splits unless it was
        made with --include-data (they hold every labelled post)."""
        path = self.split(name)
        if not path.is_file():
            raise ValueError(
                f"--run {self.dir} has no {name} split ({path}): an export carries no training data unless "
                f"made with `labeltune export --include-data`; {verb}"
            )
        return path

    def label_words(self) -> dict[str, str]:
        """{label value: the word the training data wrote it as} ("1" -> "positive"), from data/summary.json
        (exports keep it); {} when the data wrote the task's values, or for runs made before it was kept."""
        words = summary_label_words(self.dir / DATA)
        return {value: word for value, word in words.items() if value in self.task.label_values}

    def train_labels(self) -> list[str]:
        """The training split's labels (for the majority baseline): from data/train.jsonl, else from the
        counts in data/summary.json (all an export keeps by default)."""
        if self.split("train").is_file():
            return [str(row["label"]) for row in iter_rows(self.split("train"))]
        summary = self.dir / DATA / DATA_SUMMARY
        counts = (
            json.loads(summary.read_text(encoding="utf-8")).get("counts", {}).get("train", {})
            if summary.is_file()
            else {}
        )
        return [label for label, n in counts.items() for _ in range(int(n))]

    def load(self, merge: bool = False, adapter: Path | None = None, dtype: str = "auto"):
        """(model, prompter) of this run on this machine (the prompter holds the tokenizer), in the precision
        it labels in (models.cast_for_labelling: `dtype`; auto = bf16 on a native-bf16 CPU, else as
        loaded), the same for every verb that decodes with it; `adapter`: a checkpoint's adapter instead of
        the run's."""
        model, tokenizer = load_run(self.dir, merge, adapter)
        cast_for_labelling(model, dtype, f"--run {self.dir}")
        return model, Prompter(tokenizer, self.template(), self.task, self.config.max_length)


def summary_label_words(data_dir: Path) -> dict[str, str]:
    """The `label_words` a split folder's summary.json records ({} without one)."""
    summary = data_dir / DATA_SUMMARY
    words = json.loads(summary.read_text(encoding="utf-8")).get("label_words") if summary.is_file() else None
    return {str(value): str(word) for value, word in (words or {}).items()}


def locate_run(run: str | Path) -> Path:
    """The local folder of a --run: the path itself when it exists (or is no Hub repo id: load_config then
    says what is wrong with it); else a Hub repo `org/name[@revision]` downloaded into the Hugging Face
    cache (labeltune.hub: HUB_FILES only, or the cached snapshot), which must hold a run's CONFIG and INFO."""
    found = hub.parse_hub_run(str(run)) if not Path(run).exists() else None
    if found is None:
        return Path(run)
    return hub.download(found, (CONFIG, INFO), HUB_FILES)


def check_writable(run: str | Path, verb: str) -> None:
    """Refuse, before anything is downloaded, a run from the Hub for a verb that writes into the run
    (evaluate, calibrate): a Hub repo id, or its snapshot in the Hugging Face cache (the cache's files)."""
    found = hub.parse_hub_run(str(run)) if not Path(run).exists() else None
    if found is not None:  # a missing local folder, or a Hub repo: the line says both
        repo, revision = found.repo_id, found.revision
        what = "no such directory (runs are made by `labeltune train --output ...`); if it names a Hub repo"
    elif hub.in_cache(Path(run)):
        repo, revision = hub.cached_revision(Path(run))
        what = "a Hub repo's snapshot in the Hugging Face cache (the cache's files)"
    else:
        return
    folder = f"runs/{repo.split('/')[1]}"
    raise RunError(
        f"--run {run}: {what}: {verb} writes into the run, so download it into a folder of your own (hf "
        f"download {repo}"
        + (f" --revision {revision}" if revision else "")
        + f" --local-dir {folder}) and pass --run {folder}"
    )


def open_run(run_dir: str | Path, writes: str | None = None) -> Run:
    """A run directory's config, model.json and task (no model loaded); refuses what is not a run. A Hub
    repo id is downloaded first (locate_run). `writes`: the verb that will write into the run (evaluate,
    calibrate), which refuses a run from the Hub (check_writable)."""
    if writes:
        check_writable(run_dir, writes)
    run_dir = locate_run(run_dir)
    config = load_config(run_dir)
    own = run_dir / TASK  # an export's own copy of the task spec (see Run.template)
    return Run(run_dir, config, RunInfo.load(run_dir), load_task(str(own) if own.is_file() else config.task))


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
    weights = run_dir / ADAPTER / ADAPTER_WEIGHTS
    if weights.is_file():
        return file_sha256(weights)
    info = RunInfo.load(run_dir) if (run_dir / INFO).is_file() else RunInfo()
    if info.merged and info.weights_sha256:
        return info.weights_sha256
    if (run_dir / MERGED / MERGED_WEIGHTS).is_file():  # a merged export of an earlier version
        return file_sha256(run_dir / MERGED / MERGED_WEIGHTS)
    raise FileNotFoundError(f"{run_dir}: no trained adapter or merged model (run `labeltune train` first)")


TRUSTED_BASES = (
    "LABELTUNE_TRUSTED_BASES"  # env: local base folders outside a run the user vouches for (os.pathsep)
)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def base_path(run_dir: str | Path, info: RunInfo | None = None) -> str:
    """Where a run's base model lives: its own `base/` (tiny) or the id recorded at training time, after
    check_base: a shared run's model.json cannot make labeltune load a folder elsewhere on this machine."""
    info = RunInfo.load(run_dir) if info is None else info
    if info.base is None:
        raise RunError(f"--run {run_dir}: its {INFO} names no base model (not written by `labeltune train`)")
    if info.base == BASE + "/":
        return str(Path(run_dir) / BASE)
    check_base(run_dir, info.base)
    return resolve_base(info.base)


def full_id_path(run_dir: str | Path, info: RunInfo) -> str | None:
    """A 4-bit run's 16-bit base (its preset's full_id), after check_base; None when it has none."""
    if not info.full_id:
        return None
    check_base(run_dir, info.full_id)
    return resolve_base(info.full_id)


def trusted_bases_file() -> Path:
    """This machine's list of local base folders the user trained on (one resolved path a line)."""
    return (
        Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "labeltune" / "trusted_bases.txt"
    )


def trust_base(base: str) -> None:
    """Remember a local base folder the user trained on here (train calls it), so runs of it load here."""
    path = trusted_bases_file()
    real = str(Path(base).resolve())
    known = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    if real not in known:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(real + "\n")


def check_base(run_dir: str | Path, base: str) -> None:
    """Accept a base that is a preset's model, a Hugging Face id (transformers never runs a repository's
    code: trust_remote_code=False), a folder inside the run, one the user trained on here (trust_base) or
    named in LABELTUNE_TRUSTED_BASES; refuse any other local folder in one line (a folder with an auto_map
    and *.py files is code, and a shared run's model.json must not choose what this machine loads)."""
    if any(base in (p.model_id, p.full_id) for p in PRESETS.values()):
        return
    path = Path(base)
    if HUB_ID.fullmatch(base) and not path.exists():
        return
    real = path.resolve()
    named = [p for p in os.environ.get(TRUSTED_BASES, "").split(os.pathsep) if p]
    remembered = (
        trusted_bases_file().read_text(encoding="utf-8").splitlines()
        if trusted_bases_file().is_file()
        else []
    )
    if any(
        real == t or t in real.parents
        for t in [Path(run_dir).resolve(), *map(Path, remembered), *(Path(p).resolve() for p in named)]
    ):
        return
    raise RunError(
        f"--run {run_dir}: its model.json names the base model {base}, a folder outside the run that was not "
        f"trained on here; a shared run may not point at files on this machine: if you trust that folder, "
        f"name it: {TRUSTED_BASES}={base}"
    )


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


def load_run(run_dir: str | Path, merge: bool = False, adapter: Path | None = None):
    """load_run_files with a damaged run (a truncated or corrupted weight file, missing tokenizer files or
    base/) reported in one line naming the run and what to do, not a traceback from deep in a library."""
    try:
        return load_run_files(run_dir, merge, adapter)
    except RunError:
        raise
    except Exception as e:  # safetensors, tokenizers, transformers, json, OSError ... on files of the run
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ValueError(
            f"--run {run_dir}: its model cannot be loaded ({type(e).__name__}: {first}); check that the "
            "run's files are complete (train it again if they are damaged) and that a Hugging Face base can "
            "be downloaded"
        ) from e


PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt")


def check_no_pickles(run_dir: Path) -> None:
    """Refuse weights saved as pickles in a run's adapter/ or model/: labeltune writes safetensors only,
    and unpickling a file someone else made can run code (torch's weights_only guards it; this does not
    rely on it)."""
    for folder in (run_dir / ADAPTER, run_dir / MERGED):
        for pattern in PICKLES:
            for found in sorted(folder.glob(pattern)) if folder.is_dir() else []:
                raise RunError(
                    f"{found}: weights saved as a pickle, which can run code when loaded; labeltune "
                    "loads .safetensors only (convert it with safetensors on a machine you trust)"
                )


def load_run_files(run_dir: str | Path, merge: bool = False, adapter: Path | None = None):
    """(model with adapter, tokenizer) of a trained or merged run, in eval mode, on this machine.

    Always through the hf backend (transformers + PEFT), whatever backend trained it: an Unsloth adapter
    is a plain PEFT adapter, and every decode mode is tested on this backend. A run trained on a 4-bit
    base is loaded on that 4-bit base (bitsandbytes NF4, on a GPU or the CPU), so its labels are the ones
    its evaluation measured; on a CPU without a bitsandbytes that runs 4-bit there, a 4-bit preset's
    16-bit `full_id` is loaded in full precision instead, with a warning (labels may differ slightly).
    A merged export is loaded as saved (16-bit, never re-quantised). ``merge`` folds the LoRA weights
    into the base weights (16/32-bit base only), so inference pays no adapter overhead;
    ``disable_adapter()`` still gives the base model. ``adapter``: another adapter folder than the run's
    adapter/ (a training checkpoint of the run, with its tokenizer: labeltune.devscore).
    """
    from peft import PeftModel

    run_dir = Path(run_dir)
    info = RunInfo.load(run_dir)
    check_no_pickles(run_dir)
    if info.merged:
        model, tokenizer = load_base(str(run_dir / MERGED), "hf", load_in_4bit=False)
        check_not_patched_by_unsloth(model)
        model.eval()
        return model, tokenizer
    adapter = Path(adapter) if adapter is not None else run_dir / ADAPTER
    if not adapter.is_dir():
        raise MissingRunFile(f"{run_dir}: no {adapter.name}/ (did `labeltune train` finish?)")
    base, four_bit = base_path(run_dir, info), bool(info.load_in_4bit)
    why = bnb_4bit_unavailable(cuda_available()) if four_bit else None
    full = full_id_path(run_dir, info) if why else None
    if why and full:
        import warnings

        warnings.warn(
            f"{run_dir} was trained on a 4-bit base; {why}: loading the 16-bit {info.full_id} in "
            "full precision instead (labels may differ slightly from the run's evaluation)",
            stacklevel=2,
        )
        base, four_bit = full, False
    elif why:
        raise RunError(f"--run {run_dir} was trained on a 4-bit base, and loading it here needs 4-bit: {why}")
    model, tokenizer = load_base(base, "hf", info.max_length, four_bit, tokenizer_from=adapter)
    check_not_patched_by_unsloth(model)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(model, adapter)
    check_not_patched_by_unsloth(model)
    ensure_pad_token(tokenizer, model)
    model.eval()
    if merge and not four_bit:
        model.merge_adapter()
    return model, tokenizer
