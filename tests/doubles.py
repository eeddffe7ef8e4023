"""Test doubles at I/O boundaries, shared by the gRPC-layer tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timezone

from retriever.types import ApiDoc, CorpusFormat, CorpusInfo, RetrievalMode, RetrievalResult, RetrievedDoc
from service.errors import RetrieverUnavailableError, UnknownCorpusError


class MemoryRetriever:
    """Corpus "demo" in memory. ``retrieve`` returns the first ``top_k`` of ``retrieved`` (one
    fixed doc by default, whatever the query); ``corpus_docs`` returns all of ``corpus`` (by
    default that same doc)."""

    DOC = ApiDoc("POST /sessions", "Create a new session", "POST /sessions: create a session", "create session")

    def __init__(self, corpus: Sequence[ApiDoc] | None = None, *, retrieved: Sequence[ApiDoc] | None = None) -> None:
        self.down = False  # True: every call fails as an unreachable Milvus would
        self.corpus_down = False  # True: only reading a whole corpus fails
        self.corpus = list(corpus) if corpus is not None else [self.DOC]
        self.retrieved = list(retrieved) if retrieved is not None else [self.DOC]
        self.last_ingest: datetime | None = None
        self.corpus_reads = 0  # corpus_docs calls, to count catalog builds
        self.read_delay_s = 0.0  # how long corpus_docs takes (yields to the loop meanwhile)

    def reingest(self, corpus: Sequence[ApiDoc]) -> None:
        """Replace the corpus, as an ingest that wrote something would: a new version."""
        self.corpus = list(corpus)
        self.last_ingest = datetime.now(timezone.utc)

    async def retrieve(
        self, query: str, *, corpora: Sequence[str] | None, top_k: int, mode: RetrievalMode
    ) -> RetrievalResult:
        if self.down:
            raise RetrieverUnavailableError("Milvus is unreachable (test double)")
        for corpus in corpora or ():
            if corpus != "demo":
                raise UnknownCorpusError(corpus, ["demo"])
        return RetrievalResult([RetrievedDoc(d, "demo", 1.0 - i / 100) for i, d in enumerate(self.retrieved)][:top_k])

    async def list_corpora(self) -> list[CorpusInfo]:
        return [CorpusInfo("demo", CorpusFormat.OPENAPI, len(self.corpus), "memory", "none", self.last_ingest)]

    async def corpus_docs(self, corpus: str, *, limit: int | None = None) -> list[ApiDoc]:
        self.corpus_reads += 1
        await asyncio.sleep(self.read_delay_s)
        if self.down or self.corpus_down:
            raise RetrieverUnavailableError("Milvus is unreachable (test double)")
        if corpus != "demo":
            raise UnknownCorpusError(corpus, ["demo"])
        return self.corpus[:limit]

    async def check_health(self) -> None:
        if self.down:
            raise RetrieverUnavailableError("Milvus is unreachable (test double)")

    async def close(self) -> None:
        pass
