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
from trainer import architectures, gguf_layout

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
    from transformers import AutoModelForCausalLM, TokenizersBackend

    meta = gguf_layout.Meta(reader, base_gguf)
    arch = architectures.ARCHITECTURES[meta.arch]  # ensure_master checked it is supported
    config = architectures.hf_config(reader, base_gguf)
    with torch.device("meta"):
        hf_names = list(AutoModelForCausalLM.from_config(config).state_dict())
    if config.tie_word_embeddings:  # the head is the embeddings: one tensor in the file and the checkpoint
        hf_names = [name for name in hf_names if name != "lm_head.weight"]
    by_gguf_name = {g: hf for hf, g in gguf_layout.gguf_names(reader, hf_names).items()}

    tensors: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        if t.name in gguf_layout.BASE_ONLY_TENSORS:  # no weight (Llama 3 rope factors): the export copies it
            continue
        if t.name not in by_gguf_name:
            raise ModelFileError(
                f"{base_gguf.name} has a tensor a transformers {arch.model_type} model lacks: {t.name}"
            )
        array = arch.to_hf(t.name, gguf.quants.dequantize(t.data, t.tensor_type), meta)
        tensors[by_gguf_name[t.name]] = torch.tensor(array, dtype=torch.float32)
    if set(tensors) != set(hf_names):
        missing = sorted(set(hf_names) - set(tensors))[:3]
        raise ModelFileError(f"{base_gguf.name} lacks tensors a {arch.model_type} model needs: {missing}")
    save_file(tensors, out / WEIGHTS, metadata={"format": "pt"})
    config.save_pretrained(out)

    # the generic class keeps transformers' conversion of the file's tokenizer verbatim on every load, where
    # a model-specific one (GemmaTokenizer, Qwen2Tokenizer) rebuilds its own pipeline when loaded again
    tokenizer = TokenizersBackend.from_pretrained(base_gguf.parent, gguf_file=base_gguf.name)
    template = gguf_layout.field(reader, "tokenizer.chat_template")
    if template:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(out)

    files = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
    manifest = {
        "source": str(base_gguf.resolve()),
        "source_sha256": digest,
        "architecture": arch.name,
        "model_type": arch.model_type,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
