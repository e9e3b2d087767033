"""The vector store: one small interface (add/remove/search/save/load), FAISS behind it.

Vectors are L2-normalized, so inner product is cosine similarity. Kinds:
- flat: exact search (the default while the collection is small),
- ivf: an inverted file (k-means cells; a query scans the nearest few cells), approximate and cheap to update,
- hnsw: a graph index, approximate and fast to query, but removing vectors means rebuilding it.
A Qdrant (or any other) store can implement the same `VectorStore` protocol.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Protocol

import numpy as np


class VectorStore(Protocol):
    kind: str
    dim: int

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k nearest vectors, best first."""

    def save(self, path: Path) -> None: ...

    @classmethod
    def load(cls, path: Path) -> VectorStore: ...


def choose_kind(setting: str, n: int, threshold: int) -> str:
    """The index kind for n vectors: the configured one, or for "auto" exact below `threshold`, IVF above.
    Under a thousand vectors exact search is always used: an approximation would gain nothing."""
    if n < 1000:
        return "flat"
    if setting != "auto":
        return setting
    return "flat" if n < threshold else "ivf"


def ivf_lists(n: int) -> int:
    """About 4 * sqrt(n) cells, each with at least ~39 training points (FAISS's rule of thumb)."""
    return int(max(1, min(4 * math.sqrt(max(n, 1)), n // 39)))


@contextlib.contextmanager
def _single_thread():
    """One query scans memory in one thread: on a busy machine more OpenMP threads only wait on each other."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class FaissStore:
    def __init__(self, index, kind: str) -> None:
        self.index = index
        self.kind = kind
        self.dim = index.d

    @classmethod
    def create(cls, dim: int, kind: str, train: np.ndarray | None = None) -> FaissStore:
        """An empty store; IVF learns its cells from `train` (a sample of the vectors it will hold)."""
        import faiss

        if kind == "flat":
            return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), kind)
        if kind == "hnsw":
            graph = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = 80
            graph.hnsw.efSearch = 128
            return cls(faiss.IndexIDMap2(graph), kind)
        if kind == "ivf":
            n = 0 if train is None else len(train)
            nlist = ivf_lists(n)
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = (
                train
                if n <= nlist * 256
                else train[np.random.default_rng(0).choice(n, nlist * 256, replace=False)]
            )
            ivf.train(np.ascontiguousarray(sample, dtype=np.float32))
            ivf.nprobe = max(8, nlist // 16)
            return cls(ivf, kind)
        raise ValueError(f"unknown vector index kind '{kind}'")

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def fits(self, kind: str, n: int) -> bool:
        """Whether it can hold n vectors as `kind` without a rebuild (IVF: its cells still sized right)."""
        if kind != self.kind:
            return False
        if kind == "ivf":
            nlist = self.index.nlist
            return nlist / 2 <= ivf_lists(n) <= nlist * 2
        return True

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
            )

    def remove(self, ids: np.ndarray) -> None:
        import faiss

        if not len(ids):
            return
        ids = np.asarray(ids, dtype=np.int64)
        if self.kind != "hnsw":
            self.index.remove_ids(faiss.IDSelectorBatch(ids))
            return
        # an HNSW graph cannot drop nodes: rebuild it from the vectors it keeps
        all_ids = faiss.vector_to_array(self.index.id_map)
        keep = ~np.isin(all_ids, ids)
        vectors = self.index.index.reconstruct_n(0, len(all_ids))[keep]
        fresh = FaissStore.create(self.dim, "hnsw")
        fresh.add(all_ids[keep], vectors)
        self.index = fresh.index

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0 or k <= 0:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        with _single_thread():
            scores, ids = self.index.search(
                np.asarray(query, dtype=np.float32).reshape(1, -1), min(k, len(self))
            )
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]

    def save(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path) -> FaissStore:
        import faiss

        index = faiss.read_index(str(path))
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
        if isinstance(index, faiss.IndexIVFFlat):
            return cls(index, "ivf")
        return cls(index, "hnsw" if isinstance(inner, faiss.IndexHNSWFlat) else "flat")
