"""Hybrid search: BM25 top-k and dense top-k, fused by reciprocal rank fusion, then (when a cross-encoder
is configured) the fused top N reranked.

Every hit carries each stage's score and rank (for `nightjar search --explain`) and its keyword coverage:
its BM25 score over what a chunk matching every query word once would score. A hit is relevant enough to
answer from when its dense cosine similarity reaches `retrieval.min_relevance` or its keyword coverage
reaches `retrieval.min_keyword_coverage`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retrieval.catalog import ChunkRow
from retrieval.index import Index

MODES = ("hybrid", "bm25", "dense")


@dataclass
class Hit:
    chunk: ChunkRow
    score: float  # what the order is by: the rerank score when reranked, else the fused score
    scores: dict[str, float | None] = field(default_factory=dict)  # bm25, dense, fused, rerank
    ranks: dict[str, int | None] = field(default_factory=dict)
    coverage: float = 0.0  # keyword coverage, 0..1
    relevant: bool = False

    def source(self, n: int | None = None) -> dict[str, Any]:
        """The source dict the assistant cites and the reasoning tools receive."""
        out: dict[str, Any] = {} if n is None else {"n": n}
        out.update(
            {
                "id": self.chunk.id,
                "source": self.chunk.source,
                "location": self.chunk.location,
                "text": self.chunk.text,
                "score": round(float(self.score), 6),
                "scores": {k: (None if v is None else round(float(v), 6)) for k, v in self.scores.items()},
            }
        )
        return out


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest positive scores, best first."""
    k = min(k, int((scores > 0).sum()))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def search(index: Index, query: str, k: int = 10, mode: str = "hybrid", rerank: bool = True) -> list[Hit]:
    """The k best chunks for `query`; mode "bm25" or "dense" uses one signal only (for evaluation)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    config = index.config
    if index.is_empty() or not query.strip():
        return []
    snap = index.snapshot()
    ranked: dict[str, list[int]] = {}
    weights = {"bm25": config.bm25_weight, "dense": config.dense_weight}

    bm25_all = None
    if mode in ("hybrid", "bm25"):
        bm25_all = snap.bm25.score_all(query)
        ranked["bm25"] = [int(snap.bm25.ids[i]) for i in _top(bm25_all, config.bm25_candidates)]
    query_vector = None
    dense: dict[int, float] = {}
    if mode in ("hybrid", "dense"):
        index.check_embedder()
        query_vector = index.embedder.embed_query(query)
        scores, ids = snap.vectors.search(query_vector, config.dense_candidates)
        dense = {int(i): float(s) for s, i in zip(scores, ids, strict=True)}
        ranked["dense"] = list(dense)

    fused: dict[int, float] = {}
    for name, ids in ranked.items():
        for rank, cid in enumerate(ids, 1):
            fused[cid] = fused.get(cid, 0.0) + weights[name] / (config.rrf_k + rank)
    reranker = index.reranker if rerank else None
    wanted = max(k, config.rerank_candidates) if reranker is not None else k
    order = sorted(fused, key=lambda c: (-fused[c], -dense.get(c, -1.0), c))[: wanted + 10]
    rows = index.catalog.chunks(order)  # chunks dropped since the snapshot was taken are left out
    order = [c for c in order if c in rows][:wanted]
    if query_vector is not None:
        missing = [c for c in order if c not in dense]
        for cid, vec in index.catalog.vectors_of_chunks(missing, len(query_vector)).items():
            dense[cid] = float(np.dot(vec, query_vector))
    max_bm25 = snap.bm25.max_score(query) if bm25_all is not None else 0.0

    hits = []
    positions = {name: {c: r for r, c in enumerate(ids, 1)} for name, ids in ranked.items()}
    for fused_rank, cid in enumerate(order, 1):
        bm25 = (
            float(bm25_all[snap.bm25_rows[cid]]) if bm25_all is not None and cid in snap.bm25_rows else None
        )
        cos = dense.get(cid)
        coverage = min(1.0, bm25 / max_bm25) if bm25 is not None and max_bm25 > 0 else 0.0
        bm25_rank = int((bm25_all > bm25).sum()) + 1 if bm25 else None
        hits.append(
            Hit(
                chunk=rows[cid],
                score=fused[cid],
                scores={"bm25": bm25, "dense": cos, "fused": fused[cid], "rerank": None},
                ranks={
                    "bm25": bm25_rank,
                    "dense": positions.get("dense", {}).get(cid),
                    "fused": fused_rank,
                    "rerank": None,
                },
                coverage=coverage,
                relevant=(cos or 0.0) >= config.min_relevance or coverage >= config.min_keyword_coverage,
            )
        )

    if reranker is not None and hits:
        head = hits[: config.rerank_candidates]
        scores = reranker.score(query, [h.chunk.indexed_text for h in head])
        for hit, s in zip(head, scores, strict=True):
            hit.scores["rerank"] = float(s)
            hit.score = float(s)
        head.sort(key=lambda h: -h.score)
        for rank, hit in enumerate(head, 1):
            hit.ranks["rerank"] = rank
        hits = head + hits[config.rerank_candidates :]
    return hits[:k]
