"""Every `labeltune <verb> --flag` the README shows exists in that verb's --help; the Makefile's
targets named in the README exist; .ci/run calls the README's test command."""

import re
from pathlib import Path

from labeltune.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = {path.name: path.read_text(encoding="utf-8") for path in sorted((ROOT / "docs").glob("*.md"))}


def _verb_flags() -> dict[str, set[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    flags = {verb: {s for a in p._actions for s in a.option_strings} for verb, p in sub.choices.items()}
    data = next(a for a in sub.choices["data"]._actions if a.dest == "data_verb")
    flags["data"] = {s for a in data.choices["prepare"]._actions for s in a.option_strings}
    review = next(a for a in sub.choices["review"]._actions if a.dest == "review_verb")
    for action, action_parser in review.choices.items():
        flags[f"review {action}"] = {s for a in action_parser._actions for s in a.option_strings}
    return flags


def test_readme_flags_exist():
    flags = _verb_flags()
    for name, text in {"README.md": README, **DOCS}.items():
        used = re.findall(
            r"labeltune(?:\.cli)? +(train|evaluate|label|predict|export|calibrate|data|models|templates"
            r"|review select|review push|review pull|review merge)\b([^\n`|&]*)",
            text,
        )
        assert len(used) >= 4 or name != "README.md"
        for verb, rest in used:
            for flag in re.findall(r"(--[a-z][a-z0-9-]*)", rest):
                assert flag in flags[verb], f"{name} uses `labeltune {verb} {flag}`, not in its --help"


def test_readme_is_short_and_its_links_resolve():
    """A README one can enter (issue: ~250 lines); the rest lives in docs/, and every relative link
    resolves."""
    assert len(README.splitlines()) <= 300
    for name, text in {"README.md": README, **{f"docs/{k}": v for k, v in DOCS.items()}}.items():
        base = ROOT if name == "README.md" else ROOT / "docs"
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (base / target).exists(), f"{name} links to {target}, which does not exist"


def test_readme_first_lines_are_the_two_commands():
    first = README.split("```bash", 1)[1].split("```", 1)[0]
    assert re.search(r"^make demo\b", first, re.M) and re.search(r"^make test\b", first, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    makefile = (ROOT / "Makefile").read_text()
    for name, text in {"README.md": README, **DOCS}.items():
        for target in re.findall(r"\bmake ([a-z][a-z-]+)", text):
            assert re.search(rf"^{target}:", makefile, re.M), f"{name} names `make {target}`, no such target"


def test_cli_reference_is_generated_from_the_real_help():
    """In a fresh process without the suite's LABELTUNE_MODEL (conftest.py): the defaults a user sees."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "LABELTUNE_MODEL"}
    code = "import runpy, sys; sys.stdout.write(runpy.run_path(sys.argv[1])['reference']())"
    generated = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "scripts" / "cli_reference.py")],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=True,
    ).stdout
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == generated, (
        "docs/cli.md is stale: run python scripts/cli_reference.py"
    )


def test_script_flags_in_the_docs_exist():
    """Every `scripts/<name>.py --flag` the README and docs show is in that script's --help (a copied
    benchmark or simulation command runs)."""
    import os
    import subprocess
    import sys

    used: dict[str, set[str]] = {}
    for text in (README, *DOCS.values()):
        for script, rest in re.findall(r"scripts/([a-z_0-9]+)\.py((?:[^\n`|]|\\\n)*)", text):
            used.setdefault(script, set()).update(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest))
    assert {"bench", "simulate_review", "bench_train_trl"} <= set(used)
    for script, flags in sorted(used.items()):
        flags.discard("--help")
        if not flags or "argparse" not in (ROOT / "scripts" / f"{script}.py").read_text(encoding="utf-8"):
            continue
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / f"{script}.py"), "--help"],
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"scripts/{script}.py --help failed: {done.stderr[-500:]}"
        for flag in flags:
            assert flag in done.stdout, f"the docs use `scripts/{script}.py {flag}`, not in its --help"
