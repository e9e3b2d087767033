"""Write a GGUF from a float (merged) model, keeping everything else of the base GGUF it was trained from.

The base GGUF is the source of truth for the file's layout: every metadata key (hyperparameters, tokenizer,
chat template) is copied and only the file type changes; tensors take the base's names, order and shapes
(see gguf_layout for the name mapping, trainer.architectures for what each architecture changes).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from assistant import atomic
from assistant.errors import ModelFileError
from trainer import gguf_layout

OUT_TYPES = ("F32", "F16")


def export_gguf(
    model: Path | str | Mapping[str, Any], base_gguf: Path | str, out: Path | str, out_type: str = "F32"
) -> Path:
    """Write `model` (a transformers checkpoint dir or state dict) as a float GGUF laid out like `base`.

    Matrices are stored as `out_type` (F32 or F16); norms stay F32 as in llama.cpp's converter. The file
    appears at `out` only once complete.
    """
    import gguf

    if out_type not in OUT_TYPES:
        raise ModelFileError(f"cannot export as {out_type}; choose one of {', '.join(OUT_TYPES)}")
    base_gguf, out = Path(base_gguf), Path(out)
    state = _state_dict(model)
    for hf_name in state:
        if "lora_" in hf_name or hf_name.startswith("base_model."):
            raise ModelFileError(f"the model still holds an unmerged LoRA ({hf_name}); merge it first")
    reader = gguf_layout.open_gguf(base_gguf)
    arch = gguf_layout.check_supported(reader, base_gguf)
    meta = gguf_layout.Meta(reader, base_gguf)
    base_names = [t.name for t in reader.tensors]
    # a base without output.weight ties its output head to the token embeddings: the head must still be those
    tied = "output.weight" not in base_names
    head = state.get("lm_head.weight") if tied else None
    names = gguf_layout.gguf_names(reader, [hf for hf in state if not (tied and hf == "lm_head.weight")])
    weights = {gguf_name: state[hf] for hf, gguf_name in names.items()}
    embeddings = weights.get("token_embd.weight")
    if head is not None and embeddings is not None and not np.array_equal(_numpy(head), _numpy(embeddings)):
        raise ModelFileError("the model's output head differs from the embeddings its base GGUF ties it to")
    # what the base holds beyond the weights (Llama 3's rope factors) is carried over as it is
    carried = {t.name: t for t in reader.tensors if t.name in gguf_layout.BASE_ONLY_TENSORS}
    extra = sorted(set(weights) - set(base_names))
    missing = [name for name in base_names if name not in weights and name not in carried]
    if extra or missing:
        raise ModelFileError(
            f"the model's tensors do not match its base GGUF: extra {extra[:3]}, missing {missing[:3]}"
        )

    def shape_and_dtype(t) -> tuple[tuple[int, ...], np.dtype]:
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dimensions innermost first
        return shape, np.dtype(np.float16 if out_type == "F16" and len(shape) >= 2 else np.float32)

    def arrays() -> Iterator[np.ndarray]:
        for t in reader.tensors:
            shape, dtype = shape_and_dtype(t)
            if t.name in carried:
                array = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
            else:
                array = arch.to_gguf(t.name, _numpy(weights[t.name]), meta)
            if array.shape != shape:
                raise ModelFileError(f"tensor {t.name} has shape {array.shape}; the base GGUF has {shape}")
            yield np.ascontiguousarray(array, dtype=dtype)

    file_type = gguf.LlamaFileType.MOSTLY_F16 if out_type == "F16" else gguf.LlamaFileType.ALL_F32
    try:
        infos = [(t.name, *shape_and_dtype(t)) for t in reader.tensors]
        _write(reader, arch.name, file_type, out, infos, arrays())
    except OSError as exc:  # typically a full disk
        raise ModelFileError(f"could not write {out}: {exc.strerror or exc}") from exc
    return out


def _write(reader, arch: str, file_type, out: Path, infos: list, arrays: Iterator[np.ndarray]) -> None:
    """Stream the GGUF to `out` atomically: the base's metadata, then the tensor directory, then the data."""
    import gguf

    with atomic.replacing(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        _copy_metadata(reader, writer)
        writer.add_file_type(file_type)
        for name, shape, dtype in infos:
            writer.add_tensor_info(name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for array in arrays:
                writer.write_tensor_data(array)
        finally:
            writer.close()


def _copy_metadata(reader, writer) -> None:
    """Every key of the base except those the writer sets itself (architecture, file type, layout)."""
    import gguf

    skip = {gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE, gguf.Keys.General.ALIGNMENT}
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in skip:
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub_type)


def _state_dict(model: Path | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(model, Mapping):
        return model
    from safetensors.torch import load_file

    files = sorted(Path(model).glob("*.safetensors"))
    if not files:
        raise ModelFileError(f"no safetensors weights in {model}")
    state: dict[str, Any] = {}
    for file in files:
        state.update(load_file(file))
    return state


def _numpy(tensor: Any) -> np.ndarray:
    if isinstance(tensor, np.ndarray):
        return tensor.astype(np.float32, copy=False)
    return tensor.detach().to("cpu").float().numpy()
