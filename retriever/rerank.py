"""Second-stage re-ranking of the fused candidates by field-aware word overlap.

The first stage (``retriever.fusion``) scores a doc by its whole index text. This stage looks at
the best ``depth`` fused candidates again, field by field: how much of the query's weight falls on
the doc's name (function name, operation id, title words where there is no name), its path (the
REST path, the module, the API call), its parameter names, its parameter descriptions, its own
description, and the titles of the docs it is linked to (``retriever.links``). Each field gives
a coverage in 0..1: the summed weight of the query terms found in the field over the summed weight
of all query terms, where a term's weight is its inverse document frequency *among the candidates*
(``log((n + 1) / (df + 0.5))``), so words every candidate shares count little and nothing depends
on corpus-wide statistics. The new score is the fused score plus ``sum(weight[f] * coverage[f])``.

Everything is computed from the retrieved docs and the query alone: no model, no extra search, a
few hundred set lookups per query (well under a millisecond on two cores). The weights are chosen
by leave-one-distribution-out validation (``bench/retrieval/lodo.py``; docs/retrieval.md has the
table); all zero turns the stage off.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from apihelper.retriever.textnorm import keyword_terms
from apihelper.retriever.types import ApiDoc

T = TypeVar("T")

FIELDS = ("name", "path", "params", "param_docs", "description", "links")


@dataclass(frozen=True)
class Rerank:
    """Weights of the field coverages added to the fused score, and how many of the best fused
    candidates are re-scored (the rest keep their order below them). All weights 0: off."""

    name: float = 0.0
    path: float = 0.0
    params: float = 0.0
    param_docs: float = 0.0
    description: float = 0.0
    links: float = 0.0
    depth: int = 20

    def __post_init__(self) -> None:
        if any(getattr(self, f) < 0 for f in FIELDS) or self.depth < 1:
            raise ValueError("re-rank weights must be >= 0 and depth >= 1")

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(float(getattr(self, f)) for f in FIELDS)

    @property
    def enabled(self) -> bool:
        return any(w > 0 for w in self.weights)


OFF = Rerank()
# The weights leave-one-distribution-out validation chose on all eight dev sets (train +
# validation questions, on the default fusion; bench/retrieval/lodo.py, docs/retrieval.md). Not
# the retriever's default: like the fusion default, it stays one question below plain RRF on one
# dev set (Settings ``retrieval_rerank`` turns it on).
LODO_RERANK = Rerank(name=0.5, path=1.0, params=1.0, description=0.1, depth=10)


def _terms(parts: Iterable[object]) -> frozenset[str]:
    text = " ".join(str(p) for p in parts if isinstance(p, str) and p)
    return frozenset(keyword_terms(text).split()) if text else frozenset()


def _properties(function: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(name, schema) of a JSON function schema's parameters, and of their own properties one
    level down (an object parameter's fields are parameters too)."""
    params = function.get("parameters")
    props = params.get("properties") if isinstance(params, Mapping) else None
    out: list[tuple[str, Mapping[str, Any]]] = []
    if not isinstance(props, Mapping):
        return out
    for name, schema in props.items():
        if not isinstance(schema, Mapping):
            continue
        out.append((str(name), schema))
        inner = schema.get("properties")
        if isinstance(inner, Mapping):
            out += [(str(n), s) for n, s in inner.items() if isinstance(s, Mapping)]
    return out


def doc_fields(doc: ApiDoc) -> tuple[frozenset[str], ...]:
    """The doc's terms per field of :data:`FIELDS` (stemmed like BM25's, stop words dropped)."""
    md = doc.metadata
    function = md.get("function")
    function = function if isinstance(function, Mapping) else {}
    names = [function.get("name"), md.get("name"), md.get("operation_id"), md.get("qualname"), md.get("api_name")]
    name = _terms(names) or _terms([doc.title])
    calls = md.get("http_calls")
    call_paths = [c.get("path") for c in calls if isinstance(c, Mapping)] if isinstance(calls, list) else []
    path = _terms([md.get("path"), md.get("module"), md.get("api_call"), *call_paths]) or _terms([doc.key])
    props = _properties(function)
    rest_params = md.get("parameters")
    rest_names = [p.get("name") for p in rest_params if isinstance(p, Mapping)] if isinstance(rest_params, list) else []
    params = _terms([n for n, _ in props] + rest_names)
    param_docs = _terms(
        [s.get("description") for _, s in props]
        + [str(v) for _, s in props if isinstance(s.get("enum"), list) for v in s["enum"]]
    )
    description = _terms([function.get("description"), md.get("summary"), md.get("functionality"), md.get("domain")])
    links = md.get("links")
    linked = (
        _terms([part for link in links if isinstance(link, Mapping) for part in (link.get("title"), link.get("key"))])
        if isinstance(links, list)
        else frozenset()
    )
    return (name, path, params, param_docs, description, linked)


class FieldCache:
    """:func:`doc_fields` of recently seen docs (the store hands out the same doc objects while
    their content is unchanged), so a query re-ranks without re-reading long parameter
    descriptions. Keyed by the doc object's identity, checked, so a new object is read afresh."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._entries: OrderedDict[int, tuple[ApiDoc, tuple[frozenset[str], ...]]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, doc: ApiDoc) -> tuple[frozenset[str], ...]:
        with self._lock:
            entry = self._entries.get(id(doc))
            if entry is not None and entry[0] is doc:
                self._entries.move_to_end(id(doc))
                return entry[1]
        fields = doc_fields(doc)
        with self._lock:
            self._entries[id(doc)] = (doc, fields)  # holding the doc keeps its id from being reused
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return fields


def coverages(
    query: str, docs: Sequence[ApiDoc], fields_of: Callable[[ApiDoc], tuple[frozenset[str], ...]] = doc_fields
) -> list[tuple[float, ...]]:
    """Per doc, the share of the query's weight found in each field (see the module docstring)."""
    return field_coverages(frozenset(keyword_terms(query).split()), [fields_of(d) for d in docs])


def field_coverages(query: frozenset[str], per_doc: Sequence[tuple[frozenset[str], ...]]) -> list[tuple[float, ...]]:
    """:func:`coverages` from query terms and :func:`doc_fields` of each candidate."""
    if not query or not per_doc:
        return [(0.0,) * len(FIELDS) for _ in per_doc]
    unions = [frozenset().union(*f) & query for f in per_doc]
    n = len(per_doc)
    idf = {t: math.log((n + 1) / (sum(t in u for u in unions) + 0.5)) for t in query}
    total = sum(idf.values())
    if total <= 0:
        return [(0.0,) * len(FIELDS) for _ in per_doc]
    return [tuple(sum(idf[t] for t in field & query) / total for field in f) for f in per_doc]


def rescore(
    query: str,
    ranked: Sequence[T],
    *,
    doc: Callable[[T], ApiDoc],
    score: Callable[[T], float],
    rerank: Rerank,
    fields_of: Callable[[ApiDoc], tuple[frozenset[str], ...]] = doc_fields,
) -> list[tuple[T, float]]:
    """``ranked`` (best first) with the best ``rerank.depth`` re-scored and re-ordered, each with its
    new score; the rest follow unchanged. Off (all weights 0): the input order and scores.
    ``fields_of``: :func:`doc_fields`, or a :class:`FieldCache` of it."""
    if not rerank.enabled or len(ranked) < 2:
        return [(item, score(item)) for item in ranked]
    head, tail = list(ranked[: rerank.depth]), list(ranked[rerank.depth :])
    weights = rerank.weights
    cov = coverages(query, [doc(item) for item in head], fields_of)
    rescored = [
        (item, score(item) + sum(w * c for w, c in zip(weights, row, strict=True)))
        for item, row in zip(head, cov, strict=True)
    ]
    rescored.sort(key=lambda pair: pair[1], reverse=True)  # stable: ties keep the fused order
    return rescored + [(item, score(item)) for item in tail]


__all__ = [
    "FIELDS",
    "LODO_RERANK",
    "OFF",
    "FieldCache",
    "Rerank",
    "coverages",
    "doc_fields",
    "field_coverages",
    "rescore",
]
