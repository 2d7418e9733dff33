"""`labeltune <verb> [--config file.yaml] [--option value ...]`: the same functions the Makefile and
the notebook call. Options come from the verb's config dataclass (labeltune/config.py)."""

from __future__ import annotations

import argparse
import importlib
import sys

from labeltune import config as config_mod

# verb -> (its config, its help, the module whose main(cfg) runs it): one table for parser and dispatch
VERBS = {
    "train": (config_mod.TrainConfig, "LoRA SFT of a model on labelled data -> run directory", "train"),
    "evaluate": (config_mod.EvalConfig, "base vs fine-tuned metrics on a split -> metrics.json, report.md", "evaluate"),
    "label": (config_mod.LabelConfig, "label a CSV/TSV/JSONL of texts with a trained run (resumable)", "label"),
    "calibrate": (config_mod.CalibrateConfig, "fit a temperature for label probabilities on the dev split", "calibrate"),
    "export": (config_mod.ExportConfig, "export a run as adapter, merged 16-bit model or GGUF", "export"),
    "sweep": (config_mod.SweepConfig, "grid of training runs, best by dev metric evaluated on test -> results table + plots", "sweep"),
    "compare": (config_mod.CompareConfig, "generative LLM vs classification head vs encoder vs baselines on one split", "compare"),
}
DECODING_VERBS = ("evaluate", "label", "calibrate", "sweep", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labeltune", description="Instruction-tune an LM to label texts, label CSVs, measure the labels."
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, (cls, help_text, _) in VERBS.items():
        config_mod.add_arguments(sub.add_parser(verb, help=help_text, description=help_text), cls)
    data = sub.add_parser("data", help="dataset adapters", description="dataset adapters")
    data_sub = data.add_subparsers(dest="data_verb", required=True, metavar="ACTION")
    config_mod.add_arguments(
        data_sub.add_parser("prepare", help="a real dataset -> train/dev/test + data card"), config_mod.PrepareConfig
    )
    sub.add_parser("models", help="list model presets", description="list model presets")
    sub.add_parser("templates", help="list prompt templates and tasks", description="list prompt templates and tasks")
    return parser


def run(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    verb = args.pop("verb")
    if verb == "models":
        from labeltune.models import ALIASES, PRESETS

        for p in PRESETS.values():
            aliases = [a for a, target in ALIASES.items() if target == p.name]
            print(f"{p.name:14s} {p.model_id or '(built locally)':40s} {p.description}" + (f" [alias: {', '.join(aliases)}]" if aliases else ""))
        return 0
    if verb == "templates":
        from labeltune.prompts import available_templates
        from labeltune.task import available_tasks

        print("templates:", ", ".join(available_templates()))
        print("tasks:", ", ".join(available_tasks()))
        return 0
    if verb == "data":
        from labeltune.prepare import main as prepare

        args.pop("data_verb")
        prepare(config_mod.resolve(config_mod.PrepareConfig, args.pop("config", None), args))
        return 0
    cls, _, module = VERBS[verb]
    cfg = config_mod.resolve(cls, args.pop("config", None), args)
    if verb == "train":
        from labeltune.models import prepare_backend

        # Unsloth patches trl/transformers/peft when imported: resolve the backend (and import unsloth
        # when it is the one) before the verb imports any of them. sweep and compare train through
        # labeltune.train.spawn, which runs this same path in a child process.
        prepare_backend(cfg.backend)
    if verb in DECODING_VERBS:
        from labeltune.decode import tune_cpu_allocator

        tune_cpu_allocator()  # process-wide malloc tuning for CPU decoding: here, at the entry point only
    importlib.import_module(f"labeltune.{module}").main(cfg)
    return 0


def main() -> None:
    """The console entry: every anticipated error is one line on stderr and exit status 2; Ctrl-C ends
    with exit status 130 (verbs that can resume say how, labeltune.label)."""
    try:
        sys.exit(run())
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"labeltune: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # permission denied, a directory where a file is expected, disk full, ...
        where = f": {e.filename}" if e.filename else ""
        print(f"labeltune: error: {e.strerror or e}{where}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("labeltune: stopped (Ctrl-C)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
