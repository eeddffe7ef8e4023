"""Hybrid fusion of dense (cosine) and keyword (BM25) candidate lists, done in the client.

Milvus' own rankers are not used for hybrid search: RRF throws the scores away (a BM25 list
with one strong match and a list of near-ties look the same), and ``WeightedRanker`` normalises
BM25 with an arctan that assumes positive distances, while Milvus Lite returns them negated.
Fusing here behaves the same on Lite and on a server and lets the weight be measured
(bench/retrieval/README.md has the numbers behind the defaults).

Methods (``FusionMethod``): weighted reciprocal-rank fusion, the default (``DEFAULT_FUSION``:
chosen by leave-one-distribution-out validation, docs/retrieval.md), and standardised scores:
each list's scores are standardised over its own candidates (z-scores: mean 0, standard
deviation 1), a doc missing from one list gets that list's lowest standardised score, and the
fused score is ``(1 - w) * z_dense + w * z_keyword``, plus an optional per-item prior. Standardising
makes the weight mean the same thing for every query, whatever the spread of cosine similarities or
BM25 scores; the fused scores are roughly comparable across corpora, which the cross-corpus merge
relies on. :func:`fuse_hits` adds the rules of ``retriever.ranking`` (the command-line prior,
variants of one callable last).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from apihelper.retriever.ranking import asks_for_cli, diversify, doc_prior, variant_group
from apihelper.retriever.rerank import OFF, Rerank, doc_fields, rescore
from apihelper.retriever.types import ApiDoc, RetrievedDoc

T = TypeVar("T")

# Weight of BM25 in the standardised-score fusion (bench/retrieval/README.md: chosen on all dev
# sets together, before leave-one-distribution-out validation; see DEFAULT_FUSION for the default).
KEYWORD_WEIGHT = 0.25
RRF_K = 60.0  # the constant of reciprocal-rank fusion (Cormack et al.'s 60)


class FusionMethod(str, enum.Enum):
    ZSCORE = "zscore"  # standardised scores, weighted
    RRF = "rrf"  # reciprocal ranks, weighted


@dataclass(frozen=True)
class Fusion:
    """How hybrid search fuses its two candidate lists, and how many candidates each side fetches.

    ``keyword_weight`` is BM25's share (0..1; 0.5 with RRF is plain, unweighted RRF).
    """

    method: FusionMethod = FusionMethod.ZSCORE
    keyword_weight: float = KEYWORD_WEIGHT
    rrf_k: float = RRF_K
    candidates: int = 50

    def __post_init__(self) -> None:
        if not 0.0 <= self.keyword_weight <= 1.0:
            raise ValueError(f"keyword_weight must be within 0..1, not {self.keyword_weight}")
        if self.rrf_k < 0 or self.candidates < 1:
            raise ValueError("rrf_k must be >= 0 and candidates >= 1")


# The default, chosen by leave-one-distribution-out validation over the eight dev sets with a
# blind query adapter (bench/retrieval/lodo.py; docs/retrieval.md has the table): of the settings
# never below plain RRF on any held-out set, the best on validation. BM25-heavy weighted RRF (with
# views on and no query adapter); ``Fusion()`` is the previous default (standardised scores, BM25
# weight 0.25), better on the dev sets' own validation splits but below plain RRF on held-out ones.
DEFAULT_FUSION = Fusion(FusionMethod.RRF, keyword_weight=0.7, rrf_k=30.0, candidates=50)


@dataclass(frozen=True)
class Scored(Generic[T]):
    key: str
    score: float
    item: T


def _standardised(scores: Sequence[float]) -> list[float]:
    n = len(scores)
    if n == 0:
        return []
    mean = sum(scores) / n
    var = sum((s - mean) ** 2 for s in scores) / n
    std = math.sqrt(var)
    if std < 1e-9:
        return [0.0] * n
    return [(s - mean) / std for s in scores]


def fuse(
    dense: Sequence[Scored[T]],
    keyword: Sequence[Scored[T]],
    *,
    keyword_weight: float = KEYWORD_WEIGHT,
    top_k: int,
    prior: Callable[[T], float] | None = None,
    method: FusionMethod = FusionMethod.ZSCORE,
    rrf_k: float = RRF_K,
) -> list[Scored[T]]:
    """The best ``top_k`` of both lists by fused score (see the module docstring), best first.

    Items are taken from the dense list when a key is in both. An empty list contributes
    nothing (the other list's standardised scores are used alone). ``prior(item)`` is added to
    each fused score (with one list alone, to its standardised score).

    ``method`` RRF: each list gives ``1 / (rrf_k + rank)`` (rank 1 first; nothing where a key is
    missing), weighted ``1 - keyword_weight`` and ``keyword_weight`` (0.5: plain RRF up to a
    factor); the sums are then standardised over the candidates, so that the prior and the
    cross-corpus merge see the same units as with z-scores.
    """
    if not keyword or keyword_weight <= 0 or not dense or keyword_weight >= 1:
        alone = dense if (not keyword or keyword_weight <= 0) else keyword
        if prior is None:
            return sorted(alone, key=lambda s: s.score, reverse=True)[:top_k]
        z = _standardised([s.score for s in alone])
        scored = [Scored(s.key, zs + prior(s.item), s.item) for s, zs in zip(alone, z, strict=True)]
        scored.sort(key=lambda s: s.score, reverse=True)
        return scored[:top_k]
    if method is FusionMethod.RRF:
        return _rrf(dense, keyword, keyword_weight=keyword_weight, rrf_k=rrf_k, top_k=top_k, prior=prior)
    z_dense = dict(zip((s.key for s in dense), _standardised([s.score for s in dense]), strict=False))
    z_keyword = dict(zip((s.key for s in keyword), _standardised([s.score for s in keyword]), strict=False))
    floor_dense = min(z_dense.values())
    floor_keyword = min(z_keyword.values())
    items: dict[str, T] = {s.key: s.item for s in keyword}
    items.update({s.key: s.item for s in dense})
    fused = [
        Scored(
            key,
            (1.0 - keyword_weight) * z_dense.get(key, floor_dense)
            + keyword_weight * z_keyword.get(key, floor_keyword)
            + (prior(item) if prior is not None else 0.0),
            item,
        )
        for key, item in items.items()
    ]
    fused.sort(key=lambda s: s.score, reverse=True)
    return fused[:top_k]


def _rrf(
    dense: Sequence[Scored[T]],
    keyword: Sequence[Scored[T]],
    *,
    keyword_weight: float,
    rrf_k: float,
    top_k: int,
    prior: Callable[[T], float] | None,
) -> list[Scored[T]]:
    sums: dict[str, float] = {}
    items: dict[str, T] = {}
    for weight, scored in ((keyword_weight, keyword), (1.0 - keyword_weight, dense)):
        ordered = sorted(scored, key=lambda s: s.score, reverse=True)
        for rank, s in enumerate(ordered, start=1):
            sums[s.key] = sums.get(s.key, 0.0) + weight / (rrf_k + rank)
            items[s.key] = s.item  # the dense item wins (written last)
    keys = list(sums)
    z = _standardised([sums[key] for key in keys])
    fused = [
        Scored(key, zs + (prior(items[key]) if prior is not None else 0.0), items[key])
        for key, zs in zip(keys, z, strict=True)
    ]
    fused.sort(key=lambda s: s.score, reverse=True)
    return fused[:top_k]


def fuse_hits(
    dense: Sequence[RetrievedDoc],
    keyword: Sequence[RetrievedDoc],
    top_k: int,
    *,
    query: str = "",
    fusion: Fusion = DEFAULT_FUSION,
    rerank: Rerank = OFF,
    fields_of: Callable[[ApiDoc], tuple[frozenset[str], ...]] = doc_fields,
) -> list[RetrievedDoc]:
    """The hybrid result from dense and keyword candidates of retrieved docs, ordered by the rules
    of ``retriever.ranking``: the audience prior (``query`` tells whether it asks for the command
    line), then the second stage (``retriever.rerank``: the best ``rerank.depth`` re-scored by
    field-aware word overlap with ``query``; off by default; ``fields_of`` may cache the docs'
    fields), then variants of one callable behind
    the other results.

    The candidates may come from several corpora: fusing the pooled lists standardises every
    score against the same distribution, so the corpora's results are comparable. (Fusing each
    corpus alone would put every corpus's best hit near the top, relevant or not.)
    """

    def key(hit: RetrievedDoc) -> str:
        return f"{hit.corpus}\x00{hit.doc.key}"

    cli_query = asks_for_cli(query)
    fused = fuse(
        [Scored(key(hit), hit.score, hit) for hit in dense],
        [Scored(key(hit), hit.score, hit) for hit in keyword],
        keyword_weight=fusion.keyword_weight,
        top_k=len(dense) + len(keyword),  # all of them: diversify reorders before the cut
        prior=lambda hit: doc_prior(hit.doc, cli_query=cli_query),
        method=fusion.method,
        rrf_k=fusion.rrf_k,
    )
    if rerank.enabled:
        fused = [
            Scored(s.key, score, s.item)
            for s, score in rescore(
                query, fused, doc=lambda s: s.item.doc, score=lambda s: s.score, rerank=rerank, fields_of=fields_of
            )
        ]
    ordered = diversify(fused, lambda s: f"{s.item.corpus}\x00{variant_group(s.item.doc)}")[:top_k]
    # A variant moved behind others scores no more than what now precedes it: scores stay
    # non-increasing, so a later sort by score (the cross-corpus merge) keeps this order.
    hits: list[RetrievedDoc] = []
    for s in ordered:
        score = min(s.score, hits[-1].score) if hits else s.score
        hits.append(RetrievedDoc(doc=s.item.doc, corpus=s.item.corpus, score=score))
    return hits


__all__ = ["DEFAULT_FUSION", "KEYWORD_WEIGHT", "RRF_K", "Fusion", "FusionMethod", "Scored", "fuse", "fuse_hits"]
