"""Answers validated against the whole corpus, not only the retrieved docs (issue 6).

Over the real transport with the scripted engine: a real API that retrieval did not return is
not a hallucination; a re-ingest (new corpus version) rebuilds the catalog; concurrent requests
share one corpus read; a corpus that cannot be read, or is too big, falls back to the retrieved
docs without failing the request. Milvus Lite in a temp dir checks that a corpus read back from
the store equals what was ingested, and the whole path end to end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from apihelper.retriever.ingest import ingest_corpus
from apihelper.retriever.loaders import load_corpus
from apihelper.retriever.memory import MemoryRetriever
from apihelper.retriever.milvus_retriever import MilvusRetriever
from apihelper.retriever.milvus_store import MilvusStore
from apihelper.retriever.samples import sample_corpus_path
from apihelper.retriever.types import ApiDoc, Retriever
from apihelper.service.answers import corpus_cache
from apihelper.service.answers.corpus_cache import CorpusCatalogs, CorpusVersion
from apihelper.service.engine.fake import FakeEngine
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc
from tests.support import FakeEmbedder, live_server, stub_for

NO_INDEX = "only the retrieved docs were checked (no corpus index)"
NOT_RETRIEVED = "exists in the corpus but was not among the retrieved docs"
# Calls of the sample corpus' operations other than POST /sessions, the only doc retrieved below.
# A placeholder for the session: the question names none, and a made-up id would be ungrounded.
DELETE_SESSION = "<<<domain>>>: Sessions\n<<<api_call>>>: DELETE /sessions/{session_id}\n"
BAD_STATUS = "<<<domain>>>: Sessions\n<<<api_call>>>: GET /sessions?status=flying\n"
WIDGETS = "<<<domain>>>: Widgets\n<<<api_call>>>: GET /widgets\n"


def sample_docs() -> list[ApiDoc]:
    _, loaded = load_corpus(sample_corpus_path(), None)
    return list(loaded.docs)


def post_sessions() -> ApiDoc:
    return next(d for d in sample_docs() if d.key == "POST /sessions")


def widgets_doc() -> ApiDoc:
    return ApiDoc(
        "GET /widgets",
        "List widgets",
        "GET /widgets: list widgets",
        "list widgets",
        {"kind": "rest_operation", "method": "GET", "path": "/widgets"},
    )


@asynccontextmanager
async def serve(
    retriever: Retriever, reply: str | Callable[[str], str], *, token_delay_s: float = 0.0
) -> AsyncIterator[pb_grpc.ApiHelperAsyncStub]:
    async with (
        live_server(FakeEngine(reply, token_delay_s=token_delay_s), retriever) as running,
        stub_for(running) as stub,
    ):
        yield stub


async def ask(stub: pb_grpc.ApiHelperAsyncStub, **retrieval: Any) -> tuple[list[str], pb.Completion]:
    """The source keys and the completion of one Generate."""
    request = pb.GenerateRequest(instruction="Create a new session", retrieval=pb.RetrievalOptions(**retrieval))
    messages = [m async for m in stub.Generate(request, timeout=20)]
    assert messages[-1].WhichOneof("event") == "completion"
    return [s.key for s in messages[0].sources.sources], messages[-1].completion


def memory_corpus() -> MemoryRetriever:
    """The sample corpus, of which retrieval only ever returns POST /sessions."""
    return MemoryRetriever(sample_docs(), retrieved=[post_sessions()])


@pytest.fixture
def no_version_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Corpus versions re-read on every request, so a re-ingest shows at once."""
    monkeypatch.setattr(corpus_cache, "CORPUS_VERSIONS_TTL_SECONDS", 0.0)


# ------------------------------------------------------------------------------ over gRPC


async def test_a_real_api_that_was_not_retrieved_is_valid_with_a_note() -> None:
    async with serve(memory_corpus(), DELETE_SESSION) as stub:
        sources, completion = await ask(stub)
    assert sources == ["POST /sessions"]
    assert completion.verdict == pb.VERDICT_VALID
    call = completion.api_calls[0]
    assert call.matched_key == "DELETE /sessions/{session_id}" and not call.retrieved
    assert any(NOT_RETRIEVED in r for r in call.reasons)
    assert NO_INDEX not in completion.verdict_reasons


async def test_wrong_arguments_to_an_api_that_was_not_retrieved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus_cache, "INLINE_CHECK_MAX_DOCS", 0)  # the check of a big catalog: in a thread
    async with serve(memory_corpus(), BAD_STATUS) as stub:
        _, completion = await ask(stub)
    assert completion.verdict == pb.VERDICT_WRONG_ARGUMENTS
    call = completion.api_calls[0]
    assert call.matched_key == "GET /sessions" and not call.retrieved
    assert any("'status' should be one of" in r for r in call.reasons)


async def test_a_hallucination_is_still_unknown_and_no_longer_says_no_corpus_index() -> None:
    async with serve(memory_corpus(), WIDGETS) as stub:
        _, completion = await ask(stub)
    assert completion.verdict == pb.VERDICT_UNKNOWN_API
    assert completion.verdict_reasons and NO_INDEX not in completion.verdict_reasons


async def test_a_reingest_rebuilds_the_catalog(no_version_cache: None) -> None:
    retriever = memory_corpus()
    async with serve(retriever, WIDGETS) as stub:
        _, before = await ask(stub)
        _, again = await ask(stub)
        assert retriever.corpus_reads == 1  # same version: the catalog is reused
        retriever.reingest([*sample_docs(), widgets_doc()])
        _, after = await ask(stub)
    assert before.verdict == again.verdict == pb.VERDICT_UNKNOWN_API
    assert after.verdict == pb.VERDICT_VALID
    assert after.api_calls[0].matched_key == "GET /widgets" and not after.api_calls[0].retrieved
    assert retriever.corpus_reads == 2
    assert retriever.last_ingest is not None
    assert after.corpus_versions["demo"] == retriever.last_ingest.isoformat()


async def test_concurrent_requests_share_one_corpus_read() -> None:
    retriever = memory_corpus()
    retriever.read_delay_s = 0.3  # every request arrives while the read is under way
    async with serve(retriever, DELETE_SESSION) as stub:
        results = await asyncio.gather(*(ask(stub) for _ in range(20)))
    assert retriever.corpus_reads == 1
    assert all(c.verdict == pb.VERDICT_VALID for _, c in results)


async def test_the_catalog_is_read_while_the_answer_streams() -> None:
    retriever = memory_corpus()
    request = pb.GenerateRequest(instruction="Create a new session")
    reads_before_completion = []
    async with serve(retriever, DELETE_SESSION, token_delay_s=0.05) as stub:
        async for message in stub.Generate(request, timeout=20):
            if message.WhichOneof("event") == "delta":
                reads_before_completion.append(retriever.corpus_reads)
            elif message.WhichOneof("event") == "completion":
                assert message.completion.verdict == pb.VERDICT_VALID
    assert reads_before_completion[-1] == 1  # started with the sources, not after the last delta
    assert retriever.corpus_reads == 1


async def test_a_corpus_that_cannot_be_read_falls_back_to_the_retrieved_docs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    retriever = memory_corpus()
    retriever.corpus_down = True  # search works, reading the whole corpus fails
    with caplog.at_level(logging.WARNING, logger="apihelper.service.answers.corpus_cache"):
        async with serve(retriever, DELETE_SESSION) as stub:
            first = await ask(stub)
            second = await ask(stub)
            assert retriever.corpus_reads == 1  # not retried before READ_RETRY_SECONDS
    for _, completion in (first, second):
        assert completion.verdict == pb.VERDICT_UNKNOWN_API  # what the retrieved docs alone say
        assert NO_INDEX in completion.verdict_reasons
    warnings = [r for r in caplog.records if "cannot read corpus demo" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


async def test_a_failed_read_is_retried_later() -> None:
    retriever = memory_corpus()
    retriever.corpus_down = True
    catalogs = CorpusCatalogs(retriever, read_retry_s=0.0)
    demo = [CorpusVersion("demo", "", len(retriever.corpus))]
    assert await catalogs.get(demo) is None
    retriever.corpus_down = False
    catalog = await catalogs.get(demo)
    assert catalog is not None and "DELETE /sessions/{session_id}" in catalog
    assert retriever.corpus_reads == 2


async def test_a_corpus_over_the_size_bound_is_not_read(caplog: pytest.LogCaptureFixture) -> None:
    retriever = memory_corpus()
    catalogs = CorpusCatalogs(retriever, max_docs=5)
    with caplog.at_level(logging.WARNING, logger="apihelper.service.answers.corpus_cache"):
        assert await catalogs.get([CorpusVersion("demo", "v1", 20)]) is None  # listed as too big
        assert retriever.corpus_reads == 0
        # A stale listed count: the read itself stops one past the bound.
        assert await catalogs.get([CorpusVersion("demo", "v2", 3)]) is None
        assert await catalogs.get([CorpusVersion("demo", "v2", 3)]) is None
        assert retriever.corpus_reads == 1
    assert sum("more than the 5 read" in r.getMessage() for r in caplog.records) == 2  # once per version


async def test_a_slow_build_does_not_hold_the_answer_back() -> None:
    retriever = memory_corpus()
    retriever.read_delay_s = 0.5
    catalogs = CorpusCatalogs(retriever)
    demo = [CorpusVersion("demo", "", 20)]
    assert await catalogs.get(demo, timeout_s=0.05) is None
    assert await catalogs.get(demo) is not None  # the build went on
    assert retriever.corpus_reads == 1


async def test_sources_from_two_corpora_get_one_merged_catalog() -> None:
    docs = sample_docs()

    class TwoCorpora(MemoryRetriever):
        async def corpus_docs(self, corpus: str, *, limit: int | None = None) -> list[ApiDoc]:
            self.corpus_reads += 1
            return [d for d in docs if d.key.split(" /")[1].startswith("sessions") == (corpus == "a")]

    retriever = TwoCorpora()
    catalogs = CorpusCatalogs(retriever)
    merged = await catalogs.get([CorpusVersion("a", "1", 8), CorpusVersion("b", "1", 12)])
    only_a = await catalogs.get([CorpusVersion("a", "1", 8)])
    assert merged is not None and only_a is not None
    assert len(merged) == 20 and len(only_a) == 8
    assert "DELETE /folders/{folder_name}" in merged and "DELETE /folders/{folder_name}" not in only_a
    assert retriever.corpus_reads == 2  # each corpus read once, for both catalogs


# ------------------------------------------------------------------------------ Milvus Lite


def test_a_corpus_read_back_equals_what_was_ingested(lite_store: MilvusStore) -> None:
    # Ingested with views (the default): a doc's views are index rows, not part of what is read.
    loaded = sample_docs()
    assert any(d.views for d in loaded)
    ingested = {d.key: dataclasses.replace(d, views=()) for d in loaded}
    read = lite_store.corpus_docs("demo", batch_size=7)  # three pages
    assert len(read) == len(ingested) == 20
    assert {d.key: d for d in read} == ingested
    # The digest ingest stored is the whole doc's, views included: the next ingest would see every
    # doc unchanged.
    assert {d.key: d.content_hash for d in loaded} == lite_store.content_hashes("demo")
    assert len(lite_store.corpus_docs("demo", limit=5, batch_size=2)) == 5


async def test_end_to_end_on_milvus_lite(lite_store: MilvusStore, tmp_path: Path, no_version_cache: None) -> None:
    retriever = MilvusRetriever(lite_store, FakeEmbedder())
    keyword = pb.RETRIEVAL_MODE_KEYWORD
    replies = iter([DELETE_SESSION, WIDGETS, WIDGETS])
    async with serve(retriever, lambda prompt: next(replies)) as stub:
        sources, real = await ask(stub, top_k=1, mode=keyword)
        assert "DELETE /sessions/{session_id}" not in sources
        assert real.verdict == pb.VERDICT_VALID and not real.api_calls[0].retrieved
        assert any(NOT_RETRIEVED in r for r in real.api_calls[0].reasons)
        _, before = await ask(stub, top_k=1, mode=keyword)
        assert before.verdict == pb.VERDICT_UNKNOWN_API and NO_INDEX not in before.verdict_reasons

        # Re-ingest with GET /widgets added: a new version, so a new catalog.
        spec = yaml.safe_load(sample_corpus_path().read_text())
        spec["paths"]["/widgets"] = {
            "get": {
                "operationId": "listWidgets",
                "summary": "List widgets",
                "responses": {"200": {"description": "ok"}},
            }
        }
        changed = tmp_path / "demo.yaml"
        changed.write_text(yaml.safe_dump(spec))
        await asyncio.to_thread(ingest_corpus, lite_store, FakeEmbedder(), "demo", changed, None, progress=False)
        _, after = await ask(stub, top_k=1, mode=keyword)
    assert after.corpus_versions["demo"] != before.corpus_versions["demo"]
    assert after.verdict == pb.VERDICT_VALID
    assert after.api_calls[0].matched_key == "GET /widgets" and not after.api_calls[0].retrieved
