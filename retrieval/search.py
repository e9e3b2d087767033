"""Hybrid search: BM25 top-k and dense top-k, fused (by default a weighted sum of each candidate's cosine
similarity and keyword coverage; or reciprocal rank fusion), then (when a cross-encoder is configured) the
fused top N reranked.

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
from retrieval.config import RetrievalConfig
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


def fuse(
    cosine: dict[int, float],
    coverage: dict[int, float],
    ranked: dict[str, list[int]],
    config: RetrievalConfig,
) -> dict[int, float]:
    """Each candidate's fused score. convex: dense_weight * cosine + bm25_weight * keyword coverage (weights
    taken as shares of their sum), both known for every candidate and both on a fixed scale, so a wide lead in
    either signal survives and an exact keyword match (coverage 1) counts as such; rrf: the sum of
    weight / (rrf_k + rank) over the modes that ranked the chunk, which keeps the order and throws the gaps
    away."""
    total = config.bm25_weight + config.dense_weight
    weights = {"bm25": config.bm25_weight / total, "dense": config.dense_weight / total}
    if config.fusion == "rrf":
        fused: dict[int, float] = {}
        for name, ids in ranked.items():
            for rank, cid in enumerate(ids, 1):
                fused[cid] = fused.get(cid, 0.0) + weights[name] / (config.rrf_k + rank)
        return fused
    candidates = dict.fromkeys(cid for ids in ranked.values() for cid in ids)
    return {
        cid: weights["dense"] * cosine.get(cid, 0.0) + weights["bm25"] * coverage.get(cid, 0.0)
        for cid in candidates
    }


def describe_fusion(config: RetrievalConfig) -> str:
    """The fusion in use, in one phrase (for `search --explain` and the benchmarks)."""
    if config.fusion == "rrf":
        weights = f"weights bm25 {config.bm25_weight} / dense {config.dense_weight}"
        return f"reciprocal rank, k={config.rrf_k}, {weights}"
    return f"{config.dense_weight} x cosine + {config.bm25_weight} x keyword coverage"


def search(index: Index, query: str, k: int = 10, mode: str = "hybrid", rerank: bool = True) -> list[Hit]:
    """The k best chunks for `query`; mode "bm25" or "dense" uses one signal only (for evaluation)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    config = index.config
    if index.is_empty() or not query.strip():
        return []
    snap = index.snapshot()
    ranked: dict[str, list[int]] = {}  # each mode's candidates, best first

    bm25_all = None
    if mode in ("hybrid", "bm25"):
        bm25_all = snap.bm25.score_all(query)
        ranked["bm25"] = [int(snap.bm25.ids[i]) for i in _top(bm25_all, config.bm25_candidates)]
    query_vector = None
    cosine: dict[int, float] = {}
    if mode in ("hybrid", "dense"):
        index.check_embedder()
        query_vector = index.embedder.embed_query(query)
        scores, ids = snap.vectors.search(query_vector, config.dense_candidates)
        cosine = {int(i): float(s) for s, i in zip(scores, ids, strict=True)}
        ranked["dense"] = list(cosine)
        missing = [c for c in ranked.get("bm25", []) if c not in cosine]
        for cid, vec in index.catalog.vectors_of_chunks(missing, len(query_vector)).items():
            cosine[cid] = float(np.dot(vec, query_vector))
    bm25: dict[int, float] = {}
    coverage: dict[int, float] = {}
    if bm25_all is not None:
        max_bm25 = snap.bm25.max_score(query)
        for cid in dict.fromkeys(c for ids in ranked.values() for c in ids):
            if cid in snap.bm25_rows:
                bm25[cid] = float(bm25_all[snap.bm25_rows[cid]])
                coverage[cid] = min(1.0, bm25[cid] / max_bm25) if max_bm25 > 0 else 0.0

    # one mode alone ranks by its own score (coverage is capped at 1, which would tie the strongest matches)
    fused = (
        fuse(cosine, coverage, ranked, config)
        if mode == "hybrid"
        else (bm25 if bm25_all is not None else cosine)
    )
    reranker = index.reranker if rerank else None
    wanted = max(k, config.rerank_candidates) if reranker is not None else k
    order = sorted(fused, key=lambda c: (-fused[c], -cosine.get(c, -1.0), c))[: wanted + 10]
    rows = index.catalog.chunks(order)  # chunks dropped since the snapshot was taken are left out
    order = [c for c in order if c in rows][:wanted]

    hits = []
    positions = {name: {c: r for r, c in enumerate(ids, 1)} for name, ids in ranked.items()}
    for fused_rank, cid in enumerate(order, 1):
        score = bm25.get(cid)
        bm25_rank = int((bm25_all > score).sum()) + 1 if bm25_all is not None and score else None
        cos = cosine.get(cid)
        hits.append(
            Hit(
                chunk=rows[cid],
                score=fused[cid],
                scores={"bm25": score, "dense": cos, "fused": fused[cid], "rerank": None},
                ranks={
                    "bm25": bm25_rank,
                    "dense": positions.get("dense", {}).get(cid),
                    "fused": fused_rank,
                    "rerank": None,
                },
                coverage=coverage.get(cid, 0.0),
                relevant=(cos or 0.0) >= config.min_relevance
                or coverage.get(cid, 0.0) >= config.min_keyword_coverage,
            )
        )
    return _reranked(hits, query, reranker, config, mode == "hybrid")[:k]


def _reranked(hits: list[Hit], query: str, reranker, config: RetrievalConfig, hybrid: bool) -> list[Hit]:
    """The fused top `rerank_candidates` reordered by the reranker (the rest keep their place)."""
    if reranker is None or not hits:
        return hits
    from retrieval.rerank import rerank_scores

    head = hits[: config.rerank_candidates]
    fused = [h.scores["fused"] for h in head] if hybrid else None
    scores = rerank_scores(reranker, query, [h.chunk.indexed_text for h in head], fused)
    for hit, s in zip(head, scores, strict=True):
        hit.scores["rerank"] = float(s)
        hit.score = float(s)
    head.sort(key=lambda h: -h.score)
    for rank, hit in enumerate(head, 1):
        hit.ranks["rerank"] = rank
    return head + hits[config.rerank_candidates :]
