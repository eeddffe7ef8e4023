"""Test doubles at I/O boundaries, shared by the gRPC-layer tests."""

from __future__ import annotations

from collections.abc import Sequence

from retriever.types import ApiDoc, CorpusFormat, CorpusInfo, RetrievalMode, RetrievalResult, RetrievedDoc
from service.errors import RetrieverUnavailableError, UnknownCorpusError


class MemoryRetriever:
    """One fixed doc in corpus "demo"."""

    DOC = ApiDoc("POST /sessions", "Create a new session", "POST /sessions: create a session", "create session")

    def __init__(self) -> None:
        self.down = False  # True: every call fails as an unreachable Milvus would

    async def retrieve(
        self, query: str, *, corpora: Sequence[str] | None, top_k: int, mode: RetrievalMode
    ) -> RetrievalResult:
        if self.down:
            raise RetrieverUnavailableError("Milvus is unreachable (test double)")
        for corpus in corpora or ():
            if corpus != "demo":
                raise UnknownCorpusError(corpus, ["demo"])
        return RetrievalResult([RetrievedDoc(self.DOC, "demo", 1.0)][:top_k])

    async def list_corpora(self) -> list[CorpusInfo]:
        return [CorpusInfo("demo", CorpusFormat.OPENAPI, 1, "memory", "none", None)]

    async def check_health(self) -> None:
        if self.down:
            raise RetrieverUnavailableError("Milvus is unreachable (test double)")

    async def close(self) -> None:
        pass
