"""The index: the SQLite catalog plus, per generation, a vector store and a BM25 folder derived from it.

Files in the index folder:
    catalog.db            documents, chunks, embeddings, metadata (the source of truth)
    vectors.<gen>.faiss   the vector store of generation <gen> (retrieval.store = "faiss", the default)
    qdrant/, qdrant.json  the Qdrant collection and its state (retrieval.store = "qdrant", qdrant_store.py)
    bm25.<gen>/           the BM25 index of generation <gen>
    onnx/                 the embedder exported to ONNX (retrieval.embedder_backend onnx, onnx-fp32, auto),
                          made on first use from the model folder's own weights (retrieval/onnx_embedder.py)
    lock                  held by the one process that writes (index, forget)

A writer builds generation N+1's files next to N's, each written to a temporary name, fsync'd and renamed
into place, then commits N+1 in the catalog, then deletes N's files. Readers load the files of the generation
the catalog names; if they are missing (a crash at the wrong moment, files deleted by hand) they are rebuilt
from the catalog. The vector store is reached through `retrieval.vectors.StoreBackend` (`open_store` picks
it from the config): FAISS writes one file per generation as above; a Qdrant collection is updated in place
and brought back in step with the catalog when a writer died midway. Switching `retrieval.store` builds the
new store from the catalog's stored embeddings: nothing is embedded again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from retrieval.bm25 import BM25Index
from retrieval.catalog import Catalog, Doc
from retrieval.config import RetrievalConfig
from retrieval.embedder import Embedder, embedder_for, mismatch
from retrieval.errors import RetrievalError
from retrieval.vectors import StoreBackend, VectorStore, fsync_path, open_store

CATALOG = "catalog.db"
ONNX_CACHE = "onnx"
_ARTIFACT = re.compile(r"^(vectors\.(\d+)\.faiss|bm25\.(\d+))$")


def check_config(config: RetrievalConfig) -> None:
    problems = config.check()
    if problems:
        raise RetrievalError("; ".join(problems))


@dataclass
class Snapshot:
    generation: int
    vectors: VectorStore
    bm25: BM25Index

    def __post_init__(self) -> None:
        self.bm25_rows = {int(c): i for i, c in enumerate(self.bm25.ids)}


class Index:
    def __init__(
        self, folder: Path, config: RetrievalConfig, embedder: Embedder | None = None, reranker=None
    ) -> None:
        check_config(config)
        self.folder = Path(folder)
        self.config = config
        self._embedder = embedder
        self._reranker = reranker
        self._snapshot: Snapshot | None = None

    # ---- parts, built on first use ----
    @property
    def exists(self) -> bool:
        return (self.folder / CATALOG).exists()

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog(self.folder / CATALOG)

    @cached_property
    def stores(self) -> StoreBackend:
        """Where the vectors are kept: FAISS files or a Qdrant collection (retrieval.store)."""
        return open_store(self.config, self.folder)

    @cached_property
    def embedder(self) -> Embedder:
        """The configured embedder, on the configured backend ("auto" follows what built the index)."""
        if self._embedder is not None:
            return self._embedder
        return embedder_for(
            self.config.embedder_path(),
            backend=self.config.embedder_backend,
            cache_dir=self.folder / ONNX_CACHE,
            built_with=self.catalog.meta("embedder") if self.exists else None,
        )

    @cached_property
    def reranker(self):
        """What reorders the fused top candidates: the CrossEncoder named in config (it wins), else the
        trained version in use (retrieval.trained_reranker), else None: reranking is skipped."""
        if self._reranker is not None:
            return self._reranker
        if self.config.reranker:
            from retrieval.rerank import CrossEncoderReranker

            return CrossEncoderReranker(self.config.reranker)
        if self.config.trained_reranker:
            from retrieval.trained_reranker import OnnxCrossEncoder, RerankerVersions

            current = RerankerVersions(self.folder).current()
            if current is not None:
                return OnnxCrossEncoder(current)
        return None

    def reload_reranker(self) -> None:
        """Choose the reranker again on next use (a trained version was published or rolled back)."""
        self.__dict__.pop("reranker", None)

    def is_empty(self) -> bool:
        return not self.exists or self.catalog.counts()[0] == 0

    def dim(self) -> int:
        stored = self.catalog.meta("dim")
        return int(stored) if stored else self.embedder.dim

    def check_embedder(self) -> None:
        """Queries must be embedded by the model that embedded the index."""
        stored = self.catalog.meta("embedder")
        problem = mismatch(stored, self.embedder) if stored else None
        if problem:
            raise RetrievalError(problem)

    def sources(self) -> list[Doc]:
        if not self.exists:
            return []
        return sorted(self.catalog.live_docs().values(), key=lambda d: d.path)

    # ---- reading ----
    def _bm25_path(self, generation: int) -> Path:
        return self.folder / f"bm25.{generation}"

    def snapshot(self) -> Snapshot:
        """The search structures of the catalog's current generation (cached until it changes)."""
        generation = self.catalog.generation()
        if self._snapshot is not None and self._snapshot.generation == generation:
            return self._snapshot
        vectors = None
        for _ in range(3):
            try:
                vectors = self.stores.load(generation, self.catalog, self.writing)
                bm25 = BM25Index.load(self._bm25_path(generation), backend=self.config.bm25_backend)
                self._snapshot = Snapshot(generation, vectors, bm25)
                return self._snapshot
            except RetrievalError:  # a store that cannot be reached: rebuilding would not help
                raise
            except Exception:  # missing (a writer just replaced them) or damaged: look again, then rebuild
                newer = self.catalog.generation()
                if newer == generation:
                    break
                generation = newer
                if self.stores.per_generation:  # what was loaded belongs to the older generation
                    vectors = None
        self._snapshot = self._rebuild(generation, vectors)
        return self._snapshot

    def _rebuild(self, generation: int, vectors: VectorStore | None = None) -> Snapshot:
        """Rebuild from the catalog what could not be loaded: the BM25 index, and the vectors unless given."""
        live = [d.id for d in self.catalog.live_docs().values()]
        if vectors is None:
            vectors, bm25 = self._build(live, None, [], [])
        else:
            bm25 = BM25Index.build(self.catalog.texts_of_docs(live), backend=self.config.bm25_backend)
        with contextlib.suppress(RetrievalError), self.writing():
            if self.catalog.generation() == generation:
                self._write(generation, vectors, bm25)
        return Snapshot(generation, vectors, bm25)

    # ---- writing ----
    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the index's write lock (one writer at a time; readers never wait)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RetrievalError(
                    f"another nightjar process is updating the index in {self.folder}; "
                    "try again when it has finished"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _build(
        self,
        keep_docs: list[int],
        base: VectorStore | None,
        drop_chunks: np.ndarray | list,
        add_docs: list[int],
    ) -> tuple[VectorStore, BM25Index]:
        """Search structures for the live documents `keep_docs` + `add_docs`: the vector store updated from
        `base` when it still fits (else rebuilt from the catalog's embeddings); BM25 rebuilt from texts."""
        all_docs = list(keep_docs) + list(add_docs)
        n = self.catalog.count_chunks(all_docs)
        kind = self.stores.kind(n)
        if base is not None and len(base) and base.fits(kind, n):
            base.remove(np.asarray(drop_chunks, dtype=np.int64))
            new_ids, new_vectors = self.catalog.vectors_of_docs(add_docs, self.dim())
            base.add(new_ids, new_vectors)
            vectors = base
        else:
            dim = self.dim() if n else int(self.catalog.meta("dim") or 0) or 1
            all_ids, all_vectors = self.catalog.vectors_of_docs(all_docs, dim)
            vectors = self.stores.create(dim, kind, train=all_vectors)
            vectors.add(all_ids, all_vectors)
            del all_ids, all_vectors
        bm25 = BM25Index.build(self.catalog.texts_of_docs(all_docs), backend=self.config.bm25_backend)
        return vectors, bm25

    def _write(self, generation: int, vectors: VectorStore, bm25: BM25Index) -> None:
        self.stores.save(vectors, generation)
        bm25_path = self._bm25_path(generation)
        tmp_dir = self.folder / f".{bm25_path.name}.tmp"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir()
        bm25.save(tmp_dir)
        for f in tmp_dir.iterdir():
            fsync_path(f)
        fsync_path(tmp_dir)
        shutil.rmtree(bm25_path, ignore_errors=True)  # left by a run killed before its commit
        os.rename(tmp_dir, bm25_path)
        fsync_path(self.folder)

    def publish(
        self,
        activate: list[int],
        drop: list[int],
        moves: list[tuple[int, str, int, int]],
        meta: dict[str, str] | None = None,
    ) -> None:
        """Make pending documents live and drop others, as one new generation (call while `writing()`)."""
        catalog = self.catalog
        current = catalog.generation()
        if not activate and not drop:  # at most renames: the search files stay valid
            catalog.publish(current, [], [], moves, meta or {})
            return
        live = [d.id for d in catalog.live_docs().values()]
        dropped = set(drop)
        keep = [i for i in live if i not in dropped]
        base = None
        with contextlib.suppress(Exception):  # no usable previous vector store: rebuild from the catalog
            base = self.stores.base(current, catalog)
        vectors, bm25 = self._build(keep, base, catalog.chunk_ids_of(drop), activate)
        self._write(current + 1, vectors, bm25)
        catalog.publish(current + 1, activate, drop, moves, meta or {})
        self.stores.committed(vectors, current + 1)
        self._snapshot = Snapshot(current + 1, vectors, bm25)
        self._clean(current + 1)

    def _clean(self, generation: int) -> None:
        """Remove files of other generations and temporary files of killed runs."""
        for path in self.folder.iterdir():
            match = _ARTIFACT.match(path.name)
            stale = match and int(match.group(2) or match.group(3)) != generation
            if stale or (path.name.startswith(".") and path.name.endswith(".tmp")):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def forget(self, paths: list[Path]) -> list[str]:
        """Remove indexed documents (a file, or everything under a folder); returns the paths removed."""
        wanted = [os.path.abspath(os.path.expanduser(p)) for p in paths]
        with self.writing():
            live = self.catalog.live_docs() if self.exists else {}
            matched: dict[str, Doc] = {}
            for want in wanted:
                hits = {p: d for p, d in live.items() if p == want or p.startswith(want.rstrip("/") + "/")}
                if not hits:
                    raise RetrievalError(f"not indexed: {want} (`nightjar sources` lists what is)")
                matched.update(hits)
            self.publish([], [d.id for d in matched.values()], [])
        return sorted(matched)
