"""The Colab walkthrough runs top to bottom on CPU (tiny model chosen automatically)."""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_walkthrough_notebook_executes_on_cpu(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "walkthrough.ipynb", as_version=4)
    assert "colab-badge" in nb.cells[0].source
    shutil.rmtree(ROOT / "runs" / "notebook-tiny", ignore_errors=True)  # the notebook never trains over a finished run
    os.environ["LABELTUNE_NB_STEPS"] = "80"  # a short CPU run: the format is learned by then
    try:
        NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    finally:
        os.environ.pop("LABELTUNE_NB_STEPS", None)
    outputs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "MODEL=tiny" in outputs and "labelled" in outputs and "merged16" in outputs
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert (ROOT / "runs" / "notebook-tiny" / "metrics.json").is_file()
