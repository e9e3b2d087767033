"""Perplexity of a GGUF on a text, through llama.cpp: the trainer's regression canary."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from assistant import llamacpp


def load(gguf_path: Path | str, n_ctx: int = 512, threads: int = 0):
    """A llama.cpp model that keeps the logits of every position (for scoring, not for chat)."""
    return llamacpp.load(gguf_path, n_ctx=n_ctx, n_threads=threads, n_batch=n_ctx, logits_all=True)


def logits(llm, tokens: list[int]) -> np.ndarray:
    """Next-token logits after each of `tokens` (one row per token), from a fresh context."""
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def perplexity(gguf_path: Path | str, text: str, n_ctx: int = 512, threads: int = 0) -> float:
    """exp(mean negative log-likelihood) of `text`, scored in consecutive windows of `n_ctx` tokens."""
    llm = load(gguf_path, n_ctx, threads)
    try:
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=True)
        nll, count = 0.0, 0
        for start in range(0, len(tokens), n_ctx):
            window = tokens[start : start + n_ctx]
            if len(window) < 2:
                break
            rows = logits(llm, window)[:-1].astype(np.float64)
            top = rows.max(axis=1)
            log_z = np.log(np.exp(rows - top[:, None]).sum(axis=1)) + top
            nll += float((log_z - rows[np.arange(len(window) - 1), window[1:]]).sum())
            count += len(window) - 1
    finally:
        llm.close()
    if count == 0:
        raise ValueError("the text is too short to measure perplexity on")
    return math.exp(nll / count)
