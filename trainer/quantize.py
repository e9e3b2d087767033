"""Quantize an unquantized GGUF with llama.cpp's own quantizer (llama_model_quantize), and choose the type a
trained version is served in (`quantize_served`)."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable
from pathlib import Path

from assistant import atomic
from assistant.config import TrainConfig
from assistant.errors import ModelFileError
from assistant.modelfile import check_gguf, read_info

MIN_KEPT = 0.5  # share of the trained update the served quantization must keep (see quantize_served)


def qtypes() -> dict[str, int]:
    """Quantization types by name (Q4_K_M, Q8_0, F16, ...) -> llama.cpp's file type numbers."""
    import llama_cpp

    types = {"F32": llama_cpp.LLAMA_FTYPE_ALL_F32}
    for attr in dir(llama_cpp):
        if attr.startswith("LLAMA_FTYPE_MOSTLY_"):
            types[attr.removeprefix("LLAMA_FTYPE_MOSTLY_")] = getattr(llama_cpp, attr)
    return types


def base_qtype(base_gguf: Path | str) -> str:
    """The quantization type of a GGUF, by the name `quantize` takes (the default served type)."""
    name = read_info(base_gguf).quantization
    return "F32" if name == "ALL_F32" else name


def quantize(src: Path | str, dst: Path | str, qtype: str, *, threads: int = 0) -> Path:
    """Write `src` (an F32/F16 GGUF) quantized to `qtype` at `dst`; `dst` appears only once complete."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    src, dst = check_gguf(src), Path(dst)
    types = qtypes()
    key = qtype.upper()
    if key not in types:
        raise ModelFileError(f"unknown quantization type '{qtype}'; choose one of {', '.join(sorted(types))}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = types[key]
    params.nthread = threads
    log = logging.getLogger("llama-cpp-python")  # llama.cpp's per-tensor log lines go through this logger
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with atomic.replacing(dst) as tmp, suppress_stdout_stderr(disable=False):
            # llama.cpp writes its per-tensor notes ("falling back to q8_0") to the terminal itself; a
            # failure is told by the status below
            status = llama_cpp.llama_model_quantize(bytes(src), bytes(tmp), ctypes.byref(params))
            if status != 0 or not tmp.exists():
                raise ModelFileError(f"llama.cpp could not quantize {src.name} to {key} (status {status})")
    finally:
        log.setLevel(level)
    return dst


def update_kept(base: Path | str, wanted: Path | str, rows: int = 64) -> Callable[[Path | str], float]:
    """A measure of how much of the change from `base` to `wanted` (a float GGUF) survives in a quantized
    file, in [0, 1].

    The master is the base GGUF dequantized, so its weights lie on the base type's grid: requantizing to
    that same type rounds a small LoRA update straight back to the base's values (SmolLM2's Q4_1 keeps a
    few percent of a DPO update that moved the float model completely). Measured as the projection of the
    quantized change onto the wanted one, over the tensors that changed, on `rows` evenly spaced rows of
    each (quantization works row by row). `base` and `wanted` are read once for all the types tried:
    reading a GGUF's metadata (its vocabulary) takes seconds.
    """
    import gguf
    import numpy as np

    def sample(tensor) -> np.ndarray:
        data = tensor.data
        if data.ndim > 1:
            data = data[:: max(1, len(data) // rows)]
        return gguf.quants.dequantize(data, tensor.tensor_type).ravel()

    wanted_tensors = {t.name: t for t in gguf.GGUFReader(wanted).tensors}
    changes = {}  # name -> (base sample, wanted change)
    for tensor in gguf.GGUFReader(base).tensors:
        b = sample(tensor)
        change = sample(wanted_tensors[tensor.name]) - b
        if change.any():
            changes[tensor.name] = (b, change)
    total = sum(float(np.dot(c, c)) for _, c in changes.values())

    def kept(quantized: Path | str) -> float:
        if total == 0:
            return 1.0
        tensors = {t.name: t for t in gguf.GGUFReader(quantized).tensors}
        along = sum(float(np.dot(c, sample(tensors[name]) - b)) for name, (b, c) in changes.items())
        return max(0.0, min(1.0, along / total))

    return kept


def ladder(base_type: str, configured: str) -> list[str]:
    """Types to try for a trained version, in order: the configured one only, or (by default) the base's
    type, then types fine enough to keep an update that the base's type rounds away."""
    if configured:
        return [configured.upper()]
    return list(dict.fromkeys([base_type.upper(), "Q8_0", "F16"]))


def quantize_served(
    cfg: TrainConfig,
    base_gguf: Path,
    float_gguf: Path,
    candidate: Path,
    base_type: str,
    notes: list[str],
    start: str | None = None,
) -> tuple[str, float]:
    """Quantize the float GGUF to the served type; returns (type, share of the update it kept).

    By default the first type of `ladder` that keeps at least `MIN_KEPT` of the update serves: the base's
    own type usually rounds a small update away (see `update_kept`). `start`: begin the ladder at that type
    (a fraction of an update the ladder already served in it: a coarser type would keep even less)."""
    kept, types, measure = 1.0, ladder(base_type, cfg.quant_type), None
    if start in types:
        types = types[types.index(start) :]
    for n, qtype in enumerate(types):
        if qtype == cfg.export_type.upper():  # served unquantized: the float file itself, whole
            os.replace(float_gguf, candidate)
            kept = 1.0
        else:
            quantize(float_gguf, candidate, qtype, threads=cfg.threads)
            measure = measure or update_kept(base_gguf, float_gguf)
            kept = measure(candidate)
        if kept >= MIN_KEPT or n == len(types) - 1:
            break
        notes.append(f"{qtype} kept {kept:.0%} of the update; quantizing to {types[n + 1]} instead")
    if kept < MIN_KEPT:
        notes.append(f"{qtype} keeps only {kept:.0%} of the update (train.quant_type)")
    float_gguf.unlink(missing_ok=True)
    return qtype, round(kept, 4)
