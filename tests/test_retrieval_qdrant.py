"""Qdrant as the vector store, through qdrant-client's real embedded mode (no server, no network) and the real
embedded MiniLM: the same rankings as FAISS flat on the same chunks through index, search, incremental
re-index and forget; switching stores embeds nothing; a writer killed midway never makes search return
chunks the catalog does not know; an unknown store is a one-line configuration error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.config import RetrievalConfig
from retrieval.errors import RetrievalError
from retrieval.index import Index
from retrieval.indexer import update
from retrieval.qdrant_store import QdrantBackend, QdrantStore, client_for, close_clients, live_chunk_ids
from retrieval.search import search
from retrieval.vectors import FaissStore
from tests.test_retrieval_index import Spy, shared_embedder

ROOT = Path(__file__).resolve().parent.parent
FLAT = RetrievalConfig(vector_index="flat")
QDRANT = RetrievalConfig(store="qdrant")

NOTES = {
    "birds/nightjar.txt": "Nightjars are crepuscular birds that hunt moths at dusk over heathland.",
    "birds/heron.txt": "Herons stand still in shallow water and spear fish with their long bills.",
    "birds/owl.txt": "Owls swallow their prey whole and cough up pellets of fur and bone.",
    "kitchen/bread.md": "# Bread\n\nKnead the dough for ten minutes, then bake it at 230 degrees.",
    "kitchen/soup.md": "# Soup\n\nSimmer onions, carrots and lentils in stock for forty minutes.",
    "kitchen/coffee.md": "# Coffee\n\nGrind the beans coarsely and steep them in hot water for four minutes.",
    "garden/tomatoes.rst": "Tomatoes\n========\n\nTomatoes want full sun, rich compost and regular watering.",
    "garden/roses.rst": "Roses\n=====\n\nPrune roses in late winter, just above an outward-facing bud.",
    "tech/errors.md": "# Errors\n\nERR_0x7F3A means the frobnicator lost its connection to the socket.",
    "tech/backup.md": "# Backups\n\nKeep three copies of your data on two media, one of them off site.",
}
QUERIES = [
    "which animal feeds on insects in the evening twilight",
    "how long should I knead bread dough",
    "ERR_0x7F3A socket",
    "what do plants need to grow fruit",
    "how to make a warm vegetable meal",
    "bird that eats fish",
    "protecting files against disk failure",
]


@pytest.fixture(autouse=True)
def _release_embedded_folders():
    yield
    close_clients()  # as when a process ends: its embedded Qdrant folders are free again


def write_notes(folder: Path) -> Path:
    for name, text in NOTES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text + "\n")
    return folder


def ranking(index: Index, query: str, mode: str, k: int = 10) -> list[tuple[str, str, float]]:
    """(file, chunk text, score) of the hits, best first: comparable across two catalogs."""
    hits = search(index, query, k=k, mode=mode, rerank=False)
    return [
        (Path(h.chunk.source).parent.name + "/" + Path(h.chunk.source).name, h.chunk.text, h.score)
        for h in hits
    ]


def assert_same_rankings(qdrant: Index, faiss: Index) -> None:
    assert qdrant.snapshot().vectors.kind == "qdrant" and faiss.snapshot().vectors.kind == "flat"
    for query in QUERIES:
        for mode, k in (("dense", 20), ("hybrid", 6)):
            got, want = ranking(qdrant, query, mode, k), ranking(faiss, query, mode, k)
            assert [g[:2] for g in got] == [w[:2] for w in want], (query, mode)
            assert [g[2] for g in got] == pytest.approx([w[2] for w in want], abs=1e-5)


def assert_in_step(index: Index) -> None:
    """The collection holds exactly the catalog's live chunks, with their stored vectors, marked clean."""
    store = index.snapshot().vectors
    assert isinstance(store, QdrantStore)
    live = live_chunk_ids(index.catalog)
    assert store.ids() == live and len(store) == index.catalog.counts()[1]
    state = json.loads((index.folder / "qdrant.json").read_text())["embedded"]
    assert state["clean"] and state["generation"] == index.catalog.generation()
    some = sorted(live)[:3]
    points = store.client.retrieve(store.collection, ids=some, with_vectors=True)
    stored = index.catalog.vectors_of_chunks(some, store.dim)
    for p in points:
        assert np.allclose(p.vector, stored[p.id], atol=1e-6)


def test_qdrant_ranks_like_faiss_flat_through_index_reindex_and_forget(tmp_path: Path):
    docs = write_notes(tmp_path / "docs")
    spy = Spy()
    qdrant = Index(tmp_path / "q", QDRANT, embedder=spy)
    faiss = Index(tmp_path / "f", FLAT, embedder=shared_embedder())
    assert len(update(qdrant, [docs]).indexed) == len(NOTES)
    update(faiss, [docs])
    assert (tmp_path / "q" / "qdrant").is_dir() and not list(qdrant.folder.glob("vectors.*"))
    assert_same_rankings(qdrant, faiss)
    assert ranking(qdrant, QUERIES[0], "dense")[0][0] == "birds/nightjar.txt"
    assert_in_step(qdrant)

    # an incremental re-index: one file changed, one added, one deleted; only the new texts are embedded
    spy.embedded.clear()
    (docs / "kitchen/bread.md").write_text("# Bread\n\nSourdough needs a starter fed with flour and water.\n")
    (docs / "birds/wren.txt").write_text("Wrens are tiny brown birds with a loud song and a cocked tail.\n")
    (docs / "garden/roses.rst").unlink()
    report = update(qdrant, [docs])
    update(faiss, [docs])
    assert sorted(report.indexed) == [str(docs / "birds/wren.txt"), str(docs / "kitchen/bread.md")]
    assert len(spy.embedded) == 2 and report.removed == [str(docs / "garden/roses.rst")]
    assert_same_rankings(qdrant, faiss)
    assert "Sourdough" in ranking(qdrant, "bread starter", "hybrid")[0][1]
    assert all("Prune" not in r[1] for r in ranking(qdrant, "pruning roses in winter", "dense", 20))
    assert_in_step(qdrant)

    # forget a folder
    assert len(qdrant.forget([docs / "birds"])) == 4
    faiss.forget([docs / "birds"])
    assert_same_rankings(qdrant, faiss)
    assert all(not r[0].startswith("birds/") for r in ranking(qdrant, QUERIES[0], "dense", 20))
    assert len(qdrant.snapshot().vectors) == faiss.catalog.counts()[1] == len(NOTES) - 4
    assert_in_step(qdrant)

    # a new process sees the same: the collection was written through, not only held in memory
    close_clients()
    again = Index(tmp_path / "q", QDRANT, embedder=spy)
    assert_same_rankings(again, faiss)
    assert_in_step(again)
    assert len(spy.embedded) == 2  # forgetting and reopening embedded nothing


def test_switching_stores_rebuilds_from_the_catalog_without_embedding(tmp_path: Path):
    docs = write_notes(tmp_path / "docs")
    spy = Spy()
    folder = tmp_path / "index"
    faiss = Index(folder, FLAT, embedder=spy)
    update(faiss, [docs])
    before = {q: ranking(faiss, q, "hybrid") for q in QUERIES}
    spy.embedded.clear()

    # faiss -> qdrant: the collection is built from the catalog's vectors
    qdrant = Index(folder, QDRANT, embedder=spy)
    for q in QUERIES:
        assert [r[:2] for r in ranking(qdrant, q, "hybrid")] == [r[:2] for r in before[q]]
    assert spy.embedded == [] and len(qdrant.snapshot().vectors) == len(NOTES)
    assert_in_step(qdrant)

    # an update while on qdrant embeds only the changed file, and drops the old FAISS file
    (docs / "garden/tomatoes.rst").write_text("Tomatoes\n========\n\nTomatoes need a stake to climb.\n")
    update(qdrant, [docs])
    assert spy.embedded == ["Tomatoes\nTomatoes need a stake to climb."]
    assert not list(folder.glob("vectors.*.faiss"))
    on_qdrant = {q: ranking(qdrant, q, "hybrid") for q in QUERIES}

    # qdrant -> faiss: the missing FAISS file of this generation is rebuilt from the catalog
    close_clients()
    back = Index(folder, FLAT, embedder=spy)
    for q in QUERIES:
        assert [r[:2] for r in ranking(back, q, "hybrid")] == [r[:2] for r in on_qdrant[q]]
    assert [p.name for p in folder.glob("vectors.*.faiss")] == [f"vectors.{back.catalog.generation()}.faiss"]

    # changes made on faiss reach the collection when qdrant is chosen again: by id, from the catalog
    (docs / "tech/backup.md").unlink()
    (docs / "tech/vpn.md").write_text("# VPN\n\nA VPN tunnels your traffic through an encrypted link.\n")
    update(back, [docs])
    third = Index(folder, QDRANT, embedder=spy)
    assert "VPN" in ranking(third, "encrypted tunnel for network traffic", "dense")[0][1]
    assert all("copies" not in r[1] for r in ranking(third, "backup copies off site", "dense", 20))
    assert_in_step(third)
    assert spy.embedded == [
        "Tomatoes\nTomatoes need a stake to climb.",
        "VPN\nA VPN tunnels your traffic through an encrypted link.",
    ]


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from retrieval.catalog import Catalog
from retrieval.config import RetrievalConfig
from retrieval.index import Index
from retrieval.indexer import update

def die(*args, **kwargs):  # killed after the collection was updated, before the catalog commits
    os.kill(os.getpid(), signal.SIGKILL)

Catalog.publish = die
update(Index(Path(sys.argv[1]), RetrievalConfig(store="qdrant")), [Path(sys.argv[2])])
"""


def test_a_writer_killed_midway_never_makes_search_return_unknown_chunks(tmp_path: Path):
    docs = write_notes(tmp_path / "docs")
    folder = tmp_path / "index"
    index = Index(folder, QDRANT, embedder=shared_embedder())
    update(index, [docs])
    generation, live = index.catalog.generation(), live_chunk_ids(index.catalog)
    close_clients()  # the writer below is another process: the embedded folder must be free

    (docs / "kitchen/bread.md").unlink()
    for i, animal in enumerate(["otter", "badger", "stoat", "vole", "hare", "lynx"]):
        (docs / f"field{i}.txt").write_text(
            f"Field note {i}: an {animal} hunted moths near the river at dusk.\n"
        )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(folder), str(docs)], env=env, cwd=ROOT, capture_output=True
    )
    assert done.returncode == -9, done.stderr.decode()[-2000:]

    # the collection now holds the dead run's chunks and lacks the dropped bread chunk; the state says so
    state = json.loads((folder / "qdrant.json").read_text())["embedded"]
    assert not state["clean"]
    raw = QdrantStore(client_for(folder / "qdrant"), state["collection"], 384)
    unknown = raw.ids() - live
    assert len(unknown) == 6 and live - raw.ids()  # pending chunks in, the bread chunk out
    query = shared_embedder().embed_query("which animal hunts moths at dusk")
    assert set(raw.search(query, 5)[1].tolist()) & unknown  # unfiltered, they would rank first

    # a reader while a writer holds the lock: no repair, but nothing the catalog does not know comes back
    reader = Index(folder, QDRANT, embedder=shared_embedder())
    assert reader.catalog.generation() == generation
    with index.writing():
        scores, ids = reader.snapshot().vectors.search(query, 5)
        hits = search(reader, "which animal hunts moths at dusk", k=5, mode="dense")
    assert len(ids) == 5 and set(ids.tolist()) <= live and not set(ids.tolist()) & unknown
    assert hits[0].chunk.source.endswith("nightjar.txt") and all(
        "Field note" not in h.chunk.text for h in hits
    )
    assert not json.loads((folder / "qdrant.json").read_text())["embedded"]["clean"]

    # the next process that can take the lock repairs the collection from the catalog
    close_clients()
    fresh = Index(folder, QDRANT, embedder=shared_embedder())
    assert "230 degrees" in search(fresh, "bread baking temperature", k=1)[0].chunk.text
    assert_in_step(fresh)

    # and the next run finishes the work, reusing the dead run's embeddings
    spy = Spy()
    resumed = update(Index(folder, QDRANT, embedder=spy), [docs])
    assert len(resumed.indexed) == 6 and resumed.reused == 6 and spy.embedded == []
    final = Index(folder, QDRANT, embedder=shared_embedder())
    assert "Field note" in search(final, "which animal hunts moths at dusk", k=1, mode="dense")[0].chunk.text
    assert_in_step(final)


def test_qdrant_store_agrees_with_faiss_flat_on_random_vectors(tmp_path: Path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 24)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(100, 2100)
    backend = QdrantBackend(tmp_path)
    store = backend.create(24, "qdrant")
    flat = FaissStore.create(24, "flat")
    for s in (store, flat):
        s.add(ids, vectors)
        s.remove(ids[:50])
    assert len(store) == len(flat) == 1950
    for row in (60, 700, 1999):
        got, want = store.search(vectors[row], 10), flat.search(vectors[row], 10)
        assert got[1].tolist() == want[1].tolist() and got[1][0] == ids[row]
        assert got[0] == pytest.approx(want[0], abs=1e-5)
    assert store.search(vectors[0], 5)[1].tolist() == flat.search(vectors[0], 5)[1].tolist()
    assert 100 not in store.search(vectors[0], 5)[1]  # removed


def test_an_unknown_store_is_a_one_line_error(tmp_path: Path):
    from assistant.config import load, to_toml
    from assistant.errors import ConfigError

    assert RetrievalConfig().store == "faiss" and RetrievalConfig().check() == []
    with pytest.raises(RetrievalError) as caught:
        Index(tmp_path / "index", RetrievalConfig(store="milvus"))
    assert str(caught.value) == "retrieval.store must be one of faiss, qdrant, not 'milvus'"

    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[retrieval]\nstore = "milvus"\n')
    with pytest.raises(ConfigError) as caught:
        load(home=home, environ={})
    assert str(caught.value) == "retrieval.store must be one of faiss, qdrant, not 'milvus'"
    with pytest.raises(ConfigError, match="^retrieval.qdrant_url 'localhost:6333' is not a Qdrant server"):
        load(
            home=home,
            overrides={"retrieval.store": "qdrant", "retrieval.qdrant_url": "localhost:6333"},
            environ={},
        )

    env = {"NIGHTJAR_RETRIEVAL_STORE": "qdrant", "NIGHTJAR_RETRIEVAL_QDRANT_URL": "http://localhost:6333"}
    (home / "config.toml").write_text("")
    config = load(home=home, environ=env)
    assert config.retrieval.store == "qdrant" and config.retrieval.qdrant_url == "http://localhost:6333"
    listed = to_toml(config)
    for line in ('store = "qdrant"', 'qdrant_url = "http://localhost:6333"', 'qdrant_api_key = ""'):
        assert line in listed
