"""Hybrid fusion over several corpora pools the candidates, so scores compare across corpora."""

from __future__ import annotations

from apihelper.retriever.fusion import fuse_hits
from apihelper.retriever.types import ApiDoc, RetrievedDoc


def _hit(corpus: str, key: str, score: float) -> RetrievedDoc:
    return RetrievedDoc(ApiDoc(key, key, key, key), corpus, score)


def test_an_irrelevant_corpus_best_hit_does_not_outrank_relevant_ones() -> None:
    # Dense cosine scores: corpus "rest" matches the query well, "functional" barely.
    dense = [_hit("rest", f"POST /r{i}", 0.80 - 0.02 * i) for i in range(5)]
    dense += [_hit("functional", f"pkg.f{i}", 0.20 - 0.01 * i) for i in range(5)]
    keyword = [_hit("rest", "POST /r0", 9.0), _hit("rest", "POST /r1", 7.0), _hit("functional", "pkg.f0", 1.0)]
    fused = fuse_hits(dense, keyword, top_k=5)
    assert [h.corpus for h in fused] == ["rest"] * 5
    assert fused[0].doc.key == "POST /r0"


def test_same_key_in_two_corpora_stays_two_hits() -> None:
    dense = [_hit("a", "GET /x", 0.9), _hit("b", "GET /x", 0.5)]
    fused = fuse_hits(dense, [], top_k=5)
    assert [(h.corpus, h.doc.key) for h in fused] == [("a", "GET /x"), ("b", "GET /x")]
