"""Plain baselines for the retrieval table, computed in memory on the same docs and questions.

- *plain dense*: MiniLM (the same bundled model) over each doc's ``text``, the query embedded as
  it is, cosine similarity; no summary mixing, no index text, no adapter.
- *plain BM25*: Okapi BM25 (k1 = 1.2, b = 0.75, Milvus' defaults) over lower-cased alphanumeric
  tokens of ``text`` and of the query; no stemming, no stop words, no identifier splitting.

Both rank a corpus exhaustively, so they are the "no tricks" figures our modes must beat.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from apihelper.retriever.embedding import TextEmbedder
from apihelper.retriever.types import ApiDoc

_TOKEN = re.compile(r"[a-z0-9]+")


def plain_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class PlainBM25:
    """Okapi BM25 over ``plain_tokens`` of the docs' text (or over ``texts``, split by ``tokens``)."""

    def __init__(
        self,
        docs: Sequence[ApiDoc],
        *,
        k1: float = 1.2,
        b: float = 0.75,
        texts: Sequence[str] | None = None,
        tokens: Callable[[str], list[str]] = plain_tokens,
    ) -> None:
        self._keys = [d.key for d in docs]
        self._tokens = tokens
        self._tf = [Counter(tokens(t)) for t in (texts if texts is not None else [d.text for d in docs])]
        lengths = [sum(tf.values()) for tf in self._tf]
        self._norm = [k1 * (1 - b + b * n / (sum(lengths) / len(lengths) or 1.0)) for n in lengths]
        self._k1 = k1
        df: Counter[str] = Counter(t for tf in self._tf for t in tf)
        n = len(docs)
        self._idf = {t: math.log(1 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}

    def scores(self, query: str) -> list[tuple[int, float]]:
        """(doc index, BM25 score) of every doc that matches a query term, best first."""
        terms = [t for t in self._tokens(query) if t in self._idf]
        scored = []
        for i, tf in enumerate(self._tf):
            score = sum(self._idf[t] * tf[t] * (self._k1 + 1) / (tf[t] + self._norm[i]) for t in terms if t in tf)
            if score > 0:
                scored.append((i, score))
        scored.sort(key=lambda pair: (-pair[1], pair[0]))
        return scored

    def rank(self, query: str, k: int) -> list[str]:
        return [self._keys[i] for i, _ in self.scores(query)[:k]]


class PlainDense:
    """Cosine similarity of raw MiniLM embeddings of the docs' text and of the query."""

    def __init__(self, docs: Sequence[ApiDoc], embedder: TextEmbedder) -> None:
        self._keys = [d.key for d in docs]
        self._embedder = embedder
        self._vectors = np.asarray(embedder.embed_documents([d.text for d in docs]), dtype=np.float32)

    def rank_many(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """Rankings of many queries (embedded in one batch)."""
        q = np.asarray(self._embedder.embed_documents(list(queries)), dtype=np.float32)
        scores = q @ self._vectors.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[self._keys[i] for i in row] for row in order]


__all__ = ["PlainBM25", "PlainDense", "plain_tokens"]
