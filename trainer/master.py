"""The float master: a base GGUF dequantized once into a plain transformers checkpoint to train from.

Nightly runs train on this master and export fresh from it, so a model is never requantized from an
already requantized one. A master lives in `<models_dir>/masters/<name>-<sha256 prefix of the GGUF>`; it is
built in a temporary directory and renamed into place with its `master.json` written last, so a kill never
leaves a half master that looks usable. A damaged or incomplete master is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from assistant import atomic
from assistant.config import Config
from assistant.errors import ModelFileError
from assistant.modelfile import check_gguf
from trainer import gguf_layout

MASTERS = "masters"
MANIFEST = "master.json"
WEIGHTS = "model.safetensors"


def sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def is_complete(master: Path) -> bool:
    """True when `master` holds its manifest and every file the manifest lists, at the listed size."""
    try:
        manifest = json.loads((master / MANIFEST).read_text(encoding="utf-8"))
        return all((master / name).stat().st_size == size for name, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def ensure_master(config: Config, base_gguf: Path | str) -> Path:
    """The master checkpoint directory for `base_gguf`, dequantizing it first if it is missing or damaged."""
    base_gguf = check_gguf(base_gguf)
    root = config.models_dir / MASTERS
    digest = sha256(base_gguf)
    master = root / f"{base_gguf.stem}-{digest[:16]}"
    if is_complete(master):
        return master
    reader = gguf_layout.open_gguf(base_gguf)
    gguf_layout.check_supported(reader, base_gguf)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".*.tmp"):  # left by a killed build
        shutil.rmtree(stale, ignore_errors=True)
    if master.exists():
        shutil.rmtree(master)

    tmp = root / f".{master.name}.{os.getpid()}.tmp"
    tmp.mkdir()
    try:
        _build(reader, base_gguf, digest, tmp)
        atomic.fsync_tree(tmp)
        os.rename(tmp, master)
        atomic.fsync_path(root)
    except OSError as exc:  # typically a full disk
        raise ModelFileError(f"could not write the float master in {root}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return master


def _build(reader, base_gguf: Path, digest: str, out: Path) -> None:
    import gguf
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    config = _llama_config(reader)
    with torch.device("meta"):
        hf_names = list(LlamaForCausalLM(config).state_dict())
    by_gguf_name = {g: hf for hf, g in gguf_layout.gguf_names(reader, hf_names).items()}

    tensors: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        if t.name not in by_gguf_name:
            raise ModelFileError(f"{base_gguf.name} has a tensor a transformers llama lacks: {t.name}")
        array = gguf.quants.dequantize(t.data, t.tensor_type)
        n_head = gguf_layout.rope_heads(t.name, reader)
        if n_head is not None:
            array = gguf_layout.unpermute(array, n_head)
        tensors[by_gguf_name[t.name]] = torch.tensor(array, dtype=torch.float32)
    expected = set(hf_names) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    if set(tensors) != expected:
        missing = sorted(expected - set(tensors))[:3]
        raise ModelFileError(f"{base_gguf.name} lacks tensors a llama model needs: {missing}")
    save_file(tensors, out / WEIGHTS, metadata={"format": "pt"})
    config.save_pretrained(out)

    tokenizer = AutoTokenizer.from_pretrained(base_gguf.parent, gguf_file=base_gguf.name)
    template = gguf_layout.field(reader, "tokenizer.chat_template")
    if template:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(out)

    files = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
    manifest = {
        "source": str(base_gguf.resolve()),
        "source_sha256": digest,
        "architecture": "llama",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _llama_config(reader):
    """A transformers LlamaConfig from a llama GGUF's hyperparameters."""
    from transformers import LlamaConfig

    def f(key: str, default=None):
        return gguf_layout.field(reader, key, default)

    n_head, n_head_kv = gguf_layout.heads(reader)
    hidden = int(f("llama.embedding_length"))
    tokens = reader.get_field("tokenizer.ggml.tokens")
    return LlamaConfig(
        vocab_size=int(f("llama.vocab_size") or len(tokens.data)),
        hidden_size=hidden,
        intermediate_size=int(f("llama.feed_forward_length")),
        num_hidden_layers=int(f("llama.block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=n_head_kv,
        head_dim=int(f("llama.attention.key_length") or f("llama.rope.dimension_count") or hidden // n_head),
        max_position_embeddings=int(f("llama.context_length", 2048)),
        rms_norm_eps=float(f("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_parameters={"rope_type": "default", "rope_theta": float(f("llama.rope.freq_base", 10000.0))},
        tie_word_embeddings=all(t.name != "output.weight" for t in reader.tensors),
        bos_token_id=f("tokenizer.ggml.bos_token_id"),
        eos_token_id=f("tokenizer.ggml.eos_token_id"),
        pad_token_id=f("tokenizer.ggml.padding_token_id"),
        dtype="float32",
    )
