"""scripts/bench.py: the runs it benches and its engine table (its figures are timings, not tested)."""

from __future__ import annotations

import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labeltune.run import ADAPTER, MERGED, open_run

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_model_with_vllm_benches_its_merged16_export_made_once(tiny_run_2x32, tmp_path):
    """--model with vllm among --engines: the run's merged16 export, made on first use beside the run and
    reused after (without the run it came from); an interrupted export (no model.json) is made again; the hf
    engine labels with it."""
    bench = runpy.run_path(str(ROOT / "scripts" / "bench.py"))
    bench_run = bench["bench_run"]
    bench_run.__globals__["BENCH_RUNS"] = tmp_path  # the functions read the module's globals
    shutil.copytree(tiny_run_2x32, tmp_path / "tiny", symlinks=True)

    assert bench_run("tiny") == str(tmp_path / "tiny")  # trained already: not trained again
    export = Path(bench_run("tiny", merged=True))
    assert export == tmp_path / "tiny-merged16"
    assert open_run(export).info.merged and (export / MERGED).is_dir() and not (export / ADAPTER).exists()
    made = (export / "model.json").stat().st_mtime_ns
    assert bench_run("tiny", merged=True) == str(export)
    assert (export / "model.json").stat().st_mtime_ns == made  # reused, not exported again

    (export / "model.json").unlink()  # an export killed before its last file
    assert bench_run("tiny", merged=True) == str(export)
    assert open_run(export).info.merged

    shutil.rmtree(tmp_path / "tiny")  # the export alone (copied from another checkout): no training
    assert bench_run("tiny", merged=True) == str(export)
    assert not (tmp_path / "tiny").exists()

    proc = subprocess.run(
        [sys.executable, "scripts/bench.py", "--run", str(export), "--no-methods", "--engines", "hf"]
        + ["--engine-modes", "score,constrained", "--rows", "4", "--repeats", "1", "--rss-rows", ""],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split(" | ")[0] for line in proc.stdout.splitlines() if line.startswith("| hf ")]
    assert rows == ["| hf score", "| hf constrained"]


def test_engine_modes_refuses_an_unknown_mode():
    proc = subprocess.run(
        [sys.executable, "scripts/bench.py", "--engines", "hf", "--engine-modes", "score,greedy"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "--engine-modes: unknown mode greedy (score, constrained, generate)" in proc.stderr
