"""The ONNX Runtime embedder (retrieval/onnx_embedder.py): exported on this machine from the embedded MiniLM's
own weights, it gives torch's vectors (full precision) or nearly (int8), ranks as torch ranks, exports once
and atomically, and a `nightjar search` on it never imports torch. `auto` falls back to torch without
onnxruntime, and an index never mixes int8 vectors with torch's."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.config import RetrievalConfig, embedded_embedder_path
from retrieval.embedder import INT8, TransformerEmbedder, embedder_for
from retrieval.errors import RetrievalError
from retrieval.index import ONNX_CACHE, Index
from retrieval.indexer import update
from retrieval.onnx_embedder import OnnxEmbedder, int8_weight_type
from retrieval.search import search
from tests.conftest import run_nightjar

SENTENCES = [
    "The boiler in the basement was serviced on 12 March by Ana.",
    "Nightjars are nocturnal birds that hunt insects at dusk.",
    "To descale a kettle, fill it with equal parts water and vinegar and let it stand for an hour.",
    "The quarterly budget review moved to Thursday because the finance team is travelling.",
    "Ünïcödé — naïve café in Tōkyō serves the best espresso, says the guide.",
    "Error ERR_0x7F3A means the daemon could not bind its socket; check that port 8411 is free.",
    "Nightjars are nocturnal birds that hunt insects at dusk. " * 40,  # longer than the model reads
]
DOCS = {
    "kettle.md": "# Kettles\n\nDescale the kettle with vinegar once a month, then rinse it.\n",
    "boiler.md": "# Heating\n\nThe boiler in the basement is serviced every March by an engineer.\n",
    "birds.md": "# Birds\n\nNightjars are nocturnal birds: they hunt moths and beetles at dusk.\n",
    "budget.md": "# Finance\n\nThe quarterly budget review covers travel, salaries and the lease.\n",
    "garden.md": "# Garden\n\nTomatoes need watering every evening in July, and potash each week.\n",
    "bikes.md": "# Cycling\n\nOil the bicycle chain after riding in the rain, and check the tyre pressure.\n",
}
QUERIES = ["how do I clean limescale out of a kettle", "who maintains the heating", "birds active at night"]


@pytest.fixture(scope="module")
def folder() -> Path:
    return Path(embedded_embedder_path())


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One export of each variant for the whole module."""
    path = tmp_path_factory.mktemp("onnx")
    for backend in ("onnx", "onnx-fp32"):
        embedder_for(embedded_embedder_path(), backend=backend, cache_dir=path).embed_query("export")
    return path


@pytest.fixture(scope="module")
def torch_embedder(folder: Path) -> TransformerEmbedder:
    return embedder_for(str(folder))


def linked(cache: Path, index_folder: Path) -> Path:
    """The index's ONNX cache, filled with the module's exported files (hard links: nothing is exported
    again), so that an Index on its configured backend starts at once."""
    target = index_folder / ONNX_CACHE
    target.mkdir(parents=True, exist_ok=True)
    for f in cache.glob("*.onnx"):
        os.link(f, target / f.name)
    return target


def test_vectors_match_torch_and_the_int8_model_is_named_apart(folder, cache, torch_embedder):
    reference = torch_embedder.embed(SENTENCES)
    full = embedder_for(str(folder), backend="onnx-fp32", cache_dir=cache)
    int8 = embedder_for(str(folder), backend="onnx", cache_dir=cache)
    assert isinstance(full, OnnxEmbedder) and isinstance(int8, OnnxEmbedder)
    for embedder, floor in ((full, 0.9999), (int8, 0.99)):
        vectors = embedder.embed(SENTENCES)
        assert vectors.shape == reference.shape and vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert (vectors * reference).sum(1).min() > floor, embedder.backend
        query = embedder.embed_query(SENTENCES[0])
        assert float(query @ reference[0]) > floor
        assert np.allclose(query, vectors[0], atol=1e-5)  # a text's vector does not depend on its batch
        assert embedder.max_tokens == torch_embedder.max_tokens and embedder.dim == torch_embedder.dim
    assert embedder.embed([]).shape == (0, 384)
    # full precision shares torch's index; int8 vectors are recorded under their own name
    assert full.name == torch_embedder.name and int8.name == torch_embedder.name + INT8


def test_int8_weights_are_unsigned_only_on_x86_without_vnni():
    """u8s8 saturates on AVX2-only x86 (the vectors test above fails there with signed weights)."""
    assert int8_weight_type("x86_64", {"avx2", "fma"}) == "QUInt8"
    assert int8_weight_type("x86_64", {"avx2", "avx512f", "avx512_vnni"}) == "QInt8"
    assert int8_weight_type("x86_64", {"avx2", "avx_vnni"}) == "QInt8"
    assert int8_weight_type("x86_64", {"avx2", "amx_int8", "amx_tile"}) == "QInt8"
    assert int8_weight_type("aarch64", set()) == "QInt8"


def test_the_ranking_on_a_tiny_corpus_is_torch_s(folder, cache, torch_embedder):
    texts = list(DOCS.values())

    def ranking(embedder) -> list[list[int]]:
        docs = embedder.embed(texts)
        return [list(np.argsort(-(docs @ embedder.embed_query(q)))) for q in QUERIES]

    expected = ranking(torch_embedder)
    assert [r[0] for r in expected] == [0, 1, 2]  # the corpus tells them apart
    for backend in ("onnx-fp32", "onnx"):
        assert ranking(embedder_for(str(folder), backend=backend, cache_dir=cache)) == expected, backend


def test_the_export_happens_once_and_atomically(folder, tmp_path, monkeypatch):
    cache = tmp_path / "onnx"
    first = OnnxEmbedder(folder, "mean", cache, quantized=False)
    first.embed_query("export it")
    assert first.exports == 1
    (made,) = cache.glob("*.onnx")
    stamp = made.stat().st_mtime_ns
    again = OnnxEmbedder(folder, "mean", cache, quantized=False)  # another process, later
    again.embed(["reuse it", "twice"])
    assert again.exports == 0 and made.stat().st_mtime_ns == stamp and list(cache.glob("*.onnx")) == [made]

    # a run killed midway leaves its temporary folder, never a model file; the next export clears it
    (cache / ".export-killed").mkdir()
    (cache / ".export-killed" / "model.onnx").write_bytes(b"half a model")
    import onnxruntime.quantization

    def killed(*args, **kwargs):
        raise RuntimeError("killed while quantizing")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_dynamic", killed)
    failing = OnnxEmbedder(folder, "mean", cache, quantized=True)
    with pytest.raises(RetrievalError, match=r"cannot export the embedder .* killed while quantizing"):
        failing.embed_query("export it")
    assert list(cache.glob("*.onnx")) == [made]  # no int8 file, whole or broken
    assert not list(cache.glob(".export-*"))
    monkeypatch.undo()

    # a damaged file (a disk error, a hand edit) is made again
    made.write_bytes(b"not a model")
    repaired = OnnxEmbedder(folder, "mean", cache, quantized=False)
    assert float(repaired.embed_query("hello") @ first.embed_query("hello")) > 0.9999
    assert repaired.exports == 1


def test_auto_follows_the_index_and_falls_back_to_torch(folder, tmp_path, monkeypatch):
    name = str(folder)

    def auto(built_with=None, cache_dir=tmp_path):
        return embedder_for(name, backend="auto", cache_dir=cache_dir, built_with=built_with)

    assert auto().backend == "onnx"  # a new index: int8
    assert auto(name + INT8).backend == "onnx"
    assert auto(name).backend == "onnx-fp32"  # built by torch: the same vectors without torch
    assert auto("/models/another-embedder").backend == "onnx"  # re-embedded anyway
    assert isinstance(auto(cache_dir=None), TransformerEmbedder)  # nowhere to keep an ONNX file
    assert embedder_for("sentence-transformers/some-hub-id", backend="auto", cache_dir=tmp_path).backend == (
        "torch"
    )
    with pytest.raises(RetrievalError, match="tokenizer.json, a transformer and mean or CLS pooling"):
        embedder_for("sentence-transformers/some-hub-id", backend="onnx", cache_dir=tmp_path)

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    fallback = auto()
    assert isinstance(fallback, TransformerEmbedder) and not isinstance(fallback, OnnxEmbedder)
    assert fallback.backend == "torch" and fallback.name == name
    with pytest.raises(RetrievalError, match="needs onnxruntime"):
        embedder_for(name, backend="onnx", cache_dir=tmp_path)
    assert RetrievalConfig(embedder_backend="onnx-int4").check() == [
        "retrieval.embedder_backend must be one of auto, onnx, onnx-fp32, torch, not 'onnx-int4'"
    ]


def test_an_index_never_mixes_int8_and_torch_vectors(cache, torch_embedder, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    folder = tmp_path / "index"
    linked(cache, folder)
    update(Index(folder, RetrievalConfig(), embedder=torch_embedder), [docs])

    # auto goes on with the full-precision ONNX model: same vectors, nothing re-embedded
    auto = Index(folder, RetrievalConfig())
    assert auto.embedder.backend == "onnx-fp32"
    assert "vinegar" in search(auto, QUERIES[0], k=1)[0].chunk.text
    assert update(auto, [docs]).chunks == 0

    # int8 refuses a torch-built index, with what to do, until `index` re-embeds it
    int8 = Index(folder, RetrievalConfig(embedder_backend="onnx"))
    with pytest.raises(RetrievalError, match=r"built at full precision .* \"onnx\" \(int8\)") as refused:
        search(int8, QUERIES[0])
    assert "\n" not in str(refused.value) and "nightjar index PATH" in str(refused.value)
    report = update(int8, [docs])
    assert report.chunks == len(DOCS) and "re-embedding all" in report.notices[0]
    assert "vinegar" in search(int8, QUERIES[0], k=1)[0].chunk.text
    assert Index(folder, RetrievalConfig()).embedder.backend == "onnx"  # auto now follows int8

    # and torch refuses the int8 index
    with pytest.raises(
        RetrievalError, match="built by the int8 ONNX embedder, but the embedder now runs on torch"
    ):
        search(Index(folder, RetrievalConfig(embedder_backend="torch")), QUERIES[0])


def test_nightjar_search_on_onnx_never_imports_torch(cache, home: Path, tmp_path: Path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    folder = home / "index"
    linked(cache, folder)
    update(Index(folder, RetrievalConfig(embedder_backend="onnx")), [docs])
    env = {"NIGHTJAR_RETRIEVAL_EMBEDDER_BACKEND": "onnx", "PYTHONPROFILEIMPORTTIME": "1"}  # -X importtime
    done = run_nightjar("search", QUERIES[0], home=home, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kettle.md" in done.stdout.splitlines()[0]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "retrieval.onnx_embedder" in imported and "onnxruntime" in imported  # the trace is complete
    assert not imported & {"torch", "transformers", "sentence_transformers"}
