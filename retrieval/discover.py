"""Finding the documents under the paths a user gives: recursive, ignore-aware, safe with symlinks.

Hidden files and folders (names starting with "."), `.git`, and the patterns of `.gitignore` and
`.nightjarignore` files inside the given folders are left out. Symlinks are followed, each file and folder
once; a link that points back into its own parents, or a link chain that loops, is reported and skipped.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.loaders import format_of

IGNORE_FILES = (".gitignore", ".nightjarignore")


@dataclass
class Found:
    path: Path  # absolute, as the user reaches it (symlinks not resolved)
    size: int
    mtime_ns: int


@dataclass
class Skipped:
    path: Path
    reason: str


@dataclass
class Discovery:
    files: list[Found] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # problems: reported, and the exit code says so
    ignored: int = 0  # hidden, ignored by pattern, or not a document type
    roots: list[Path] = field(default_factory=list)  # the given paths that exist
    unreadable: list[Path] = field(default_factory=list)  # folders whose contents could not be listed


def discover(paths: list[Path], max_bytes: int) -> Discovery:
    walker = _Walker(max_bytes)
    for given in paths:
        path = Path(os.path.abspath(os.path.expanduser(given)))
        try:
            st = path.stat()
        except OSError as exc:
            walker.skip(path, _stat_reason(path, exc))
            continue
        walker.found.roots.append(path)
        if path.is_dir():
            walker.walk(path, [], frozenset({(st.st_dev, st.st_ino)}))
        elif path.is_file():
            walker.file(path, st, explicit=True)
        else:
            walker.skip(path, "not a regular file or folder")
    return walker.found


def _stat_reason(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        return "broken symlink" if path.is_symlink() else "no such file or folder"
    if exc.errno == errno.EACCES:
        return "permission denied"
    return exc.strerror or str(exc)


class _Walker:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.found = Discovery()
        self.seen_dirs: set[tuple[int, int]] = set()
        self.seen_files: set[tuple[int, int]] = set()

    def skip(self, path: Path, reason: str) -> None:
        self.found.skipped.append(Skipped(path, reason))

    def file(self, path: Path, st: os.stat_result, explicit: bool) -> None:
        key = (st.st_dev, st.st_ino)
        if key in self.seen_files:
            return  # the same file reached by another path (a symlink)
        if format_of(path) is None:
            if explicit:
                self.skip(path, f"unsupported file type '{path.suffix or path.name}'")
            else:
                self.found.ignored += 1
            return
        if st.st_size > self.max_bytes:
            limit = self.max_bytes / 1e6
            self.skip(path, f"larger than the {limit:g} MB limit (retrieval.max_file_mb)")
            return
        self.seen_files.add(key)
        self.found.files.append(Found(path, st.st_size, st.st_mtime_ns))

    def walk(self, folder: Path, specs: list, parents: frozenset[tuple[int, int]]) -> None:
        import pathspec

        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in self.seen_dirs:
                return
            self.seen_dirs.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            self.skip(folder, f"cannot read folder ({_stat_reason(folder, exc)})")
            self.found.unreadable.append(folder)
            return
        specs = list(specs)
        for name in IGNORE_FILES:
            try:
                lines = (folder / name).read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
            specs.append((folder, pathspec.GitIgnoreSpec.from_lines(lines)))
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                self.found.ignored += 1
                continue
            try:
                st = path.stat()  # follows symlinks
            except OSError as exc:
                self.skip(path, _stat_reason(path, exc))
                continue
            is_dir = os.path.isdir(path)
            if _ignored(path, is_dir, specs):
                self.found.ignored += 1
                continue
            if is_dir:
                key = (st.st_dev, st.st_ino)
                if key in parents:
                    self.skip(path, "symlink loop (links back to a folder that contains it)")
                else:
                    self.walk(path, specs, parents | {key})
            elif os.path.isfile(path):
                self.file(path, st, explicit=False)
            else:
                self.found.ignored += 1  # sockets, pipes, devices


def _ignored(path: Path, is_dir: bool, specs: list) -> bool:
    """gitignore semantics: the deepest ignore file with a matching pattern decides."""
    verdict = False
    for base, spec in specs:
        rel = path.relative_to(base).as_posix() + ("/" if is_dir else "")
        result = spec.check_file(rel)
        if result.include is not None:
            verdict = result.include
    return verdict
