"""What the trainer knows about each model architecture it can round-trip through a float master.

One entry per llama.cpp architecture (a GGUF's `general.architecture`): the transformers model it becomes,
the config that model needs to compute what llama.cpp computes from the same file, and how llama.cpp's
converter (convert_hf_to_gguf.py) changed the tensors on the way in, so that the master undoes it exactly and
the export redoes it. Tensor names are not here: they map through the gguf package's TensorNameMap, the table
the converter itself uses (see gguf_layout), and the tokenizer is transformers' GGUF tokenizer.

The config follows what llama.cpp *does* with the file, which is not always what the original checkpoint
said: a Mistral GGUF is a `llama` with no sliding window, llama.cpp serves `phi3` without its window, and the
gemma attention scale and sliding-window layout are llama.cpp's rules. The served model is the one trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from assistant.errors import ModelFileError

SUPPORTED = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")

# tensors a GGUF carries that are no transformers weight: the export copies them from the base unchanged
BASE_ONLY_TENSORS = ("rope_freqs.weight",)
# longrope (Phi-3 128k, Phi-3.5, Phi-4-mini): per-dimension factors that switch with the context length
_LONGROPE_TENSORS = ("rope_factors_long.weight", "rope_factors_short.weight")


class Meta:
    """A GGUF's metadata and tensor names, read with the architecture's key prefix."""

    def __init__(self, reader, path: Path | str):
        self.reader, self.name = reader, Path(path).name
        self.arch = str(self.raw("general.architecture"))
        self.tensors = {t.name: t for t in reader.tensors}

    def raw(self, key: str, default: Any = None) -> Any:
        found = self.reader.get_field(key)
        return default if found is None else found.contents()

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw(f"{self.arch}.{key}", default)

    def need(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise self.refuse(f"its metadata lacks {self.arch}.{key}")
        return value

    def int(self, key: str, default: int | None = None) -> int:
        value = self.need(key) if default is None else self.get(key, default)
        if isinstance(value, list):  # some files give one value per layer
            if len(set(value)) != 1:
                raise self.refuse(f"{self.arch}.{key} differs between layers")
            value = value[0]
        return int(value)

    def float(self, key: str, default: float | None = None) -> float:
        return float(self.need(key) if default is None else self.get(key, default))

    def refuse(self, why: str) -> ModelFileError:
        return ModelFileError(
            f"nightly training cannot write back a '{self.arch}' model ({self.name}): {why} "
            f"(supported architectures: {', '.join(SUPPORTED)})"
        )


@dataclass(frozen=True)
class Architecture:
    name: str  # llama.cpp's general.architecture
    model_type: str  # transformers' model_type
    config: Callable[[Meta], dict[str, Any]]  # the transformers config's arguments
    rope_interleaved: bool = False  # q/k rows stored with each head's rotary halves interleaved
    norm_offset: float = 0.0  # the GGUF stores RMSNorm weights as transformers' + this
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)  # fused module -> the projections in it

    def to_hf(self, gguf_name: str, array: np.ndarray, meta: Meta) -> np.ndarray:
        """A tensor as the GGUF stores it -> as the transformers model holds it."""
        heads = self._rope_heads(gguf_name, meta)
        if heads:
            array = unpermute(array, heads)
        if self.norm_offset and gguf_name.endswith("norm.weight"):
            array = (array.astype(np.float64) - self.norm_offset).astype(np.float32)
        return array

    def to_gguf(self, gguf_name: str, array: np.ndarray, meta: Meta) -> np.ndarray:
        """The inverse of `to_hf`."""
        heads = self._rope_heads(gguf_name, meta)
        if heads:
            array = permute(array, heads)
        if self.norm_offset and gguf_name.endswith("norm.weight"):
            array = (array.astype(np.float64) + self.norm_offset).astype(np.float32)
        return array

    def _rope_heads(self, gguf_name: str, meta: Meta) -> int | None:
        if not self.rope_interleaved:
            return None
        if gguf_name.endswith("attn_q.weight"):
            return meta.int("attention.head_count")
        if gguf_name.endswith("attn_k.weight"):
            return meta.int("attention.head_count_kv", meta.int("attention.head_count"))
        return None


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' q/k row order -> llama.cpp's for `llama`: per head, the two rotary halves interleaved
    (`LlamaModel.permute` in convert_hf_to_gguf.py)."""
    half = weights.shape[0] // n_head // 2
    return weights.reshape(n_head, 2, half, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def unpermute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute` (transformers' LlamaTensorProcessor does the same on load)."""
    half = weights.shape[0] // n_head // 2
    return weights.reshape(n_head, half, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


# --- configs: the hyperparameters llama.cpp reads, as the transformers config of the same model -----------


def _shape(meta: Meta) -> dict[str, Any]:
    """The arguments every architecture here shares: sizes, norm epsilon, vocabulary, special tokens, head."""
    hidden, n_head = meta.int("embedding_length"), meta.int("attention.head_count")
    head_dim = meta.int("attention.key_length", hidden // n_head)
    if meta.int("attention.value_length", head_dim) != head_dim:
        raise meta.refuse("its keys and values have different head sizes")
    tokens = meta.reader.get_field("tokenizer.ggml.tokens")
    vocab = meta.get("vocab_size") or (len(tokens.data) if tokens is not None else None)
    if vocab is None:
        raise meta.refuse(f"its metadata lacks {meta.arch}.vocab_size and a tokenizer")
    return {
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": meta.int("feed_forward_length"),
        "num_hidden_layers": meta.int("block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": meta.int("attention.head_count_kv", n_head),
        "head_dim": head_dim,
        "max_position_embeddings": meta.int("context_length", 2048),
        "rms_norm_eps": meta.float("attention.layer_norm_rms_epsilon"),
        # llama.cpp writes the output head only when it is not the token embeddings
        "tie_word_embeddings": "output.weight" not in meta.tensors,
        # absent ids stay None: a config class's defaults are one checkpoint's values
        "bos_token_id": meta.raw("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.raw("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.raw("tokenizer.ggml.padding_token_id"),
        "dtype": "float32",
    }


def _rotary_dims(meta: Meta, head_dim: int) -> int:
    return meta.int("rope.dimension_count", head_dim)


def _full_rotary(meta: Meta, kwargs: dict[str, Any]) -> None:
    if _rotary_dims(meta, kwargs["head_dim"]) != kwargs["head_dim"]:
        raise meta.refuse("it rotates only part of each head")


def _fixed_head_dim(meta: Meta, kwargs: dict[str, Any]) -> None:
    """Models whose transformers class derives the head size from the width."""
    if kwargs.pop("head_dim") != kwargs["hidden_size"] // kwargs["num_attention_heads"]:
        raise meta.refuse("its head size is not its width over its heads")


def _rope(meta: Meta, theta_default: float = 10000.0) -> dict[str, Any]:
    """rope_parameters from the file: a base frequency, with linear scaling where the file asks for it."""
    theta = meta.float("rope.freq_base", theta_default)
    factor = _linear_factor(meta)
    if factor != 1.0:
        return {"rope_type": "linear", "factor": factor, "rope_theta": theta}
    return {"rope_type": "default", "rope_theta": theta}


def _linear_factor(meta: Meta) -> float:
    """llama.cpp's rope frequency scale as a transformers linear factor; refuses other rope scaling."""
    kind = meta.get("rope.scaling.type")
    factor = float(meta.get("rope.scaling.factor") or meta.get("rope.scale_linear") or 0.0)
    if kind not in (None, "none", "linear") or any(name in meta.tensors for name in _LONGROPE_TENSORS):
        raise ModelFileError(
            f"nightly training does not support rope-scaled models yet ({meta.name}: {kind or 'longrope'} "
            "rope scaling)"
        )
    return factor if factor not in (0.0, 1.0) else 1.0


def _llama(meta: Meta) -> dict[str, Any]:
    kwargs = _shape(meta)
    _full_rotary(meta, kwargs)
    rope = _rope(meta)
    if "rope_freqs.weight" in meta.tensors:  # Llama 3.1+: per-dimension frequency factors
        rope = _llama3_rope(meta, rope, kwargs)
    return kwargs | {
        "rope_parameters": rope,
        "attention_bias": "blk.0.attn_q.bias" in meta.tensors,
        "mlp_bias": "blk.0.ffn_up.bias" in meta.tensors,
    }


def _qwen2(meta: Meta) -> dict[str, Any]:
    kwargs = _shape(meta)
    _full_rotary(meta, kwargs)
    _fixed_head_dim(meta, kwargs)
    # llama.cpp gives qwen2 no sliding window, whatever the original config said
    return kwargs | {"rope_parameters": _rope(meta), "use_sliding_window": False}


def _qwen3(meta: Meta) -> dict[str, Any]:
    kwargs = _shape(meta)
    _full_rotary(meta, kwargs)
    return kwargs | {
        "rope_parameters": _rope(meta),
        "attention_bias": "blk.0.attn_q.bias" in meta.tensors,
        "use_sliding_window": False,
    }


def _window_layers(meta: Meta, layers: int, period: int) -> list[str]:
    """transformers' layer_types for llama.cpp's sliding-window layout: a period (every `period`-th layer
    global, the rest windowed) or one flag per layer, from the file or the architecture's default."""
    pattern = meta.get("attention.sliding_window_pattern", period)
    if isinstance(pattern, list):
        if len(pattern) != layers:
            raise meta.refuse(f"{meta.arch}.attention.sliding_window_pattern does not list every layer")
        windowed = [bool(p) for p in pattern]
    else:
        period = int(pattern)
        windowed = [period == 0 or i % period < period - 1 for i in range(layers)]
    return ["sliding_attention" if w else "full_attention" for w in windowed]


def _gemma_attention(meta: Meta, kwargs: dict[str, Any], large_layers: int, period: int) -> dict[str, Any]:
    """What gemma2 and gemma3 share in llama.cpp: queries scaled by 1/sqrt(head size), except in the 27B
    model (`large_layers` layers) where it is 1/sqrt(width / heads); a window on all but every
    `period`-th layer."""
    _full_rotary(meta, kwargs)
    window = meta.int("attention.sliding_window", 4096 if meta.arch == "gemma2" else None)
    if window <= 0:
        raise meta.refuse("it has no sliding window")
    layers = kwargs["num_hidden_layers"]
    scalar = kwargs["hidden_size"] // kwargs["num_attention_heads"] if layers == large_layers else None
    return {
        "query_pre_attn_scalar": scalar or kwargs["head_dim"],
        "sliding_window": window,
        "layer_types": _window_layers(meta, layers, period),
        "hidden_activation": "gelu_pytorch_tanh",
        "attention_bias": False,
    }


def _gemma2(meta: Meta) -> dict[str, Any]:
    kwargs = _shape(meta)
    rope = _rope(meta)
    if meta.float("rope.freq_base_swa", rope["rope_theta"]) != rope["rope_theta"]:
        raise meta.refuse("its windowed layers use their own rope base, which Gemma2Config cannot say")
    return (
        kwargs
        | _gemma_attention(meta, kwargs, large_layers=46, period=2)
        | {
            "rope_parameters": rope,
            # llama.cpp's defaults where the file says nothing
            "attn_logit_softcapping": meta.float("attn_logit_softcapping", 50.0),
            "final_logit_softcapping": meta.float("final_logit_softcapping", 30.0),
        }
    )


def _gemma3(meta: Meta) -> dict[str, Any]:
    kwargs = _shape(meta)
    final_cap = meta.get("final_logit_softcapping")
    return (
        kwargs
        | _gemma_attention(meta, kwargs, large_layers=62, period=6)
        | {
            # global layers: the file's base and scaling; windowed layers: their own base, never scaled
            "rope_parameters": {
                "full_attention": _rope(meta),
                "sliding_attention": {
                    "rope_type": "default",
                    "rope_theta": meta.float("rope.freq_base_swa", 10000.0),
                },
            },
            "final_logit_softcapping": None if final_cap is None else float(final_cap),
            "attn_logit_softcapping": None,  # llama.cpp caps no gemma3 attention logits
        }
    )


def _phi3(meta: Meta) -> dict[str, Any]:
    kwargs = _shape(meta)
    rotary = _rotary_dims(meta, kwargs["head_dim"])
    _fixed_head_dim(meta, kwargs)
    rope = _rope(meta) | {
        "partial_rotary_factor": rotary / (kwargs["hidden_size"] // kwargs["num_attention_heads"])
    }
    return kwargs | {
        "rope_parameters": rope,
        "original_max_position_embeddings": meta.int(
            "rope.scaling.original_context_length", kwargs["max_position_embeddings"]
        ),
        # llama.cpp disables Phi's sliding window ("Phi SWA is currently disabled"): serve and train without
        "sliding_window": None,
    }


def _llama3_rope(meta: Meta, rope: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Llama 3.1+ rope scaling, from the `rope_freqs` tensor llama.cpp's converter computed from it."""
    import gguf

    t = meta.tensors["rope_freqs.weight"]
    divisors = gguf.quants.dequantize(t.data, t.tensor_type).ravel()
    params = llama3_rope_parameters(divisors, rope["rope_theta"], kwargs["head_dim"])
    if rope["rope_type"] != "default" or params is None:
        raise ModelFileError(
            f"nightly training does not support rope-scaled models yet ({meta.name}: its rope_freqs are not "
            "Llama 3's rope scaling)"
        )
    return params


def llama3_rope_parameters(divisors: np.ndarray, theta: float, head_dim: int) -> dict[str, Any] | None:
    """transformers' llama3 rope_parameters that divide each rotary frequency by `divisors`, or None.

    A GGUF keeps the per-frequency divisors, not the four numbers behind them. In the smoothing band
    1/divisor = (1 - s)/factor + s with s = (L/wavelength - low)/(high - low), a line in 1/wavelength, so
    the band's frequencies give L/(high - low) and low/(high - low): with low = 1 (any other value gives
    the same divisors), that is the whole set. Where the band holds under two frequencies, Meta's values
    are tried. Numbers are returned only if transformers' llama3 rope then reproduces every divisor.
    """
    stored = np.asarray(divisors, dtype=np.float64)
    inv_freq = theta ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if stored.shape != inv_freq.shape:
        return None
    factor = float(stored.max())
    candidates = []
    band = (stored > 1 + 1e-6) & (stored < factor - 1e-6)
    if factor > 1 and band.sum() >= 2:
        smooth = (1 / stored[band] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(inv_freq[band] / (2 * math.pi), smooth, 1)
        if slope > 0 and intercept < 0:
            span = 1.0 / -intercept  # high - low, with low = 1
            candidates.append((slope * span, 1.0, 1.0 + span))  # (original context, low, high)
    candidates.append((8192, 1.0, 4.0))  # Meta's values for every Llama 3.1 to 3.3
    for original, low, high in candidates:
        params = {
            "rope_type": "llama3",
            "rope_theta": float(theta),
            "factor": factor,
            "low_freq_factor": float(low),
            "high_freq_factor": float(high),
            "original_max_position_embeddings": int(round(original)),
        }
        if np.allclose(inv_freq / _llama3_inv_freq(params, head_dim), stored, rtol=1e-4, atol=0):
            return params
    return None


def _llama3_inv_freq(params: dict[str, Any], head_dim: int) -> np.ndarray:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(
        hidden_size=head_dim, num_attention_heads=1, head_dim=head_dim, rope_parameters=params
    )
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    return inv_freq.double().numpy()


ARCHITECTURES = {
    a.name: a
    for a in (
        Architecture("llama", "llama", _llama, rope_interleaved=True),
        Architecture("qwen2", "qwen2", _qwen2),
        Architecture("qwen3", "qwen3", _qwen3),
        Architecture("gemma2", "gemma2", _gemma2, norm_offset=1.0),
        Architecture("gemma3", "gemma3_text", _gemma3, norm_offset=1.0),
        Architecture(
            "phi3",
            "phi3",
            _phi3,
            fused={"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")},
        ),
    )
}
assert tuple(ARCHITECTURES) == SUPPORTED


def check_supported(reader, path: Path | str) -> Architecture:
    """The GGUF's architecture, or one clear error (before any work) when training cannot round-trip it."""
    meta = Meta(reader, path)
    if meta.arch not in ARCHITECTURES:
        raise ModelFileError(
            f"nightly training cannot write back a '{meta.arch}' model ({meta.name}); "
            f"supported architectures: {', '.join(SUPPORTED)}"
        )
    arch = ARCHITECTURES[meta.arch]
    if meta.arch != "llama" and "rope_freqs.weight" in meta.tensors:
        raise ModelFileError(f"nightly training does not support rope-scaled models yet ({meta.name})")
    _linear_factor(meta)  # refuses the rope scaling transformers cannot reproduce
    arch.config(meta)  # every hyperparameter the master needs is there and expressible
    return arch


def hf_config(reader, path: Path | str):
    """The transformers config of the model a supported GGUF holds."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    arch = check_supported(reader, path)
    config = AutoConfig.for_model(arch.model_type, **arch.config(Meta(reader, path)))
    config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[arch.model_type]]
    return config


def lora_target_modules(model_type: str, names: Iterable[str]) -> list[str]:
    """`names` (q_proj, k_proj, ..., gate_proj, up_proj, down_proj) as the modules of this model type: a
    fused module (phi3's qkv_proj, gate_up_proj) stands for the projections in it."""
    arch = next((a for a in ARCHITECTURES.values() if a.model_type == model_type), None)
    names = list(names)
    if arch is None:
        return names
    out: list[str] = []
    for name in names:
        fused = next((f for f, parts in arch.fused.items() if name in parts), name)
        if fused not in out:
            out.append(fused)
    return out
