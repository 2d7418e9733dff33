"""A built wheel works outside the checkout: tasks, templates and the bundled general text ship as
package data, and no module imports another in a cycle."""

import ast
import csv
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "labeltune"


@pytest.mark.train
def test_wheel_installed_elsewhere_lists_tasks_and_labels_a_csv(tmp_path):
    """`pip install .` (not editable) into a clean environment, run from a folder outside the checkout:
    `labeltune templates` lists the bundled tasks and templates, and `label` runs on a trained run."""
    from labeltune import train
    from labeltune.config import TrainConfig, resolve

    # no PYTHONPATH anywhere below: a checkout on it (with the wheel build's labeltune.egg-info) would make
    # pip take labeltune as installed already and skip the wheel
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    wheel = next((tmp_path / "dist").glob("labeltune-*.whl"))
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    site = Path(
        subprocess.run(
            [
                str(env_dir / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # the dependencies from this environment (a .pth line), labeltune only from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(env_dir / "bin" / "python"),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    lt = [str(env_dir / "bin" / "python"), "-m", "labeltune.cli"]
    where = subprocess.run(
        [*lt[:1], "-c", "import labeltune; print(labeltune.__file__)"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(site) in where and str(ROOT) not in where  # the installed copy, not the checkout
    listing = subprocess.run([*lt, "templates"], cwd=outside, env=env, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert "sentiment_toxicity" in listing.stdout and "alpaca_ja_sentiment_toxicity" in listing.stdout

    run = train.main(
        resolve(TrainConfig, None, {"output": str(tmp_path / "run"), "max_steps": 2, "limit": 48})
    )
    posts = outside / "posts.csv"
    posts.write_text("id,text\n1,最高の一日\n2,最悪だ\n", encoding="utf-8")
    proc = subprocess.run(
        [
            *lt,
            "label",
            "--run",
            str(run),
            "--input",
            "posts.csv",
            "--output",
            "out.csv",
            "--mode",
            "score",
            "--progress",
            "false",
        ],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(outside / "out.csv", encoding="utf-8")))
    assert [r["id"] for r in rows] == ["1", "2"] and all(r["ok"] == "True" for r in rows)


def _imports(path: Path) -> set[str]:
    """labeltune modules `path` imports anywhere in it (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("labeltune"):
            if node.module == "labeltune":
                found |= {f"labeltune.{a.name}" for a in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("labeltune.")}
    return found


def test_no_import_cycles():
    """The import graph of labeltune/ (every import, also those inside functions) has no cycle."""
    modules = {f"labeltune.{p.stem}": p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    graph = {name: sorted(_imports(path) & set(modules) - {name}) for name, path in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_engines_share_the_answer_maths_and_not_each_other():
    """labeltune.answers (log-probabilities -> answers) sits below both engines and imports neither; the vLLM
    engine does not reach into the hf engine's decoding (labeltune.decode), nor the engine registry."""
    assert not _imports(PACKAGE / "answers.py") & {
        "labeltune.decode",
        "labeltune.vllm_engine",
        "labeltune.engine",
    }
    assert not _imports(PACKAGE / "vllm_engine.py") & {"labeltune.decode", "labeltune.engine"}
    assert "labeltune.answers" in _imports(PACKAGE / "decode.py") & _imports(PACKAGE / "vllm_engine.py")


def test_every_engine_and_decode_mode_is_registered_once():
    """config's lists (the CLI's choices) name exactly the registered engines, the hf engine decodes every
    mode and the vLLM engine no other; importing them imports no vLLM."""
    code = (
        "import sys; from labeltune import config, decode, engine, vllm_engine; "
        "assert tuple(engine.ENGINE_CLASSES) == config.ENGINES, engine.ENGINE_CLASSES; "
        "assert tuple(decode.DECODERS) == config.MODES, decode.DECODERS; "
        "assert set(vllm_engine.DECODERS) <= set(config.MODES), vllm_engine.DECODERS; "
        "assert 'vllm' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
