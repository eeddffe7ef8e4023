"""The async Retriever the service uses: Milvus search plus query embedding, off the event loop.

:class:`MilvusRetriever` implements :class:`retriever.types.Retriever`. Every blocking call
(query embedding, pymilvus) runs in a worker thread via ``asyncio.to_thread``; searches over
several corpora run concurrently and are merged by score, best first. Hybrid search pools the
dense and BM25 candidates of every corpus and fuses them (``retriever.fusion``, ``DEFAULT_FUSION``
unless another is passed); dense scores are cosine similarities; keyword scores are BM25 (comparable only
roughly across corpora).

Corpora ingested after start-up are seen without a restart: the corpus list is cached for
``corpora_ttl_s`` seconds and re-read at once when a request names a corpus not in the cache.
(With Milvus Lite, ingest and service cannot share one ``.db`` from two processes, since Lite locks
its data directory; a Milvus server, or ``milvus-lite server``, has no such limit.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from apihelper.errors import ConfigurationError, UnknownCorpusError
from apihelper.retriever.embedding import TextEmbedder
from apihelper.retriever.fusion import DEFAULT_FUSION, Fusion, fuse_hits
from apihelper.retriever.milvus_store import MilvusStore, hybrid_candidates
from apihelper.retriever.rerank import OFF, FieldCache, Rerank
from apihelper.retriever.types import ApiDoc, CorpusInfo, RetrievalMode, RetrievalResult, RetrievedDoc

log = logging.getLogger(__name__)

# How long the corpus list is reused: a corpus ingested by another process is searched by a
# request that names no corpus within this long (one that names it is searched at once).
DEFAULT_CORPORA_TTL_SECONDS = 5.0


class MilvusRetriever:
    """Retriever over the apihelper collections of one Milvus, with one embedding model."""

    def __init__(
        self,
        store: MilvusStore,
        embedder: TextEmbedder,
        *,
        corpora_ttl_s: float = DEFAULT_CORPORA_TTL_SECONDS,
        fusion: Fusion = DEFAULT_FUSION,
        rerank: Rerank = OFF,
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._fusion = fusion
        self._rerank = rerank
        self._fields = FieldCache()
        self._ttl = corpora_ttl_s
        self._infos: dict[str, CorpusInfo] = {}  # corpus -> as last listed
        self._infos_at = float("-inf")
        self._infos_lock = asyncio.Lock()
        self._warned: set[tuple[str, str]] = set()  # (corpus, its embedding model) warned about

    async def corpus_names(self, *, refresh: bool = False) -> list[str]:
        """Names of the ingested corpora (cached for ``corpora_ttl_s``)."""
        return sorted(await self._corpus_infos(refresh=refresh))

    async def _corpus_infos(self, *, refresh: bool = False) -> dict[str, CorpusInfo]:
        async with self._infos_lock:
            if refresh or time.monotonic() - self._infos_at > self._ttl:
                listed = await asyncio.to_thread(self._store.list_corpora)
                self._infos = {info.name: info for info in listed}
                self._infos_at = time.monotonic()
            return dict(self._infos)

    async def _resolve(self, corpora: Sequence[str] | None) -> list[str]:
        known = await self.corpus_names()
        if corpora is None:
            return known
        wanted = list(dict.fromkeys(corpora))  # keep order, drop repeats
        if any(c not in known for c in wanted):
            known = await self.corpus_names(refresh=True)  # maybe ingested since the last look
            for corpus in wanted:
                if corpus not in known:
                    raise UnknownCorpusError(corpus)
        return wanted

    def _embedded_alike(self, corpus: str) -> bool:
        """Whether ``corpus`` was embedded with the model queries are embedded with, so that its
        vectors can be compared with a query's (unknown: assumed so). A corpus embedded with
        another model is searched by keywords only until it is re-ingest: its vectors may not
        even have the query's dimension, and where they do, their distances mean nothing."""
        info = self._infos.get(corpus)
        model = info.embedding_model if info is not None else ""
        if not model or model == self._embedder.model_name:
            return True
        if (corpus, model) not in self._warned:
            self._warned.add((corpus, model))
            log.warning(
                "corpus %s was embedded with %s but queries use %s: it is searched by keywords only "
                "until it is re-ingested",
                corpus,
                model,
                self._embedder.model_name,
            )
        return False

    async def retrieve(
        self,
        query: str,
        *,
        corpora: Sequence[str] | None,
        top_k: int,
        mode: RetrievalMode,
    ) -> RetrievalResult:
        """Best ``top_k`` docs across ``corpora`` (all when None), best first.

        Raises UnknownCorpusError for a corpus that is not ingested and
        RetrieverUnavailableError when Milvus cannot answer. Mode NONE, ``top_k <= 0`` or a blank
        query give an empty result (unknown corpora are still reported for NONE).
        """
        names = await self._resolve(corpora)
        if mode is RetrievalMode.DENSE:
            alike = [name for name in names if self._embedded_alike(name)]
            if corpora is not None and len(alike) < len(names):
                stale = next(name for name in names if name not in alike)
                raise ConfigurationError(
                    f"corpus {stale!r} was embedded with another model than this service's "
                    f"{self._embedder.model_name}: re-ingest it, or search it in keyword or hybrid mode"
                )
            names = alike
        if mode is RetrievalMode.NONE or top_k <= 0 or not query.strip() or not names:
            return RetrievalResult(docs=[])

        if mode is RetrievalMode.HYBRID:
            per_corpus, embed_seconds, search_seconds = await self._hybrid(query, names, top_k)
        else:
            embed_seconds = 0.0
            vector: list[float] | None = None
            if mode is RetrievalMode.DENSE:
                started = time.perf_counter()
                vector = await asyncio.to_thread(self._embedder.embed_query, query)
                embed_seconds = time.perf_counter() - started
            started = time.perf_counter()
            per_corpus = await asyncio.gather(
                *(
                    asyncio.to_thread(
                        self._store.search, name, mode=mode, query_text=query, query_vector=vector, top_k=top_k
                    )
                    for name in names
                )
            )
            search_seconds = time.perf_counter() - started
        merged: list[RetrievedDoc] = [hit for hits in per_corpus for hit in hits]
        # Stable sort: equal scores keep the order the corpora were named in.
        merged.sort(key=lambda hit: hit.score, reverse=True)
        return RetrievalResult(docs=merged[:top_k], embed_seconds=embed_seconds, search_seconds=search_seconds)

    async def _hybrid(
        self, query: str, names: Sequence[str], top_k: int
    ) -> tuple[list[list[RetrievedDoc]], float, float]:
        """Hybrid search: embed, then the dense and BM25 candidates of every corpus, fused (and
        re-ranked) in one worker thread. Returns the results (one merged list), embedding
        seconds and search seconds.
        """
        limit = hybrid_candidates(top_k, self._fusion.candidates)
        started = time.perf_counter()
        vector = await asyncio.to_thread(self._embedder.embed_query, query)
        embedded = time.perf_counter()
        alike = {name: self._embedded_alike(name) for name in names}

        def search_all() -> list[RetrievedDoc]:
            # Candidates of every corpus are pooled before fusion, so scores compare across corpora.
            dense: list[RetrievedDoc] = []
            keyword: list[RetrievedDoc] = []
            for name in names:
                if alike[name]:
                    dense += self._store.search(
                        name, mode=RetrievalMode.DENSE, query_text=query, query_vector=vector, top_k=limit
                    )
                keyword += self._store.search(
                    name, mode=RetrievalMode.KEYWORD, query_text=query, query_vector=None, top_k=limit
                )
            return fuse_hits(
                dense, keyword, top_k, query=query, fusion=self._fusion, rerank=self._rerank, fields_of=self._fields
            )

        # One thread for all corpora and both searches: running the BM25 search beside the
        # embedding gained nothing measurable on 2 shared cores (docs/retrieval.md), and one
        # thread keeps a single search at a time on a Milvus that is reloading a collection.
        hits = await asyncio.to_thread(search_all)
        return [hits], embedded - started, time.perf_counter() - embedded

    async def list_corpora(self) -> list[CorpusInfo]:
        return sorted((await self._corpus_infos(refresh=True)).values(), key=lambda info: info.name)

    async def corpus_docs(self, corpus: str, *, limit: int | None = None) -> list[ApiDoc]:
        """Every doc of ``corpus`` (at most ``limit``), read in pages in a worker thread.

        Raises UnknownCorpusError for a corpus that is not ingested and
        RetrieverUnavailableError when Milvus cannot answer.
        """
        await self._resolve([corpus])
        return await asyncio.to_thread(self._store.corpus_docs, corpus, limit=limit)

    async def check_health(self) -> None:
        """Return when Milvus answers and the collections in use are loaded (reloading those a
        Milvus restart released); raise RetrieverUnavailableError otherwise."""
        await asyncio.to_thread(self._store.ping)
        await asyncio.to_thread(self._store.reload_released)

    async def close(self) -> None:
        await asyncio.to_thread(self._store.close)


async def open_retriever(
    uri: str,
    token: str | None = None,
    embedder: TextEmbedder | None = None,
    *,
    corpora_ttl_s: float = DEFAULT_CORPORA_TTL_SECONDS,
    timeout_s: float = 10.0,
    warm_up: bool = True,
    query_adapter: str | Path = "none",
    rerank: Rerank = OFF,
) -> MilvusRetriever:
    """Connect to Milvus (Lite path or server URI) and return a ready retriever.

    ``embedder`` defaults to the bundled MiniLM :class:`retriever.embedding.Embedder` with the
    query adapter ``query_adapter`` ("bundled", "none" or a file; ``retriever.adapter``); with
    ``warm_up`` its model is loaded now (in a thread) so the first request is not slow.
    Raises RetrieverUnavailableError when Milvus cannot be reached, ConfigurationError for a bad
    URI or model. ``rerank``: the second stage (``retriever.rerank``; off by default). Corpora built with another embedding model are logged (their dense and hybrid
    searches would compare vectors of different models).
    """
    if embedder is None:
        from apihelper.retriever.adapter import query_embedder
        from apihelper.retriever.embedding import Embedder

        embedder = query_embedder(Embedder(), query_adapter)
    store = await asyncio.to_thread(MilvusStore, uri, token, timeout_s=timeout_s)
    retriever = MilvusRetriever(store, embedder, corpora_ttl_s=corpora_ttl_s, rerank=rerank)
    try:
        if warm_up:
            warm = getattr(embedder, "warm_up", None)
            if callable(warm):
                await asyncio.to_thread(warm)
        for info in await retriever.list_corpora():
            if info.embedding_model != embedder.model_name:
                log.warning(
                    "corpus %s was embedded with %s but queries use %s; re-ingest it",
                    info.name,
                    info.embedding_model,
                    embedder.model_name,
                )
    except BaseException:
        await retriever.close()
        raise
    return retriever
