"""A run on the Hugging Face Hub: `--run org/name` and labeltune.load_run("org/name") download an export
pushed there into the Hugging Face cache (labeltune.hub), tested against a local stand-in of the Hub's HTTP
API: a stdlib HTTP server on 127.0.0.1 that answers what huggingface_hub.snapshot_download asks (GET
/api/models/<repo>/revision/<rev>, GET /api/models/<repo>/tree/<commit>, HEAD and GET
/<repo>/resolve/<commit>/<file>) from a folder `labeltune export` wrote.

huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE and HF_HUB_OFFLINE once, when it is imported: the CLI's
processes get them as environment variables, this process as huggingface_hub.constants (patched, as
huggingface_hub's own tests patch them). Every test has its own HF_HOME."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from labeltune.config import ExportConfig, resolve
from labeltune.hub import HubRun, parse_hub_run

ROOT = Path(__file__).resolve().parent.parent
REPO, NOT_A_RUN = "someone/tiny-labeller", "someone/notes"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TEXTS = ["今日のランチ最高においしかった", "あいつは本当に最低な人間だ", "明日は雨らしい"]
FOREIGN = ("eval/test-score-1/metrics.json", "labeller-q4_k_m.gguf")  # in the repo, not needed by a run


class Handler(BaseHTTPRequestHandler):
    """The Hub's answers for the repos in server.repos ({org/name: folder}), one commit each (COMMIT, the
    branch main); an unknown repo is a 401 RepoNotFound, as the Hub answers a missing or private one."""

    def do_GET(self):
        self.answer(body=True)

    def do_HEAD(self):
        self.answer(body=False)

    def log_message(self, *args):
        pass

    def send(self, status: int, data: bytes = b"", headers: dict | None = None, body: bool = True):
        self.send_response(status)
        for key, value in {"Content-Length": str(len(data)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def error(self, status: int, code: str, body: bool):
        message = json.dumps({"error": code}).encode()
        self.send(status, message, {"X-Error-Code": code, "Content-Type": "application/json"}, body)

    def answer(self, body: bool):
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/")[1:]]
        self.server.requests.append((self.command, "/".join(parts)))
        api = parts[:2] == ["api", "models"]
        repo = "/".join(parts[2:4] if api else parts[0:2])
        kind, revision = (parts[4], parts[5]) if api else (parts[2], parts[3])
        file = None if api else "/".join(parts[4:])
        folder = self.server.repos.get(repo)
        if folder is None:
            return self.error(401, "RepoNotFound", body)
        if revision not in ("main", COMMIT):
            return self.error(404, "RevisionNotFound", body)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        if kind == "revision":
            info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
            return self.send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        if kind == "tree":
            tree = [
                {"type": "file", "path": f, "size": (folder / f).stat().st_size, "oid": sha(folder / f)[:40]}
                for f in files
            ]
            return self.send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
        if kind != "resolve" or file not in files:
            return self.error(404, "EntryNotFound", body)
        data = (folder / file).read_bytes()
        self.send(200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{sha(folder / file)}"'}, body)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def exported(tiny_run_2x32, tmp_path_factory) -> Path:
    """`labeltune export` of a tiny run (an adapter export: what --push-to-hub uploads)."""
    from labeltune import export

    out = tmp_path_factory.mktemp("hub") / "export"
    export.main(resolve(ExportConfig, None, {"run": str(tiny_run_2x32), "output": str(out)}))
    return out


@pytest.fixture(scope="module")
def served(exported, tmp_path_factory) -> Path:
    """The repo as the Hub holds it: the export, and files a run does not need (an evaluation, a GGUF)."""
    repo = tmp_path_factory.mktemp("hub") / "repo"
    shutil.copytree(exported, repo)
    for name in FOREIGN:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("not for labeltune\n", encoding="utf-8")
    return repo


class Hub:
    """The stand-in Hub for one test: its requests, the environment that points the CLI at it, stop()."""

    def __init__(self, repos: dict[str, Path], home: Path):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.repos, self.server.requests = repos, []
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.home = home
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[tuple[str, str]]:
        return self.server.requests

    @property
    def cache(self) -> Path:
        return self.home / "hub"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def env(self, offline: bool = False) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(HF_ENDPOINT=self.url, HF_HOME=str(self.home), HF_HUB_DISABLE_TELEMETRY="1")
        return {**env, "HF_HUB_OFFLINE": "1"} if offline else env


@pytest.fixture
def hub(served, tmp_path, monkeypatch):
    from huggingface_hub import constants

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("# notes\n", encoding="utf-8")
    stand_in = Hub({REPO: served, NOT_A_RUN: tmp_path / "notes"}, tmp_path / "hf-home")
    monkeypatch.setattr(constants, "ENDPOINT", stand_in.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", stand_in.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(stand_in.cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)  # no trainer usage ping reaches it
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield stand_in
    stand_in.stop()


def cli(*argv, env: dict, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "labeltune.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**env, "PYTHONPATH": str(ROOT)},
    )


def in_process(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """(exit status, stderr) of `labeltune <argv>` run by the console entry in this process."""
    from labeltune import cli as cli_module

    monkeypatch.setattr(sys, "argv", ["labeltune", *argv])
    with pytest.raises(SystemExit) as e:
        cli_module.main()
    return e.value.code, capsys.readouterr().err


def test_hub_ids_are_parsed_and_paths_are_not():
    assert parse_hub_run("org/name") == HubRun("org/name", None)
    assert parse_hub_run("org/name@v1.0") == HubRun("org/name", "v1.0")
    assert parse_hub_run("org/name@refs/pr/1") == HubRun("org/name", "refs/pr/1")
    assert str(parse_hub_run("org/name@main")) == "org/name@main"
    for not_an_id in ("runs/a/b", "/abs/path", "./runs/x", "name", "org/na--me", "org/name@", "~/runs"):
        assert parse_hub_run(not_an_id) is None, not_an_id


def test_load_run_from_the_hub_labels_as_the_export_and_then_from_the_cache(
    hub, exported, tmp_path, monkeypatch, capsys
):
    from huggingface_hub import constants

    import labeltune
    from labeltune import calibrate, export
    from labeltune.config import CalibrateConfig
    from labeltune.run import RunError

    local = labeltune.load_run(exported).predict(TEXTS)
    remote = labeltune.load_run(REPO)
    said = capsys.readouterr().err
    snapshot = hub.cache / "models--someone--tiny-labeller" / "snapshots" / COMMIT
    assert remote.run.dir == snapshot
    assert f"--run {REPO}: revision {COMMIT[:12]} downloaded" in said and str(snapshot) in said
    for p, q in zip(remote.predict(TEXTS), local):
        assert (p.label, p.score, p.ok) == (q.label, q.score, q.ok)
        assert p.probs == pytest.approx(q.probs, abs=1e-6)
    # what a run needs came down, and nothing else: the export's files, not the repo's evaluation or GGUF
    # (each file's metadata is asked for with HEAD; a blob already cached, the same content, is not GET again)
    asked = {path.split("/", 4)[4] for method, path in hub.requests if method == "HEAD"}
    fetched = {p.split("/", 4)[4] for method, p in hub.requests if method == "GET" and "/resolve/" in p}
    wanted = {str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file()}
    assert asked == wanted and fetched <= wanted and not asked & set(FOREIGN)
    assert all((snapshot / name).is_file() for name in wanted)
    elsewhere = [r for r in hub.requests if not r[1].startswith(("api/models/" + REPO, REPO))]
    assert not elsewhere, elsewhere

    # the verbs that write into a run refuse its snapshot in the cache too
    with pytest.raises(RunError, match=f"calibrate writes into the run.*download {REPO} --revision {COMMIT}"):
        calibrate.main(resolve(CalibrateConfig, None, {"run": str(snapshot)}))

    # an export of the Hub's run (its files are the cache's links: accepted, copied as files), beside the cwd
    monkeypatch.chdir(tmp_path)
    out = export.main(resolve(ExportConfig, None, {"run": REPO}))
    assert out == Path("tiny-labeller-adapter") and (out / "template.jinja").is_file()
    assert not (out / "template.jinja").is_symlink() and not any(p.is_symlink() for p in out.rglob("*"))
    adapter = "adapter/adapter_model.safetensors"
    assert (out / adapter).read_bytes() == (exported / adapter).read_bytes()

    # second use: the Hub gone and HF_HUB_OFFLINE set, the cached snapshot
    hub.stop()
    asked = len(hub.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    capsys.readouterr()
    again = labeltune.load_run(REPO)
    said = capsys.readouterr().err
    assert again.run.dir == snapshot and len(hub.requests) == asked
    assert "already in the local cache" in said and "HF_HUB_OFFLINE is set" in said
    assert [p.label for p in again.predict(TEXTS)] == [p.label for p in local]
    # a cached snapshot missing a file (a download cut off) is refused offline, not loaded half
    (snapshot / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"its copy in the local cache .* is incomplete .* HF_HUB_OFFLINE"):
        labeltune.load_run(REPO)


def test_label_and_predict_with_a_hub_run_online_then_offline(hub, exported, tmp_path):
    import labeltune

    local = labeltune.load_run(exported).predict(TEXTS)
    posts = tmp_path / "posts.csv"
    with open(posts, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["text"], *([t] for t in TEXTS)])
    args = ["--input", posts, "--output", tmp_path / "out.csv", "--mode", "score", "--progress", "false"]
    proc = cli("label", "--run", REPO, *args, env=hub.env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"--run {REPO}: revision {COMMIT[:12]} downloaded" in proc.stderr
    snapshot = hub.cache / "models--someone--tiny-labeller" / "snapshots" / COMMIT  # under its HF_HOME
    assert f"into {snapshot}" in proc.stderr
    rows = list(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8")))
    assert [r["text"] for r in rows] == TEXTS
    for row, p in zip(rows, local):
        assert (row["label"], row["score"]) == (p.label, str(p.score))
        assert float(row["confidence"]) == pytest.approx(p.confidence, abs=1e-4)

    hub.stop()
    proc = cli("predict", "--run", REPO, "--json", *TEXTS, env=hub.env(offline=True))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already in the local cache" in proc.stderr
    records = [json.loads(line) for line in proc.stdout.strip().split("\n")]
    assert [(r["label"], r["score"]) for r in records] == [(p.label, p.score) for p in local]


def one_line(status: int, err: str, *expected: str) -> None:
    assert status == 2, err
    lines = err.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("labeltune: error: "), err
    for text in expected:
        assert text in lines[0], lines[0]


def test_hub_problems_are_one_line_errors(hub, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    def refused(*argv, expected):
        one_line(*in_process(list(argv), monkeypatch, capsys), *expected)

    monkeypatch.chdir(tmp_path)
    refused(
        "predict",
        "--run",
        "someone/nothing-here",
        "x",
        expected=["no such local directory", "no Hub model repo someone/nothing-here", "HF_TOKEN"],
    )
    refused("predict", "--run", f"{REPO}@v9", "x", expected=["has no revision 'v9'"])
    refused("predict", "--run", NOT_A_RUN, "x", expected=["holds no labeltune run or export", "config.yaml"])
    # the verbs that write into a run refuse a Hub repo before downloading, saying how to get a folder of
    # one's own (and, as the id may be a mistyped local path, that no such directory exists)
    writes = ["no such directory", "if it names a Hub repo: evaluate writes into", "hf download " + REPO]
    refused("evaluate", "--run", REPO, expected=writes)
    refused("calibrate", "--run", REPO, expected=["calibrate writes into the run", "--local-dir runs/tiny-"])

    # a local path of that name wins, whatever it holds; the Hub is not asked
    asked = len(hub.requests)
    (tmp_path / "someone" / "elsewhere").mkdir(parents=True)
    refused("predict", "--run", "someone/elsewhere", "x", expected=["not a labeltune run directory"])
    assert len(hub.requests) == asked

    # nothing cached: the Hub unreachable, or HF_HUB_OFFLINE set
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    hub.stop()
    refused(
        "predict",
        "--run",
        REPO,
        "x",
        expected=["not in the local cache (", ") and the Hub is not reachable (ConnectError: "],
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = ["not in the local cache (", ") and HF_HUB_OFFLINE is set"]
    refused("predict", "--run", REPO, "x", expected=offline)


def test_offline_cli_with_an_empty_cache_is_one_line(hub, tmp_path):
    proc = cli("predict", "--run", REPO, "x", env=hub.env(offline=True))
    one_line(proc.returncode, proc.stderr, f"--run {REPO}: no such local directory", "HF_HUB_OFFLINE is set")
    assert hub.requests == []
