"""`labeltune label --ray local --replicas 2`: Ray Data over two CPU replicas writes the very file a
single-process `label` writes, and a job killed with kill -9 (driver and the local cluster it started)
ends, when run again, with the same bytes."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'labeltune[ray]')")

from labeltune import train  # noqa: E402
from labeltune.config import TrainConfig, resolve  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample.csv"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train.main(resolve(TrainConfig, None, {"data": str(SAMPLE), "output": str(out), "max_steps": 70}))
    return out


def _posts(path: Path, n: int) -> None:
    rows = list(csv.DictReader(open(SAMPLE, encoding="utf-8", newline="")))
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["post_id", "body"])
        for i in range(n):
            writer.writerow([f"p{i}", "" if i == 5 else rows[i % len(rows)]["text"]])


def _label(run_dir, source, out, *extra):
    return [
        sys.executable,
        "-m",
        "labeltune.cli",
        "label",
        "--run",
        str(run_dir),
        "--input",
        str(source),
        "--output",
        str(out),
        "--text-column",
        "body",
        "--chunk-size",
        "16",
        "--batch-size",
        "8",
        "--progress",
        "false",
        *extra,
    ]


@pytest.mark.parametrize("mode", ["score", "generate"])
def test_ray_with_two_replicas_writes_the_single_process_file(run_dir, tmp_path, mode):
    source = tmp_path / "posts.csv"
    _posts(source, 150)
    single, ray_out = tmp_path / "single.csv", tmp_path / "ray.csv"
    subprocess.run(_label(run_dir, source, single, "--mode", mode), check=True, cwd=ROOT, timeout=600)
    done = subprocess.run(
        _label(run_dir, source, ray_out, "--mode", mode, "--ray", "local", "--replicas", "2"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "labelled 150 rows" in done.stdout
    assert ray_out.read_bytes() == single.read_bytes()


def test_ray_job_killed_and_run_again_ends_with_the_same_bytes(run_dir, tmp_path):
    source = tmp_path / "posts.csv"
    _posts(source, 400)
    reference, resumed = tmp_path / "reference.csv", tmp_path / "resumed.csv"
    subprocess.run(_label(run_dir, source, reference, "--mode", "score"), check=True, cwd=ROOT, timeout=600)
    argv = _label(run_dir, source, resumed, "--mode", "score", "--ray", "local", "--replicas", "2")
    state = resumed.with_name("." + resumed.name + ".labeltune.json")
    proc = subprocess.Popen(
        argv, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill -9 once some chunks are on disk
        try:
            if json.loads(state.read_text())["rows"] >= 48:
                break
        except (OSError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started, as a lost machine
    proc.wait()
    done_rows = json.loads(state.read_text())["rows"]
    assert 48 <= done_rows < 400, "the job finished before it could be killed"
    assert not resumed.exists()
    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert resumed.read_bytes() == reference.read_bytes()


def test_ray_against_a_running_cluster_address(run_dir, tmp_path):
    """--ray auto joins a cluster started apart (`ray start --head`, token authentication on), as on a real
    cluster's head node, and so does --ray HOST:PORT with the cluster's token (as from another machine of
    the cluster); without RAY_AUTH_MODE the address is refused in one line that says what to set."""
    import os
    import secrets
    import shutil
    import socket

    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_cli is None:
        pytest.skip("no `ray` command beside this Python")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = tmp_path / "posts.csv"
    _posts(source, 60)
    single, joined, addressed = tmp_path / "single.csv", tmp_path / "joined.csv", tmp_path / "addressed.csv"
    subprocess.run(_label(run_dir, source, single, "--mode", "score"), check=True, cwd=ROOT, timeout=600)
    # the cluster's own token (never ~/.ray/auth_token, which other tests' local clusters may have written)
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    with_token = {**os.environ, **token}
    without = {k: v for k, v in os.environ.items() if k not in token}
    started = subprocess.run(
        [
            ray_cli,
            "start",
            "--head",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=with_token,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        # `auto`: the cluster this machine belongs to, as on a head node
        done = subprocess.run(
            _label(run_dir, source, joined, "--mode", "score", "--ray", "auto", "--replicas", "2"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env=with_token,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        # its address, as from another machine of the cluster's network
        address = ["--mode", "score", "--ray", f"127.0.0.1:{port}", "--replicas", "2"]
        done = subprocess.run(
            _label(run_dir, source, addressed, *address),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env=with_token,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        refused = subprocess.run(
            _label(run_dir, source, tmp_path / "refused.csv", *address),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env=without,
        )
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=300)
    assert joined.read_bytes() == single.read_bytes()
    assert addressed.read_bytes() == single.read_bytes()
    assert refused.returncode == 2
    said = [line for line in refused.stderr.splitlines() if line.startswith("labeltune: error:")]
    assert len(said) == 1 and "RAY_AUTH_MODE=token" in said[0] and f"127.0.0.1:{port}" in said[0], (
        refused.stderr[-2000:]
    )
    assert not (tmp_path / "refused.csv").exists()
