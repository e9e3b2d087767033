"""Reranking: a cross-encoder reorders the fused top candidates by reading query and passage together. It is
either a sentence-transformers CrossEncoder, named by path or hub id in `retrieval.reranker` (it judges
alone), or the one Nightjar trains on the user's documents (retrieval/trained_reranker.py), which learns a
correction to the fused score and is read beside it: candidates are ordered by
`score + fused_weight x fused score` (`rerank_scores`).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from retrieval.embedder import offline, quiet_transformers
from retrieval.errors import RetrievalError


def rerank_scores(reranker, query: str, passages: list[str], fused: list[float] | None) -> np.ndarray:
    """What a reranker orders candidates by: its score of each (query, passage), plus its `fused_weight`
    times the candidate's fused score (`fused`; None where the search was not hybrid: its own score then)."""
    scores = np.asarray(reranker.score(query, passages), dtype=np.float32)
    if fused is None or not reranker.fused_weight:
        return scores
    return scores + np.float32(reranker.fused_weight) * np.asarray(fused, dtype=np.float32)


class CrossEncoderReranker:
    """Scores (query, passage) pairs with a sentence-transformers CrossEncoder named in config."""

    fused_weight = 0.0  # it judges alone

    def __init__(self, path_or_id: str) -> None:
        local = Path(path_or_id).expanduser()
        self.name = str(local.resolve()) if local.is_dir() else path_or_id

    @cached_property
    def model(self):
        offline()
        from sentence_transformers import CrossEncoder

        quiet_transformers()
        try:
            return CrossEncoder(self.name, device="cpu", local_files_only=True)
        except Exception as exc:  # a missing or broken model surfaces as many exception types
            raise RetrievalError(
                f"cannot load the reranker '{self.name}' ({type(exc).__name__}); Nightjar never downloads: "
                "set retrieval.reranker to a local CrossEncoder folder, or to '' to skip reranking"
            ) from exc

    def score(self, query: str, passages: list[str]) -> np.ndarray:
        if not passages:
            return np.zeros(0, dtype=np.float32)
        scores = self.model.predict(
            [(query, p) for p in passages], show_progress_bar=False, convert_to_numpy=True
        )
        return np.asarray(scores, dtype=np.float32).reshape(len(passages), -1)[:, -1]
