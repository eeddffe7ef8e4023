"""Leave-one-distribution-out (LODO) choice of the hybrid retrieval settings, offline.

    .venv/bin/python bench/retrieval/lodo.py [--cache DIR] [--out table.md] [--json-out rows.json]

Eight dev distributions (Backend.AI REST, Backend.AI functional, TorchHub, BFCL live_multiple,
multiple, parallel_multiple, simple_java, simple_javascript). For each in turn, every setting
candidate (query adapter on/off, one vector per doc or one per view, fusion method and weight,
candidates per side) is scored on the *other seven* sets' validation splits (mean top-1
over sets, each set weighing the same; mean MRR@10 breaks ties), and the winner is scored on the
held-out set's test split. The default follows the issue's rule: of the settings never below plain
RRF on any held-out set (blind figures), the best on all eight validation splits (the best on
validation alone where none is left); its held-out figures are reported beside plain dense, plain
BM25 and plain RRF (k 60) of the two, and ``retriever.fusion.DEFAULT_FUSION``, Settings
``query_adapter`` and ``ingest``'s views default are set to it.

Everything is computed in memory from the same docs the loaders give ingest (``index_text`` for
the dense and BM25 sides, ``views`` for the multi-vector side, ``text`` for the plain baselines)
and fused by ``retriever.fusion.fuse``, the function the retriever uses. The dense side is exact
cosine over MiniLM vectors (what Milvus' HNSW returns on these sizes); the BM25 side is Okapi BM25
(k1 1.2, b 0.75, Milvus' parameters) over ``keyword_terms(index_text)``. Vectors are cached on
disk by text digest (``--cache``), so a second run embeds nothing. ``run.py`` confirms the chosen
default through Milvus.

Then the second stage (``retriever.rerank``): for each held-out set, on the fold's fusion, its
field weights and depth are tuned on the other seven sets' train + validation questions and the
held-out set is scored on its test split and on validation + test (``rerank_lodo``).

The query adapter is blind in every fold. The bundled one (``retriever/models/query_adapter.npz``)
was trained on the train splits of five of the sets (``ADAPTER_SETS``: Backend.AI REST and
functional, TorchHub, BFCL live_multiple and multiple). For a held-out set among those five, the
fold retrains it on the train splits of the other four (``engine_build.train_embedder.train_matrix``,
the bundled file's recipe, the docs and questions as ``train_adapter.py`` gives them, vectors from
the cache) and uses that fold adapter for *every* set's "adapter on" candidates in that fold: the
fold's choice on the other seven sets' validation splits and its figures on the held-out test
split are what they would be had the held-out distribution never existed. For the other three
held-out sets the bundled adapter is already blind. The default is chosen on all eight with the
bundled adapter (what ships); its held-out figures are reported with each fold's adapter.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apihelper.bench.retrieval import run
from apihelper.bench.retrieval.baselines import PlainBM25
from apihelper.bench.retrieval.train_adapter import SETS as ADAPTER_MANIFESTS
from apihelper.build.train_embedder import Recipe, TrainingSet, train_matrix
from apihelper.retriever.evaluate import EvalQuestion, RankScore, rank_score
from apihelper.retriever.fusion import Fusion, FusionMethod, Scored, fuse
from apihelper.retriever.ingest import SUMMARY_WEIGHT, doc_head
from apihelper.retriever.rerank import FIELDS, Rerank, doc_fields, field_coverages
from apihelper.retriever.textnorm import keyword_terms
from apihelper.retriever.types import ApiDoc

DEV_SETS = (
    "rest",
    "functional",
    "torchhub",
    "bfcl_live_multiple",
    "bfcl_multiple",
    "bfcl_parallel_multiple",
    "bfcl_simple_java",
    "bfcl_simple_javascript",
)
MAX_CANDIDATES = 100
CANDIDATES = (20, 50, 100)
ZSCORE_WEIGHTS = (0.15, 0.25, 0.4, 0.55, 0.7)
RRF_KS = (2.0, 10.0, 30.0, 60.0)
RRF_WEIGHTS = (0.3, 0.5, 0.7)
PLAIN_RRF = Fusion(FusionMethod.RRF, 0.5, 60.0, MAX_CANDIDATES)
# The bundled adapter's training sets (train_adapter.SETS, in its order): dev set -> the corpus it
# was trained over (the Backend.AI functional questions over the whole wheel, as a user ingests it).
ADAPTER_SETS = {
    "rest": "rest",
    "functional": "functional_wheel",
    "torchhub": "torchhub",
    "bfcl_live_multiple": "bfcl_live_multiple",
    "bfcl_multiple": "bfcl_multiple",
}
ADAPTER_OFF = "off"
BUNDLED = "bundled"

Ranked = list[tuple[str, float]]  # (key, score), best first


@dataclass(frozen=True)
class Setting:
    adapter: bool
    views: bool
    fusion: Fusion

    @property
    def label(self) -> str:
        f = self.fusion
        if f.keyword_weight == 0.0:
            how = "dense only"
        elif f.keyword_weight == 1.0:
            how = "BM25 only"
        elif f.method is FusionMethod.RRF:
            how = f"RRF k {f.rrf_k:g} w {f.keyword_weight:g}"
        else:
            how = f"z w {f.keyword_weight:g}"
        return (
            f"{how}, {f.candidates} cand, adapter {'on' if self.adapter else 'off'}, "
            f"views {'on' if self.views else 'off'}"
        )


def settings_grid() -> list[Setting]:
    fusions: list[Fusion] = [Fusion(FusionMethod.ZSCORE, 0.0, candidates=MAX_CANDIDATES)]
    fusions += [Fusion(FusionMethod.ZSCORE, 1.0, candidates=MAX_CANDIDATES)]
    for candidates in CANDIDATES:
        fusions += [Fusion(FusionMethod.ZSCORE, w, candidates=candidates) for w in ZSCORE_WEIGHTS]
        fusions += [Fusion(FusionMethod.RRF, w, k, candidates) for k in RRF_KS for w in RRF_WEIGHTS]
    return [Setting(a, v, f) for a in (True, False) for v in (False, True) for f in fusions]


class VectorCache:
    """MiniLM vectors by sha256 of their text, kept in one ``.npz`` file."""

    def __init__(self, path: Path, embed: Callable[[Sequence[str]], list[list[float]]]) -> None:
        self._path = path
        self._embed = embed
        self._vectors: dict[str, np.ndarray] = {}
        if path.is_file():
            with np.load(path, allow_pickle=False) as archive:
                for digest, vector in zip(archive["keys"], archive["vectors"], strict=True):
                    self._vectors[str(digest)] = vector
        self._dirty = False

    @staticmethod
    def digest(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def matrix(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if self.digest(t) not in self._vectors))
        if missing:
            print(f"    embedding {len(missing)} texts", file=sys.stderr)
            for text, vector in zip(missing, self._embed(missing), strict=True):
                self._vectors[self.digest(text)] = np.asarray(vector, dtype=np.float32)
            self._dirty = True
        return np.stack([self._vectors[self.digest(t)] for t in texts]) if texts else np.zeros((0, 384), np.float32)

    def save(self) -> None:
        if not self._dirty:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._vectors)
        with self._path.open("wb") as handle:
            np.savez(handle, keys=np.array(keys), vectors=np.stack([self._vectors[k] for k in keys]))
        self._dirty = False


@dataclass
class Prepared:
    """One dev set's questions and, per split, every question's candidate lists."""

    name: str
    questions: dict[str, list[EvalQuestion]]
    fields: dict[str, tuple[frozenset[str], ...]] = field(default_factory=dict)  # key -> rerank.doc_fields
    dense: dict[tuple[str, bool], dict[str, list[Ranked]]] = field(default_factory=dict)  # (adapter name, views)
    bm25: dict[str, list[Ranked]] = field(default_factory=dict)
    plain_dense: dict[str, list[Ranked]] = field(default_factory=dict)
    plain_bm25: dict[str, list[Ranked]] = field(default_factory=dict)


def doc_matrix(docs: Sequence[ApiDoc], cache: VectorCache) -> np.ndarray:
    """The docs' dense vectors as ingest makes them (``ingest.document_vectors``: the index
    text's embedding mixed with the head's, where a doc has a summary), from the cache."""
    main = cache.matrix([d.index_text for d in docs])
    heads = [(i, head) for i, head in enumerate(doc_head(d) for d in docs) if head]
    if heads and SUMMARY_WEIGHT > 0:
        head_vectors = cache.matrix([head for _, head in heads])
        for (i, _), vector in zip(heads, head_vectors, strict=True):
            mixed = main[i] + SUMMARY_WEIGHT * vector
            main[i] = mixed / (np.linalg.norm(mixed) or 1.0)
    return main


def _top(keys: Sequence[str], scores: np.ndarray, limit: int) -> list[Ranked]:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :limit]
    return [[(keys[i], float(row[i])) for i in idx] for row, idx in zip(scores, order, strict=True)]


def _view_max(scores: np.ndarray, owners: np.ndarray, n_docs: int) -> np.ndarray:
    """Per doc, the best of its own row's and its views' scores (queries x docs)."""
    best = scores[:, :n_docs].copy()
    if scores.shape[1] > n_docs:
        np.maximum.at(best.T, owners, scores[:, n_docs:].T)
    return best


def signals(setting: Setting, adapter: str) -> tuple[str, bool]:
    """The dense candidates ``setting`` uses when "adapter on" means the adapter named ``adapter``."""
    return (adapter if setting.adapter else ADAPTER_OFF, setting.views)


def adapt(queries: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``normalise(W q)`` for each row (``retriever.adapter.QueryAdapter.apply``)."""
    adapted = queries @ weight.T
    return np.asarray(adapted / np.maximum(np.linalg.norm(adapted, axis=1, keepdims=True), 1e-12))


def prepare(
    name: str,
    docs: Sequence[ApiDoc],
    questions: dict[str, list[EvalQuestion]],
    cache: VectorCache,
    adapters: dict[str, np.ndarray],
) -> Prepared:
    """``adapters``: adapter name -> matrix; the dense candidates are made without any adapter
    (``ADAPTER_OFF``) and with each of them."""
    keys = [d.key for d in docs]
    view_texts = [v for d in docs for v in d.views]
    owners = np.array([i for i, d in enumerate(docs) for _ in d.views], dtype=np.int64)
    main = doc_matrix(docs, cache)
    views = cache.matrix(view_texts)
    plain = cache.matrix([d.text for d in docs])
    bm25 = PlainBM25(docs, texts=[keyword_terms(d.index_text) for d in docs], tokens=str.split)
    plain_bm25 = PlainBM25(docs)
    out = Prepared(name, questions, {d.key: doc_fields(d) for d in docs})
    for split, qs in questions.items():
        texts = [q.question for q in qs]
        q = cache.matrix(texts)
        for use_adapter, qv in ((ADAPTER_OFF, q), *((a, adapt(q, w)) for a, w in adapters.items())):
            whole = qv @ np.concatenate([main, views]).T if len(view_texts) else qv @ main.T
            out.dense.setdefault((use_adapter, False), {})[split] = _top(keys, whole[:, : len(docs)], MAX_CANDIDATES)
            out.dense.setdefault((use_adapter, True), {})[split] = _top(
                keys, _view_max(whole, owners, len(docs)), MAX_CANDIDATES
            )
        out.plain_dense[split] = _top(keys, q @ plain.T, MAX_CANDIDATES)
        out.bm25[split] = [[(keys[i], s) for i, s in bm25.scores(keyword_terms(t))[:MAX_CANDIDATES]] for t in texts]
        out.plain_bm25[split] = [[(keys[i], s) for i, s in plain_bm25.scores(t)[:MAX_CANDIDATES]] for t in texts]
    return out


def fused_ranking(dense: Ranked, keyword: Ranked, fusion: Fusion) -> list[str]:
    """The top 10 keys of ``fusion`` over the two lists (each cut to ``fusion.candidates``)."""
    d = [Scored(k, s, k) for k, s in dense[: fusion.candidates]]
    kw = [Scored(k, s, k) for k, s in keyword[: fusion.candidates]]
    return [
        s.key
        for s in fuse(d, kw, keyword_weight=fusion.keyword_weight, top_k=10, method=fusion.method, rrf_k=fusion.rrf_k)
    ]


# Settings are chosen on validation splits only: the bundled query adapter (and each fold's) was
# trained on the train splits of the sets it knows, so their train questions would favour it unfairly.
GROUPS = {"dev": ("validation",), "test": ("test",)}


def evaluate_setting(p: Prepared, setting: Setting, group: str, adapter: str = BUNDLED) -> RankScore:
    """``setting`` on one set's split group, through ``retriever.fusion.fuse`` (one query at a time)."""
    qs: list[EvalQuestion] = []
    rankings: list[list[str]] = []
    for split in GROUPS[group]:
        qs += p.questions[split]
        dense = p.dense[signals(setting, adapter)][split]
        rankings += [fused_ranking(d, k, setting.fusion) for d, k in zip(dense, p.bm25[split], strict=True)]
    return rank_score(qs, rankings)


@dataclass(frozen=True)
class Candidates:
    """The candidate lists of many queries as padded arrays (queries x union of both lists), for
    evaluating hundreds of settings at once. Columns follow ``fuse``'s item order (the keyword
    list's keys, then the dense list's others), so ties break the same way. Ranks are 1-based,
    ``inf`` where a key is not in that list."""

    dense_score: np.ndarray
    dense_rank: np.ndarray
    keyword_score: np.ndarray
    keyword_rank: np.ndarray
    gold: np.ndarray  # bool

    @classmethod
    def of(cls, questions: Sequence[EvalQuestion], dense: Sequence[Ranked], keyword: Sequence[Ranked]) -> Candidates:
        width = max(
            (len({k for k, _ in d} | {k for k, _ in kw}) for d, kw in zip(dense, keyword, strict=True)), default=1
        )
        shape = (len(questions), max(width, 1))
        arrays = [np.zeros(shape), np.full(shape, np.inf), np.zeros(shape), np.full(shape, np.inf)]
        gold = np.zeros(shape, dtype=bool)
        for row, (question, d, kw) in enumerate(zip(questions, dense, keyword, strict=True)):
            column: dict[str, int] = {}
            for key, _ in [*kw, *d]:
                column.setdefault(key, len(column))
            for (score_of, rank_of), ranked in (((0, 1), d), ((2, 3), kw)):
                for rank, (key, value) in enumerate(ranked, start=1):
                    arrays[score_of][row, column[key]] = value
                    arrays[rank_of][row, column[key]] = rank
            answers = set(question.answers)
            for key, col in column.items():
                gold[row, col] = key in answers
        dense_score, dense_rank, keyword_score, keyword_rank = arrays
        return cls(dense_score, dense_rank, keyword_score, keyword_rank, gold)


def _standardised_rows(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row, z-scores over the masked entries; unmasked ones get the row's lowest z (0 if none)."""
    n = mask.sum(axis=1, keepdims=True)
    safe = np.maximum(n, 1)
    mean = np.where(mask, scores, 0.0).sum(axis=1, keepdims=True) / safe
    var = np.where(mask, (scores - mean) ** 2, 0.0).sum(axis=1, keepdims=True) / safe
    std = np.sqrt(var)
    z = np.where(std < 1e-9, 0.0, (scores - mean) / np.where(std < 1e-9, 1.0, std))
    floor = np.where(mask, z, np.inf).min(axis=1, keepdims=True)
    floor = np.where(np.isfinite(floor), floor, 0.0)
    return np.where(mask, z, floor)


def fast_score(c: Candidates, fusion: Fusion) -> RankScore:
    """What ``evaluate_setting`` gives, computed for all queries at once with numpy (the same
    arithmetic as ``fuse``; ``main`` checks the chosen default against ``fuse`` itself)."""
    in_dense = c.dense_rank <= fusion.candidates
    in_keyword = c.keyword_rank <= fusion.candidates
    w = fusion.keyword_weight
    if fusion.method is FusionMethod.RRF and 0.0 < w < 1.0:
        fused = np.where(in_dense, (1 - w) / (fusion.rrf_k + c.dense_rank), 0.0) + np.where(
            in_keyword, w / (fusion.rrf_k + c.keyword_rank), 0.0
        )
        present = in_dense | in_keyword
    else:
        has_keyword = in_keyword.any(axis=1, keepdims=True)
        has_dense = in_dense.any(axis=1, keepdims=True)
        dense_alone = ~has_keyword | (w <= 0)
        keyword_alone = ~dense_alone & (~has_dense | (w >= 1))
        z_dense = _standardised_rows(c.dense_score, in_dense)
        z_keyword = _standardised_rows(c.keyword_score, in_keyword)
        fused = np.where(
            dense_alone, c.dense_score, np.where(keyword_alone, c.keyword_score, (1 - w) * z_dense + w * z_keyword)
        )
        present = np.where(dense_alone, in_dense, np.where(keyword_alone, in_keyword, in_dense | in_keyword))
    return _ranked_score(np.where(present, fused, -np.inf), c.gold & present)


def _ranked_score(scores: np.ndarray, gold: np.ndarray) -> RankScore:
    """The ``RankScore`` of ranking each row's candidates by ``scores`` (higher first, ties in
    candidate order), ``gold`` marking the right ones; a row without one in its top 10 misses."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    hit = np.take_along_axis(gold, order, axis=1)
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    n = max(len(first), 1)
    found = first >= 0
    return RankScore(
        len(first),
        float((first == 0).sum()) / n,
        float((found & (first < 5)).sum()) / n,
        float((1.0 / (first[found] + 1)).sum()) / n,
    )


def evaluate_plain(p: Prepared, which: str, group: str) -> RankScore:
    return evaluate_plain_splits(p, which, GROUPS[group])


def evaluate_plain_splits(p: Prepared, which: str, splits: Sequence[str]) -> RankScore:
    qs: list[EvalQuestion] = []
    rankings: list[list[str]] = []
    for split in splits:
        qs += p.questions[split]
        if which == "plain dense":
            rankings += [[k for k, _ in r[:10]] for r in p.plain_dense[split]]
        elif which == "plain BM25":
            rankings += [[k for k, _ in r[:10]] for r in p.plain_bm25[split]]
        else:
            rankings += [
                fused_ranking(d, k, PLAIN_RRF) for d, k in zip(p.plain_dense[split], p.plain_bm25[split], strict=True)
            ]
    return rank_score(qs, rankings)


def choose(
    results: dict[str, dict[str, dict[str, RankScore]]], sets: Sequence[str], among: Sequence[str] | None = None
) -> str:
    """The setting (of ``among``, default all) with the best mean validation top-1 over ``sets``
    (mean validation MRR@10 breaks ties)."""

    def merit(label: str) -> tuple[float, float]:
        rows = [results[label][s]["dev"] for s in sets]
        return (round(sum(r.top1 for r in rows) / len(rows), 6), sum(r.mrr10 for r in rows) / len(rows))

    return max(among if among is not None else results, key=merit)


# The second stage (retriever.rerank) on top of a fold's fusion: its weights are tuned by
# coordinate ascent over RERANK_GRID on the other seven sets' train + validation questions (more
# questions than validation alone; the adapter's advantage on the train splits of five sets can only
# make the tuning trust the fused score more, i.e. re-rank less), each set weighing the same.
RERANK_DEPTHS = (10, 20)
RERANK_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
TUNE_SPLITS = ("train", "validation")


@dataclass(frozen=True)
class RerankArrays:
    """Per question, the best ``depth`` fused candidates: fused score (``-inf`` padding), the
    field coverages of ``retriever.rerank`` (computed among those candidates, as the retriever
    does) and whether each is an answer."""

    base: np.ndarray  # questions x depth
    cov: np.ndarray  # questions x depth x fields
    gold: np.ndarray  # questions x depth, bool


def rerank_arrays(p: Prepared, setting: Setting, splits: Sequence[str], depth: int, adapter: str) -> RerankArrays:
    f = setting.fusion
    rows: list[tuple[list[float], list[tuple[float, ...]], list[bool]]] = []
    for split in splits:
        dense = p.dense[signals(setting, adapter)][split]
        for question, d, kw in zip(p.questions[split], dense, p.bm25[split], strict=True):
            fused = fuse(
                [Scored(k, s, k) for k, s in d[: f.candidates]],
                [Scored(k, s, k) for k, s in kw[: f.candidates]],
                keyword_weight=f.keyword_weight,
                top_k=depth,
                method=f.method,
                rrf_k=f.rrf_k,
            )
            terms = frozenset(keyword_terms(question.question).split())
            cov = field_coverages(terms, [p.fields[s.key] for s in fused])
            answers = set(question.answers)
            rows.append(([s.score for s in fused], cov, [s.key in answers for s in fused]))
    base = np.full((len(rows), depth), -np.inf)
    cov_array = np.zeros((len(rows), depth, len(FIELDS)))
    gold = np.zeros((len(rows), depth), dtype=bool)
    for i, (scores, cov, hits) in enumerate(rows):
        base[i, : len(scores)] = scores
        if cov:
            cov_array[i, : len(cov)] = np.asarray(cov)
        gold[i, : len(hits)] = hits
    return RerankArrays(base, cov_array, gold)


def rerank_score(a: RerankArrays, weights: Sequence[float]) -> RankScore:
    """Top-1 / top-5 / MRR@10 of the re-ranked candidates (a question whose answer is not among
    them counts as a miss; with depth >= 10 that is what the fused top 10 gives too)."""
    scores = a.base + a.cov @ np.asarray(weights, dtype=float)
    return _ranked_score(scores, a.gold & np.isfinite(a.base))


def tune_rerank(arrays: dict[int, list[RerankArrays]]) -> Rerank:
    """Weights (and depth) with the best mean top-1 over the given sets (mean MRR@10 breaks ties),
    by coordinate ascent from all zero (off); a weight moves only for a strict gain."""

    def merit(arrs: list[RerankArrays], w: Sequence[float]) -> tuple[float, float]:
        rows = [rerank_score(a, w) for a in arrs]
        return (round(sum(r.top1 for r in rows) / len(rows), 6), round(sum(r.mrr10 for r in rows) / len(rows), 6))

    best: tuple[tuple[float, float], Rerank] | None = None
    for depth in RERANK_DEPTHS:
        w = [0.0] * len(FIELDS)
        current = merit(arrays[depth], w)
        for _ in range(4):
            moved = False
            for i in range(len(FIELDS)):
                for value in RERANK_GRID:
                    trial = [*w[:i], value, *w[i + 1 :]]
                    m = merit(arrays[depth], trial)
                    if m > current:
                        current, w, moved = m, trial, True
            if not moved:
                break
        chosen = Rerank(**dict(zip(FIELDS, w, strict=True)), depth=depth)
        if best is None or current > best[0]:
            best = (current, chosen)
    assert best is not None
    return best[1]


def rerank_label(r: Rerank) -> str:
    if not r.enabled:
        return "off"
    parts = [f"{name} {w:g}" for name, w in zip(FIELDS, r.weights, strict=True) if w > 0]
    return ", ".join(parts) + f"; depth {r.depth}"


# Held-out figures of the re-ranker: the test split, and validation + test where the test split
# is small (each of those questions is as unseen by a fold as the test ones).
HELD_OUT_GROUPS = {"test": ("test",), "validation+test": ("validation", "test")}


def rerank_lodo(
    prepared: dict[str, Prepared],
    settings: dict[str, Setting],
    lodo: dict[str, str],
    default: str,
    fold_adapters: dict[str, str],
) -> tuple[str, dict[str, Any]]:
    """Per held-out set: the fold's fusion and adapter, re-rank weights tuned on the other seven, the
    held-out figures with and without the re-ranker; then the default (tuned on all eight with the
    bundled adapter, scored on each set with that set's fold adapter). Markdown, JSON."""
    cache: dict[tuple[str, str, str, tuple[str, ...], int], RerankArrays] = {}

    def arrays(name: str, label: str, adapter: str, splits: tuple[str, ...], depth: int) -> RerankArrays:
        key = (name, label, adapter, splits, depth)
        if key not in cache:
            cache[key] = rerank_arrays(prepared[name], settings[label], splits, depth, adapter)
        return cache[key]

    def tuned(label: str, sets: Sequence[str], adapter: str) -> Rerank:
        return tune_rerank({d: [arrays(s, label, adapter, TUNE_SPLITS, d) for s in sets] for d in RERANK_DEPTHS})

    folds = {held: tuned(lodo[held], [s for s in DEV_SETS if s != held], fold_adapters[held]) for held in DEV_SETS}
    default_rerank = tuned(default, DEV_SETS, BUNDLED)
    lines = [
        "| held-out set | split (n) | re-rank weights (tuned on the other seven) | fused top-1 | re-ranked top-1 "
        "| plain RRF | re-ranked - plain RRF | fused top-5 | re-ranked top-5 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    payload: dict[str, Any] = {"folds": {}, "default": {"fusion": default, "rerank": rerank_label(default_rerank)}}
    for held in DEV_SETS:
        r = folds[held]
        for group, splits in HELD_OUT_GROUPS.items():
            a = arrays(held, lodo[held], fold_adapters[held], splits, r.depth)
            before, after = rerank_score(a, [0.0] * len(FIELDS)), rerank_score(a, r.weights)
            rrf = evaluate_plain_splits(prepared[held], "plain RRF", splits)
            lines.append(
                f"| {held} | {group} ({after.n}) | {rerank_label(r)} | {before.top1:.3f} | {after.top1:.3f} | "
                f"{rrf.top1:.3f} | {100 * (after.top1 - rrf.top1):+.1f} | {before.top5:.3f} | {after.top5:.3f} |"
            )
            payload["folds"].setdefault(held, {"rerank": rerank_label(r), "fusion": lodo[held]})[group] = {
                "fused_top1": round(before.top1, 4),
                "reranked_top1": round(after.top1, 4),
                "plain_rrf_top1": round(rrf.top1, 4),
                "n": after.n,
            }
    lines += [
        "",
        f"Default re-ranker (tuned on all eight, on the default fusion): **{rerank_label(default_rerank)}**.",
        "",
    ]
    lines += [
        "| set | split (n) | default fused top-1 | default + re-rank top-1 | plain RRF | difference |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in DEV_SETS:
        for group, splits in HELD_OUT_GROUPS.items():
            a = arrays(name, default, fold_adapters[name], splits, default_rerank.depth)
            before, after = rerank_score(a, [0.0] * len(FIELDS)), rerank_score(a, default_rerank.weights)
            rrf = evaluate_plain_splits(prepared[name], "plain RRF", splits)
            lines.append(
                f"| {name} | {group} ({after.n}) | {before.top1:.3f} | {after.top1:.3f} | {rrf.top1:.3f} | "
                f"{100 * (after.top1 - rrf.top1):+.1f} |"
            )
    payload["default"]["weights"] = dict(zip(FIELDS, default_rerank.weights, strict=True))
    payload["default"]["depth"] = default_rerank.depth
    return "\n".join(lines) + "\n", payload


# The two corpora that explain each other (an OpenAPI spec and the SDK calling it): their
# linked variants are scored with the chosen default beside the plain ones.
LINKED = ("rest", "functional")


def load_sets(build_dir: Path) -> dict[str, tuple[list[ApiDoc], dict[str, list[EvalQuestion]]]]:
    """Every dev set's docs and splits, plus ``<set>+links`` for the sets of ``LINKED``."""
    from apihelper.retriever.links import link_corpora
    from apihelper.retriever.loaders import load_corpus

    run.build_bfcl(build_dir)
    specs = {c.name: c for c in run.CORPORA}
    qsets = {s.name: s for s in run.SETS}
    out = {}
    for name in DEV_SETS:
        spec = specs[name]
        _, loaded = load_corpus(run.corpus_path(spec, build_dir), spec.fmt, include=list(spec.include) or None)
        questions = {
            split: run.questions_of(qsets[name], split, build_dir) for split in ("train", "validation", "test")
        }
        out[name] = (loaded.docs, questions)
    first, second = LINKED
    out[f"{first}+links"] = (link_corpora(out[first][0], out[second][0], second)[0], out[first][1])
    out[f"{second}+links"] = (link_corpora(out[second][0], out[first][0], first)[0], out[second][1])
    return out


def adapter_training_sets(
    loaded: dict[str, tuple[list[ApiDoc], dict[str, list[EvalQuestion]]]], build_dir: Path, cache: VectorCache
) -> dict[str, TrainingSet]:
    """The bundled adapter's training data, as ``train_adapter.py`` gives it to ``train-embedder``:
    per set of ``ADAPTER_SETS``, its train questions over its corpus (docs deduplicated by key, as
    ``train_embedder.run`` does; questions without an answer among them dropped), vectors from the
    cache (ingest's document vectors; questions embedded as documents, as ``train_embedder.run``
    embeds them)."""
    from apihelper.retriever.loaders import load_corpus

    specs = {c.name: c for c in run.CORPORA}
    out: dict[str, TrainingSet] = {}
    for name, corpus in ADAPTER_SETS.items():
        if corpus == name:
            all_docs = loaded[name][0]
        else:
            spec = specs[corpus]
            all_docs = load_corpus(run.corpus_path(spec, build_dir), spec.fmt)[1].docs
        unique: dict[str, ApiDoc] = {}
        for doc in all_docs:
            unique.setdefault(doc.key, doc)
        docs = list(unique.values())
        index = {doc.key: i for i, doc in enumerate(docs)}
        pairs = [(q.question, [index[a] for a in q.answers if a in index]) for q in loaded[name][1]["train"]]
        kept = [(text, positives) for text, positives in pairs if positives]
        out[name] = TrainingSet(name, cache.matrix([t for t, _ in kept]), [p for _, p in kept], doc_matrix(docs, cache))
        print(f"    adapter data {name}: {len(kept)} train questions over {len(docs)} docs", file=sys.stderr)
    return out


def fold_adapters(training: dict[str, TrainingSet], recipe: Recipe) -> dict[str, np.ndarray]:
    """Per set of ``ADAPTER_SETS``, the adapter trained on the other four (``fold-<set>``)."""
    out = {}
    for held in training:
        started = time.perf_counter()
        out[f"fold-{held}"] = train_matrix([s for name, s in training.items() if name != held], recipe)
        print(f"    fold adapter without {held}: {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return out


Results = dict[str, dict[str, dict[str, RankScore]]]  # setting label -> set -> group -> score


def score_grid(
    grid: Sequence[Setting],
    arrays: dict[tuple[str, str, tuple[str, bool]], Candidates],
    names: Sequence[str],
    adapter: str,
    shared: Results | None = None,
) -> Results:
    """Every setting on every set and group, "adapter on" meaning ``adapter``; adapter-off rows
    are taken from ``shared`` where given (they do not depend on the adapter)."""
    results: Results = {}
    for setting in grid:
        if shared is not None and not setting.adapter:
            results[setting.label] = shared[setting.label]
            continue
        results[setting.label] = {
            name: {
                group: fast_score(arrays[(name, group, signals(setting, adapter))], setting.fusion) for group in GROUPS
            }
            for name in names
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "apihelper-lodo")
    parser.add_argument("--out", type=Path, help="also write the Markdown tables here")
    parser.add_argument("--json-out", type=Path, help="write every setting's figures as JSON here")
    args = parser.parse_args(argv)
    if not run.SHARED.is_dir():
        print(f"{run.SHARED} is missing: LODO needs ../shared/corpora", file=sys.stderr)
        return 2

    from apihelper.retriever.adapter import QueryAdapter, bundled_adapter_path
    from apihelper.retriever.embedding import Embedder

    if [corpus for corpus, _ in ADAPTER_MANIFESTS.values()] != list(ADAPTER_SETS):
        raise AssertionError("ADAPTER_SETS no longer mirrors train_adapter.SETS")

    started = time.perf_counter()
    adapter_path = bundled_adapter_path()
    if adapter_path is None:
        print("the bundled query adapter is missing", file=sys.stderr)
        return 2
    adapter = QueryAdapter.load(adapter_path)
    embedder = Embedder()
    cache = VectorCache(args.cache / "vectors.npz", embedder.embed_documents)
    recipe = Recipe(**{k: v for k, v in adapter.manifest["recipe"].items() if k in Recipe.__dataclass_fields__})
    prepared: dict[str, Prepared] = {}
    with tempfile.TemporaryDirectory(prefix="apihelper-lodo-") as tmp:
        loaded = load_sets(Path(tmp))
        training = adapter_training_sets(loaded, Path(tmp), cache)
        cache.save()
    adapters = {BUNDLED: adapter.weight, **fold_adapters(training, recipe)}
    # The recipe reproduces the bundled adapter from the same data (float16 storage aside).
    rebuilt = np.abs(train_matrix(list(training.values()), recipe) - adapter.weight).max()
    print(f"    bundled adapter retrained from the cache: max |difference| {rebuilt:.4f}", file=sys.stderr)
    for name, (docs, questions) in loaded.items():
        print(f"  {name}: {len(docs)} docs, {sum(len(d.views) for d in docs)} views", file=sys.stderr)
        prepared[name] = prepare(name, docs, questions, cache, adapters)
        cache.save()
    # Held-out set -> the adapter its fold uses for "adapter on" (blind to it).
    fold_adapter = {held: f"fold-{held}" if held in ADAPTER_SETS else BUNDLED for held in DEV_SETS}

    grid = settings_grid()
    settings = {s.label: s for s in grid}
    arrays = {
        (name, group, signal): Candidates.of(
            [q for split in GROUPS[group] for q in p.questions[split]],
            [r for split in GROUPS[group] for r in p.dense[signal][split]],
            [r for split in GROUPS[group] for r in p.bm25[split]],
        )
        for name, p in prepared.items()
        for group in GROUPS
        for signal in p.dense
    }
    results = score_grid(grid, arrays, list(prepared), BUNDLED)
    by_adapter = {BUNDLED: results} | {
        a: score_grid(grid, arrays, list(prepared), a, results) for a in adapters if a != BUNDLED
    }
    # Per held-out set, every setting's figures as its fold sees them (blind "adapter on").
    blind = {held: by_adapter[fold_adapter[held]] for held in DEV_SETS}
    plain = {
        which: {name: {group: evaluate_plain(p, which, group) for group in GROUPS} for name, p in prepared.items()}
        for which in ("plain dense", "plain BM25", "plain RRF")
    }
    lodo = {held: choose(blind[held], [s for s in DEV_SETS if s != held]) for held in DEV_SETS}
    # The rule: a setting below plain RRF on any (blind) held-out set is not the default;
    # among the others, the best on validation (all eight). Where none is left, validation alone.
    validation_choice = choose(results, DEV_SETS)
    holding = never_below_rrf(blind, plain, list(settings))
    default = choose(results, DEV_SETS, holding) if holding else validation_choice
    # The same choice among settings without the adapter.
    unadapted = [label for label, s in settings.items() if not s.adapter]
    lodo_unadapted = {held: choose(results, [s for s in DEV_SETS if s != held], unadapted) for held in DEV_SETS}
    for name, p in prepared.items():  # the numpy shortcut must agree with fuse itself
        for group in GROUPS:
            slow = evaluate_setting(p, settings[default], group)
            if abs(slow.top1 - results[default][name][group].top1) > 1e-9:
                raise AssertionError(
                    f"{name}/{group}: fuse gives {slow.top1}, the shortcut {results[default][name][group].top1}"
                )
    text = markdown(blind, results, plain, lodo, default, time.perf_counter() - started)
    text += rule_table(blind, results, plain, settings, validation_choice)
    text += links_table(blind, plain, default)
    text += "\nWithout the query adapter (chosen among adapter-off settings the same way):\n\n"
    text += (
        markdown(blind, results, plain, lodo_unadapted, choose(results, DEV_SETS, unadapted), 0.0).split("\n\n")[0]
        + "\n"
    )
    text += views_table(blind, default)
    rerank_text, rerank_payload = rerank_lodo(
        {name: prepared[name] for name in DEV_SETS}, settings, lodo, default, fold_adapter
    )
    text += "\nSecond stage (retriever.rerank), leave-one-distribution-out:\n\n" + rerank_text
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    if args.json_out:
        payload = {
            "lodo": lodo,
            "default": default,
            "validation_choice": validation_choice,
            "default_fusion": _fusion_json(settings[default]),
            "settings": {label: _json(r) for label, r in results.items()},
            "blind_test": {
                label: {held: _json(blind[held][label])[held]["test"] for held in DEV_SETS} for label in results
            },
            "plain": {which: _json(r) for which, r in plain.items()},
            "rerank": rerank_payload,
        }
        args.json_out.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return 0


def _fusion_json(setting: Setting) -> dict[str, Any]:
    f = setting.fusion
    return {
        "adapter": setting.adapter,
        "views": setting.views,
        "method": f.method.value,
        "keyword_weight": f.keyword_weight,
        "rrf_k": f.rrf_k,
        "candidates": f.candidates,
    }


def _json(rows: dict[str, dict[str, RankScore]]) -> dict[str, Any]:
    return {
        name: {
            g: {"n": s.n, "top1": round(s.top1, 4), "top5": round(s.top5, 4), "mrr": round(s.mrr10, 4)}
            for g, s in r.items()
        }
        for name, r in rows.items()
    }


def views_table(blind: dict[str, Results], default: str) -> str:
    """Held-out test top-1 / top-5 (each fold's adapter) of the default's fusion with views off and
    on, with the adapter and without it."""
    lines = ["", "| setting | views | " + " | ".join(DEV_SETS) + " |", "|---|---|" + "---:|" * len(DEV_SETS)]
    base = default.replace(", views on", ", views off").replace("adapter off", "adapter on")
    for label in (base, base.replace("adapter on", "adapter off")):
        for views in ("off", "on"):
            row = label.replace("views off", f"views {views}")
            cells = [f"{blind[s][row][s]['test'].top1:.3f} / {blind[s][row][s]['test'].top5:.3f}" for s in DEV_SETS]
            lines.append(f"| {row.rsplit(', views', 1)[0]} | {views} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def links_table(blind: dict[str, Results], plain: Results, default: str) -> str:
    """The default setting on the linked corpora against the unlinked ones (dev and test; the
    set's fold adapter)."""
    lines = [
        "",
        "| set | split | n | default top-1 unlinked | linked | top-5 unlinked | linked | plain RRF top-1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in LINKED:
        for group in GROUPS:
            bare, linked = blind[name][default][name][group], blind[name][default][f"{name}+links"][group]
            lines.append(
                f"| {name} | {group} | {bare.n} | {bare.top1:.3f} | {linked.top1:.3f} | {bare.top5:.3f} | "
                f"{linked.top5:.3f} | {plain['plain RRF'][name][group].top1:.3f} |"
            )
    return "\n".join(lines) + "\n"


def never_below_rrf(blind: dict[str, Results], plain: Results, labels: Sequence[str]) -> list[str]:
    """The settings whose blind held-out test top-1 is at or above plain RRF's on every set."""
    return [
        label
        for label in labels
        if all(blind[s][label][s]["test"].top1 >= plain["plain RRF"][s]["test"].top1 - 1e-9 for s in DEV_SETS)
    ]


def rule_table(
    blind: dict[str, Results], results: Results, plain: Results, settings: dict[str, Setting], validation_choice: str
) -> str:
    """The issue's rule on the blind held-out figures: how many settings are never below plain RRF
    on any held-out test split, how many also reach plain RRF + 3 points on six of eight, and the
    validation choice (all eight) among all settings and among those never below."""

    def gains(label: str) -> list[float]:
        return [blind[s][label][s]["test"].top1 - plain["plain RRF"][s]["test"].top1 for s in DEV_SETS]

    def mean(label: str) -> float:
        return sum(results[label][s]["dev"].top1 for s in DEV_SETS) / len(DEV_SETS)

    holding = never_below_rrf(blind, plain, list(settings))
    accepted = [label for label in holding if sum(g >= 0.03 - 1e-9 for g in gains(label)) >= 6]
    lines = [
        "",
        f"Blind held-out test splits against plain RRF: {len(holding)} of {len(settings)} settings are never "
        f"below it; {len(accepted)} are also >= +3 points on six of eight.",
        "",
        "| setting (blind test top-1) | mean validation top-1 | " + " | ".join(DEV_SETS) + " |",
        "|---|---:|" + "---:|" * len(DEV_SETS),
    ]
    shown = [validation_choice] + ([choose(results, DEV_SETS, holding)] if holding else [])
    for label in dict.fromkeys(shown):
        lines.append(
            f"| {label} | {mean(label):.4f} | "
            + " | ".join(f"{blind[s][label][s]['test'].top1:.3f}" for s in DEV_SETS)
            + " |"
        )
    return "\n".join(lines) + "\n"


def markdown(
    blind: dict[str, Results],
    results: Results,
    plain: Results,
    lodo: dict[str, str],
    default: str,
    wall_s: float,
) -> str:
    """The LODO table: per held-out set the fold's choice and the default, both scored with the
    fold's adapter (blind), the default with the bundled adapter beside them, and plain rows."""
    lines = [
        "| held-out set (test n) | chosen on the other seven | LODO top-1 | default top-1 | default, bundled adapter "
        "| plain RRF | plain dense | plain BM25 | LODO - plain RRF | default - plain RRF |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for held in DEV_SETS:
        chosen = blind[held][lodo[held]][held]["test"]
        dflt = blind[held][default][held]["test"]
        rrf = plain["plain RRF"][held]["test"]
        lines.append(
            f"| {held} ({chosen.n}) | {lodo[held]} | {chosen.top1:.3f} | {dflt.top1:.3f} | "
            f"{results[default][held]['test'].top1:.3f} | {rrf.top1:.3f} | "
            f"{plain['plain dense'][held]['test'].top1:.3f} | {plain['plain BM25'][held]['test'].top1:.3f} | "
            f"{100 * (chosen.top1 - rrf.top1):+.1f} | {100 * (dflt.top1 - rrf.top1):+.1f} |"
        )
    lines += [
        "",
        f"Default (of the settings never below plain RRF on a blind held-out set, the best on all eight "
        f"validation splits; the best on validation alone where none is): **{default}**.",
        "",
    ]
    lines += [
        "| setting (blind test top-1) | " + " | ".join(DEV_SETS) + " |",
        "|---|" + "---:|" * len(DEV_SETS),
    ]
    shown = [default, *dict.fromkeys(lodo.values())]
    for label in dict.fromkeys(shown):
        lines.append(f"| {label} | " + " | ".join(f"{blind[s][label][s]['test'].top1:.3f}" for s in DEV_SETS) + " |")
    for which, rows in plain.items():
        lines.append(f"| {which} | " + " | ".join(f"{rows[s]['test'].top1:.3f}" for s in DEV_SETS) + " |")
    lines += [
        "",
        f"{len(results)} settings; {os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.1f}; "
        f"whole run {wall_s:.0f}s.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
