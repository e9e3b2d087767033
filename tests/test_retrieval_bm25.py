"""The served BM25 scores equal rank-bm25's BM25Okapi (the reference) on a small corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from retrieval.bm25 import BM25Index, tokenize

CORPUS = [
    "The nightjar is a nocturnal bird that hunts moths at dusk.",
    "Nightjars nest on the ground; their eggs are well camouflaged.",
    "A bird in the hand is worth two in the bush, says the bird proverb.",
    "Moths are attracted to light; the bird waits near the lamp.",
    "Error ERR_0x7F3A means the bird feeder lost its connection.",
    "Compost needs air and water; the bird bath needs fresh water.",
    "Tomatoes need sun.",
    "",
]
QUERIES = [
    "nightjar moths",
    "bird",  # in more than half the documents: rank-bm25 floors its negative IDF at epsilon * mean IDF
    "bird bird water",  # repeated words count twice
    "ERR_0x7F3A connection",
    "unknown words only",
    "the of and",  # stopwords only
]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_scores_match_rank_bm25(backend: str):
    served = BM25Index.build(zip(range(10, 10 + len(CORPUS)), CORPUS, strict=True), backend=backend)
    reference = BM25Okapi([tokenize(t) for t in CORPUS])
    assert sum(1 for t in CORPUS if "bird" in tokenize(t)) > len(CORPUS) / 2
    for query in QUERIES:
        want = reference.get_scores(tokenize(query))
        got = served.score_all(query)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=query)
    assert np.argmax(served.score_all("ERR_0x7F3A")) == 4  # an identifier stays one token


def test_saved_index_scores_the_same(tmp_path: Path):
    index = BM25Index.build(zip([5, 7, 9, 11, 13, 17, 19, 23], CORPUS, strict=True))
    folder = tmp_path / "bm25"
    folder.mkdir()
    index.save(folder)
    loaded = BM25Index.load(folder)
    assert loaded.ids.tolist() == [5, 7, 9, 11, 13, 17, 19, 23]
    for query in QUERIES:
        np.testing.assert_allclose(loaded.score_all(query), index.score_all(query), rtol=1e-6)


def test_keyword_coverage_scale():
    index = BM25Index.build(enumerate(CORPUS))
    scores = index.score_all("nightjar moths")
    # the first document holds both words once and is close to average length: coverage near 1
    assert 0.8 < scores[0] / index.max_score("nightjar moths") <= 1.2
    # a word the collection never saw counts as missing
    assert index.score_all("nightjar zebra")[0] / index.max_score("nightjar zebra") < 0.5
