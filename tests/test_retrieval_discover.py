"""Finding documents: recursion, hidden files, ignore files, symlinks (and their loops), bad paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from retrieval.discover import discover

MB = 10**6


def names(found) -> set[str]:
    return {f.path.name for f in found.files}


def reasons(found) -> dict[str, str]:
    return {s.path.name: s.reason for s in found.skipped}


def test_recursive_with_hidden_and_ignore_files(tmp_path: Path):
    (tmp_path / "a.md").write_text("a")
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "sub" / "deep" / "b.txt").write_text("b")
    (tmp_path / ".hidden.md").write_text("h")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config.txt").write_text("g")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "out.txt").write_text("o")
    (tmp_path / "notes.log.txt").write_text("l")
    (tmp_path / "keep.log.txt").write_text("k")
    (tmp_path / ".gitignore").write_text("build/\n*.log.txt\n!keep.log.txt\n")
    (tmp_path / "sub" / ".nightjarignore").write_text("deep/\n")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    found = discover([tmp_path], 10 * MB)
    assert names(found) == {"a.md", "keep.log.txt"}
    assert found.skipped == [] and found.ignored >= 6


def test_symlinks_are_followed_once_and_loops_reported(tmp_path: Path):
    docs = tmp_path / "docs"
    (docs / "inner").mkdir(parents=True)
    (docs / "inner" / "x.md").write_text("x")
    os.symlink(docs, docs / "inner" / "back")  # a folder link to its own parent
    os.symlink(docs / "inner" / "x.md", docs / "alias.md")  # the same file twice
    os.symlink(docs / "l1", docs / "l2.md")
    os.symlink(docs / "l2.md", docs / "l1")  # a link chain that loops
    os.symlink(docs / "missing.md", docs / "dangling.md")
    found = discover([docs], 10 * MB)
    assert len(found.files) == 1  # x.md, once
    why = reasons(found)
    assert "symlink loop" in why["back"] and why["l1"] == "symlink loop" and why["l2.md"] == "symlink loop"
    assert why["dangling.md"] == "broken symlink"


def test_bad_paths_are_reported(tmp_path: Path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * (2 * MB))
    small = tmp_path / "ok.txt"
    small.write_text("fine")
    strange = tmp_path / "data.xyz"
    strange.write_text("?")
    found = discover([tmp_path / "nope", big, small, strange], 1 * MB)
    assert names(found) == {"ok.txt"}
    why = reasons(found)
    assert why["nope"] == "no such file or folder"
    assert why["big.txt"] == "larger than the 1 MB limit (retrieval.max_file_mb)"
    assert why["data.xyz"] == "unsupported file type '.xyz'"


def test_an_unreadable_folder_is_reported_and_the_rest_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "a.txt").write_text("a")
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "secret.txt").write_text("s")
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the listing fail the way it does for a user
        real = os.scandir

        def scandir(path):
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)
    try:
        found = discover([tmp_path], MB)
    finally:
        locked.chmod(0o755)
    assert names(found) == {"a.txt"}
    assert reasons(found) == {"locked": "cannot read folder (permission denied)"}
    assert found.unreadable == [locked]
