"""Domain types of the retriever, shared with the service pipeline.

These are plain data: no Milvus, llama-index or protobuf types cross this boundary.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class CorpusFormat(str, enum.Enum):
    """The on-disk formats a corpus can be loaded from."""

    OPENAPI = "openapi"  # OpenAPI 3.x JSON/YAML: one doc per operation, key "METHOD /path"
    PYTHON = "python"  # a wheel, sdist or source directory: one doc per public function/method
    APIBENCH = "apibench"  # Gorilla APIBench JSONL records: key is api_call, whitespace collapsed
    JSONL = "jsonl"  # generic {"id", "title", "text", "metadata"} lines
    FUNCTIONS = "functions"  # tool definitions (OpenAI tools, MCP tools/list, BFCL): key is the name


class RetrievalMode(str, enum.Enum):
    HYBRID = "hybrid"  # dense + BM25, fused from standardised scores (retriever.fusion)
    DENSE = "dense"
    KEYWORD = "keyword"  # BM25 only
    NONE = "none"  # no retrieval: the prompt carries no documentation


@dataclass(frozen=True)
class ApiDoc:
    """One API document: a REST operation, a Python callable, or an API record.

    ``text`` is what the model sees in the prompt; ``index_text`` is what is embedded and
    BM25-indexed (it may add or drop fields to make search work better). ``views`` are further
    ways the same API is described (one APIBench record of a call, a REST operation's summary and
    description, a function's parameters): each gets a dense vector of its own, carrying the
    doc's key, so a phrasing is not averaged away in one long text (``ingest --views``).
    """

    key: str
    title: str
    text: str
    index_text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    views: tuple[str, ...] = ()

    @property
    def content_hash(self) -> str:
        """A stable digest of everything stored for this doc; ingest compares it to skip writes."""
        fields: list[Any] = [self.key, self.title, self.text, self.index_text, self.metadata]
        if self.views:  # docs without views keep the digests they had before views existed
            fields.append(list(self.views))
        payload = json.dumps(
            fields,
            sort_keys=True,
            ensure_ascii=False,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class LoadProblem:
    """A file (or part of one) that a loader skipped, and why."""

    path: str
    message: str


@dataclass(frozen=True)
class LoadResult:
    docs: list[ApiDoc]
    problems: list[LoadProblem] = field(default_factory=list)


@dataclass(frozen=True)
class RetrievedDoc:
    doc: ApiDoc
    corpus: str
    score: float


@dataclass(frozen=True)
class RetrievalResult:
    """Docs best first, plus where the time went (for the timing breakdown and metrics)."""

    docs: list[RetrievedDoc]
    embed_seconds: float = 0.0
    search_seconds: float = 0.0


@dataclass(frozen=True)
class CorpusInfo:
    name: str
    format: CorpusFormat
    doc_count: int
    source: str
    embedding_model: str
    last_ingest: datetime | None


@dataclass(frozen=True)
class IngestReport:
    corpus: str
    added: int
    updated: int
    deleted: int
    unchanged: int
    problems: list[LoadProblem] = field(default_factory=list)

    @property
    def written(self) -> int:
        return self.added + self.updated + self.deleted


class Retriever(Protocol):
    """What the service needs from retrieval. Implementations must not block the event loop."""

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
        RetrieverUnavailableError when the store cannot answer.
        """
        ...

    async def list_corpora(self) -> list[CorpusInfo]: ...

    async def corpus_docs(self, corpus: str, *, limit: int | None = None) -> list[ApiDoc]:
        """Every doc of ``corpus`` as ingested, in no particular order (at most ``limit``); for
        the validation catalog, which needs the APIs retrieval did not return.

        Raises UnknownCorpusError for a corpus that is not ingested and
        RetrieverUnavailableError when the store cannot answer.
        """
        ...

    async def check_health(self) -> None:
        """Return when the store answers; raise RetrieverUnavailableError otherwise."""
        ...

    async def close(self) -> None: ...
