"""The one way Nightjar loads a GGUF into llama.cpp, safe on every x86-64 CPU.

pip compiles llama-cpp-python for the CPU it is built on (`GGML_NATIVE`). On a CPU with AMX (Intel Sapphire
Rapids and later) that build includes ggml's AMX buffer type, which repacks the weights for AMX and then
crashes the process on the first decode ("segfault in ggml_backend_amx_mul_mat", llama.cpp issue 20824,
closed with no fix). Loading the model with `use_extra_bufts = False` keeps the weights in ordinary CPU
buffers, and the same build then runs at the same speed. Rebuilding cannot be relied on instead: pip's
wheel cache reuses a native wheel whatever `CMAKE_ARGS` say.

So: where the build reports AMX, every model is loaded without extra buffer types; elsewhere llama.cpp's
defaults stand, because there the extra buffers are its weight repacking for AVX2/AVX-512, which makes
Q4_0-class models faster (`benchmarks/serve.py` measures both). The engine, the scorer, the perplexity
canary, RAFT's sampling and the benchmarks all load through `load`.
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from assistant.errors import ModelFileError
from assistant.modelfile import check_gguf

_FEATURE = re.compile(r"([A-Z][A-Z0-9_]*)\s*=\s*(\d+)")
_LOAD_LOCK = threading.Lock()  # the default model parameters are swapped for the length of one load


def default_threads() -> int:
    """One thread per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class BuildInfo:
    """The CPU features the llama.cpp build was compiled with, from `llama_print_system_info()`."""

    features: tuple[str, ...]  # those set to 1, in the order llama.cpp prints them
    text: str

    @property
    def amx(self) -> bool:
        return any(f.startswith("AMX") for f in self.features)


@dataclass(frozen=True)
class Protection:
    """How models are loaded on this build, and why."""

    extra_buffers: bool  # llama.cpp's extra buffer types (weight repacking; AMX where built in)
    reason: str

    def model_params(self) -> dict[str, Any]:
        """The `llama_model_params` fields that differ from llama.cpp's defaults."""
        return {} if self.extra_buffers else {"use_extra_bufts": False}


def parse_system_info(text: str) -> BuildInfo:
    """'CPU : SSE3 = 1 | AVX = 1 | AMX_INT8 = 0 | ...' -> the features that are on."""
    return BuildInfo(tuple(name for name, on in _FEATURE.findall(text) if on != "0"), text.strip())


@cache
def build_info() -> BuildInfo:
    import llama_cpp

    return parse_system_info(llama_cpp.llama_print_system_info().decode(errors="replace"))


def protection(info: BuildInfo | None = None) -> Protection:
    """Extra buffer types off where the build has ggml's AMX path (it crashes), on elsewhere."""
    info = info or build_info()
    if info.amx:
        amx = ", ".join(f for f in info.features if f.startswith("AMX"))
        return Protection(
            False,
            f"this llama.cpp build has ggml's AMX path ({amx}), which crashes on the first decode: models "
            "load without extra buffer types (same speed)",
        )
    return Protection(True, "no AMX in this llama.cpp build: llama.cpp's defaults (CPU weight repacking on)")


@contextmanager
def default_model_params(fields: dict[str, Any]):
    """Make llama.cpp's default model parameters carry `fields` while a model loads.

    llama-cpp-python's `Llama` builds its `llama_model_params` from `llama_model_default_params()` and
    exposes no argument for `use_extra_bufts`, so the defaults it reads are the place to set it.
    """
    import llama_cpp.llama_cpp as lib

    if not fields:
        yield
        return
    with _LOAD_LOCK:
        original = lib.llama_model_default_params

        def defaults():
            params = original()
            for key, value in fields.items():
                setattr(params, key, value)
            return params

        lib.llama_model_default_params = defaults
        try:
            yield
        finally:
            lib.llama_model_default_params = original


def load(
    model_path: Path | str,
    *,
    n_ctx: int,
    n_threads: int = 0,
    info: BuildInfo | None = None,
    **options: Any,
):
    """A `llama_cpp.Llama` for `model_path`, loaded the safe way for this build (see the module docstring).

    `n_ctx` is required (llama-cpp-python's default is 512); `options` go to `Llama` as they are
    (`n_gpu_layers`, `logits_all`, `n_batch`, ...).
    """
    from llama_cpp import Llama

    path = check_gguf(model_path)
    fields = protection(info).model_params()
    try:
        with default_model_params(fields):
            return Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads or default_threads(),
                verbose=False,
                **options,
            )
    except (ValueError, RuntimeError) as exc:
        raise ModelFileError(f"llama.cpp could not load {path}: corrupt or unsupported GGUF") from exc
