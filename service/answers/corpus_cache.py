"""What the verdict knows of whole corpora: their versions and catalogs, shared by every request.

An answer's calls are checked against the docs retrieved for the request and against the whole
corpora its sources came from (``apihelper.service.answers.check``), so that a real API retrieval
missed is not called a hallucination. :class:`CorpusCache` is what the pipeline asks: it starts a
catalog as soon as the sources are known (``warm``), checks the finished answer (``check``) and
says which version of each corpus that was (``infos``). Under it:

- corpus versions (last ingest times) come from ``list_corpora``, reused for
  ``CORPUS_VERSIONS_TTL_SECONDS``, one listing at a time;

- a corpus' docs are read through the Retriever once per *version* (its last ingest time, as
  listed by ``list_corpora``); a re-ingest gives a new version, hence a fresh read, and the
  old version's docs and catalogs are dropped;
- one read and one build at a time: concurrent requests share the in-flight task (200 requests
  arriving after a re-ingest cause one read, not 200);
- the :class:`ApiCatalog` is built in a worker thread (CPU work that grows with the corpus);
  answers whose sources come from several corpora get one catalog over all of them, cached
  per set of (corpus, version);
- when a corpus cannot be read (Milvus down) or holds more than ``MAX_CORPUS_DOCS`` docs, or a
  build takes longer than ``CATALOG_WAIT_SECONDS``, the answer is checked against the retrieved
  docs only (the verdict then says so). That is logged once at WARNING; nothing here fails a
  request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from apihelper.errors import ApiHelperError, UnknownCorpusError
from apihelper.retriever.types import ApiDoc, CorpusInfo, RetrievedDoc, Retriever
from apihelper.service.answers.check import ApiCatalog, CheckedAnswer, check_answer, check_parsed
from apihelper.service.answers.parse import ParsedAnswer
from apihelper.service.prompts import PromptFormat

log = logging.getLogger(__name__)

# Bigger corpora are validated against the retrieved docs only. Measured on 2 cores with Milvus
# Lite: a corpus reads at about 4000 docs/s and takes 5-10 KB of memory per doc (docs plus
# catalog), so 100k docs cost ~25 s of reading and ~1 GB, per version held. Past that, a service
# that answers within seconds of a re-ingest and fits beside the model is worth more than the
# catalog.
MAX_CORPUS_DOCS = 100_000
# After a failed read, requests use the retrieved docs only for this long before one tries again:
# with Milvus down, every completion would otherwise wait for a failing read.
READ_RETRY_SECONDS = 30.0
# Catalogs kept per set of corpora (an answer's sources may come from any subset of them).
MAX_CACHED_CATALOGS = 16
# How long corpus versions (last ingest times) are reused before Milvus is asked again.
CORPUS_VERSIONS_TTL_SECONDS = 5.0
# How long a completion waits for its corpus catalog (only the first requests after a re-ingest
# wait: reading runs at ~4000 docs/s on 2 cores, and started with the sources). Past it the
# answer is checked against the retrieved docs only, and says so, while the build goes on.
CATALOG_WAIT_SECONDS = 10.0
# Answers are checked on the event loop against catalogs up to this size (a few ms: an unknown API
# is compared with every key, ~3 us each); against bigger ones in a worker thread.
INLINE_CHECK_MAX_DOCS = 2000


@dataclass(frozen=True)
class CorpusVersion:
    """A corpus as listed: its name, version (last ingest time, "" when unknown) and size."""

    name: str
    version: str
    doc_count: int

    @classmethod
    def of(cls, info: CorpusInfo) -> CorpusVersion:
        return cls(info.name, corpus_version(info), info.doc_count)


def corpus_version(info: CorpusInfo) -> str:
    """What a re-ingest changes: the last ingest time (ISO 8601), "" when the store has none."""
    return info.last_ingest.isoformat() if info.last_ingest is not None else ""


@dataclass(frozen=True)
class _Read:
    docs: tuple[ApiDoc, ...] | None  # None: not available (read failed, or too big)
    retry_at: float = math.inf  # monotonic time after which a failed read may be tried again


_CatalogKey = frozenset[tuple[str, str]]  # (corpus, version) of every corpus in the catalog


class CorpusCatalogs:
    """Per-version corpus catalogs for validation, built on demand and cached."""

    def __init__(
        self,
        retriever: Retriever,
        *,
        max_docs: int = MAX_CORPUS_DOCS,
        read_retry_s: float = READ_RETRY_SECONDS,
        max_catalogs: int = MAX_CACHED_CATALOGS,
    ) -> None:
        self._retriever = retriever
        self._max_docs = max_docs
        self._read_retry_s = read_retry_s
        self._max_catalogs = max_catalogs
        self._reads: dict[str, tuple[str, asyncio.Task[_Read]]] = {}  # corpus -> (version, read)
        self._catalogs: OrderedDict[_CatalogKey, asyncio.Task[ApiCatalog | None]] = OrderedDict()
        self._warned: set[tuple[str, ...]] = set()

    def warm(self, corpora: Iterable[CorpusVersion]) -> None:
        """Start building the catalog of ``corpora`` if it is not built or building; no wait."""
        wanted = list(corpora)
        if wanted:
            self._catalog_task(wanted)

    def keep_only(self, corpora: Iterable[str]) -> None:
        """Drop what is held for corpora no longer listed (dropped ones): their docs are memory."""
        listed = set(corpora)
        for name in [n for n in self._reads if n not in listed]:
            version, _ = self._reads.pop(name)
            self._forget(name, version)

    async def get(self, corpora: Iterable[CorpusVersion], *, timeout_s: float | None = None) -> ApiCatalog | None:
        """The catalog of every doc of ``corpora``, or None (validate against the retrieved docs
        only) when there are none, one cannot be read, or the build outlasts ``timeout_s``.
        Raises nothing but the caller's own cancellation, which leaves the shared build running."""
        wanted = list(corpora)
        if not wanted:
            return None
        task = self._catalog_task(wanted)
        if task.done() and not task.cancelled():
            return task.result()  # the common case: built; no timer, no shield on the hot path
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            self._warn_once(
                ("slow", *sorted(f"{c.name}@{c.version}" for c in wanted)),
                "the validation catalog of %s is still building after %.0f s; this answer was checked "
                "against the retrieved docs only (the build goes on for later requests)",
                ", ".join(sorted(c.name for c in wanted)),
                timeout_s,
            )
            return None

    def tasks(self) -> list[asyncio.Task[object]]:
        """The reads and builds not finished yet."""
        held: list[asyncio.Task[object]] = [*(task for _, task in self._reads.values()), *self._catalogs.values()]
        return [task for task in held if not task.done()]

    # ------------------------------------------------------------------------------ internals

    def _catalog_task(self, corpora: Sequence[CorpusVersion]) -> asyncio.Task[ApiCatalog | None]:
        key: _CatalogKey = frozenset((c.name, c.version) for c in corpora)
        task = self._catalogs.get(key)
        if task is not None and not (task.done() and (task.cancelled() or task.result() is None)):
            self._catalogs.move_to_end(key)
            return task
        # New, or unavailable last time: ask again (a failed read is retried only once its
        # retry time has come, so this is cheap during an outage).
        reads = [self._read_task(c) for c in sorted(corpora, key=lambda c: c.name)]
        task = asyncio.create_task(self._build(reads), name="apihelper-corpus-catalog")
        self._catalogs[key] = task
        self._catalogs.move_to_end(key)
        while len(self._catalogs) > self._max_catalogs:
            self._catalogs.popitem(last=False)  # a request still waiting on it keeps its own reference
        return task

    def _read_task(self, corpus: CorpusVersion) -> asyncio.Task[_Read]:
        held = self._reads.get(corpus.name)
        if held is not None:
            version, task = held
            if version == corpus.version and not (task.done() and self._retry_due(task)):
                return task
            if version != corpus.version:
                self._forget(corpus.name, version)  # re-ingested: the old version's catalogs are stale
        task = asyncio.create_task(self._read(corpus), name=f"apihelper-corpus-read-{corpus.name}")
        self._reads[corpus.name] = (corpus.version, task)
        return task

    @staticmethod
    def _retry_due(task: asyncio.Task[_Read]) -> bool:
        return task.cancelled() or (task.result().docs is None and time.monotonic() >= task.result().retry_at)

    def _forget(self, corpus: str, version: str) -> None:
        for key in [k for k in self._catalogs if (corpus, version) in k]:
            del self._catalogs[key]

    async def _read(self, corpus: CorpusVersion) -> _Read:
        if corpus.doc_count > self._max_docs:
            self._warn_too_big(corpus, corpus.doc_count)
            return _Read(None)
        started = time.perf_counter()
        try:
            # One more than accepted: a listed doc count may be stale, the read itself is not.
            docs = await self._retriever.corpus_docs(corpus.name, limit=self._max_docs + 1)
        except Exception as exc:  # Milvus down, corpus dropped, or a bug: never the request's failure
            self._warn_once(
                ("unavailable", corpus.name),
                "cannot read corpus %s for validation (%s); answers are checked against the retrieved "
                "docs only, retrying in %.0f s",
                corpus.name,
                exc if isinstance(exc, ApiHelperError) else f"{type(exc).__name__}: {exc}",
                self._read_retry_s,
                exc_info=not isinstance(exc, ApiHelperError),
            )
            return _Read(None, time.monotonic() + self._read_retry_s)
        if len(docs) > self._max_docs:
            self._warn_too_big(corpus, len(docs))
            return _Read(None)
        self._warned.discard(("unavailable", corpus.name))
        log.info(
            "read corpus %s (version %s) for validation: %d docs in %.2f s",
            corpus.name,
            corpus.version or "unknown",
            len(docs),
            time.perf_counter() - started,
        )
        return _Read(tuple(docs))

    async def _build(self, reads: Sequence[asyncio.Task[_Read]]) -> ApiCatalog | None:
        results = [await asyncio.shield(read) for read in reads]  # a read may serve other catalogs
        parts = [r.docs for r in results]
        if any(p is None for p in parts):
            return None  # a catalog missing a corpus would call that corpus' APIs unknown
        # Corpora in name order: a key in two of them resolves to the first (ApiCatalog keeps
        # the first copy), the same way for every request.
        docs = [doc for part in parts if part is not None for doc in part]
        try:
            return await asyncio.to_thread(lambda: ApiCatalog(docs).prepare())
        except Exception:
            log.exception("building the validation catalog failed")
            return None

    def _warn_too_big(self, corpus: CorpusVersion, count: int) -> None:
        self._warn_once(
            ("too_big", corpus.name, corpus.version),
            "corpus %s has %d docs, more than the %d read for validation; its answers are checked "
            "against the retrieved docs only",
            corpus.name,
            count,
            self._max_docs,
        )

    def _warn_once(self, key: tuple[str, ...], message: str, *args: object, exc_info: bool = False) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args, exc_info=exc_info)


class CorpusCache:
    """Corpus versions and validation catalogs for the pipeline; see the module docstring."""

    def __init__(
        self, retriever: Retriever, catalogs: CorpusCatalogs | None = None, *, base_urls: Sequence[str] = ()
    ) -> None:
        self._retriever = retriever
        self._base_urls = tuple(base_urls)  # where the APIs are served beside their specs' servers
        self._catalogs = catalogs or CorpusCatalogs(retriever)
        self._infos: dict[str, CorpusInfo] = {}  # corpus -> as last listed
        self._infos_at = -math.inf
        self._infos_lock = asyncio.Lock()  # one list_corpora at a time; the others use its answer
        self._background: set[asyncio.Task[None]] = set()  # strong references to warm-ups

    def warm(self, corpora: set[str]) -> None:
        """Start the catalog of ``corpora`` now, so that a read after a re-ingest overlaps
        generation; ``check`` then waits for the same shared build."""
        if not corpora:
            return
        if self._fresh(corpora):
            self._catalogs.warm(CorpusVersion.of(self._infos[c]) for c in corpora)
            return

        async def warm() -> None:
            try:
                infos = await self.infos(corpora)
            except Exception:  # the completion asks again and reports it there
                return
            if corpora <= set(infos):
                self._catalogs.warm(CorpusVersion.of(i) for i in infos.values())

        task = asyncio.create_task(warm(), name="apihelper-catalog-warm-up")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def infos(self, corpora: set[str]) -> dict[str, CorpusInfo]:
        """The listed info (version: last ingest time) of each of ``corpora`` that exists, cached
        briefly: a re-ingest shows within seconds."""
        if not corpora:
            return {}
        if not self._fresh(corpora):
            async with self._infos_lock:
                if not self._fresh(corpora):  # not refreshed while this request waited
                    listed = await self._retriever.list_corpora()
                    self._infos = {i.name: i for i in listed}
                    self._infos_at = time.monotonic()
                    self._catalogs.keep_only(self._infos)
        return {c: self._infos[c] for c in corpora if c in self._infos}

    async def catalog(self, docs: Sequence[RetrievedDoc], infos: dict[str, CorpusInfo]) -> ApiCatalog | None:
        """Every doc of the corpora ``docs`` came from, or None when that cannot be had in
        ``CATALOG_WAIT_SECONDS`` (a corpus not listed, not readable, too big, still building)."""
        corpora = {d.corpus for d in docs}
        if not corpora or not corpora <= set(infos):  # a corpus not listed (dropped) has no catalog
            return None
        return await self._catalogs.get((CorpusVersion.of(infos[c]) for c in corpora), timeout_s=CATALOG_WAIT_SECONDS)

    async def check(
        self,
        fmt: PromptFormat,
        text: str,
        docs: Sequence[RetrievedDoc],
        infos: dict[str, CorpusInfo],
        *,
        question: str = "",
    ) -> CheckedAnswer:
        """The verdict, against the retrieved docs and the catalog of the sources' corpora (the
        retrieved docs only when that catalog cannot be had; the reasons then say so), with the
        values grounded in ``question`` (the instruction)."""
        catalog = await self.catalog(docs, infos)
        check = functools.partial(check_answer, fmt, text, docs, catalog, base_urls=self._base_urls, question=question)
        if catalog is not None and len(catalog) > INLINE_CHECK_MAX_DOCS:
            return await asyncio.to_thread(check)
        return check()

    async def corpus_catalog(self, corpus: str) -> ApiCatalog | None:
        """Every doc of ``corpus`` (None when that cannot be had in ``CATALOG_WAIT_SECONDS``);
        ``UnknownCorpusError`` when it is not listed. For checking a caller's own call against a
        corpus, and for looking one API up by key."""
        infos = await self.infos({corpus})
        if corpus not in infos:
            raise UnknownCorpusError(corpus)
        return await self._catalogs.get([CorpusVersion.of(infos[corpus])], timeout_s=CATALOG_WAIT_SECONDS)

    async def check_parsed(
        self, answer: ParsedAnswer, docs: Sequence[RetrievedDoc], catalog: ApiCatalog | None
    ) -> CheckedAnswer:
        """:meth:`check` for an answer already parsed (a caller's own call), against ``catalog``."""
        if catalog is not None and len(catalog) > INLINE_CHECK_MAX_DOCS:
            return await asyncio.to_thread(
                functools.partial(check_parsed, answer, docs, catalog, base_urls=self._base_urls)
            )
        return check_parsed(answer, docs, catalog, base_urls=self._base_urls)

    async def close(self) -> None:
        """Cancel the warm-ups and catalog builds still running (at server stop)."""
        tasks = [*self._background, *self._catalogs.tasks()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _fresh(self, corpora: set[str]) -> bool:
        return time.monotonic() - self._infos_at <= CORPUS_VERSIONS_TTL_SECONDS and corpora <= set(self._infos)
