"""How a GGUF's tensors correspond to a transformers checkpoint's, in both directions.

The master (GGUF -> transformers) and the export (transformers -> GGUF) both use it: they are exact inverses.
Names map through gguf's TensorNameMap, the table llama.cpp's own converter uses. For the llama architecture
llama.cpp stores the q and k projections with the two rotary halves of each head interleaved, where
transformers keeps them apart (see `LlamaModel.permute` in llama.cpp's convert_hf_to_gguf.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from assistant.errors import ModelFileError
from assistant.modelfile import check_gguf

SUPPORTED_ARCHITECTURES = ("llama",)


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


def check_supported(reader, path: Path | str) -> str:
    """The GGUF's architecture, or a clear error when training cannot round-trip it exactly."""
    arch = field(reader, "general.architecture")
    name = Path(path).name
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelFileError(
            f"nightly training cannot write back a '{arch}' model ({name}); "
            f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    # Llama 3.1+ rope scaling lives in a rope_freqs tensor a transformers config cannot express exactly
    if field(reader, f"{arch}.rope.scaling.type") is not None or any(
        t.name == "rope_freqs.weight" for t in reader.tensors
    ):
        raise ModelFileError(f"nightly training does not support rope-scaled models yet ({name})")
    return arch


def heads(reader) -> tuple[int, int]:
    """(attention heads, key/value heads) of a llama GGUF."""
    n_head = int(field(reader, "llama.attention.head_count"))
    return n_head, int(field(reader, "llama.attention.head_count_kv", n_head))


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' q/k row order -> llama.cpp's: per head, interleave the two rotary halves."""
    half = weights.shape[0] // n_head // 2
    return weights.reshape(n_head, 2, half, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def unpermute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute`: llama.cpp's q/k row order -> transformers'."""
    half = weights.shape[0] // n_head // 2
    return weights.reshape(n_head, half, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def rope_heads(gguf_name: str, reader) -> int | None:
    """How many heads to (un)permute a tensor by, or None when it is stored as it is."""
    n_head, n_head_kv = heads(reader)
    if gguf_name.endswith("attn_q.weight"):
        return n_head
    if gguf_name.endswith("attn_k.weight"):
        return n_head_kv
    return None


def gguf_names(reader, hf_names) -> dict[str, str]:
    """{transformers name: llama.cpp name} for many names (builds the name table once)."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(field(reader, "llama.block_count")))
    mapped = {}
    for hf_name in hf_names:
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ModelFileError(f"llama.cpp has no name for tensor {hf_name}")
        mapped[hf_name] = name
    return mapped
