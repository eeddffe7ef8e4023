"""retriever.rerank: field-aware second stage over fused candidates, and its LODO tuning in
bench/retrieval/lodo.py (the vectorised scoring agrees with rescore's order)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from apihelper.bench.retrieval.lodo import RerankArrays, rerank_score, tune_rerank
from apihelper.retriever.fusion import fuse_hits
from apihelper.retriever.rerank import (
    FIELDS,
    LODO_RERANK,
    OFF,
    FieldCache,
    Rerank,
    coverages,
    doc_fields,
    field_coverages,
    rescore,
)
from apihelper.retriever.textnorm import keyword_terms
from apihelper.retriever.types import ApiDoc, RetrievedDoc


def _function_doc(name: str, description: str, params: dict[str, str], links: list[str] | None = None) -> ApiDoc:
    metadata: dict[str, object] = {
        "name": name,
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {p: {"type": "string", "description": d} for p, d in params.items()},
            },
        },
    }
    if links:
        metadata["links"] = [{"corpus": "other", "key": key, "title": key} for key in links]
    return ApiDoc(key=name, title=f"{name}: {description}", text=description, index_text=description, metadata=metadata)


def _stems(text: str) -> frozenset[str]:
    return frozenset(keyword_terms(text).split())


def test_doc_fields_reads_each_field_of_a_function_schema() -> None:
    doc = _function_doc(
        "weather.get_forecast",
        "Daily outlook.",
        {"city_name": "Where to look", "units": "metric"},
        ["GET /v1/forecast"],
    )
    name, path, params, param_docs, description, links = doc_fields(doc)
    assert _stems("weather get forecast") <= name
    assert _stems("city name units") <= params
    assert _stems("where look metric") <= param_docs
    assert _stems("daily outlook") <= description
    assert _stems("forecast") <= links
    assert _stems("weather get forecast") <= path  # no path in metadata: the key's words
    assert len(FIELDS) == 6


def test_doc_fields_reads_a_rest_operation() -> None:
    doc = ApiDoc(
        key="POST /session/_/create-from-template",
        title="Create a session from a template",
        text="",
        index_text="",
        metadata={
            "method": "POST",
            "path": "/session/_/create-from-template",
            "operation_id": "session.create_from_template",
            "parameters": [{"name": "template_id", "in": "body"}],
        },
    )
    name, path, params, _, _, links = doc_fields(doc)
    assert _stems("create template") <= path
    assert _stems("session create from template") <= name
    assert _stems("template id") <= params
    assert links == frozenset()


def test_a_term_every_candidate_has_weighs_less_than_a_rare_one() -> None:
    common, rare = _stems("user"), _stems("invoice")
    empty: frozenset[str] = frozenset()
    fields_a = (common | rare, empty, empty, empty, empty, empty)
    fields_b = (common, empty, empty, empty, empty, empty)
    fields_c = (common, empty, empty, empty, empty, empty)
    a, b, _ = field_coverages(common | rare, [fields_a, fields_b, fields_c])
    assert a[0] == pytest.approx(1.0)
    assert 0.0 < b[0] < 0.5  # "user" is in every candidate: less than half the query's weight
    assert all(0.0 <= c <= 1.0 for row in (a, b) for c in row)


def test_field_cache_reads_a_doc_once_and_a_new_object_afresh() -> None:
    cache = FieldCache(size=2)
    doc = _function_doc("a.b", "first words", {"x": "y"})
    assert cache(doc) is cache(doc)
    assert cache(doc) == doc_fields(doc)
    changed = _function_doc("a.b", "other words", {"x": "y"})
    assert cache(changed) == doc_fields(changed) != doc_fields(doc)
    for i in range(3):  # bounded: the oldest entries go
        cache(_function_doc(f"k{i}", "w", {}))
    assert len(cache._entries) == 2


def test_no_query_terms_no_coverage() -> None:
    docs = [_function_doc("f", "does things", {"x": "y"})]
    assert coverages("the of and", docs) == [(0.0,) * len(FIELDS)]


def test_rescore_moves_the_doc_whose_name_the_query_uses() -> None:
    docs = [
        _function_doc("shipping.track_parcel", "Follow a package.", {"id": "parcel"}),
        _function_doc("invoice.create", "Make a bill for a customer.", {"customer": "who pays"}),
        _function_doc("misc.other", "Unrelated.", {}),
    ]
    ranked = list(zip(docs, [1.0, 0.9, 0.2], strict=True))
    query = "create an invoice for ACME"
    off = rescore(query, ranked, doc=lambda p: p[0], score=lambda p: p[1], rerank=OFF)
    assert [p[0].key for p, _ in off] == ["shipping.track_parcel", "invoice.create", "misc.other"]
    on = rescore(query, ranked, doc=lambda p: p[0], score=lambda p: p[1], rerank=Rerank(name=1.0))
    assert [p[0].key for p, _ in on][:2] == ["invoice.create", "shipping.track_parcel"]
    assert on[0][1] > 0.9  # the new score is the fused one plus the bonus


def test_rescore_leaves_the_tail_below_depth_alone() -> None:
    docs = [_function_doc(f"f{i}", "same words", {}) for i in range(5)]
    named = _function_doc("target.thing", "other", {})
    ranked = [(d, 5.0 - i) for i, d in enumerate(docs)] + [(named, -1.0)]
    out = rescore("target thing", ranked, doc=lambda p: p[0], score=lambda p: p[1], rerank=Rerank(name=3.0, depth=5))
    assert out[-1][0][0].key == "target.thing"  # beyond depth: not re-scored


@pytest.mark.parametrize("seed", range(3))
def test_fuse_hits_with_rerank_keeps_scores_non_increasing(seed: int) -> None:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    docs = [_function_doc(f"{rng.choice(words)}_{i}", " ".join(rng.sample(words, 3)), {}) for i in range(12)]
    dense = [RetrievedDoc(doc=d, corpus="c", score=rng.uniform(0.1, 0.9)) for d in docs]
    keyword = [RetrievedDoc(doc=d, corpus="c", score=rng.uniform(1, 20)) for d in rng.sample(docs, 8)]
    hits = fuse_hits(dense, keyword, 10, query=" ".join(rng.sample(words, 2)), rerank=LODO_RERANK)
    assert len(hits) == 10
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    assert len({h.doc.key for h in hits}) == 10


def _arrays(rng: random.Random, questions: int, depth: int) -> RerankArrays:
    base = np.sort(rng.random() + np.array([[rng.gauss(0, 1) for _ in range(depth)] for _ in range(questions)]))[
        :, ::-1
    ]
    cov = np.array([[[rng.random() for _ in FIELDS] for _ in range(depth)] for _ in range(questions)])
    gold = np.zeros((questions, depth), dtype=bool)
    for row in gold:
        row[rng.randrange(depth)] = True
    return RerankArrays(np.ascontiguousarray(base), cov, gold)


@pytest.mark.parametrize("seed", range(3))
def test_rerank_score_agrees_with_rescore(seed: int) -> None:
    rng = random.Random(seed)
    a = _arrays(rng, 25, 10)
    weights = [rng.choice([0.0, 0.5, 2.0]) for _ in FIELDS]
    top1 = 0
    for base, cov, gold in zip(a.base, a.cov, a.gold, strict=True):
        items = list(range(len(base)))
        bonus = {i: float(np.dot(cov[i], weights)) for i in items}
        best = max(items, key=lambda i: (base[i] + bonus[i], -i))
        top1 += bool(gold[best])
    assert rerank_score(a, weights).top1 == pytest.approx(top1 / 25)


def test_tuning_finds_a_field_that_separates_the_answers_and_keeps_off_when_none_does() -> None:
    rng = random.Random(7)
    a = _arrays(rng, 40, 10)
    informative = a.cov.copy()
    informative[..., 0] = a.gold * 1.0  # the name field covers the query exactly where the answer is
    tuned = tune_rerank(
        {10: [RerankArrays(a.base, informative, a.gold)], 20: [RerankArrays(a.base, informative, a.gold)]}
    )
    assert tuned.name > 0
    noise = RerankArrays(a.base, np.zeros_like(a.cov), a.gold)
    assert not tune_rerank({10: [noise], 20: [noise]}).enabled
