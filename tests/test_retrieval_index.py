"""The index through its real parts (MiniLM, FAISS, SQLite, BM25): hybrid search, incremental updates,
renames, forgetting, reranking with a real CrossEncoder, and bad input in a batch."""

from __future__ import annotations

import os
import shutil
from functools import cache
from pathlib import Path

import faiss
import numpy as np
import pytest

from retrieval.config import RetrievalConfig, embedded_embedder_path
from retrieval.embedder import SentenceTransformerEmbedder, embedder_for
from retrieval.index import Index
from retrieval.indexer import update
from retrieval.search import search
from retrieval.vectors import FaissStore
from tests.conftest import write_tiny_cross_encoder


@cache
def shared_embedder() -> SentenceTransformerEmbedder:
    """The embedded MiniLM as the index loads it, loaded once for every test module that needs it."""
    return embedder_for(embedded_embedder_path())


class Spy:
    """The real embedder, recording which texts it was asked to embed."""

    def __init__(self) -> None:
        self.inner = shared_embedder()
        self.name = self.inner.name
        self.embedded: list[str] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def embed(self, texts: list[str]) -> np.ndarray:
        self.embedded += texts
        return self.inner.embed(texts)


def assert_consistent(index: Index) -> None:
    """The search files hold exactly the live chunks of the catalog."""
    live = index.catalog.db.execute(
        "SELECT c.id FROM chunks c JOIN documents d ON c.doc_id = d.id WHERE d.live = 1 ORDER BY c.id"
    ).fetchall()
    live_ids = [r[0] for r in live]
    for doc in index.catalog.live_docs().values():
        assert len(index.catalog.chunks_of_doc(doc.id)) == doc.chunks
    snap = index.snapshot()
    assert snap.generation == index.catalog.generation()
    assert snap.bm25.ids.tolist() == live_ids
    assert sorted(faiss.vector_to_array(snap.vectors.index.id_map).tolist()) == live_ids


ERRORS = {  # one section each; to an embedder the general section looks closest to any error code
    "Lost": "If the log shows ERR_0x7F3A, the frobnicator lost its connection to the socket.",
    "Error codes": "Every error code such as ERR_0x0000 or ERR_0xFFFF is a hexadecimal number after ERR_0x.",
    "Timeout": "Error ERR_0x7E3A: the socket connection to the frobnicator timed out.",
    "Refused": "Error ERR_0x7F2A: the frobnicator refused the socket connection.",
}


def write_corpus(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "errors": folder / "errors.md",
        "birds": folder / "birds.txt",
        "garden": folder / "garden.rst",
        "bread": folder / "bread.html",
    }
    files["errors"].write_text("".join(f"## {title}\n\n{text}\n\n" for title, text in ERRORS.items()))
    files["birds"].write_text(
        "Nightjars are crepuscular birds that hunt moths at dusk.\n\n"
        "Their plumage is cryptic: grey and brown patterns like leaf litter.\n"
    )
    files["garden"].write_text(
        "Garden\n======\n\nTomatoes want full sun, rich compost and regular watering.\n"
    )
    files["bread"].write_text(
        "<h1>Bread</h1><p>Knead the dough for ten minutes, then bake it at 230 degrees.</p>"
    )
    return files


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Index, dict[str, Path], Spy]:
    files = write_corpus(tmp_path / "docs")
    spy = Spy()
    index = Index(tmp_path / "index", RetrievalConfig(), embedder=spy)
    report = update(index, [tmp_path / "docs"])
    assert sorted(report.indexed) == sorted(str(p) for p in files.values()) and not report.skipped
    return index, files, spy


def top_source(hits) -> str:
    return Path(hits[0].chunk.source).name


def test_hybrid_needs_both_signals(corpus):
    index, files, _ = corpus
    identifier = "ERR_0x7F3A"
    paraphrase = "which animal feeds on insects in the evening twilight"

    def first_text(query: str, mode: str) -> str:
        hits = search(index, query, k=3, mode=mode)
        return hits[0].chunk.text if hits else ""

    # the exact identifier: BM25 finds it, the embedder cannot tell the error codes apart
    assert identifier in first_text(identifier, "bm25")
    assert identifier not in first_text(identifier, "dense")
    # the paraphrase shares no word with its answer: only the embedder finds it
    assert search(index, paraphrase, k=3, mode="bm25") == []
    assert "Nightjars" in first_text(paraphrase, "dense")
    # hybrid gets both right
    exact = search(index, identifier, k=3)[0]
    assert identifier in exact.chunk.text and exact.coverage > 0.6 and exact.relevant
    hit = search(index, paraphrase, k=3)[0]
    assert "Nightjars" in hit.chunk.text and hit.scores["bm25"] == 0.0 and hit.ranks["dense"] == 1
    assert hit.relevant


def test_hits_carry_citations_and_stage_scores(corpus):
    index, files, _ = corpus
    hits = search(index, "how long should I knead bread dough", k=4)
    best = hits[0]
    assert best.chunk.source == str(files["bread"]) and best.chunk.location == "§ Bread"
    source = best.source(n=1)
    assert set(source) == {"n", "id", "source", "location", "text", "score", "scores"}
    assert (
        set(source["scores"]) == {"bm25", "dense", "fused", "rerank"} and source["scores"]["rerank"] is None
    )
    assert best.ranks["fused"] == 1 and best.scores["dense"] > 0.3 and best.scores["bm25"] > 0
    unrelated = search(index, "what is the capital of France", k=4)
    assert not any(h.relevant for h in unrelated)


def test_incremental_reindex_embeds_only_what_changed(corpus, tmp_path: Path):
    index, files, spy = corpus
    docs = tmp_path / "docs"
    ids_before = {d.path: [c.id for c in index.catalog.chunks_of_doc(d.id)] for d in index.sources()}
    spy.embedded.clear()

    again = update(index, [docs])
    assert again.unchanged == 4 and again.indexed == [] and spy.embedded == []

    files["garden"].write_text("Garden\n======\n\nTomatoes want full sun and a stake to climb.\n")
    changed = update(index, [docs])
    assert changed.indexed == [str(files["garden"])] and changed.unchanged == 3
    assert spy.embedded == ["Garden\nTomatoes want full sun and a stake to climb."]
    ids_after = {d.path: [c.id for c in index.catalog.chunks_of_doc(d.id)] for d in index.sources()}
    for name in ("errors", "birds", "bread"):
        assert ids_after[str(files[name])] == ids_before[str(files[name])]
    assert "stake" in search(index, "how do tomatoes climb", k=1)[0].chunk.text
    assert_consistent(index)

    spy.embedded.clear()
    moved = docs / "sub" / "nightjars.txt"
    moved.parent.mkdir()
    files["birds"].rename(moved)
    renamed = update(index, [docs])
    assert renamed.renamed == [(str(files["birds"]), str(moved))] and spy.embedded == []
    assert ids_after[str(files["birds"])] == [
        c.id for c in index.catalog.chunks_of_doc(next(d.id for d in index.sources() if d.path == str(moved)))
    ]
    assert search(index, "nightjars hunting moths", k=1)[0].chunk.source == str(moved)

    shutil.copy(files["bread"], docs / "bread-copy.html")
    os.utime(files["errors"], ns=(1, 1))  # touched, not changed
    copied = update(index, [docs])
    assert copied.indexed == [str(docs / "bread-copy.html")] and copied.reused == 1 and spy.embedded == []
    assert copied.unchanged == 4

    files["garden"].unlink()
    removed = update(index, [docs])
    assert removed.removed == [str(files["garden"])]
    assert str(files["garden"]) not in {d.path for d in index.sources()}
    assert_consistent(index)

    assert index.forget([docs / "sub"]) == [str(moved)]
    assert all(h.chunk.source != str(moved) for h in search(index, "nightjars hunting moths", k=5))
    assert_consistent(index)
    assert spy.embedded == []


def test_a_run_that_dies_before_publishing_leaves_the_previous_index(
    corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    index, files, spy = corpus
    docs = tmp_path / "docs"
    generation = index.catalog.generation()
    (docs / "new.txt").write_text("Owls swallow their prey whole and cough up pellets.\n")
    files["bread"].write_text("<h1>Bread</h1><p>Sourdough needs a starter fed with flour and water.</p>")

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed between writing the new files and committing them

    monkeypatch.setattr(type(index.catalog), "publish", die)
    with pytest.raises(KeyboardInterrupt):
        update(index, [docs])
    monkeypatch.undo()

    fresh = Index(tmp_path / "index", RetrievalConfig(), embedder=spy)  # what the next process sees
    assert fresh.catalog.generation() == generation
    assert "230 degrees" in search(fresh, "bread baking temperature", k=1)[0].chunk.text
    assert all("pellets" not in h.chunk.text for h in search(fresh, "owl pellets", k=5))
    assert_consistent(fresh)

    spy.embedded.clear()
    resumed = update(fresh, [docs])
    assert sorted(resumed.indexed) == sorted([str(docs / "new.txt"), str(files["bread"])])
    assert resumed.reused == 2 and spy.embedded == []  # the dead run's embeddings are used, not redone
    assert "pellets" in search(fresh, "owl pellets", k=1)[0].chunk.text
    assert_consistent(fresh)
    leftovers = [p.name for p in (tmp_path / "index").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == [] and len(list((tmp_path / "index").glob("vectors.*.faiss"))) == 1


def test_missing_search_files_are_rebuilt_from_the_catalog(corpus, tmp_path: Path):
    index, _, spy = corpus
    for path in (tmp_path / "index").glob("vectors.*.faiss"):
        path.unlink()
    fresh = Index(tmp_path / "index", RetrievalConfig(), embedder=spy)
    assert "230 degrees" in search(fresh, "bread baking temperature", k=1)[0].chunk.text
    assert len(list((tmp_path / "index").glob("vectors.*.faiss"))) == 1  # and written back


def test_reranking_with_a_real_cross_encoder(corpus, tmp_path: Path):
    from retrieval.rerank import CrossEncoderReranker

    folder = write_tiny_cross_encoder(tmp_path / "tiny-cross-encoder")

    index, _, spy = corpus
    reranking = Index(
        tmp_path / "index", RetrievalConfig(reranker=str(folder), rerank_candidates=4), embedder=spy
    )
    query = "frobnicator socket errors"
    fused = search(reranking, query, k=6, rerank=False)
    hits = search(reranking, query, k=6)
    expected = CrossEncoderReranker(str(folder)).score(query, [h.chunk.indexed_text for h in fused[:4]])
    by_id = dict(zip([h.chunk.id for h in fused[:4]], expected, strict=True))
    head = hits[:4]
    assert {h.chunk.id for h in head} == set(by_id)
    assert [h.chunk.id for h in head] == sorted(by_id, key=lambda c: -by_id[c])
    assert [h.ranks["rerank"] for h in head] == [1, 2, 3, 4]
    for hit in head:
        assert (
            hit.scores["rerank"] == pytest.approx(float(by_id[hit.chunk.id]), abs=1e-5)
            and hit.score == hit.scores["rerank"]
        )
    assert [h.chunk.id for h in hits[4:]] == [h.chunk.id for h in fused[4:6]]  # the rest keep the fused order
    assert all(h.scores["rerank"] is None for h in hits[4:])


def test_bad_files_in_a_batch_are_skipped_and_the_rest_indexed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from tests.test_retrieval_loaders import make_pdf

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.md").write_text("# Good\n\nThis file is fine and about herons.\n")
    (docs / "corrupt.pdf").write_bytes(b"%PDF-1.7\n% half a file")
    (docs / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (docs / "empty.txt").write_bytes(b"")
    (docs / "huge.txt").write_text("big " * 2000)
    (docs / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    make_pdf(docs / "fine.pdf", ["Herons stand still in shallow water."])
    locked = docs / "locked.txt"
    locked.write_text("secret")
    locked.chmod(0)
    loop = docs / "loop"
    loop.mkdir()
    os.symlink(docs, loop / "again")
    if os.geteuid() == 0:  # root reads anything: fail the read the way it fails for a user
        import retrieval.indexer as indexer

        real = indexer._hash
        monkeypatch.setattr(
            indexer,
            "_hash",
            lambda p: (_ for _ in ()).throw(PermissionError(13, "denied")) if p == locked else real(p),
        )
    index = Index(tmp_path / "index", RetrievalConfig(max_file_mb=0.005), embedder=shared_embedder())
    report = update(index, [docs, tmp_path / "missing-folder"])
    why = {Path(s.path).name: s.reason for s in report.skipped}
    assert why == {
        "missing-folder": "no such file or folder",
        "huge.txt": "larger than the 0.005 MB limit (retrieval.max_file_mb)",
        "again": "symlink loop (links back to a folder that contains it)",
        "locked.txt": "cannot read file (permission denied)",
        "corrupt.pdf": why["corrupt.pdf"],
        "binary.txt": "binary data, not text",
        "empty.txt": "empty file",
        "latin1.txt": "not UTF-8 text (byte 0xe9 at offset 3)",
    }
    assert why["corrupt.pdf"].startswith("corrupt PDF")
    assert sorted(Path(p).name for p in report.indexed) == ["fine.pdf", "good.md"] and report.failed
    assert "8 skipped" in report.summary()
    assert search(index, "herons in water", k=1)[0].chunk.location == "p. 1"


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_vector_store_kinds_agree_with_exact_search(tmp_path: Path, kind: str):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 24)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(100, 3100)
    store = FaissStore.create(24, kind, train=vectors)
    store.add(ids, vectors)
    store.remove(ids[:50])
    path = tmp_path / "v.faiss"
    store.save(path)
    loaded = FaissStore.load(path)
    assert loaded.kind == kind and len(loaded) == 2950
    exact = vectors[50:] @ vectors[60]
    scores, found = loaded.search(vectors[60], 5)
    assert found[0] == 160 and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert set(found) <= set(ids[50:]) and scores[1] <= np.sort(exact)[-2] + 1e-5


def test_new_chunking_settings_re_embed_everything(corpus, tmp_path: Path):
    index, files, spy = corpus
    spy.embedded.clear()
    smaller = Index(tmp_path / "index", RetrievalConfig(chunk_tokens=24, chunk_overlap=0.0), embedder=spy)
    report = update(smaller, [tmp_path / "docs" / "birds.txt"])  # even files outside the given path
    assert any("re-embedding all 4 indexed files" in n for n in report.notices)
    assert sorted(report.indexed) == sorted(str(p) for p in files.values())
    assert len(spy.embedded) == smaller.catalog.counts()[1] > 8
    assert all(len(spy.inner.token_spans([t])[0]) <= 24 for t in spy.embedded)
    assert_consistent(smaller)


def test_one_writer_at_a_time_and_one_embedder_per_index(corpus, tmp_path: Path):
    from retrieval.errors import RetrievalError

    index, _, spy = corpus
    with index.writing(), pytest.raises(RetrievalError, match="another nightjar process is updating"):
        update(Index(tmp_path / "index", RetrievalConfig(), embedder=spy), [tmp_path / "docs"])
    other = Spy()
    other.name = "/models/another-embedder"
    with pytest.raises(RetrievalError, match="built with the embedder .* run `nightjar index PATH` again"):
        search(Index(tmp_path / "index", RetrievalConfig(), embedder=other), "bread")
