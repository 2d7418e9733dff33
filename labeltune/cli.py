"""`labeltune <verb> [--config file.yaml] [--option value ...]`: the same functions the Makefile and
the notebook call. Options come from the verb's config dataclass (labeltune/config.py)."""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import sys
import warnings

import labeltune
from labeltune import config as config_mod

# verb -> (its config, its help, the module whose main(cfg) runs it; predict: main(cfg, texts)): one table for
# parser and dispatch
VERBS = {
    "train": (config_mod.TrainConfig, "LoRA SFT of a model on labelled data -> run directory", "train"),
    "evaluate": (
        config_mod.EvalConfig,
        "base vs fine-tuned metrics on a split -> eval/<split>-<mode>-<n>/ report.html",
        "evaluate",
    ),
    "label": (
        config_mod.LabelConfig,
        "label a CSV/TSV/JSONL of texts with a trained run (resumable)",
        "label",
    ),
    "predict": (
        config_mod.PredictConfig,
        "label texts given as arguments or on stdin, one line each",
        "predict",
    ),
    "calibrate": (
        config_mod.CalibrateConfig,
        "fit a temperature for label probabilities on the dev split",
        "calibrate",
    ),
    "export": (config_mod.ExportConfig, "export a run as adapter, merged 16-bit model or GGUF", "export"),
    "sweep": (
        config_mod.SweepConfig,
        "grid of training runs, best by dev metric evaluated on test -> results table + plots",
        "sweep",
    ),
    "compare": (
        config_mod.CompareConfig,
        "generative LLM vs classification head vs encoder vs baselines on one split",
        "compare",
    ),
}
DECODING_VERBS = ("evaluate", "label", "predict", "calibrate", "sweep", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labeltune", description="Instruction-tune an LM to label texts, label CSVs, measure the labels."
    )
    parser.add_argument("--version", action="version", version=f"labeltune {labeltune.__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, (cls, help_text, _) in VERBS.items():
        verb_parser = sub.add_parser(verb, help=help_text, description=help_text)
        config_mod.add_arguments(verb_parser, cls)
        if verb == "predict":
            verb_parser.add_argument(
                "texts",
                nargs="*",
                metavar="TEXT",
                help="texts to label; none or - = read stdin, one text per line",
            )
    data = sub.add_parser("data", help="dataset adapters", description="dataset adapters")
    data_sub = data.add_subparsers(dest="data_verb", required=True, metavar="ACTION")
    config_mod.add_arguments(
        data_sub.add_parser("prepare", help="a real dataset -> train/dev/test + data card"),
        config_mod.PrepareConfig,
    )
    from labeltune.review import ACTIONS as REVIEW_ACTIONS  # no heavy imports: urllib, csv, json

    review = sub.add_parser(
        "review",
        help="humans in the loop: uncertain rows -> Label Studio -> answers -> training data",
        description="humans in the loop: uncertain rows -> Label Studio -> answers -> training data "
        "(docs/review.md)",
    )
    review_sub = review.add_subparsers(dest="review_verb", required=True, metavar="ACTION")
    for action, (cls, help_text, _) in REVIEW_ACTIONS.items():
        config_mod.add_arguments(review_sub.add_parser(action, help=help_text, description=help_text), cls)
    sub.add_parser("models", help="list model presets", description="list model presets")
    sub.add_parser(
        "templates", help="list prompt templates and tasks", description="list prompt templates and tasks"
    )
    return parser


def verb_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)parser of the verb `argv` names (`data prepare`'s for data), or `parser` itself."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        word = next((w for w in argv if not w.startswith("-")), None)
        if sub is None or word not in sub.choices:
            return parser
        parser, argv = sub.choices[word], argv[argv.index(word) + 1 :]


def reject_unknown(parser: argparse.ArgumentParser, argv: list[str], unknown: list[str]) -> None:
    """Exit 2 with the verb's own usage, naming the unknown options and the closest real one."""
    target = verb_parser(parser, argv)
    known = [s for a in target._actions for s in a.option_strings if s.startswith("--")]
    hints = []
    for word in unknown:
        if word.startswith("-"):
            close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.6)
            hints += [f"did you mean {close[0]}?"] if close else []
    target.error(f"unrecognized arguments: {' '.join(unknown)}" + ("; " + " ".join(hints) if hints else ""))


def explicit_bools(argv: list[str]) -> list[str]:
    """`--json 最高` -> `--json true 最高`: a BOOL option takes the next word as its value only when it is
    true/false/yes/no/on/off/1/0, so a text after it stays a text (predict's positional texts). Nothing
    after `--` is touched: every word there is a text, even one that looks like an option."""
    verb = argv[0] if argv else None
    if verb not in VERBS:
        return argv
    cls = VERBS[verb][0]
    flags = {
        "--" + f.name.replace("_", "-")
        for f in config_mod.dataclasses.fields(cls)
        if config_mod._base_type(config_mod._hints(cls)[f.name])[0] is bool
    }
    words = config_mod.TRUE_WORDS + config_mod.FALSE_WORDS
    end = argv.index("--") if "--" in argv else len(argv)
    out = []
    for i, arg in enumerate(argv[:end]):
        out.append(arg)
        if arg in flags and (i + 1 == len(argv) or argv[i + 1].lower() not in words):
            out.append("true")
    return out + argv[end:]


def run(argv: list[str] | None = None) -> int:
    argv = explicit_bools(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    verbs = [*VERBS, *(a for a in ("data", "review", "models", "templates") if a not in VERBS)]
    if argv and not argv[0].startswith("-") and argv[0] not in verbs:  # a typo: name the closest verb
        close = difflib.get_close_matches(argv[0], verbs, n=1, cutoff=0.6)
        parser.error(
            f"unknown verb {argv[0]!r}"
            + (f"; did you mean {close[0]}?" if close else "")
            + f" (verbs: {', '.join(verbs)})"
        )
    parsed, unknown = parser.parse_known_args(argv)
    if unknown:
        reject_unknown(parser, argv, unknown)
    args = vars(parsed)
    verb = args.pop("verb")
    if verb == "models":
        from labeltune.presets import ALIASES, PRESETS

        for p in PRESETS.values():
            aliases = [a for a, target in ALIASES.items() if target == p.name]
            print(
                f"{p.name:14s} {p.model_id or '(built locally)':40s} {p.description}"
                + (f" [alias: {', '.join(aliases)}]" if aliases else "")
            )
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
    if verb == "review":
        from labeltune.review import ACTIONS as REVIEW_ACTIONS

        cls, _, action = REVIEW_ACTIONS[args.pop("review_verb")]
        action(config_mod.resolve(cls, args.pop("config", None), args))
        return 0
    cls, _, module = VERBS[verb]
    texts = args.pop("texts", None)  # predict's positional texts
    cfg = config_mod.resolve(cls, args.pop("config", None), args)
    # train: Unsloth patches trl/transformers/peft when imported, so labeltune.train imports none of them at
    # module level and resolves the backend (importing unsloth when it is the one) once it has read and
    # checked the data, before it imports them; sweep and compare train through labeltune.train.spawn,
    # which runs this same path in a child process.
    if verb in DECODING_VERBS:
        from labeltune.decode import tune_cpu_allocator

        tune_cpu_allocator()  # process-wide malloc tuning for CPU decoding: here, at the entry point only
    verb_main = importlib.import_module(f"labeltune.{module}").main
    if verb == "predict":
        verb_main(cfg, texts)
    else:
        verb_main(cfg)
    return 0


def quiet_libraries() -> None:
    """Silence what libraries say that a user of the CLI can do nothing about: deprecation notices
    (FutureWarning, DeprecationWarning: "`gradient_checkpointing` is deprecated", "`past_key_values` is
    deprecated", ...) and transformers' info/warning logging (TRANSFORMERS_VERBOSITY=error, inherited by
    the processes train.spawn starts; a value the user set wins). Called at the entry points only (the
    CLI, and the notebook's first labeltune cell): library code keeps every warning. Also bitsandbytes'
    note, at import, that an optional CPU kernel package is missing (said on every command, 4-bit or
    not), and the `kernels` package's note that it skips a publisher check offline (transformers >= 5.2x
    loads it with bitsandbytes on every command)."""
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    logging.getLogger("kernels").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        sys.modules["transformers"].logging.set_verbosity_error()


def main() -> None:
    """The console entry: every anticipated error is one line on stderr and exit status 2; Ctrl-C ends
    with exit status 130 (verbs that can resume say how, labeltune.label)."""
    quiet_libraries()
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
