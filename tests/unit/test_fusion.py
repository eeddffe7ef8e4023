"""Hybrid fusion over several corpora pools the candidates, so scores compare across corpora."""

from __future__ import annotations

from apihelper.retriever.fusion import Fusion, fuse_hits
from apihelper.retriever.types import ApiDoc, RetrievedDoc


def _hit(corpus: str, key: str, score: float) -> RetrievedDoc:
    return RetrievedDoc(ApiDoc(key, key, key, key), corpus, score)


def _two_corpora() -> tuple[list[RetrievedDoc], list[RetrievedDoc]]:
    # Dense cosine scores: corpus "rest" matches the query well, "functional" barely; BM25 finds
    # two rest docs and, weakly, one functional one.
    dense = [_hit("rest", f"POST /r{i}", 0.80 - 0.02 * i) for i in range(5)]
    dense += [_hit("functional", f"pkg.f{i}", 0.20 - 0.01 * i) for i in range(5)]
    keyword = [_hit("rest", "POST /r0", 9.0), _hit("rest", "POST /r1", 7.0), _hit("functional", "pkg.f0", 1.0)]
    return dense, keyword


def test_standardised_fusion_keeps_an_irrelevant_corpus_best_hit_below_relevant_ones() -> None:
    dense, keyword = _two_corpora()
    fused = fuse_hits(dense, keyword, top_k=5, fusion=Fusion())
    assert [h.corpus for h in fused] == ["rest"] * 5
    assert fused[0].doc.key == "POST /r0"


def test_rrf_default_ranks_a_keyword_hit_of_another_corpus_by_its_rank() -> None:
    # The default (BM25-heavy RRF, docs/retrieval.md) fuses ranks, not scores: the functional
    # doc BM25 ranks third comes third, above rest docs only dense found. The cost of the
    # default across corpora; standardised fusion (above) keeps the score margins.
    dense, keyword = _two_corpora()
    fused = fuse_hits(dense, keyword, top_k=5)
    assert [h.doc.key for h in fused[:3]] == ["POST /r0", "POST /r1", "pkg.f0"]


def test_same_key_in_two_corpora_stays_two_hits() -> None:
    dense = [_hit("a", "GET /x", 0.9), _hit("b", "GET /x", 0.5)]
    fused = fuse_hits(dense, [], top_k=5)
    assert [(h.corpus, h.doc.key) for h in fused] == [("a", "GET /x"), ("b", "GET /x")]


def test_rrf_fuses_ranks_not_scores_and_weights_the_sides() -> None:
    from apihelper.retriever.fusion import FusionMethod, Scored, fuse

    def scored(pairs: list[tuple[str, float]]) -> list[Scored[str]]:
        return [Scored(key, score, key) for key, score in pairs]

    # BM25's huge margin for "k" does not count under RRF: only ranks do.
    dense = scored([("a", 0.90), ("b", 0.89), ("c", 0.10)])
    keyword = scored([("k", 50.0), ("a", 1.0)])
    plain = fuse(dense, keyword, keyword_weight=0.5, top_k=4, method=FusionMethod.RRF, rrf_k=60)
    # a: 1/61 + 1/62; k: 1/61; b: 1/62; c: 1/63 (halved)
    assert [s.key for s in plain] == ["a", "k", "b", "c"]
    dense_heavy = fuse(dense, keyword, keyword_weight=0.1, top_k=3, method=FusionMethod.RRF, rrf_k=60)
    assert [s.key for s in dense_heavy] == ["a", "b", "c"]
    # the fused scores are standardised (mean 0), so priors and other corpora compare
    assert abs(sum(s.score for s in plain)) < 1e-9
    prior = fuse(
        dense, keyword, keyword_weight=0.5, top_k=4, method=FusionMethod.RRF, prior=lambda key: -5.0 * (key == "a")
    )
    assert prior[-1].key == "a"


def test_fusion_settings_are_checked() -> None:
    import pytest

    from apihelper.retriever.fusion import Fusion, FusionMethod

    with pytest.raises(ValueError):
        Fusion(FusionMethod.RRF, keyword_weight=1.5)
    with pytest.raises(ValueError):
        Fusion(candidates=0)
