"""The catalog: SQLite (WAL) holding documents, their chunks (text, citation, embedding) and index metadata.

It is the source of truth: the FAISS and BM25 files are derived from it and can always be rebuilt. A
document row is *pending* (live = 0) while an indexing run adds it, and becomes *live* in the one transaction
that also publishes the new generation of derived files; search reads only live rows. A kill at any moment
therefore leaves the previous generation whole, and the pending rows let the next run skip the embedding.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.chunking import Chunk, heading_prefix, location_of

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    format TEXT NOT NULL,
    chunks INTEGER NOT NULL,
    indexed_at REAL NOT NULL,
    live INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS documents_live_path ON documents(path) WHERE live = 1;
CREATE INDEX IF NOT EXISTS documents_hash ON documents(hash);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    page INTEGER,
    heading TEXT NOT NULL,
    line_start INTEGER,
    line_end INTEGER,
    para_start INTEGER,
    para_end INTEGER,
    tokens INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id, ordinal);
"""


@dataclass
class Doc:
    id: int
    path: str
    hash: str
    size: int
    mtime_ns: int
    format: str
    chunks: int
    indexed_at: float
    live: bool


@dataclass
class ChunkRow:
    id: int
    doc_id: int
    ordinal: int
    source: str
    text: str
    heading: tuple[str, ...]
    page: int | None
    lines: tuple[int, int] | None
    paragraphs: tuple[int, int] | None

    @property
    def location(self) -> str:
        return location_of(self.page, self.heading, self.lines, self.paragraphs)

    @property
    def indexed_text(self) -> str:
        return heading_prefix(self.heading) + self.text


_STORED = "ordinal, text, page, heading, line_start, line_end, para_start, para_end, tokens, vector"
_DOC_COLUMNS = "id, path, hash, size, mtime_ns, format, chunks, indexed_at, live"
_CHUNK_COLUMNS = (
    "c.id, c.doc_id, c.ordinal, d.path, c.text, c.heading, c.page, c.line_start, c.line_end, "
    "c.para_start, c.para_end"
)


def _doc(row) -> Doc:
    return Doc(*row[:8], live=bool(row[8]))


def _chunk(row) -> ChunkRow:
    cid, doc_id, ordinal, path, text, heading, page, l0, l1, p0, p1 = row
    return ChunkRow(
        cid,
        doc_id,
        ordinal,
        path,
        text,
        tuple(json.loads(heading)),
        page,
        (l0, l1) if l0 is not None else None,
        (p0, p1) if p0 is not None else None,
    )


class Catalog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            if self.meta("schema") is None:
                self.set_meta("schema", str(SCHEMA_VERSION))
                self.set_meta("generation", "0")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ---- metadata ----
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def generation(self) -> int:
        return int(self.meta("generation") or 0)

    # ---- documents ----
    def live_docs(self) -> dict[str, Doc]:
        rows = self.db.execute(f"SELECT {_DOC_COLUMNS} FROM documents WHERE live = 1")
        return {r[1]: _doc(r) for r in rows}

    def docs_with_hash(self, digest: str) -> list[Doc]:
        rows = self.db.execute(
            f"SELECT {_DOC_COLUMNS} FROM documents WHERE hash = ? ORDER BY live DESC, id", (digest,)
        )
        return [_doc(r) for r in rows]

    def counts(self) -> tuple[int, int]:
        """(live documents, their chunks)."""
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(chunks), 0) FROM documents WHERE live = 1"
        ).fetchone()
        return int(row[0]), int(row[1])

    def add_pending(
        self,
        path: str,
        digest: str,
        size: int,
        mtime_ns: int,
        fmt: str,
        chunks: list[Chunk],
        vectors: np.ndarray,
    ) -> int:
        """Store one document's chunks and embeddings, invisible to search until published."""
        cur = self.db.execute(
            "INSERT INTO documents(path, hash, size, mtime_ns, format, chunks, indexed_at, live) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
            (path, digest, size, mtime_ns, fmt, len(chunks), time.time()),
        )
        doc_id = int(cur.lastrowid)
        self.db.executemany(
            f"INSERT INTO chunks(doc_id, {_STORED}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    doc_id,
                    i,
                    c.text,
                    c.page,
                    json.dumps(list(c.heading), ensure_ascii=False),
                    *(c.lines or (None, None)),
                    *(c.paragraphs or (None, None)),
                    c.tokens,
                    np.asarray(v, dtype=np.float32).tobytes(),
                )
                for i, (c, v) in enumerate(zip(chunks, vectors, strict=True))
            ),
        )
        return doc_id

    def copy_pending(self, source_id: int, path: str, size: int, mtime_ns: int) -> int:
        """A pending copy of an indexed document (same content at another path): no embedding needed."""
        cur = self.db.execute(
            "INSERT INTO documents(path, hash, size, mtime_ns, format, chunks, indexed_at, live) "
            "SELECT ?, hash, ?, ?, format, chunks, ?, 0 FROM documents WHERE id = ?",
            (path, size, mtime_ns, time.time(), source_id),
        )
        doc_id = int(cur.lastrowid)
        self.db.execute(
            f"INSERT INTO chunks(doc_id, {_STORED}) "
            f"SELECT ?, {_STORED} FROM chunks WHERE doc_id = ? ORDER BY ordinal",
            (doc_id, source_id),
        )
        return doc_id

    # ---- chunks ----
    def chunk_ids_of(self, doc_ids: Iterable[int]) -> np.ndarray:
        ids = list(doc_ids)
        out: list[int] = []
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            out += [r[0] for r in self.db.execute(f"SELECT id FROM chunks WHERE doc_id IN ({marks})", part)]
        return np.asarray(out, dtype=np.int64)

    @contextmanager
    def _selected(self, doc_ids: Iterable[int]) -> Iterator[None]:
        """The documents `doc_ids` in the temporary table `wanted`, for joins."""
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted(id INTEGER PRIMARY KEY)")
        self.db.execute("DELETE FROM wanted")
        self.db.executemany("INSERT OR IGNORE INTO wanted(id) VALUES (?)", ((i,) for i in doc_ids))
        try:
            yield
        finally:
            self.db.execute("DELETE FROM wanted")

    def count_chunks(self, doc_ids: Iterable[int]) -> int:
        with self._selected(doc_ids):
            return self.db.execute(
                "SELECT COUNT(*) FROM chunks c JOIN wanted w ON c.doc_id = w.id"
            ).fetchone()[0]

    def vectors_of_docs(self, doc_ids: Iterable[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids, embeddings) of the given documents' chunks, in chunk id order."""
        with self._selected(doc_ids):
            n = self.db.execute("SELECT COUNT(*) FROM chunks c JOIN wanted w ON c.doc_id = w.id").fetchone()[
                0
            ]
            ids = np.empty(n, dtype=np.int64)
            vectors = np.empty((n, dim), dtype=np.float32)
            rows = self.db.execute(
                "SELECT c.id, c.vector FROM chunks c JOIN wanted w ON c.doc_id = w.id ORDER BY c.id"
            )
            for i, (cid, blob) in enumerate(rows):
                ids[i] = cid
                vectors[i] = np.frombuffer(blob, dtype=np.float32, count=dim)
        return ids, vectors

    def vectors_of_chunks(self, chunk_ids: list[int], dim: int) -> dict[int, np.ndarray]:
        marks = ",".join("?" * len(chunk_ids))
        rows = (
            self.db.execute(f"SELECT id, vector FROM chunks WHERE id IN ({marks})", chunk_ids)
            if chunk_ids
            else []
        )
        return {cid: np.frombuffer(blob, dtype=np.float32, count=dim) for cid, blob in rows}

    def texts_of_docs(self, doc_ids: Iterable[int]) -> Iterator[tuple[int, str]]:
        """(chunk id, indexed text) of the given documents' chunks, in chunk id order, one at a time."""
        with self._selected(doc_ids):
            rows = self.db.execute(
                "SELECT c.id, c.heading, c.text FROM chunks c JOIN wanted w ON c.doc_id = w.id ORDER BY c.id"
            )
            for cid, heading, text in rows:
                yield cid, heading_prefix(json.loads(heading)) + text

    def chunks(self, chunk_ids: list[int]) -> dict[int, ChunkRow]:
        """Live chunks by id (ids of chunks no longer live are left out)."""
        if not chunk_ids:
            return {}
        marks = ",".join("?" * len(chunk_ids))
        rows = self.db.execute(
            f"SELECT {_CHUNK_COLUMNS} FROM chunks c JOIN documents d ON c.doc_id = d.id "
            f"WHERE d.live = 1 AND c.id IN ({marks})",
            chunk_ids,
        )
        return {r[0]: _chunk(r) for r in rows}

    def chunks_of_doc(self, doc_id: int, first: int = 0, last: int | None = None) -> list[ChunkRow]:
        rows = self.db.execute(
            f"SELECT {_CHUNK_COLUMNS} FROM chunks c JOIN documents d ON c.doc_id = d.id "
            "WHERE c.doc_id = ? AND c.ordinal >= ? AND c.ordinal <= ? ORDER BY c.ordinal",
            (doc_id, first, last if last is not None else 2**62),
        )
        return [_chunk(r) for r in rows]

    # ---- publishing ----
    def drop_pending(self) -> None:
        self.db.execute("DELETE FROM documents WHERE live = 0")

    def publish(
        self,
        generation: int,
        activate: list[int],
        drop: list[int],
        moves: list[tuple[int, str, int, int]],
        meta: dict[str, str],
    ) -> None:
        """In one transaction: drop documents, move/touch documents (id, path, size, mtime_ns), make the
        pending `activate` documents live, forget other pending rows, and record the new generation."""
        with self.transaction() as db:
            for key, value in meta.items():
                self.set_meta(key, value)
            db.executemany("DELETE FROM documents WHERE id = ?", ((i,) for i in drop))
            # two steps so that paths may be swapped without breaking the one-live-row-per-path rule
            db.executemany(
                "UPDATE documents SET path = '//moving/' || id WHERE id = ?", ((m[0],) for m in moves)
            )
            db.executemany(
                "UPDATE documents SET path = ?, size = ?, mtime_ns = ? WHERE id = ?",
                ((p, s, t, i) for i, p, s, t in moves),
            )
            db.executemany("UPDATE documents SET live = 1 WHERE id = ?", ((i,) for i in activate))
            db.execute("DELETE FROM documents WHERE live = 0")
            self.set_meta("generation", str(generation))
