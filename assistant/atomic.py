"""Atomic file writes: write a temporary file next to the target, fsync it, then os.replace it in.

A kill at any moment leaves either the old file or the new one, never a half-written one. Temporary names
start with "." and end with ".tmp" so that listings can ignore them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(dst: Path) -> Path:
    return dst.parent / f".{dst.name}.{os.getpid()}.tmp"


@contextlib.contextmanager
def replacing(dst: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `dst` atomically, on error it is removed."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(dst)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, dst)
        fsync_path(dst.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text(dst: Path | str, text: str) -> None:
    with replacing(dst) as tmp:
        tmp.write_text(text, encoding="utf-8")


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (before renaming a finished directory into place)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))
