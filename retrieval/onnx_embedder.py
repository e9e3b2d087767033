"""The ONNX Runtime embedder: a plain sentence-transformers model (see `embedder.plain_pooling`) exported to
ONNX on this machine, from the weights its folder ships, and run by onnxruntime without torch.

The model file is made once, the first time it is needed, into a cache folder (the index keeps it in
`<index>/onnx/`): the folder's transformer is exported with torch (`torch.onnx.export`), then, for the int8
variant, its MatMul weights are quantized per output channel (`onnxruntime.quantization.quantize_dynamic`),
as signed or unsigned int8 by what this CPU computes exactly (`int8_weight_type`).
The export works in a temporary folder and renames the finished file into place, under a lock, so a run killed
midway leaves no broken file and two processes never export at once; later processes load the file as it is
(tenths of a second, no torch). A file that will not load is made again.

Text is tokenized with the folder's tokenizer.json (the `tokenizers` library) and pooled (mean or CLS over the
attention mask, then L2-normalized) exactly as sentence-transformers pools it. The full-precision variant
gives torch's vectors (cosine > 0.9999), so it shares torch's index; the int8 variant is faster again (3.6x
torch on 2 idle cores with VNNI, 2.1x on AVX2 alone: benchmarks/embed_bench.py) but its vectors differ
slightly (cosine ~0.995), so an index records that int8 built it (its embedder name) and never mixes the two.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import warnings
from collections.abc import Set
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path

import numpy as np

from retrieval.embedder import TransformerEmbedder, offline, quiet_transformers, vectors_name
from retrieval.errors import RetrievalError
from retrieval.vectors import fsync_path

EXPORT_VERSION = 2  # bump when the export or the quantization changes: the cached files are made again
ONNX_BATCH = 1  # texts per run (see OnnxEmbedder.model): one, on each core at once
OPSET = 17


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere); read once a process: the cache key
    of the model file and its export both ask."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def int8_weight_type(machine: str | None = None, flags: Set[str] | None = None) -> str:
    """ "QInt8" or "QUInt8": the weights' int8 type for onnxruntime's dynamic quantization on this CPU.

    onnxruntime multiplies unsigned activations by signed weights (u8s8) with VNNI where the CPU has it; an
    x86 CPU without VNNI (AVX2 only, e.g. many AMD EPYCs) adds pairs of products in 16 bits, which saturate:
    there int8 MiniLM vectors of 600 nq-open passages fell to cosine 0.955 with torch's, and unsigned weights
    (u8u8, about 15% slower) keep them above 0.98. Other architectures take signed weights."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return "QInt8"
    flags = cpu_flags() if flags is None else flags
    vnni = {"avx512_vnni", "avx_vnni", "amx_int8"}
    return "QInt8" if flags & vnni else "QUInt8"


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantizer logs advice on the root logger and torch's exporter warns of its own
    deprecation: nothing for the user's terminal."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def export(folder: Path, target: Path, quantized: bool, output: str = "last_hidden_state") -> None:
    """Export the transformer of the sentence-transformers `folder` to the ONNX file `target` (int8 when
    `quantized`): built in a temporary folder next to `target`, then renamed into place. `output` is
    "last_hidden_state" (an embedder) or "logits" (a sequence classifier: the trained reranker)."""
    offline()
    import inspect

    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    quiet_transformers()
    kind = AutoModel if output == "last_hidden_state" else AutoModelForSequenceClassification
    try:
        # eager attention exports as plain MatMul/Softmax, which onnxruntime runs (and quantizes) best
        model = kind.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager")
    except Exception as exc:  # a missing or broken model surfaces as many exception types
        raise RetrievalError(
            f"cannot load the model '{folder}' to export it ({type(exc).__name__}); set "
            "retrieval.embedder to a local sentence-transformers folder"
        ) from exc
    model.eval()
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")

    class Output(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return getattr(self.model(**dict(zip(names, inputs, strict=True))), output)

    example = tuple(torch.ones(2, 16, dtype=torch.long) for _ in names)
    axes = {name: {0: "batch", 1: "tokens"} for name in names} | {output: {0: "batch"}}
    if output == "last_hidden_state":
        axes[output][1] = "tokens"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as tmp:
        full = Path(tmp) / "model.onnx"
        with _quiet(), torch.inference_mode():
            torch.onnx.export(
                Output(),
                example,
                str(full),
                dynamo=False,  # the TorchScript exporter: needs no onnxscript, exports BERT as is
                input_names=names,
                output_names=[output],
                dynamic_axes=axes,
                opset_version=OPSET,
            )
        done = full
        if quantized:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            done = Path(tmp) / "model.int8.onnx"
            with _quiet():
                quantize_dynamic(
                    str(full),
                    str(done),
                    op_types_to_quantize=["MatMul"],  # the weights; embeddings and attention stay float
                    per_channel=True,  # per-tensor int8 moves vectors by cosine ~0.05, per channel ~0.005
                    weight_type=getattr(QuantType, int8_weight_type()),
                )
        fsync_path(done)
        os.replace(done, target)
    fsync_path(target.parent)


class OnnxEmbedder(TransformerEmbedder):
    """A plain sentence-transformers folder run by onnxruntime (full precision, or int8 when `quantized`);
    its ONNX file is exported once into `cache_dir` and reused."""

    def __init__(
        self,
        folder: Path,
        pooling: str,
        cache_dir: Path,
        quantized: bool = True,
        batch_size: int = ONNX_BATCH,
    ) -> None:
        super().__init__(folder, pooling, batch_size)
        self.quantized = quantized
        self.backend = "onnx" if quantized else "onnx-fp32"
        self.name = vectors_name(self.name, quantized)
        self.cache_dir = Path(cache_dir)
        self.exports = 0  # how many times this instance exported the model (0 when the file was there)

    # ---- the model file ----
    @cached_property
    def model_file(self) -> Path:
        """The cached ONNX file, named by what it is made from: the folder, its weights (size and mtime),
        its config and the export version; files of other versions of the same folder are removed."""
        folder = self.local_dir
        weights = sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.iterdir()
            if p.suffix in (".safetensors", ".bin")
        )
        config = (folder / "config.json").read_text(encoding="utf-8")
        variant = int8_weight_type() if self.quantized else "fp32"
        key = json.dumps([str(folder), weights, config, EXPORT_VERSION, variant])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return self.cache_dir / f"{self._stem}-{digest}.{self._variant}.onnx"

    @property
    def _stem(self) -> str:
        return f"{self.local_dir.parent.name}-{self.local_dir.name}"

    @property
    def _variant(self) -> str:
        return "int8" if self.quantized else "fp32"

    def _export(self, redo: bool = False) -> Path:
        """The model file, exported first when it is missing (or `redo`: it would not load)."""
        path = self.model_file
        if path.is_file() and not redo:
            return path
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cache_dir / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process exporting the same model: wait for it
            try:
                if redo:
                    path.unlink(missing_ok=True)
                if not path.is_file():
                    for stale in self.cache_dir.glob(".export-*"):  # left by a killed export
                        shutil.rmtree(stale, ignore_errors=True)
                    try:
                        export(self.local_dir, path, self.quantized)
                    except RetrievalError:
                        raise
                    except Exception as exc:
                        raise RetrievalError(
                            f"cannot export the embedder {self.local_dir} to ONNX ({type(exc).__name__}: "
                            f'{exc}); set retrieval.embedder_backend = "torch" to embed with torch'
                        ) from exc
                    self.exports += 1
                    for old in self.cache_dir.glob(f"{self._stem}-*.{self._variant}.onnx"):
                        if old != path:  # made from an older version of the weights or of the export
                            old.unlink(missing_ok=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return path

    @cached_property
    def model(self):
        """The session: one thread per run. `embed` runs one text per run on each core at once, which on 2
        cores beats one run over a batch on 2 threads (those wait on each other between small operators,
        and far worse when other processes hold the cores), needs no padding (a text's int8 vector does not
        depend on the batch it came in: dynamic quantization scales by the whole input), and a query gets
        the one thread it needs."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        path = self._export()
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception:  # damaged (a disk error, a hand edit): make it again, once
            path = self._export(redo=True)
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    # ---- the Embedder interface ----
    @cached_property
    def dim(self) -> int:
        config = json.loads((self.local_dir / "config.json").read_text(encoding="utf-8"))
        return int(config["hidden_size"])

    def _embed_with(self, session, texts: list[str]) -> np.ndarray:
        inputs = {i.name for i in session.get_inputs()}
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # like lengths share a batch
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            encodings = self.encoder.encode_batch([texts[i] for i in batch])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in inputs:
                feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
            (hidden,) = session.run(["last_hidden_state"], feed)
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                weights = mask[:, :, None].astype(np.float32)
                pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[batch] = pooled / np.maximum(norms, 1e-12)  # torch.nn.functional.normalize's eps
        return out

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        session = self.model
        batches = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        threads = min(cpu_threads(), len(batches))
        if threads == 1:
            return self._embed_with(session, texts)
        with ThreadPoolExecutor(threads) as pool:  # onnxruntime lets go of the GIL while it runs
            return np.concatenate(list(pool.map(lambda b: self._embed_with(session, b), batches)))

    def embed_query(self, text: str) -> np.ndarray:
        return self._embed_with(self.model, [text])[0]
