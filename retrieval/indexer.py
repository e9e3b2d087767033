"""Indexing: bring the index up to date with the files under some paths, embedding only what changed.

A file is unchanged when its size and modification time match the index (or, failing that, its content
hash). New and changed files are loaded, chunked and embedded in batches; each batch is committed as
pending rows. A renamed file keeps its chunks and embeddings (found by content hash), a copy reuses them.
Files that disappeared from the given folders are dropped. Everything becomes searchable at once when the run
publishes a new generation; a run that is killed leaves the previous generation untouched, and the next run
finds the pending rows it already embedded and does not embed them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from retrieval.chunking import Chunk, chunk_blocks
from retrieval.discover import Found, Skipped, discover
from retrieval.index import Index
from retrieval.loaders import LoadError, format_of, load

CHUNKING_VERSION = 1  # bump when chunking changes in a way that should re-chunk every document
EMBED_BATCH = 256  # chunks embedded (and committed) together


class Progress(Protocol):
    def start(self, files: int, size: int) -> None: ...

    def advance(self, files: int, size: int, chunks: int) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Report:
    indexed: list[str] = field(default_factory=list)
    unchanged: int = 0
    renamed: list[tuple[str, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    ignored: int = 0
    chunks: int = 0  # chunks embedded in this run
    reused: int = 0  # files whose embeddings were reused (copies, or embedded by a killed run)
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.skipped)

    def summary(self) -> str:
        parts = [
            f"indexed {len(self.indexed)} file{'s' if len(self.indexed) != 1 else ''}"
            f" ({self.chunks} chunks embedded)",
            f"{self.unchanged} unchanged",
        ]
        if self.renamed:
            parts.append(f"{len(self.renamed)} renamed")
        if self.removed:
            parts.append(f"{len(self.removed)} removed")
        parts.append(f"{len(self.skipped)} skipped")
        if self.ignored:
            parts.append(f"{self.ignored} ignored (hidden, .gitignore'd or not documents)")
        rate = f", {self.chunks / self.seconds:.1f} chunks/s" if self.chunks and self.seconds else ""
        return ", ".join(parts) + f" in {self.seconds:.1f} s{rate}"


@dataclass
class _Work:
    found: Found
    digest: str


def _read_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "cannot read file (permission denied)"
    return f"cannot read file ({exc.strerror or exc})"


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def update(index: Index, paths: list[Path], progress: Progress | None = None) -> Report:
    """Index the files under `paths` (files and folders); see the module docstring."""
    start = time.perf_counter()
    config = index.config
    report = Report()
    with index.writing():
        catalog = index.catalog
        embedder = index.embedder
        max_tokens = min(config.chunk_tokens, embedder.max_tokens)
        overlap = config.overlap_tokens(max_tokens)
        signature = json.dumps(
            {"embedder": embedder.name, "tokens": max_tokens, "overlap": overlap, "version": CHUNKING_VERSION}
        )
        if catalog.meta("pending_signature") != signature:  # pending rows of other settings are useless
            with catalog.transaction():
                catalog.drop_pending()
                catalog.set_meta("pending_signature", signature)
        live = catalog.live_docs()
        redo_all = bool(live) and catalog.meta("signature") != signature
        if redo_all:
            report.notices.append(
                f"the embedder or chunking settings changed: re-embedding all {len(live)} indexed files"
            )

        found = discover(paths, int(config.max_file_mb * 1e6))
        report.skipped += found.skipped
        report.ignored = found.ignored
        files = {str(f.path): f for f in found.files}
        if redo_all:  # every indexed file is re-embedded, also those outside `paths`
            for path in live:
                if path not in files and os.path.isfile(path):
                    st = os.stat(path)
                    files[path] = Found(Path(path), st.st_size, st.st_mtime_ns)

        # 1. what changed: unchanged files are recognised by size and mtime, then by content hash
        work: list[_Work] = []
        moves: list[tuple[int, str, int, int]] = []
        for path, f in files.items():
            doc = live.get(path)
            if doc and not redo_all and (doc.size, doc.mtime_ns) == (f.size, f.mtime_ns):
                report.unchanged += 1
                continue
            try:
                digest = _hash(f.path)
            except OSError as exc:
                report.skipped.append(Skipped(f.path, _read_reason(exc)))
                continue
            if doc and not redo_all and doc.hash == digest:
                report.unchanged += 1
                moves.append((doc.id, path, f.size, f.mtime_ns))  # touched, not changed
                continue
            work.append(_Work(f, digest))

        # 2. gone: indexed files under the given folders that are no longer there (or now ignored); files
        # that could not be read this time keep their previous version
        roots = [str(r) for r in found.roots]
        kept = [str(p) for p in found.unreadable] + [str(s.path) for s in found.skipped]
        gone = {
            p: d
            for p, d in live.items()
            if p not in files and (redo_all or _under(p, roots)) and not _under(p, kept)
        }

        # 3. reuse embeddings by content hash: pending rows of a killed run, renames, copies
        activate: list[int] = []
        to_embed: list[_Work] = []
        for w in work:
            path = str(w.found.path)
            fmt = format_of(w.found.path)
            same = [
                d for d in catalog.docs_with_hash(w.digest) if d.format == fmt and not (redo_all and d.live)
            ]
            pending = next((d for d in same if not d.live and d.path == path), None)
            moved = next(
                (d for d in same if d.live and d.path not in files and not os.path.exists(d.path)), None
            )
            if pending is not None:
                activate.append(pending.id)
                report.indexed.append(path)
                report.reused += 1
            elif moved is not None:
                gone.pop(moved.path, None)
                live.pop(moved.path)
                moves.append((moved.id, path, w.found.size, w.found.mtime_ns))
                report.renamed.append((moved.path, path))
            elif same:
                with catalog.transaction():
                    activate.append(catalog.copy_pending(same[0].id, path, w.found.size, w.found.mtime_ns))
                report.indexed.append(path)
                report.reused += 1
            else:
                to_embed.append(w)
        report.removed = sorted(gone)

        # 4. load, chunk and embed what is new, committing pending rows batch by batch
        if progress is not None:
            progress.start(len(to_embed), sum(w.found.size for w in to_embed))
        try:
            batch: list[tuple[_Work, str, list[Chunk]]] = []
            for w in to_embed:
                loaded = _load(w, index, max_tokens, overlap, report)
                if loaded is not None:
                    batch.append(loaded)
                elif progress is not None:
                    progress.advance(1, w.found.size, 0)
                if sum(len(c) for _, _, c in batch) >= EMBED_BATCH:
                    activate += _embed(index, batch, report, progress)
                    batch = []
            activate += _embed(index, batch, report, progress)
        finally:
            if progress is not None:
                progress.stop()

        # 5. publish: everything above becomes searchable at once; a changed file's previous version is
        # dropped only now that its new version is in
        replaced = {p for p in report.indexed} | {new for _, new in report.renamed}
        drop = [d.id for p, d in live.items() if p in replaced] + [d.id for d in gone.values()]
        meta = {"signature": signature, "embedder": embedder.name}
        if to_embed:
            meta["dim"] = str(embedder.dim)
        index.publish(activate, drop, moves, meta)
    report.seconds = time.perf_counter() - start
    return report


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _load(w: _Work, index: Index, max_tokens: int, overlap: int, report: Report):
    path = w.found.path
    try:
        data = path.read_bytes()
    except OSError as exc:
        report.skipped.append(Skipped(path, _read_reason(exc)))
        return None
    digest = hashlib.sha256(data).hexdigest()  # the file may have changed since it was planned
    try:
        blocks = load(path, data)
    except LoadError as exc:
        report.skipped.append(Skipped(path, str(exc)))
        return None
    chunks = chunk_blocks(blocks, index.embedder.token_spans, max_tokens, overlap)
    return w, digest, chunks


def _embed(index: Index, batch: list, report: Report, progress: Progress | None) -> list[int]:
    """Embed a batch of loaded files and commit them as pending documents; returns their ids."""
    if not batch:
        return []
    texts = [c.indexed_text for _, _, chunks in batch for c in chunks]
    vectors = index.embedder.embed(texts)
    ids = []
    offset = 0
    with index.catalog.transaction():
        for w, digest, chunks in batch:
            f = w.found
            ids.append(
                index.catalog.add_pending(
                    str(f.path),
                    digest,
                    f.size,
                    f.mtime_ns,
                    format_of(f.path) or "text",
                    chunks,
                    vectors[offset : offset + len(chunks)],
                )
            )
            offset += len(chunks)
    for w, _, chunks in batch:
        report.indexed.append(str(w.found.path))
        report.chunks += len(chunks)
        if progress is not None:
            progress.advance(1, w.found.size, len(chunks))
    return ids
