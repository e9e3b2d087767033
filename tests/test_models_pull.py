"""`nightjar models pull`: a GGUF from the Hugging Face Hub, against a local server that answers like the hub.

The server (a thread on 127.0.0.1) answers `HEAD`/`GET /{repo}/resolve/{revision}/{file}` the way
huggingface.co does for an LFS file: X-Repo-Commit, the sha256 as ETag and X-Linked-Etag, X-Linked-Size,
Content-Length, ranges (206), and the hub's X-Error-Code on a missing repository or file. The real `nightjar`
runs in a subprocess with HF_ENDPOINT pointing at it, and with HF_HUB_OFFLINE=1 as every Nightjar test has it:
the pull goes online anyway. Nothing here reaches the internet.
"""

from __future__ import annotations

import hashlib
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from assistant import config as config_mod
from assistant import pull as pull_mod
from assistant import registry
from assistant.errors import NightjarError
from tests.conftest import ROOT, run_nightjar
from tests.test_feedback_cli import one_line_error
from tests.test_models_base import _gguf_of_architecture

REPO = "nightjar-test/SmolLM2-135M-Instruct-GGUF"
FILE = "smollm2-135m-instruct-q4_1.gguf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Hub(ThreadingHTTPServer):
    """A hub serving files from disk; switches make it misbehave."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[tuple[str, str], tuple[Path, str]] = {}
        self.corrupt: set[tuple[str, str]] = set()  # bytes that are not the advertised sha256's
        self.cut_gets = 0  # the next this many GETs send half of what they announce, then hang up
        self.stall: threading.Event | None = None  # GETs send half, then wait for this
        self.plain_404 = False  # answer 404 like a plain web server (no X-Error-Code)
        self.requests: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add(self, repo: str, filename: str, path: Path) -> str:
        sha = _sha256(path)
        self.files[(repo, filename)] = (path, sha)
        return sha

    def gets(self) -> list[tuple[str, str | None]]:
        return [(path, rng) for method, path, rng in self.requests if method == "GET"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Hub

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _error(self, status: int, code: str | None = None, commit: bool = False) -> None:
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", {"RepoNotFound": "Repository not found"}.get(code, code))
        if commit:
            self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _serve(self, body: bool) -> None:
        hub = self.server
        hub.requests.append((self.command, self.path, self.headers.get("Range")))
        match = re.match(
            r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", urllib.parse.unquote(self.path.split("?")[0])
        )
        if match is None or hub.plain_404:
            return self._error(404)
        repo, _revision, filename = match.groups()
        if repo not in {r for r, _ in hub.files}:
            return self._error(401, "RepoNotFound")  # what the hub answers for a missing (or private) repo
        if (repo, filename) not in hub.files:
            return self._error(404, "EntryNotFound", commit=True)
        path, sha = hub.files[(repo, filename)]
        size = path.stat().st_size
        start, status = 0, 200
        ranged = re.match(r"^bytes=(\d+)-$", self.headers.get("Range") or "")
        if body and ranged:
            start, status = int(ranged.group(1)), 206
        self.send_response(status)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{sha}"')
        self.send_header("X-Linked-Etag", f'"{sha}"')
        self.send_header("X-Linked-Size", str(size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        if not body:
            return
        with hub.lock:
            cut = hub.cut_gets > 0
            hub.cut_gets -= cut
        stall = hub.stall
        end = start + (size - start) // 2 if cut or stall is not None else size
        try:
            with path.open("rb") as fh:
                fh.seek(start)
                position = start
                while position < end:
                    chunk = fh.read(min(1 << 20, end - position))
                    if (repo, filename) in hub.corrupt and position + len(chunk) == size:
                        chunk = chunk[:-1] + bytes([chunk[-1] ^ 0xFF])
                    self.wfile.write(chunk)
                    position += len(chunk)
            self.wfile.flush()
            if stall is not None:
                stall.wait(120)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if end < size:
            self.close_connection = True  # hang up short of the Content-Length


@pytest.fixture
def hub():
    server = Hub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    if server.stall is not None:
        server.stall.set()
    server.shutdown()
    server.server_close()


def _env(hub_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hub_url,
        "HF_HOME": str(tmp_path / "hf-home"),  # no token, no cache of the user's
        "HF_TOKEN": "",
        "HF_HUB_OFFLINE": "1",  # Nightjar's default: the pull must go online regardless
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }


def _target(home: Path, repo: str = REPO, filename: str = FILE) -> Path:
    return (home / "models" / "downloads" / repo.replace("/", "--") / filename).resolve()


def _partials(home: Path) -> list[Path]:
    return list((home / "models" / "downloads").rglob("*.incomplete"))


def _tiny_gguf(tmp_path: Path) -> Path:
    return _gguf_of_architecture(tmp_path / "tiny.gguf", "llama")


def test_pull_with_base_downloads_verifies_and_makes_it_the_base(tmp_path: Path, hub: Hub, model_path: Path):
    home = tmp_path / "home"
    sha = hub.add(REPO, FILE, model_path)
    env = _env(hub.url, tmp_path)
    pulled = run_nightjar("models", "pull", REPO, FILE, "--base", home=home, env=env)
    assert pulled.returncode == 0, pulled.stderr
    target = _target(home)
    assert target.is_file() and _sha256(target) == sha
    assert "sha256 verified" in pulled.stdout
    assert f"base model: {target}" in pulled.stdout
    assert run_nightjar("models", "base", home=home).stdout.strip() == str(target)
    config = config_mod.load(home, environ={})
    assert registry.served_model(config) == (registry.BASE, target), "the pulled model answers at once"
    assert not _partials(home)
    assert [path for path, _ in hub.gets()] == [f"/{REPO}/resolve/{COMMIT}/{FILE}"], (
        "one download, pinned to the commit the HEAD named"
    )

    again = run_nightjar("models", "pull", f"hf://{REPO}/{FILE}", "--no-base", home=home, env=env)
    assert again.returncode == 0, again.stderr
    assert "already downloaded" in again.stdout and "sha256 verified" in again.stdout
    assert len(hub.gets()) == 1, "a verified file is not downloaded again"


def test_a_dropped_connection_is_resumed_with_a_range_request(tmp_path: Path, hub: Hub, model_path: Path):
    home = tmp_path / "home"
    sha = hub.add(REPO, FILE, model_path)
    hub.cut_gets = 1  # the first GET hangs up half-way
    pulled = run_nightjar("models", "pull", REPO, FILE, "--no-base", home=home, env=_env(hub.url, tmp_path))
    assert pulled.returncode == 0, pulled.stderr
    assert _sha256(_target(home)) == sha
    ranges = [rng for _, rng in hub.gets() if rng]
    assert len(hub.gets()) == 2 and len(ranges) == 1, hub.requests
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", ranges[0]).group(1))
    assert 0 < resumed_at <= model_path.stat().st_size // 2, "it resumed from what it had, not from 0"
    assert f"to make it the base model: nightjar models base {_target(home)}" in pulled.stdout
    config = config_mod.load(home, environ={})
    assert registry.base_model_path(config) == model_path, "--no-base leaves the base alone"


def test_a_pull_killed_midway_leaves_no_model_and_the_next_one_completes(
    tmp_path: Path, hub: Hub, model_path: Path
):
    home = tmp_path / "home"
    sha = hub.add(REPO, FILE, model_path)
    hub.stall = threading.Event()  # sends half, then holds the connection open
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTJAR_")} | _env(hub.url, tmp_path)
    cmd = [sys.executable, "-m", "assistant", "--home", str(home), "models", "pull", REPO, FILE, "--base"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any(p.stat().st_size >= 10 << 20 for p in _partials(home)):
            assert proc.poll() is None and time.monotonic() < deadline, "the download never got going"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _partials(home), "the killed pull left its partial file"
    assert not _target(home).exists(), "and no file that could pass for the model"
    config = config_mod.load(home, environ={})
    assert registry.base_model_path(config) == model_path

    stall, hub.stall = hub.stall, None
    stall.set()
    pulled = run_nightjar("models", "pull", REPO, FILE, "--base", home=home, env=_env(hub.url, tmp_path))
    assert pulled.returncode == 0, pulled.stderr
    assert "deleted a partial download left by an interrupted pull" in pulled.stdout
    assert not _partials(home)
    assert _sha256(_target(home)) == sha
    assert registry.base_model_path(config) == _target(home)


def test_a_corrupt_download_is_refused_in_one_line_and_not_kept(tmp_path: Path, hub: Hub):
    home = tmp_path / "home"
    hub.add(REPO, "tiny.gguf", _tiny_gguf(tmp_path))
    hub.corrupt.add((REPO, "tiny.gguf"))
    result = run_nightjar(
        "models", "pull", REPO, "tiny.gguf", "--base", home=home, env=_env(hub.url, tmp_path)
    )
    one_line_error(result, "tiny.gguf", "corrupt", "sha256", "deleted")
    assert not _target(home, filename="tiny.gguf").exists() and not _partials(home)
    assert not (home / "models" / registry.BASE_FILE).exists()


def test_a_file_that_is_not_a_gguf_inside_is_refused_and_not_kept(tmp_path: Path, hub: Hub):
    home = tmp_path / "home"
    page = tmp_path / "page.gguf"
    page.write_text("<html>not a model</html>")
    hub.add(REPO, "page.gguf", page)
    result = run_nightjar("models", "pull", REPO, "page.gguf", home=home, env=_env(hub.url, tmp_path))
    one_line_error(result, "page.gguf", "not a GGUF model file")
    assert not _target(home, filename="page.gguf").exists()


def test_one_pull_at_a_time_into_a_repository(tmp_path: Path, hub: Hub):
    import fcntl

    home = tmp_path / "home"
    hub.add(REPO, "tiny.gguf", _tiny_gguf(tmp_path))
    lock = _target(home, filename="tiny.gguf").parent / ".cache" / "nightjar-pull.lock"
    lock.parent.mkdir(parents=True)
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as another pull holds it
        result = run_nightjar("models", "pull", REPO, "tiny.gguf", home=home, env=_env(hub.url, tmp_path))
    one_line_error(result, "another `nightjar models pull`", REPO)
    assert not _target(home, filename="tiny.gguf").exists()


def test_a_download_that_keeps_breaking_off_fails_in_one_line(tmp_path: Path, hub: Hub):
    home = tmp_path / "home"
    hub.add(REPO, "tiny.gguf", _tiny_gguf(tmp_path))
    hub.cut_gets = 1000  # every GET hangs up half-way: huggingface_hub retries, then gives up
    result = run_nightjar("models", "pull", REPO, "tiny.gguf", home=home, env=_env(hub.url, tmp_path))
    one_line_error(result, "tiny.gguf", "broke off", "run the command again")
    assert not _target(home, filename="tiny.gguf").exists() and not _partials(home)


def test_an_unreachable_hub_fails_in_one_line(tmp_path: Path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    result = run_nightjar("models", "pull", REPO, FILE, home=tmp_path / "home", env=_env(url, tmp_path))
    one_line_error(result, "cannot reach", url)


def test_a_missing_repository_or_file_fails_in_one_line_naming_it(tmp_path: Path, hub: Hub):
    home = tmp_path / "home"
    hub.add(REPO, "tiny.gguf", _tiny_gguf(tmp_path))
    env = _env(hub.url, tmp_path)
    one_line_error(
        run_nightjar("models", "pull", "nightjar-test/missing", "tiny.gguf", home=home, env=env),
        "no model repository nightjar-test/missing",
    )
    line = one_line_error(run_nightjar("models", "pull", REPO, "nope.gguf", home=home, env=env), "nope.gguf")
    assert f"{REPO} has no file nope.gguf" in line
    hub.plain_404 = True  # a mirror without the hub's error codes
    line = one_line_error(run_nightjar("models", "pull", REPO, "nope.gguf", home=home, env=env), "not found")
    assert f"{REPO}/nope.gguf" in line
    assert not _partials(home) and not (home / "models" / "downloads" / "nightjar-test--missing").exists()


def test_a_file_that_is_not_a_gguf_is_refused_before_any_request(tmp_path: Path, hub: Hub):
    env = _env(hub.url, tmp_path)
    home = tmp_path / "home"
    one_line_error(run_nightjar("models", "pull", REPO, "README.md", home=home, env=env), "not a .gguf")
    one_line_error(run_nightjar("models", "pull", f"hf://{REPO}", home=home, env=env), "hf://OWNER/NAME/FILE")
    one_line_error(run_nightjar("models", "pull", REPO, home=home, env=env), "which file")
    assert hub.requests == []


def test_without_a_terminal_it_does_not_ask_and_does_not_make_it_the_base(tmp_path: Path, hub: Hub):
    home = tmp_path / "home"
    hub.add(REPO, "tiny.gguf", _tiny_gguf(tmp_path))
    pulled = run_nightjar(
        "models", "pull", f"hf://{REPO}/tiny.gguf", home=home, env=_env(hub.url, tmp_path), input="y\n"
    )
    assert pulled.returncode == 0, pulled.stderr
    assert "make it the base model?" not in pulled.stdout
    assert "to make it the base model: nightjar models base" in pulled.stdout
    assert not (home / "models" / registry.BASE_FILE).exists()


def test_on_a_terminal_it_asks_and_yes_makes_it_the_base(tmp_path: Path, hub: Hub, model_path: Path):
    home = tmp_path / "home"
    hub.add(REPO, FILE, model_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTJAR_")} | _env(hub.url, tmp_path)
    cmd = [sys.executable, "-m", "assistant", "--home", str(home), "models", "pull", REPO, FILE]
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        os.write(controller, b"y\n")
        out, err = proc.communicate(timeout=300)
    finally:
        os.close(terminal)
        os.close(controller)
    assert proc.returncode == 0, err
    assert "make it the base model? [y/N]" in out
    assert f"base model: {_target(home)}" in out


def test_parse_source():
    assert pull_mod.parse_source(REPO, FILE) == pull_mod.Source(REPO, FILE, "main")
    assert pull_mod.parse_source(f"hf://{REPO}/sub/{FILE}") == pull_mod.Source(REPO, f"sub/{FILE}", "main")
    assert pull_mod.parse_source(f"hf://{REPO}@v1.0/{FILE}").revision == "v1.0"
    assert pull_mod.parse_source(REPO, FILE, "abc").revision == "abc"
    for args in [
        ("noslash", FILE),
        (REPO, "../x.gguf"),
        (REPO, "x.safetensors"),
        (f"hf://{REPO}/{FILE}", FILE),
    ]:
        with pytest.raises(NightjarError):
            pull_mod.parse_source(*args)


def test_online_overrides_hf_hub_offline_read_at_import_and_restores_it(
    tmp_path: Path, hub: Hub, monkeypatch: pytest.MonkeyPatch
):
    from huggingface_hub import constants

    # as if huggingface_hub had been imported with HF_HUB_OFFLINE=1: it keeps the value it read then
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with pull_mod.online():
        assert not constants.is_offline_mode()
    assert constants.is_offline_mode(), "restored after"

    sha = hub.add(REPO, "tiny.gguf", _tiny_gguf(tmp_path))
    config = config_mod.load(tmp_path / "home", environ={})
    said: list[str] = []
    path = pull_mod.pull(config, pull_mod.parse_source(REPO, "tiny.gguf"), echo=said.append)
    assert _sha256(path) == sha and path == _target(tmp_path / "home", filename="tiny.gguf")
    assert constants.HF_HUB_OFFLINE is True, "offline again once the pull is done"
    assert any("sha256 verified" in line for line in said)
