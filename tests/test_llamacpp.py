"""The one model loader: on a llama.cpp build with ggml's AMX path (which crashes on the first decode), every
model Nightjar loads keeps its weights out of the extra buffer types; elsewhere llama.cpp's defaults stand.

Most test machines have no AMX, so the build is described to the loader by a system-info string, and what
llama.cpp was really given is read back from the loaded model's parameters.
"""

from __future__ import annotations

import re
from pathlib import Path

import llama_cpp.llama_cpp as lib
import pytest

from assistant import llamacpp
from assistant.engine import GenParams, LlamaCppEngine
from assistant.feedback.scoring import ModelScorer
from tests.conftest import ROOT, run_nightjar
from trainer import perplexity

# as a natively built llama-cpp-python prints it on an Intel Xeon with AMX (Sapphire Rapids)
AMX_BUILD = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
    "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | "
    "REPACK = 1 | "
)
PORTABLE_BUILD = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 0 | "
    "AMX_INT8 = 0 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)


def test_an_amx_build_turns_the_extra_buffer_types_off():
    amx = llamacpp.parse_system_info(AMX_BUILD)
    assert amx.amx and "AMX_INT8" in amx.features and "AVX512_BF16" in amx.features
    assert llamacpp.protection(amx).model_params() == {"use_extra_bufts": False}
    assert "AMX_INT8" in llamacpp.protection(amx).reason

    portable = llamacpp.parse_system_info(PORTABLE_BUILD)
    assert not portable.amx and "AVX512" not in portable.features and "AVX2" in portable.features
    assert llamacpp.protection(portable).model_params() == {}


@pytest.mark.parametrize(("build", "extra_buffers"), [(AMX_BUILD, False), (PORTABLE_BUILD, True)])
def test_the_loader_gives_llama_cpp_the_protection_and_restores_its_defaults(
    model_path: Path, build: str, extra_buffers: bool
):
    llm = llamacpp.load(model_path, n_ctx=256, info=llamacpp.parse_system_info(build))
    try:
        assert llm.model_params.use_extra_bufts is extra_buffers  # what llama.cpp loaded the model with
        assert llm.n_ctx() == 256
        # llama.cpp's own defaults crash on the first decode of a real AMX build
        if not extra_buffers or not llamacpp.build_info().amx:
            out = llm.create_completion("The capital of France is", max_tokens=4, temperature=0.0)
            assert out["usage"]["completion_tokens"] >= 1
    finally:
        llm.close()
    assert lib.llama_model_default_params().use_extra_bufts is True  # nothing else in the process changed


def test_every_model_nightjar_loads_is_protected_on_an_amx_build(model_path: Path, monkeypatch, tmp_path):
    monkeypatch.setattr(llamacpp, "build_info", lambda: llamacpp.parse_system_info(AMX_BUILD))
    engine = LlamaCppEngine(model_path, n_ctx=512)  # serving, and RAFT's sampling
    scorer = ModelScorer(model_path, n_ctx=512)  # the replay buffer's scores and the trainer's evaluation
    canary = perplexity.load(model_path, n_ctx=256)  # the perplexity canary
    try:
        for llm in (engine.llm, scorer.engine.llm, scorer.llm, canary):
            assert llm.model_params.use_extra_bufts is False
        assert engine.generate("Hello", GenParams(max_tokens=3)).result().completion_tokens >= 1
    finally:
        for llm in (engine.llm, scorer.engine.llm, scorer.llm, canary):
            llm.close()


def test_no_code_constructs_a_llama_model_but_the_loader():
    """A `Llama(...)` anywhere else would bypass the protection (the serving benchmark's raw baseline loads
    inside `default_model_params`, so it is protected too)."""
    allowed = {ROOT / "assistant" / "llamacpp.py", ROOT / "benchmarks" / "serve.py"}
    found = []
    for folder in ("assistant", "trainer", "retrieval", "tui", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path not in allowed and re.search(r"\bLlama\(", path.read_text(encoding="utf-8")):
                found.append(str(path.relative_to(ROOT)))
    assert not found, f"load models with assistant.llamacpp.load: {found}"
    serve = (ROOT / "benchmarks" / "serve.py").read_text(encoding="utf-8")
    assert serve.count("Llama(") == 1 and "default_model_params(protection.model_params())" in serve


def test_doctor_shows_the_builds_cpu_features_and_the_protection(home: Path):
    result = run_nightjar("doctor", home=home)
    assert result.returncode == 0, result.stderr
    rows = dict(
        re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in result.stdout.splitlines() if "  " in line
    )
    features = llamacpp.build_info().features
    assert rows["CPU features"] == ", ".join(features)
    assert rows["protection"] == llamacpp.protection().reason
