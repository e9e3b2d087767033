"""Qdrant as the vector store (`retrieval.store = "qdrant"`): qdrant-client's embedded local mode, kept in the
folder `qdrant/` of the index folder, or a Qdrant server (`retrieval.qdrant_url`, `retrieval.qdrant_api_key`).

Points are the catalog's chunks: point id = chunk id, vector = the chunk's stored L2-normalized embedding,
distance = dot product (which is cosine similarity on such vectors, and the score FAISS gives). No payload:
texts and citations stay in the catalog.

What a generation is here. FAISS writes a new file per generation; a Qdrant collection cannot be copied
cheaply, so there is one collection, updated in place (upsert and delete by id), and `qdrant.json` in the
index folder records for each target (the embedded folder, or a server URL) the collection's name, the
generation it last matched and whether it is `clean`. The catalog stays the source of truth, and chunk ids
are never reused (SQLite AUTOINCREMENT) nor their vectors changed, so a collection is in step with the
catalog exactly when it holds the ids of the live chunks. A writer (holding the index's write lock):
1. marks the collection not clean (fsync'd) before it changes anything,
2. deletes the chunks of dropped documents and upserts those of new ones,
3. commits the new generation in the catalog,
4. marks the collection clean at that generation.
A kill between 1 and 4 leaves the mark; whoever opens the index next and can take the write lock repairs the
collection against the catalog (deletes the ids that are not live chunks, upserts the live chunks that are
missing, from the catalog's stored vectors) and marks it clean. Searching never depends on that repair having
happened: every result is checked against the catalog's live chunks (one SQL query over the k ids; more are
fetched while some are left out), so search never returns an id the catalog does not know, not even while a
writer is midway or after it was killed. The same repair builds the collection from scratch when
`retrieval.store` is switched to qdrant (or the collection was lost): nothing is embedded again.

The embedded mode holds a lock on its folder: one process at a time may open it (all the indexes of one
process share one client). A second process (`nightjar index` while `nightjar serve` runs) gets a one-line
error; a Qdrant server has no such limit. qdrant-client's embedded mode searches exactly (NumPy) and writes
each point with its own SQLite commit, so it is meant for small collections: see README's figures.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from retrieval.catalog import Catalog
from retrieval.errors import RetrievalError
from retrieval.vectors import Lock

LOCAL_FOLDER = "qdrant"
STATE_FILE = "qdrant.json"
LOCAL_COLLECTION = "nightjar"
EMBEDDED = "embedded"
BATCH = 512  # points per upsert request
SQL_BATCH = 500  # ids per SQL `IN (...)`

_clients: dict[str, object] = {}
_clients_lock = threading.Lock()
_blas = None


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """The embedded mode searches with NumPy: on one thread, as FAISS does. More BLAS threads wait on each
    other, and their spinning slows the next query's embedding (2x on 2 busy cores)."""
    global _blas
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        yield
        return
    if _blas is None:
        _blas = ThreadpoolController()
    with _blas.limit(limits=1, user_api="blas"):
        yield


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """qdrant-client warns that its embedded mode is not meant for large collections: README says when."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Local mode is not recommended", category=UserWarning)
        yield


def client_for(local_path: Path | None, url: str = "", api_key: str = ""):
    """The process's one client for an embedded folder (or a server), opened on first use."""
    key = f"url:{url}:{api_key}" if url else f"path:{Path(local_path).resolve()}"
    with _clients_lock:
        client = _clients.get(key)
        if client is not None:
            return client
        from qdrant_client import QdrantClient

        if url:
            client = QdrantClient(url=url, api_key=api_key or None, timeout=60, check_compatibility=False)
        else:
            try:
                with _quiet():
                    client = QdrantClient(path=str(local_path))
            except RuntimeError as exc:
                if "already accessed" not in str(exc):
                    raise
                raise RetrievalError(
                    f"the embedded Qdrant in {local_path} is open in another nightjar process (it allows one "
                    "at a time): wait for that one to finish, or run a Qdrant server and set "
                    "retrieval.qdrant_url"
                ) from None
        _clients[key] = client
        return client


def close_clients() -> None:
    """Close every client this process opened (an embedded folder is then free for another process)."""
    with _clients_lock:
        for client in _clients.values():
            with contextlib.suppress(Exception):
                client.close()
        _clients.clear()


atexit.register(close_clients)  # before interpreter shutdown, where qdrant-client's own close fails noisily


def live_chunk_ids(catalog: Catalog, ids: list[int] | None = None) -> set[int]:
    """The ids of the catalog's live chunks (among `ids`, when given)."""
    query = "SELECT c.id FROM chunks c JOIN documents d ON c.doc_id = d.id WHERE d.live = 1"
    if ids is None:
        return {r[0] for r in catalog.db.execute(query)}
    out: set[int] = set()
    for start in range(0, len(ids), SQL_BATCH):
        part = ids[start : start + SQL_BATCH]
        marks = ",".join("?" * len(part))
        out.update(r[0] for r in catalog.db.execute(f"{query} AND c.id IN ({marks})", part))
    return out


class QdrantStore:
    """One Qdrant collection as a `VectorStore`; with a catalog, search returns only its live chunks."""

    kind = "qdrant"

    def __init__(self, client, collection: str, dim: int, catalog: Catalog | None = None, where: str = ""):
        self.client = client
        self.collection = collection
        self.dim = dim
        self.catalog = catalog
        self.where = where or "the embedded Qdrant"
        self.missing = False  # no collection yet (a writer is creating it): searches find nothing

    @contextlib.contextmanager
    def _calls(self) -> Iterator[None]:
        """A server that cannot be reached (or refuses) as a one-line RetrievalError."""
        from qdrant_client.http.exceptions import ApiException

        try:
            with _quiet():
                yield
        except ApiException as exc:
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise RetrievalError(f"Qdrant at {self.where} failed: {detail}") from exc
        except OSError as exc:
            raise RetrievalError(f"cannot reach Qdrant at {self.where}: {exc}") from exc

    def exists(self) -> bool:
        with self._calls():
            return bool(self.client.collection_exists(self.collection))

    def stored_dim(self) -> int:
        with self._calls():
            vectors = self.client.get_collection(self.collection).config.params.vectors
        return int(vectors.size)

    def recreate(self, dim: int) -> None:
        from qdrant_client import models

        with self._calls():
            if self.client.collection_exists(self.collection):
                self.client.delete_collection(self.collection)
            self.client.create_collection(
                self.collection, vectors_config=models.VectorParams(size=dim, distance=models.Distance.DOT)
            )
        self.dim = dim

    def __len__(self) -> int:
        with self._calls():
            return int(self.client.count(self.collection, exact=True).count)

    def fits(self, kind: str, n: int) -> bool:
        return kind == self.kind

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        from qdrant_client import models

        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32)
        with self._calls():
            for start in range(0, len(ids), BATCH):
                batch = models.Batch(
                    ids=ids[start : start + BATCH].tolist(), vectors=vectors[start : start + BATCH].tolist()
                )
                self.client.upsert(self.collection, points=batch, wait=True)

    def remove(self, ids: np.ndarray) -> None:
        from qdrant_client import models

        ids = np.asarray(ids, dtype=np.int64).tolist()
        with self._calls():
            for start in range(0, len(ids), BATCH):
                selector = models.PointIdsList(points=ids[start : start + BATCH])
                self.client.delete(self.collection, points_selector=selector, wait=True)

    def ids(self) -> set[int]:
        """Every point id in the collection."""
        out: set[int] = set()
        offset = None
        with self._calls():
            while True:
                points, offset = self.client.scroll(
                    self.collection, limit=10_000, offset=offset, with_payload=False, with_vectors=False
                )
                out.update(int(p.id) for p in points)
                if offset is None:
                    return out

    def _query(self, query: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        with self._calls(), _one_blas_thread():
            points = self.client.query_points(
                self.collection,
                query=np.asarray(query, dtype=np.float32).ravel(),
                limit=limit,
                with_payload=False,
                with_vectors=False,
            ).points
        return (
            np.asarray([p.score for p in points], dtype=np.float32),
            np.asarray([int(p.id) for p in points], dtype=np.int64),
        )

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k <= 0 or self.missing:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        limit = k
        while True:
            scores, ids = self._query(query, limit)
            if self.catalog is not None and len(ids):
                live = live_chunk_ids(self.catalog, ids.tolist())
                keep = np.asarray([int(i) in live for i in ids], dtype=bool)
                got, (scores, ids) = len(ids), (scores[keep], ids[keep])
            else:
                got = len(ids)
            if len(ids) >= k or got < limit:  # enough live ones, or the collection has no more
                return scores[:k], ids[:k]
            limit *= 4


class QdrantBackend:
    """Keeps an index's vectors in one Qdrant collection, in step with the catalog (see the module doc)."""

    name = "qdrant"
    per_generation = False

    def __init__(self, folder: Path, url: str = "", api_key: str = "") -> None:
        self.folder = Path(folder)
        self.url = url.strip().rstrip("/")
        self.api_key = api_key
        self.target = self.url or EMBEDDED
        self._catalog: Catalog | None = None  # the index's catalog, for filtering what `create` makes

    # ---- the state file (written only by the process that holds the index's write lock) ----
    def _states(self) -> dict:
        try:
            data = json.loads((self.folder / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def state(self) -> dict:
        state = self._states().get(self.target)
        return state if isinstance(state, dict) else {}

    def _set_state(self, **changes) -> None:
        states = self._states()
        state = {**self.state(), **changes}
        state.setdefault("collection", self._collection_name(state))
        states[self.target] = state
        path = self.folder / STATE_FILE
        tmp = self.folder / f".{STATE_FILE}.tmp"
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(states, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _collection_name(self, state: dict) -> str:
        if state.get("collection"):
            return str(state["collection"])
        if not self.url:
            return LOCAL_COLLECTION  # the embedded folder belongs to this index alone
        return f"nightjar-{uuid.uuid4().hex[:12]}"  # one server may hold many indexes

    # ---- the store ----
    def _store(self, catalog: Catalog | None) -> QdrantStore:
        self._catalog = catalog or self._catalog
        catalog = self._catalog
        client = client_for(self.folder / LOCAL_FOLDER, self.url, self.api_key)
        name = self._collection_name(self.state())
        dim = int(catalog.meta("dim") or 0) if catalog is not None else 0
        where = self.url or str(self.folder / LOCAL_FOLDER)
        return QdrantStore(client, name, dim or 1, catalog, where)

    def _in_step(self, store: QdrantStore, generation: int, catalog: Catalog) -> bool:
        state = self.state()
        if not state.get("clean") or state.get("generation") != generation or not store.exists():
            return False
        return store.stored_dim() == store.dim and len(store) == catalog.counts()[1]

    def _repair(self, store: QdrantStore, catalog: Catalog) -> None:
        """Make the collection hold exactly the catalog's live chunks (call holding the write lock)."""
        self._set_state(collection=store.collection, clean=False)
        dim = store.dim
        if not store.exists() or store.stored_dim() != dim:
            store.recreate(dim)
            have: set[int] = set()
        else:
            have = store.ids()
        live = live_chunk_ids(catalog)
        store.remove(np.asarray(sorted(have - live), dtype=np.int64))
        missing = sorted(live - have)
        for start in range(0, len(missing), SQL_BATCH * 4):
            part = missing[start : start + SQL_BATCH * 4]
            found: dict[int, np.ndarray] = {}
            for sub in range(0, len(part), SQL_BATCH):
                found.update(catalog.vectors_of_chunks(part[sub : sub + SQL_BATCH], dim))
            ids = np.asarray(sorted(found), dtype=np.int64)
            if len(ids):
                store.add(ids, np.stack([found[int(i)] for i in ids]))
        self._set_state(generation=catalog.generation(), clean=True)

    def kind(self, n: int) -> str:
        return QdrantStore.kind

    def load(self, generation: int, catalog: Catalog, lock: Lock) -> QdrantStore:
        try:
            store = self._store(catalog)
            if self._in_step(store, generation, catalog):
                return store
            with contextlib.ExitStack() as held:
                try:
                    held.enter_context(lock())
                except RetrievalError:  # a writer is busy: it brings the collection in step itself
                    store.missing = not store.exists()
                    return store
                if not self._in_step(store, catalog.generation(), catalog):
                    self._repair(store, catalog)
            return store
        except RetrievalError:
            raise
        except Exception as exc:  # a damaged store, or a bug: never rebuild a shared collection unlocked
            raise RetrievalError(
                f"cannot open the Qdrant vector store ({type(exc).__name__}: {exc}); "
                "run `nightjar index PATH` again to rebuild it from the catalog"
            ) from exc

    def base(self, generation: int, catalog: Catalog) -> QdrantStore:
        store = self._store(catalog)
        if not self._in_step(store, generation, catalog):
            self._repair(store, catalog)
        self._set_state(collection=store.collection, clean=False)  # the writer changes it from here on
        return store

    def create(self, dim: int, kind: str, train: np.ndarray | None = None) -> QdrantStore:
        store = self._store(None)  # filtered by the catalog `base` was given
        self._set_state(collection=store.collection, clean=False)
        store.recreate(dim)
        return store

    def save(self, store: QdrantStore, generation: int) -> None:
        pass  # every upsert and delete was acknowledged as written (wait=True)

    def committed(self, store: QdrantStore, generation: int) -> None:
        self._set_state(collection=store.collection, generation=generation, clean=True)
