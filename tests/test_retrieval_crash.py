"""kill -9 in the middle of `index`: the previous index stays whole and usable, the next run finishes the work
without embedding again what the killed run had already embedded."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from retrieval.config import RetrievalConfig
from retrieval.index import Index
from retrieval.indexer import update
from retrieval.search import search
from tests.test_retrieval_index import Spy, assert_consistent, shared_embedder

ROOT = Path(__file__).resolve().parent.parent
ANIMALS = [
    "otter",
    "badger",
    "heron",
    "stoat",
    "vole",
    "hare",
    "lynx",
    "marten",
    "newt",
    "wren",
    "pika",
    "ibis",
]
RUN = """
import sys
from pathlib import Path
import retrieval.indexer as indexer
from retrieval.config import RetrievalConfig
from retrieval.index import Index
indexer.EMBED_BATCH = 2  # commit often, so that there is something to resume
indexer.update(Index(Path(sys.argv[1]), RetrievalConfig()), [Path(sys.argv[2])])
"""


def pending(db_path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM documents WHERE live = 0").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kill_9_mid_run(tmp_path: Path):
    docs, folder = tmp_path / "docs", tmp_path / "index"
    docs.mkdir()
    (docs / "first.md").write_text("# Kettles\n\nDescale the kettle with vinegar once a month.\n")
    index = Index(folder, RetrievalConfig(), embedder=shared_embedder())
    update(index, [docs])
    generation = index.catalog.generation()

    for i, animal in enumerate(ANIMALS * 2):
        (docs / f"note{i:02d}.txt").write_text(
            f"Field note {i}: a {animal} was seen near the river at dawn.\n"
        )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN, str(folder), str(docs)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 400
    while pending(folder / "catalog.db") < 6 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_with = pending(folder / "catalog.db")
    assert killed_with >= 6

    # the previous index: whole, consistent, searchable, and without half of the new run
    after = Index(folder, RetrievalConfig(), embedder=shared_embedder())
    assert after.catalog.generation() == generation
    assert [Path(d.path).name for d in after.sources()] == ["first.md"]
    assert "vinegar" in search(after, "how to descale a kettle", k=1)[0].chunk.text
    assert_consistent(after)

    # the next run completes the work, reusing what the killed run had embedded
    spy = Spy()
    report = update(Index(folder, RetrievalConfig(), embedder=spy), [docs])
    assert len(report.indexed) == 24 and report.unchanged == 1 and report.reused >= killed_with
    assert len(spy.embedded) == 24 - report.reused
    final = Index(folder, RetrievalConfig(), embedder=shared_embedder())
    assert len(final.sources()) == 25 and "lynx" in search(final, "lynx by the river", k=1)[0].chunk.text
    assert_consistent(final)
