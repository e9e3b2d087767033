"""`nightjar` with no arguments: the chat app on a terminal (a real pseudo-terminal here), help otherwise."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from conftest import ROOT, run_nightjar


def read_until(fd: int, wanted: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the terminal closed
                break
    return seen


def test_nightjar_alone_opens_the_chat_app_on_a_terminal(home: Path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # an 80x24 terminal
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTJAR_")}
    env.update(TERM="xterm-256color", HF_HUB_OFFLINE="1")
    app = subprocess.Popen(
        [sys.executable, "-m", "assistant", "--home", str(home)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=ROOT,
        close_fds=True,
    )
    os.close(slave)
    try:
        screen = read_until(master, b"not scheduled", timeout=60)  # the status bar's end: the screen is drawn
        assert b"strategy direct" in screen and b"not scheduled" in screen, screen[-2000:]
        assert b"Ask about your documents." in screen and "Ask a question…".encode() in screen
        os.write(master, b"\x11")  # Ctrl+Q quits
        assert app.wait(timeout=30) == 0
    finally:
        if app.poll() is None:
            app.kill()
        os.close(master)


def test_nightjar_alone_prints_help_when_not_on_a_terminal():
    result = run_nightjar()
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: nightjar") and "chat " in result.stdout


def test_chat_reports_a_bad_model_in_one_line(home: Path, tmp_path: Path):
    result = run_nightjar("chat", "--model", str(tmp_path / "missing.gguf"), home=home)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: model file not found: {tmp_path / 'missing.gguf'}"]
