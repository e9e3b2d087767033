"""Tiny randomly initialised models of each architecture the trainer round-trips, written as GGUF files.

The writer here is the test's own and deliberately shares no code with `trainer.export`: it follows the
layout llama.cpp's `convert_hf_to_gguf.py` gives each architecture (its metadata keys, tensor names from the
gguf package's TensorNameMap, the llama q/k row interleave, gemma's norms stored as weight + 1, no output
tensor for a tied head), so a test can tell the project's export apart from the file llama.cpp expects. The
tokenizer of every tiny model is the embedded SmolLM2's, copied key by key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 64, 4, 2, 128, 2
SLIDING_WINDOW = 48  # well under the few hundred tokens the tests score, so a wrong window shows


@dataclass(frozen=True)
class Tiny:
    """One tiny model: how to build it in transformers and how llama.cpp's converter lays it out."""

    arch: str  # general.architecture
    config_class: str  # a transformers config class name
    config: dict[str, Any] = field(default_factory=dict)
    zero_centred_norms: bool = False  # gemma: transformers scales by (1 + weight); GGUF stores 1 + weight
    permute_qk: bool = False  # llama: q/k rows interleaved per head in GGUF
    add_bos: bool | None = None  # the file's tokenizer.ggml.add_bos_token, where it is not SmolLM2's (False)
    lora_targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )


LLAMA3_ROPE = {  # Llama 3.1+ rope scaling, with a smoothing band that covers several of 16 frequencies
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 8.0,
    "original_max_position_embeddings": 2048,
}

TINY = {
    "llama": Tiny(
        "llama", "LlamaConfig", {"tie_word_embeddings": False, "rope_theta": 100000.0}, permute_qk=True
    ),
    "llama3": Tiny(  # Llama 3.2-like: a tied head, wider heads than width / heads, rope factors in the file
        "llama",
        "LlamaConfig",
        {"tie_word_embeddings": True, "head_dim": 32, "rope_parameters": LLAMA3_ROPE},
        permute_qk=True,
        add_bos=True,
    ),
    "qwen2": Tiny("qwen2", "Qwen2Config", {"tie_word_embeddings": True, "rope_theta": 1000000.0}),
    "qwen3": Tiny("qwen3", "Qwen3Config", {"tie_word_embeddings": True, "head_dim": 32, "rope_theta": 1e6}),
    "gemma2": Tiny(
        "gemma2",
        "Gemma2Config",
        {
            "head_dim": 32,
            "query_pre_attn_scalar": 32,  # llama.cpp scales by 1/sqrt(head_dim) below the 27B size
            "sliding_window": SLIDING_WINDOW,
            # far lower caps than Gemma 2's 50 and 30, so that they bite on a tiny model's small logits
            "attn_logit_softcapping": 1.0,
            "final_logit_softcapping": 2.0,
        },
        zero_centred_norms=True,
        add_bos=True,
    ),
    "gemma3": Tiny(
        "gemma3",
        "Gemma3TextConfig",
        {
            "num_hidden_layers": 6,  # llama.cpp's gemma3 pattern: five windowed layers, then a global one
            "head_dim": 32,
            "query_pre_attn_scalar": 32,
            "sliding_window": SLIDING_WINDOW,
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
        },
        zero_centred_norms=True,
        add_bos=True,
    ),
    "phi3": Tiny(
        "phi3",
        "Phi3Config",
        {"tie_word_embeddings": False, "sliding_window": None, "rope_theta": 10000.0},
        lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    ),
}


@dataclass(frozen=True)
class Vocabulary:
    """The embedded SmolLM2 GGUF's tokenizer: its tokenizer.* fields, size and special tokens."""

    fields: list
    size: int
    bos: int
    eos: int

    @classmethod
    def of(cls, source: Path) -> Vocabulary:
        import gguf

        reader = gguf.GGUFReader(source)  # slow (the vocabulary's long lists): read it once
        fields = [f for name, f in reader.fields.items() if name.startswith("tokenizer.")]
        return cls(
            fields,
            len(reader.fields["tokenizer.ggml.tokens"].data),
            int(reader.fields["tokenizer.ggml.bos_token_id"].contents()),
            int(reader.fields["tokenizer.ggml.eos_token_id"].contents()),
        )


def build_model(case: str, vocabulary: Vocabulary, seed: int = 0):
    """A tiny transformers model for `case` (a key of TINY) with every weight random (norms, biases too)."""
    import torch
    import transformers

    spec = TINY[case]
    kwargs = {
        "vocab_size": vocabulary.size,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "bos_token_id": vocabulary.bos,
        "eos_token_id": vocabulary.eos,
        "pad_token_id": None,
        **spec.config,
    }
    if "rope_theta" in kwargs:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": kwargs.pop("rope_theta")}
    config = getattr(transformers, spec.config_class)(**kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.randn_like(p) * 0.1 + (0.0 if spec.zero_centred_norms else 1.0))
            elif name.endswith("embed_tokens.weight") or name == "lm_head.weight":
                p.normal_(std=0.1)  # peaked logits: greedy choices are not near-ties
            else:
                p.normal_(std=0.08)
    return model


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: per head, the two rotary halves interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """convert_hf_to_gguf.py's rope_freqs for Llama 3 rope scaling: each frequency's divisor."""
    base, factor = rope["rope_theta"], rope["factor"]
    low, high, original = (
        rope["low_freq_factor"],
        rope["high_freq_factor"],
        rope["original_max_position_embeddings"],
    )
    factors = []
    for freq in base ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim):
        wavelength = 2 * np.pi / freq
        if wavelength < original / high:
            factors.append(1.0)
        elif wavelength > original / low:
            factors.append(factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def write_gguf(model, case: str, path: Path, vocabulary: Vocabulary) -> Path:
    """Write `model` as an F32 GGUF the way llama.cpp's converter lays out its architecture."""
    import gguf

    spec, c = TINY[case], model.config
    arch = spec.arch
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(
        "nightjar tiny test model"
    )  # a name with "phi3" in it makes llama.cpp look for Phi-3 tokens
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    rope = c.rope_parameters
    if arch == "gemma3":
        writer.add_rope_freq_base(rope["full_attention"]["rope_theta"])
        scaling = rope["full_attention"]
        if scaling.get("rope_type") == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(scaling["factor"])
    elif arch != "gemma2":  # gemma2's converter writes no rope base: llama.cpp's default, transformers' too
        writer.add_rope_freq_base(rope["rope_theta"])
    if rope.get("rope_type") == "llama3":
        writer.add_tensor("rope_freqs.weight", llama3_rope_factors(rope, head_dim))
    if arch == "llama":
        writer.add_vocab_size(c.vocab_size)
        writer.add_rope_dimension_count(head_dim)
    if arch in ("llama", "qwen3", "gemma2", "gemma3"):  # the converter writes a config's head_dim as these
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch in ("gemma2", "gemma3"):
        writer.add_sliding_window(c.sliding_window)
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(c.attn_logit_softcapping)
        writer.add_final_logit_softcapping(c.final_logit_softcapping)
    if arch == "phi3":
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_scaling_orig_ctx_len(c.original_max_position_embeddings)
        writer.add_sliding_window(2047)  # Phi-3-mini's; llama.cpp serves phi3 without a window
    for f in vocabulary.fields:
        if f.name == "tokenizer.ggml.add_bos_token" and spec.add_bos is not None:
            writer.add_add_bos_token(spec.add_bos)
            continue
        kind = f.types[0]
        writer.add_key_value(
            f.name, f.contents(), kind, sub_type=f.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        )

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, c.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name is not None, hf_name
        w = tensor.detach().float().numpy()
        if spec.permute_qk and name.endswith("attn_q.weight"):
            w = _permute(w, c.num_attention_heads)
        elif spec.permute_qk and name.endswith("attn_k.weight"):
            w = _permute(w, c.num_key_value_heads)
        if spec.zero_centred_norms and name.endswith("norm.weight"):
            w = w + 1.0
        writer.add_tensor(name, np.ascontiguousarray(w, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
