"""The reranker Nightjar trains on the user's own documents (retrieval/reranker_training.py): its versions on
disk and the ONNX Runtime scorer that serves one.

Versions live in `<index>/rerankers/`: `v1/`, `v2/`, ... each holding the fine-tuned cross-encoder (`model/`,
a transformers folder with its tokenizer), its int8 ONNX file (`model.int8.onnx`, what serves) and the
report of the run that made it (`report.json`); `last-run.json` is the latest run's report, kept or not.
`state.json` names the version in use and the ones served before it, which `rollback` returns to (and, past
the first, to no trained reranker). A version folder is built under a temporary name and renamed into
place, and state.json is replaced whole, so a run killed midway leaves the previous state as it was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import RetrievalError
from retrieval.onnx_embedder import cpu_threads
from retrieval.vectors import fsync_path

FOLDER = "rerankers"
ONNX_FILE = "model.int8.onnx"
# in model/: {"fused_weight": w, "max_tokens": n} (a version without it judges alone, at MAX_TOKENS)
SETTINGS_FILE = "reranker.json"
MAX_TOKENS = 256  # query + passage, special tokens included, where a version does not say (see settings)


@dataclass(frozen=True)
class RerankerVersion:
    name: str  # v1, v2, ...
    folder: Path
    report: dict[str, Any]  # the run's RerankerReport, as written

    @property
    def summary(self) -> str:
        """Held-out MRR@10 before -> after, the figure the gate judged it by."""
        held = self.report.get("heldout", {})
        before, after = held.get("before", {}), held.get("after", {})
        if "mrr" not in before or "mrr" not in after:
            return ""
        return f"held-out MRR@10 {before['mrr']:.3f} -> {after['mrr']:.3f} ({held.get('queries', 0)} queries)"


class RerankerVersions:
    """The trained rerankers of one index folder."""

    def __init__(self, index_folder: Path) -> None:
        self.root = Path(index_folder) / FOLDER

    def _state(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / "state.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"current": None, "history": []}
        except ValueError as exc:
            raise RetrievalError(
                f"{self.root / 'state.json'} is damaged ({exc}): delete it to start over"
            ) from exc

    def _write_state(self, state: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
        fsync_path(tmp)
        os.replace(tmp, self.root / "state.json")
        fsync_path(self.root)

    def list(self) -> list[RerankerVersion]:
        """Every published version, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if re.fullmatch(r"v\d+", p.name) and p.is_dir()]
        return [self._version(p) for p in sorted(found, key=lambda p: int(p.name[1:]))]

    def _version(self, folder: Path) -> RerankerVersion:
        try:
            report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            report = {}
        return RerankerVersion(folder.name, folder, report)

    def current(self) -> RerankerVersion | None:
        name = self._state().get("current")
        folder = self.root / name if name else None
        if folder is None or not (folder / ONNX_FILE).is_file():
            return None
        return self._version(folder)

    def staging(self) -> Path:
        """A fresh folder for a run to build its candidate in (left-overs of killed runs are removed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))

    def publish(self, staged: Path, report: dict[str, Any]) -> RerankerVersion:
        """Make the candidate built in `staged` the next version and the one in use."""
        numbers = [int(v.name[1:]) for v in self.list()]
        name = f"v{max(numbers, default=0) + 1}"
        report = {**report, "version": name}
        (staged / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        os.replace(staged, self.root / name)
        fsync_path(self.root)
        state = self._state()
        if state.get("current"):
            state["history"].append(state["current"])
        state["current"] = name
        self._write_state(state)
        return self._version(self.root / name)

    def record_run(self, report: dict[str, Any]) -> None:
        """Keep the latest run's report, kept or not, as `last-run.json` (what `reranker` shows and what the
        nightly run compares with to decide whether there is anything new to train on)."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "last-run.json.tmp"
        tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
        os.replace(tmp, self.root / "last-run.json")

    def last_run(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / "last-run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def rollback(self) -> RerankerVersion | None:
        """Serve the version used before the current one (None: no trained reranker); the current one stays
        on disk and listed."""
        state = self._state()
        if not state.get("current"):
            raise RetrievalError("no trained reranker is in use: nothing to roll back")
        history = [v for v in state["history"] if (self.root / v / ONNX_FILE).is_file()]
        state["current"] = history.pop() if history else None
        state["history"] = history
        self._write_state(state)
        return self.current()


def pair_tokenizer(folder: Path, padded: bool, max_tokens: int = MAX_TOKENS):
    """The (query, passage) tokenizer of a cross-encoder folder, the same for training and serving: cut at
    `max_tokens`, the passage giving way and never the query; `padded` to the longest pair of a batch."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(max_tokens, strategy="only_second")
    if padded:
        tok.enable_padding(pad_id=tok.token_to_id("[PAD]") or 0)
    else:
        tok.no_padding()
    return tok


class OnnxCrossEncoder:
    """A trained version served by onnxruntime (int8, no torch): one (query, passage) pair per run, a run
    on each core at once, as the ONNX embedder does."""

    def __init__(self, version: RerankerVersion) -> None:
        self.version = version
        self.name = f"trained reranker {version.name}"

    @cached_property
    def settings(self) -> dict[str, Any]:
        """What it was trained with (SETTINGS_FILE; empty for a version made before there was one)."""
        try:
            return json.loads((self.version.folder / "model" / SETTINGS_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise RetrievalError(
                f"the trained reranker {self.version.name}'s {SETTINGS_FILE} is damaged; "
                "`nightjar reranker rollback` serves the one before it"
            ) from exc

    @property
    def fused_weight(self) -> float:
        """How much of the fused score its own score is added to (see reranker_training)."""
        return float(self.settings.get("fused_weight", 0.0))

    @cached_property
    def encoder(self):
        max_tokens = int(self.settings.get("max_tokens", MAX_TOKENS))
        return pair_tokenizer(self.version.folder / "model", padded=False, max_tokens=max_tokens)

    @cached_property
    def session(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(
                str(self.version.folder / ONNX_FILE), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # damaged: say which version and how to leave it
            raise RetrievalError(
                f"cannot load the trained reranker {self.version.name} ({type(exc).__name__}); "
                "`nightjar reranker rollback` serves the one before it"
            ) from exc

    def _score_one(self, query: str, passage: str) -> float:
        enc = self.encoder.encode(query, passage)
        feed = {
            "input_ids": np.array([enc.ids], dtype=np.int64),
            "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
        }
        if "token_type_ids" in {i.name for i in self.session.get_inputs()}:
            feed["token_type_ids"] = np.array([enc.type_ids], dtype=np.int64)
        (logits,) = self.session.run(["logits"], feed)
        return float(logits.reshape(-1)[-1])

    def score(self, query: str, passages: list[str]) -> np.ndarray:
        if not passages:
            return np.zeros(0, dtype=np.float32)
        session = self.session  # noqa: F841  (loaded once, before the threads share it)
        with ThreadPoolExecutor(min(cpu_threads(), len(passages))) as pool:
            scores = list(pool.map(lambda p: self._score_one(query, p), passages))
        return np.asarray(scores, dtype=np.float32)
