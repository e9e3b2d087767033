"""Fusing BM25's and the dense candidates: cosine + keyword coverage by default, reciprocal rank fusion on
request. The search path itself (both signals known for every candidate) is tested through a real index in
test_retrieval_index.py."""

from __future__ import annotations

import pytest

from retrieval.config import RetrievalConfig
from retrieval.search import describe_fusion, fuse

# dense is sure of chunk 1 (a wide lead); BM25 puts chunk 2 first by a hair and chunk 1 third
COSINE = {1: 0.82, 2: 0.41, 3: 0.39, 6: 0.40}
COVERAGE = {2: 0.71, 3: 0.70, 1: 0.69}
RANKED = {"bm25": [2, 3, 1], "dense": [1, 2, 6, 3]}


def best(fused: dict[int, float]) -> int:
    return max(fused, key=fused.get)


def test_a_wide_lead_survives_fusion_where_rank_fusion_throws_it_away():
    assert best(fuse(COSINE, COVERAGE, RANKED, RetrievalConfig())) == 1
    rrf = RetrievalConfig(fusion="rrf", bm25_weight=1.0, dense_weight=1.0)
    assert best(fuse(COSINE, COVERAGE, RANKED, rrf)) == 2  # ranks only: BM25's hair-thin first place wins


def test_an_exact_keyword_match_leads_over_a_closer_paraphrase():
    """An error code: one chunk holds it (coverage 1); dense prefers a chunk about error codes in general."""
    cosine = {7: 0.52, 8: 0.58, 9: 0.50}
    coverage = {7: 1.0}
    assert best(fuse(cosine, coverage, {"bm25": [7], "dense": [8, 7, 9]}, RetrievalConfig())) == 7


def test_scores_are_the_weighted_sum_of_both_signals_as_shares_of_the_weights():
    config = RetrievalConfig(bm25_weight=1.0, dense_weight=3.0)
    fused = fuse(COSINE, COVERAGE, RANKED, config)
    assert fused[1] == pytest.approx(0.75 * 0.82 + 0.25 * 0.69)
    assert fused[6] == pytest.approx(0.75 * 0.40)  # no keyword match: coverage adds nothing
    assert set(fused) == {1, 2, 3, 6}  # every mode's candidates, and only those


@pytest.mark.parametrize(
    "values, problem",
    [
        ({"fusion": "max"}, "retrieval.fusion must be one of convex, rrf"),
        ({"bm25_weight": -1.0}, "must be 0 or more"),
        ({"bm25_weight": 0.0, "dense_weight": 0.0}, "not both 0"),
    ],
)
def test_bad_fusion_settings_are_named(values: dict, problem: str):
    assert any(problem in p for p in RetrievalConfig(**values).check())


def test_the_fusion_is_described_as_configured():
    assert describe_fusion(RetrievalConfig()) == "0.85 x cosine + 0.15 x keyword coverage"
    assert describe_fusion(RetrievalConfig(fusion="rrf", rrf_k=30)).startswith("reciprocal rank, k=30")
