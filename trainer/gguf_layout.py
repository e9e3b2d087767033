"""How a GGUF's tensors correspond to a transformers checkpoint's, in both directions.

The master (GGUF -> transformers) and the export (transformers -> GGUF) both use it: they are exact inverses.
Names map through gguf's TensorNameMap for the file's architecture, the table llama.cpp's own converter uses;
what differs between architectures (the llama q/k interleave, gemma's norm offset, the config) is in
`trainer.architectures`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from assistant.errors import ModelFileError
from assistant.modelfile import check_gguf
from trainer import architectures
from trainer.architectures import BASE_ONLY_TENSORS, Architecture, Meta, permute, unpermute

SUPPORTED_ARCHITECTURES = architectures.SUPPORTED

__all__ = [
    "BASE_ONLY_TENSORS",
    "SUPPORTED_ARCHITECTURES",
    "Architecture",
    "Meta",
    "check_supported",
    "field",
    "gguf_names",
    "open_gguf",
    "permute",
    "unpermute",
]


def open_gguf(path: Path | str):
    """A GGUFReader on `path` (memory-mapped), or one clear error for a missing or damaged file."""
    import gguf

    path = check_gguf(path)
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # the gguf reader raises many kinds on a damaged file
        raise ModelFileError(f"corrupt GGUF file {path}: {exc}") from exc


def field(reader, key: str, default: Any = None) -> Any:
    found = reader.get_field(key)
    return default if found is None else found.contents()


def check_supported(reader, path: Path | str) -> Architecture:
    """The GGUF's architecture, or a clear error when training cannot round-trip it exactly."""
    return architectures.check_supported(reader, path)


def gguf_names(reader, hf_names) -> dict[str, str]:
    """{transformers name: llama.cpp name} for many names (builds the name table once)."""
    import gguf

    arch = field(reader, "general.architecture")
    model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(model_arch, int(field(reader, f"{arch}.block_count")))
    mapped = {}
    for hf_name in hf_names:
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ModelFileError(f"llama.cpp has no {arch} name for tensor {hf_name}")
        mapped[hf_name] = name
    return mapped
