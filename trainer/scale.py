"""Scaling a trained update: the strongest safe update may be a fraction of what the night learned.

A LoRA adds (alpha / r) * B @ A to a weight, so multiplying B by s multiplies the merged update by exactly
s; the version's lineage then holds the adapters as scaled, and merging them again gives the model served.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS = "adapter_model.safetensors"
SCALE_FILE = "scale.txt"  # the factor an adapter was scaled by, for the reader of its folder


def scale_adapters(adapters: list[Path], factor: float) -> None:
    """Multiply each adapter's lora_B (and lora_embedding_B) by `factor`, in place, atomically per file."""
    import os

    from safetensors.torch import load_file, save_file

    for adapter in adapters:
        path = adapter / WEIGHTS
        tensors = load_file(path)
        for name, tensor in tensors.items():
            if ".lora_B." in name or ".lora_embedding_B" in name:
                tensors[name] = tensor * factor
        tmp = path.with_suffix(".tmp")
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
        previous = float((adapter / SCALE_FILE).read_text()) if (adapter / SCALE_FILE).exists() else 1.0
        (adapter / SCALE_FILE).write_text(f"{previous * factor:g}\n")
