"""The Colab walkthrough runs top to bottom on CPU (tiny model chosen automatically)."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_walkthrough_notebook_executes_on_cpu(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "walkthrough.ipynb", as_version=4)
    assert "colab-badge" in nb.cells[0].source
    env = {
        "LABELTUNE_NB_MODEL": "tiny",  # the mechanics in minutes (the CPU default, Gemma 3 270M: ~45 min)
        "LABELTUNE_NB_STEPS": "80",  # a short CPU run: the format is learned by then
        "LABELTUNE_NB_RUNS": str(tmp_path / "runs"),
    }  # a fresh runs folder: nothing of runs/ is reused or touched
    os.environ.update(env)
    try:
        NotebookClient(
            nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()
    finally:
        for name in env:
            os.environ.pop(name, None)
    outputs = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "MODEL=tiny" in outputs and "labelled" in outputs and "merged16" in outputs
    assert "training a new run in" in outputs and "tokenizer: the " in outputs
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert (tmp_path / "runs" / "notebook-tiny" / "metrics.json").is_file()
