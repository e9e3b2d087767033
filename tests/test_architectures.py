"""The GGUF round trip for every architecture the trainer supports, on tiny random models (no downloads).

Each case is a two-to-six-layer model built in transformers with random weights and written as a GGUF by the
test's own writer (tests/tiny_models.py, which follows llama.cpp's converter and shares no code with the
export), with the embedded SmolLM2's tokenizer. Then, through the real master and export:
(a) the master with a zero LoRA merged exports the very same file, and llama.cpp answers exactly as before;
(b) a random LoRA on every projection, merged in transformers and exported, runs in llama.cpp as it does in
    transformers (the reference is transformers' forward pass, never the project's writer);
(c) as a user: `nightjar models base` on the tiny file, questions answered and corrected, `nightjar train`
    publishes a gated version of that model, and the next `nightjar ask` is answered by it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from assistant import config as config_mod
from assistant import llamacpp, registry
from assistant.engine import GenParams
from assistant.errors import ModelFileError
from assistant.service import Assistant
from tests import tiny_models
from tests.conftest import ROOT, run_nightjar
from trainer import architectures, gguf_layout
from trainer import master as master_mod
from trainer import perplexity as ppl
from trainer.export import export_gguf

TEXT = (ROOT / "data" / "reference.txt").read_text(encoding="utf-8")[:1600]
POSITIONS = 300  # tokens scored in (b): several times the tiny models' sliding window
PROMPT = "The quick brown fox"
BIG_LISTS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RUN_ENV = {  # a short night: the tiny model learns the corrections' wording within a few steps
    "NIGHTJAR_TRAIN_MAX_STEPS": "6",
    "NIGHTJAR_TRAIN_MIN_HOLDOUT_ROWS": "3",
    "NIGHTJAR_FEEDBACK_HOLDOUT_FRACTION": "0.3",
}
QUESTIONS = [f"What is item {n} on my list?" for n in range(24)]
CLASSES = {  # the master's transformers config and model class for each case
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "llama3": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
}
# what the master's config must say as the tiny model's did (the hyperparameters that change the output)
COMPARED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_parameters",
    "tie_word_embeddings",
    "attention_bias",
    "sliding_window",
    "layer_types",
    "query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "use_sliding_window",
)


class Case:
    def __init__(self, name: str, root: Path, vocabulary: tiny_models.Vocabulary):
        import gguf

        self.name, self.root = name, root
        self.model = tiny_models.build_model(name, vocabulary)
        self.gguf = tiny_models.write_gguf(self.model, name, root / f"tiny-{name}.gguf", vocabulary)
        self.reader = gguf.GGUFReader(self.gguf)  # slow to open (the vocabulary's lists): opened once
        self.config = config_mod.load(root / "home", environ={})
        self.master = master_mod.ensure_master(self.config, self.gguf)


@pytest.fixture(scope="module")
def vocabulary(model_path: Path) -> tiny_models.Vocabulary:
    return tiny_models.Vocabulary.of(model_path)


@pytest.fixture(scope="module", params=list(tiny_models.TINY))
def case(request, tmp_path_factory, vocabulary) -> Case:
    return Case(request.param, tmp_path_factory.mktemp(request.param), vocabulary)


@pytest.fixture(scope="module")
def ids(model_path: Path) -> list[int]:
    llm = llamacpp.load(model_path, n_ctx=512, n_threads=1, vocab_only=True)
    tokens = llm.tokenize(TEXT.encode("utf-8"), add_bos=True)
    llm.close()
    assert len(tokens) >= POSITIONS
    return tokens[:POSITIONS]


def greedy(path: Path, prompt: list[int], n: int = 24) -> list[int]:
    """llama.cpp's greedy continuation of `prompt` (one thread: this machine's cores are shared)."""
    import llama_cpp

    llm = llamacpp.load(path, n_ctx=256, n_threads=1)
    llm.eval(prompt)
    out: list[int] = []
    for _ in range(n):
        last = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        out.append(int(np.argmax(last)))
        llm.eval(out[-1:])
    llm.close()
    return out


def llama_logits(path: Path, tokens: list[int]) -> np.ndarray:
    llm = ppl.load(path, n_ctx=512, threads=1)
    logits = ppl.logits(llm, tokens)
    llm.close()
    return logits


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(share of positions with the same top-1 token, correlation of all logits)."""
    return float((a.argmax(1) == b.argmax(1)).mean()), float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def same_value(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6)
    return a == b


def test_the_master_is_the_tiny_model_again(case: Case, model_path: Path):
    """The master holds the transformers class, hyperparameters, weights and tokenizer of the tiny model."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, TokenizersBackend

    config = AutoConfig.from_pretrained(case.master)
    assert (type(config).__name__, config.architectures) == (CLASSES[case.name][0], [CLASSES[case.name][1]])
    for key in COMPARED:
        if hasattr(case.model.config, key):
            assert same_value(getattr(config, key), getattr(case.model.config, key)), key
    with torch.device("meta"):
        assert type(AutoModelForCausalLM.from_config(config)).__name__ == CLASSES[case.name][1]

    weights, original = load_file(case.master / master_mod.WEIGHTS), case.model.state_dict()
    if config.tie_word_embeddings:
        original.pop("lm_head.weight")
    assert weights.keys() == original.keys()
    for name, tensor in original.items():  # the gemma norm offset is the one float operation on the way
        atol = 1e-7 if tiny_models.TINY[case.name].zero_centred_norms and name.endswith("norm.weight") else 0
        assert torch.allclose(weights[name], tensor, rtol=0, atol=atol), name

    # as saved: AutoTokenizer swaps in Qwen2Tokenizer's own pipeline for a qwen2 model whatever the file says
    # (transformers' MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS), which differs from this SmolLM2 vocabulary's
    tokenizer = TokenizersBackend.from_pretrained(case.master)
    assert len(tokenizer) == config.vocab_size
    llm = llamacpp.load(case.gguf, n_ctx=256, n_threads=1, vocab_only=True)
    assert tokenizer(TEXT).input_ids == llm.tokenize(TEXT.encode("utf-8"), add_bos=True)
    llm.close()


def test_an_unchanged_master_exports_the_very_same_model(case: Case, tmp_path: Path):
    """(a) a zero LoRA merged into the master, exported: the base's metadata and tensors, the same answers."""
    import gguf
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from assistant.config import TrainConfig
    from trainer.objectives import lora_config

    model = AutoModelForCausalLM.from_pretrained(case.master, dtype=torch.float32)
    lora = lora_config(TrainConfig(target_modules=list(PROJECTIONS)), model)
    merged = get_peft_model(model, lora).merge_and_unload()  # B = 0
    out = export_gguf(merged.state_dict(), case.gguf, tmp_path / "again.gguf", "F32")

    original, again = case.reader, gguf.GGUFReader(out)
    keys = {k for k in original.fields if not k.startswith("GGUF.")}
    assert keys == {k for k in again.fields if not k.startswith("GGUF.")}
    for key in keys:  # the vocabulary's long lists by length (test_trainer_export compares them whole)
        a, b = original.fields[key], again.fields[key]
        if key in BIG_LISTS:
            assert (a.types, len(a.data)) == (b.types, len(b.data)), key
        else:
            assert b.contents() == a.contents(), key
    assert [t.name for t in again.tensors] == [t.name for t in original.tensors]
    offset = tiny_models.TINY[case.name].zero_centred_norms
    for a, b in zip(original.tensors, again.tensors, strict=True):
        assert a.tensor_type == b.tensor_type and list(a.shape) == list(b.shape), a.name
        if offset and a.name.endswith("norm.weight"):  # (w + 1) - 1 + 1 in float32: within one rounding
            assert np.allclose(np.asarray(b.data), np.asarray(a.data), rtol=0, atol=1e-7), a.name
        else:
            assert np.array_equal(np.asarray(b.data), np.asarray(a.data)), a.name

    llm = llamacpp.load(case.gguf, n_ctx=256, n_threads=1, vocab_only=True)
    prompt = llm.tokenize(PROMPT.encode("utf-8"), add_bos=True)
    llm.close()
    before = greedy(case.gguf, prompt)
    assert len(before) == 24
    assert greedy(out, prompt) == before


def test_a_lora_merged_in_transformers_runs_the_same_in_llama_cpp(case: Case, ids: list[int], tmp_path: Path):
    """(b) a random LoRA on every projection, merged and exported: transformers and llama.cpp agree."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from assistant.config import TrainConfig
    from trainer.objectives import lora_config

    tokens = torch.tensor([ids])
    with torch.no_grad():  # the reference file itself is right: the tiny model as llama.cpp runs it
        reference = case.model(tokens).logits[0].numpy()
    top1, corr = agreement(llama_logits(case.gguf, ids), reference)
    assert top1 >= 0.98 and corr > 0.9999, ("the test's own GGUF", top1, corr)

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(case.master, dtype=torch.float32).eval()
    lora = lora_config(TrainConfig(target_modules=list(PROJECTIONS)), model)  # as the nightly run builds it
    targets = sorted(lora.target_modules)
    assert targets == sorted(tiny_models.TINY[case.name].lora_targets)  # phi3: fused qkv_proj, gate_up_proj
    peft_model = get_peft_model(model, lora)
    lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
    assert len(lora_b) == len(targets) * model.config.num_hidden_layers
    with torch.no_grad():
        for p in lora_b:
            p.normal_(std=0.1)
    merged = peft_model.merge_and_unload().eval()
    with torch.no_grad():
        hf_logits = merged(tokens).logits[0].numpy()
    assert agreement(hf_logits, reference)[0] < 0.9  # the LoRA changed the model

    out = export_gguf(merged.state_dict(), case.gguf, tmp_path / "lora.gguf", "F32")
    top1, corr = agreement(llama_logits(out, ids), hf_logits)
    print(
        f"\n{case.name}: top-1 agreement {top1:.4f} over {len(ids)} positions, logit correlation {corr:.7f}"
    )
    assert top1 >= 0.98 and corr > 0.9999, (top1, corr)


def empty_gguf(path: Path, arch: str, extra: dict | None = None) -> Path:
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    for key, value in (extra or {}).items():
        writer.add_key_value(key, value, gguf.GGUFValueType.STRING)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("arch", ["mamba", "bert"])
def test_other_architectures_are_refused_before_any_work(arch: str, tmp_path: Path, config):
    path = empty_gguf(tmp_path / f"{arch}.gguf", arch)
    listed = "supported architectures: llama, qwen2, qwen3, gemma2, gemma3, phi3"
    for attempt in (
        lambda: master_mod.ensure_master(config, path),
        lambda: export_gguf({}, path, tmp_path / "o"),
    ):
        with pytest.raises(ModelFileError) as raised:
            attempt()
        message = str(raised.value)
        assert f"cannot write back a '{arch}' model ({arch}.gguf)" in message and message.endswith(listed)
        assert "\n" not in message
    assert not (config.models_dir / master_mod.MASTERS).exists() and not (tmp_path / "o").exists()


def test_rope_scaling_transformers_cannot_match_is_refused(tmp_path: Path, config):
    path = empty_gguf(tmp_path / "qwen.gguf", "qwen2", {"qwen2.rope.scaling.type": "yarn"})
    with pytest.raises(ModelFileError, match=r"does not support rope-scaled models yet \(qwen.gguf: yarn"):
        master_mod.ensure_master(config, path)
    assert not (config.models_dir / master_mod.MASTERS).exists()


def test_the_llama_interleave_matches_transformers_gguf_loader():
    """The master undoes llama.cpp's q/k interleave as transformers' own GGUF loader does, and the export
    redoes it exactly."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rows = np.random.default_rng(0).standard_normal((8 * 6, 5)).astype(np.float32)
    stored = architectures.permute(rows, 8)
    processor = LlamaTensorProcessor({"num_attention_heads": 8, "num_key_value_heads": 8})
    assert np.array_equal(processor.process(stored, "blk.0.attn_q.weight").weights, rows)
    assert np.array_equal(architectures.unpermute(stored, 8), rows)


def test_the_gemma_norm_offset_matches_transformers_gguf_loader():
    from transformers.modeling_gguf_pytorch_utils import Gemma2TensorProcessor

    meta = None  # the offset needs no metadata
    stored = np.random.default_rng(0).uniform(0.5, 2.0, 64).astype(np.float32)
    for arch in ("gemma2", "gemma3"):
        gemma = architectures.ARCHITECTURES[arch]
        for name in ("blk.0.attn_norm.weight", "blk.0.post_ffw_norm.weight", "blk.0.attn_q_norm.weight"):
            loaded = Gemma2TensorProcessor().process(stored, name).weights
            assert np.array_equal(gemma.to_hf(name, stored, meta), loaded)
            assert np.array_equal(gemma.to_gguf(name, gemma.to_hf(name, stored, meta), meta), stored)
        assert np.array_equal(gemma.to_hf("blk.0.attn_q.weight", stored, meta), stored)


@pytest.mark.parametrize(
    ("theta", "head_dim", "factor", "low", "high", "original"),
    [
        (500000.0, 128, 8.0, 1.0, 4.0, 8192),  # Llama 3.1 8B, 3.3 70B
        (500000.0, 64, 32.0, 1.0, 4.0, 8192),  # Llama 3.2 1B and 3B
        (500000.0, 32, 8.0, 1.0, 8.0, 2048),  # the tiny llama3 case
        (10000.0, 64, 4.0, 2.0, 6.0, 4096),  # another band, found from the divisors alone
    ],
)
def test_llama3_rope_scaling_is_recovered_from_the_files_rope_freqs(
    theta, head_dim, factor, low, high, original
):
    rope = {
        "rope_type": "llama3",
        "rope_theta": theta,
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": original,
    }
    divisors = tiny_models.llama3_rope_factors(rope, head_dim)  # as convert_hf_to_gguf.py writes them
    params = architectures.llama3_rope_parameters(divisors, theta, head_dim)
    assert params is not None and params["factor"] == factor
    recovered = tiny_models.llama3_rope_factors(params, head_dim)
    assert np.allclose(recovered, divisors, rtol=1e-5)
    assert architectures.llama3_rope_parameters(np.linspace(1, 3, head_dim // 2), theta, head_dim) is None


def test_a_nightly_run_on_the_tiny_base_publishes_a_version_llama_cpp_serves(case: Case, tmp_path: Path):
    """(c) the user's path on their own base: every stage of a real run (master, LoRA training, merge, export,
    quantize to the base's own type, the gate) on this architecture, then serving the version it published."""
    import gguf

    home = tmp_path / "home"
    chosen = run_nightjar("models", "base", str(case.gguf), home=home, env=RUN_ENV)
    assert chosen.returncode == 0, chosen.stderr
    config = config_mod.load(home, environ=RUN_ENV)
    assistant = Assistant(config)  # served: the tiny base
    assert assistant.model_path == case.gguf
    for n, question in enumerate(QUESTIONS):
        reply = assistant.answer(question, retrieval=False, params=GenParams(max_tokens=6))
        assistant.correct(reply.interaction_id, f"Item {n} on your list is the blue notebook.")
    assistant.feedback_store.close()
    assistant.engine.llm.close()

    trained = run_nightjar("train", home=home, env=RUN_ENV, timeout=900)
    assert trained.returncode == 0, trained.stderr
    assert "published v1" in trained.stdout, trained.stdout + trained.stderr
    version, served = registry.served_model(config)
    assert version == "v1" and served != case.gguf
    assert registry.get(config, "v1").meta["base"] == str(case.gguf), "a version of the user's own model"
    arch = gguf_layout.field(case.reader, "general.architecture")
    assert gguf_layout.field(gguf.GGUFReader(served), "general.architecture") == arch

    asked = run_nightjar("ask", QUESTIONS[0], home=home, env=RUN_ENV)
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.strip(), "llama.cpp served the new version's answer"
