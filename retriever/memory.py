"""An in-memory :class:`~apihelper.retriever.types.Retriever`: no Milvus, no embedding.

The double at the retriever's I/O boundary, for tests and benchmarks that exercise everything
above retrieval (the pipeline, the verdict, the gRPC layer) without a vector store, as
``apihelper.service.engine.fake`` is for the engine. One corpus (``corpus_name``) held as a list:
``retrieve`` returns the first ``top_k`` of ``retrieved`` whatever the query (scores fall by 0.01
a place), ``corpus_docs`` all of ``corpus``. Faults are switched on by attribute: ``down`` (every
call fails as an unreachable Milvus would), ``corpus_down`` (only reading a whole corpus fails),
``read_delay_s`` (a slow corpus read that yields to the event loop meanwhile).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from apihelper.errors import RetrieverUnavailableError, UnknownCorpusError
from apihelper.retriever.doc_kinds import DocKind
from apihelper.retriever.types import ApiDoc, CorpusFormat, CorpusInfo, RetrievalMode, RetrievalResult, RetrievedDoc


class MemoryRetriever:
    """A one-corpus retriever over a list of docs; see the module docstring."""

    DOC = ApiDoc(
        "POST /sessions",
        "Create a new session",
        "POST /sessions: create a session",
        "create session",
        {"kind": DocKind.REST_OPERATION.value, "method": "POST", "path": "/sessions"},
    )

    def __init__(
        self,
        corpus: Sequence[ApiDoc] | None = None,
        *,
        retrieved: Sequence[ApiDoc] | None = None,
        corpus_name: str = "demo",
        corpus_format: CorpusFormat = CorpusFormat.OPENAPI,
    ) -> None:
        """``corpus`` defaults to the one doc :attr:`DOC`; ``retrieved`` to the whole corpus."""
        self.corpus = list(corpus) if corpus is not None else [self.DOC]
        self.retrieved = list(retrieved) if retrieved is not None else list(self.corpus)
        self.corpus_name = corpus_name
        self.corpus_format = corpus_format
        self.down = False
        self.corpus_down = False
        self.read_delay_s = 0.0
        self.last_ingest: datetime | None = None
        self.corpus_reads = 0  # corpus_docs calls, to count catalog builds

    def reingest(self, corpus: Sequence[ApiDoc]) -> None:
        """Replace the corpus, as an ingest that wrote something would: a new version."""
        self.corpus = list(corpus)
        self.last_ingest = datetime.now(UTC)

    async def retrieve(
        self, query: str, *, corpora: Sequence[str] | None, top_k: int, mode: RetrievalMode
    ) -> RetrievalResult:
        self._check_up()
        for corpus in corpora or ():
            self._check_known(corpus)
        docs = [RetrievedDoc(d, self.corpus_name, 1.0 - i / 100) for i, d in enumerate(self.retrieved[:top_k])]
        return RetrievalResult(docs)

    async def list_corpora(self) -> list[CorpusInfo]:
        self._check_up()
        info = CorpusInfo(self.corpus_name, self.corpus_format, len(self.corpus), "memory", "none", self.last_ingest)
        return [info]

    async def corpus_docs(self, corpus: str, *, limit: int | None = None) -> list[ApiDoc]:
        self.corpus_reads += 1
        await asyncio.sleep(self.read_delay_s)
        if self.corpus_down:
            raise RetrieverUnavailableError("Milvus is unreachable (in-memory retriever)")
        self._check_up()
        self._check_known(corpus)
        return self.corpus[:limit]

    async def check_health(self) -> None:
        self._check_up()

    async def close(self) -> None:
        pass

    def _check_up(self) -> None:
        if self.down:
            raise RetrieverUnavailableError("Milvus is unreachable (in-memory retriever)")

    def _check_known(self, corpus: str) -> None:
        if corpus != self.corpus_name:
            raise UnknownCorpusError(corpus)
