"""The embedder that serving and indexing use: the embedded MiniLM runs on plain `transformers` and gives
sentence-transformers' own vectors; any other pipeline is left to sentence-transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from retrieval.config import embedded_embedder_path
from retrieval.embedder import SentenceTransformerEmbedder, TransformerEmbedder, embedder_for, plain_pooling

TEXTS = [
    "The boiler in the basement was serviced on 12 March by Ana.",
    "x",
    "Nightjars are nocturnal birds that hunt insects at dusk. " * 40,  # longer than the model reads
    "Ünïcödé — naïve café, 東京, emoji 🦉",
    "",
]


@pytest.fixture(scope="module")
def folder() -> Path:
    return Path(embedded_embedder_path())


def test_the_embedded_model_runs_on_transformers_with_sentence_transformers_vectors(folder: Path):
    plain = embedder_for(str(folder))
    assert isinstance(plain, TransformerEmbedder) and plain.pooling == "mean"
    reference = SentenceTransformerEmbedder(str(folder))
    ours, theirs = plain.embed(TEXTS), reference.embed(TEXTS)
    assert ours.shape == theirs.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert np.abs(ours - theirs).max() < 1e-4  # the same vectors, batch order and padding notwithstanding
    assert float(plain.embed_query(TEXTS[0]) @ theirs[0]) > 0.9999
    assert plain.name == reference.name and plain.max_tokens == reference.max_tokens  # same index


def _copy_with(folder: Path, tmp_path: Path, modules: list[dict], pooling: dict | None = None) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    (copy / "modules.json").write_text(json.dumps(modules))
    if pooling is not None:
        (copy / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return copy


def test_other_pipelines_are_left_to_sentence_transformers(folder: Path, tmp_path: Path):
    modules = json.loads((folder / "modules.json").read_text())
    assert plain_pooling(folder) == "mean"
    dense = modules + [
        {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    ]
    assert plain_pooling(_copy_with(folder, tmp_path / "a", dense)) is None
    max_pooling = {"word_embedding_dimension": 384, "pooling_mode_max_tokens": True}
    assert plain_pooling(_copy_with(folder, tmp_path / "b", modules, max_pooling)) is None
    cls = {"word_embedding_dimension": 384, "pooling_mode_cls_token": True}
    assert plain_pooling(_copy_with(folder, tmp_path / "c", modules, cls)) == "cls"
    assert isinstance(embedder_for("sentence-transformers/some-hub-id"), SentenceTransformerEmbedder)
    assert not isinstance(embedder_for("sentence-transformers/some-hub-id"), TransformerEmbedder)
