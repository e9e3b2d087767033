"""The vector store: one small interface (add/remove/search), FAISS or Qdrant behind it.

Vectors are L2-normalized, so inner product is cosine similarity. FAISS kinds:
- flat: exact search (the default while the collection is small),
- ivf: an inverted file (k-means cells; a query scans the nearest few cells), approximate and cheap to update,
- hnsw: a graph index, approximate and fast to query, but removing vectors means rebuilding it.

A `StoreBackend` says how an index keeps its store from one generation to the next: FAISS writes one file per
generation (`FaissBackend`); Qdrant keeps one collection that is updated in place (retrieval/qdrant_store.py).
`open_store` picks the backend that `retrieval.store` names.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from retrieval.catalog import Catalog
    from retrieval.config import RetrievalConfig


class VectorStore(Protocol):
    kind: str
    dim: int

    def __len__(self) -> int: ...

    def fits(self, kind: str, n: int) -> bool:
        """Whether it can hold n vectors as `kind` without a rebuild."""

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k nearest vectors, best first."""


Lock = Callable[[], contextlib.AbstractContextManager]


class StoreBackend(Protocol):
    """How an index keeps its vector store across generations (see retrieval/index.py). The index calls
    `base`, `create`, `save` and `committed` while it holds its write lock; `load` without it."""

    name: str
    per_generation: bool  # one store per generation (FAISS files), or one kept up to date in place

    def kind(self, n: int) -> str:
        """The kind of store for n vectors."""

    def load(self, generation: int, catalog: Catalog, lock: Lock) -> VectorStore:
        """The store of the committed `generation`, to search. Raises RetrievalError when the store cannot
        be reached (rebuilding would not help), any other exception when it is missing or damaged (the
        index then rebuilds it from the catalog)."""

    def base(self, generation: int, catalog: Catalog) -> VectorStore | None:
        """The store of `generation`, for a writer to update into the next one; None: build a new one."""

    def create(self, dim: int, kind: str, train: np.ndarray | None = None) -> VectorStore:
        """An empty store (IVF learns its cells from `train`)."""

    def save(self, store: VectorStore, generation: int) -> None:
        """Make `store` durable as `generation`'s, before the catalog commits that generation."""

    def committed(self, store: VectorStore, generation: int) -> None:
        """The catalog has committed `generation`, whose store is `store`."""


def open_store(config: RetrievalConfig, folder: Path) -> StoreBackend:
    """The backend `retrieval.store` names, for the index in `folder`."""
    if config.store == "qdrant":
        from retrieval.qdrant_store import QdrantBackend

        return QdrantBackend(folder, config.qdrant_url, config.qdrant_api_key)
    return FaissBackend(folder, config.vector_index, config.ann_threshold)


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


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entries to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FaissBackend:
    """One FAISS file per generation, `vectors.<gen>.faiss` in the index folder: a writer loads the current
    generation's file, updates it in memory and writes it under the next generation's name; readers load
    the file of the generation the catalog names."""

    name = "faiss"
    per_generation = True

    def __init__(self, folder: Path, setting: str = "auto", threshold: int = 50_000) -> None:
        self.folder = Path(folder)
        self.setting = setting
        self.threshold = threshold

    def path(self, generation: int) -> Path:
        return self.folder / f"vectors.{generation}.faiss"

    def kind(self, n: int) -> str:
        return choose_kind(self.setting, n, self.threshold)

    def load(self, generation: int, catalog: Catalog, lock: Lock) -> FaissStore:
        return FaissStore.load(self.path(generation))

    def base(self, generation: int, catalog: Catalog) -> FaissStore | None:
        return FaissStore.load(self.path(generation)) if generation else None

    def create(self, dim: int, kind: str, train: np.ndarray | None = None) -> FaissStore:
        return FaissStore.create(dim, kind, train=train)

    def save(self, store: FaissStore, generation: int) -> None:
        path = self.path(generation)
        tmp = self.folder / f".{path.name}.tmp"
        store.save(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)

    def committed(self, store: FaissStore, generation: int) -> None:
        pass
