"""Ingest into Milvus Lite and retrieval through MilvusRetriever (real MiniLM embeddings).

One Milvus Lite database and one embedder are shared by the whole module; the Backend.AI corpora
are ingested once (openapi.json: 169 operations; the 24.3.0 client wheel's func/ modules).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import yaml

from apihelper.errors import ConfigurationError, CorpusLoadError, RetrieverUnavailableError, UnknownCorpusError
from apihelper.retriever.embedding import Embedder
from apihelper.retriever.ingest import format_report, ingest_corpus
from apihelper.retriever.milvus_retriever import MilvusRetriever, open_retriever
from apihelper.retriever.milvus_store import MilvusStore
from apihelper.retriever.rerank import LODO_RERANK
from apihelper.retriever.samples import sample_corpus_path
from apihelper.retriever.types import CorpusFormat, IngestReport, RetrievalMode
from tests.support import BACKEND_AI_SPEC, BACKEND_AI_WHEEL_24, SHARED_CORPORA, FakeEmbedder, shared_corpus

OPENAPI = BACKEND_AI_SPEC
WHEEL_24 = BACKEND_AI_WHEEL_24


def shared(path: Path) -> Path:
    return shared_corpus(*path.relative_to(SHARED_CORPORA).parts)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    model = Embedder()
    model.warm_up()
    return model


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("milvus") / "data" / "apihelper.db"  # parent is created by the store


@pytest.fixture(scope="module")
def store(db_path: Path) -> Iterator[MilvusStore]:
    milvus = MilvusStore(str(db_path))
    yield milvus
    milvus.close()


@pytest.fixture(scope="module")
def first_ingest(store: MilvusStore, embedder: Embedder) -> dict[str, IngestReport]:
    return {
        "rest": ingest_corpus(store, embedder, "rest", shared(OPENAPI), progress=False),
        "functional": ingest_corpus(
            store, embedder, "functional", shared(WHEEL_24), include=["ai.backend.client.func"], progress=False
        ),
        "demo": ingest_corpus(store, embedder, "demo", sample_corpus_path(), progress=False),
    }


@pytest.fixture(scope="module")
def retriever(store: MilvusStore, embedder: Embedder, first_ingest: dict[str, IngestReport]) -> MilvusRetriever:
    return MilvusRetriever(store, embedder)


def keys_of(result_docs: Sequence[object]) -> list[str]:
    return [d.doc.key for d in result_docs]  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ ingest


def test_first_ingest_adds_everything(first_ingest: dict[str, IngestReport]) -> None:
    rest = first_ingest["rest"]
    assert (rest.added, rest.updated, rest.deleted, rest.unchanged) == (169, 0, 0, 0)
    assert rest.problems == []
    assert first_ingest["functional"].added > 200
    assert first_ingest["demo"].added == 20


def test_reingest_unchanged_writes_nothing(
    store: MilvusStore, embedder: Embedder, first_ingest: dict[str, IngestReport]
) -> None:
    before = {info.name: info for info in store.list_corpora()}["rest"]
    report = ingest_corpus(store, embedder, "rest", OPENAPI, progress=False)
    assert report.written == 0
    assert report.unchanged == 169
    assert "0 docs written" in format_report(report)
    after = {info.name: info for info in store.list_corpora()}["rest"]
    assert after.last_ingest == before.last_ingest  # only a run that changes something moves it


async def test_list_corpora_fields(retriever: MilvusRetriever, embedder: Embedder) -> None:
    infos = {info.name: info for info in await retriever.list_corpora()}
    assert {"rest", "functional", "demo"} <= set(infos)
    rest = infos["rest"]
    assert rest.format is CorpusFormat.OPENAPI
    assert rest.doc_count == 169
    assert rest.source.endswith("openapi.json")
    assert rest.embedding_model == embedder.model_name == "sentence-transformers/all-MiniLM-L6-v2"
    assert rest.last_ingest is not None and rest.last_ingest.tzinfo is not None
    assert infos["functional"].format is CorpusFormat.PYTHON
    assert infos["demo"].doc_count == 20


async def test_change_and_remove_docs(store: MilvusStore, embedder: Embedder, tmp_path: Path) -> None:
    first = await asyncio.to_thread(ingest_corpus, store, embedder, "demo_edit", sample_corpus_path(), progress=False)
    assert first.added == 20
    retriever = MilvusRetriever(store, embedder)
    before = await retriever.retrieve("my account", corpora=["demo_edit"], top_k=20, mode=RetrievalMode.HYBRID)
    assert "GET /users/me" in keys_of(before.docs)  # now in the store's doc cache, old title
    spec = yaml.safe_load(sample_corpus_path().read_text())
    spec["paths"]["/users/me"]["get"]["summary"] = "Show my account with its zebra badge"
    del spec["paths"]["/keypairs/{access_key}"]
    modified = tmp_path / "demo_edit.yaml"
    modified.write_text(yaml.safe_dump(spec, sort_keys=False))

    report = await asyncio.to_thread(ingest_corpus, store, embedder, "demo_edit", modified, progress=False)
    assert (report.added, report.updated, report.deleted, report.unchanged) == (0, 1, 1, 18)

    # The changed doc's new content_hash makes the doc cache read it afresh.
    found = await retriever.retrieve("zebra badge", corpora=["demo_edit"], top_k=3, mode=RetrievalMode.KEYWORD)
    assert found.docs[0].doc.key == "GET /users/me"
    assert found.docs[0].doc.title == "Show my account with its zebra badge"
    everything = await retriever.retrieve(
        "revoke keypair access key", corpora=["demo_edit"], top_k=50, mode=RetrievalMode.HYBRID
    )
    assert "DELETE /keypairs/{access_key}" not in keys_of(everything.docs)
    assert len(everything.docs) == 19
    info = {i.name: i for i in store.list_corpora()}["demo_edit"]
    assert info.doc_count == 19


def test_ingest_refuses_bad_name_and_empty_input(store: MilvusStore, tmp_path: Path) -> None:
    fake = FakeEmbedder()
    with pytest.raises(ConfigurationError, match="invalid corpus name"):
        ingest_corpus(store, fake, "Bad-Name", sample_corpus_path(), progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"id": "a"}\n')
    with pytest.raises(CorpusLoadError, match="no documents"):
        ingest_corpus(store, fake, "empty_one", empty, CorpusFormat.JSONL, progress=False)
    assert not store.has_corpus("empty_one")


def test_other_embedding_model_rebuilds_the_corpus(store: MilvusStore) -> None:
    assert ingest_corpus(store, FakeEmbedder("fake-a"), "rebuilt", sample_corpus_path(), progress=False).added == 20
    report = ingest_corpus(store, FakeEmbedder("fake-b"), "rebuilt", sample_corpus_path(), progress=False)
    assert report.added == 20 and report.unchanged == 0
    assert {i.name: i for i in store.list_corpora()}["rebuilt"].embedding_model == "fake-b"


# ------------------------------------------------------------------------------ retrieval


async def test_create_a_new_session_hybrid(retriever: MilvusRetriever) -> None:
    result = await retriever.retrieve("Create a new session", corpora=["rest"], top_k=5, mode=RetrievalMode.HYBRID)
    keys = keys_of(result.docs)
    assert "POST /session" in keys, keys
    assert len(keys) == 5
    assert result.embed_seconds > 0 and result.search_seconds > 0
    scores = [d.score for d in result.docs]
    assert scores == sorted(scores, reverse=True)


async def test_hybrid_with_the_second_stage(store: MilvusStore, embedder: Embedder, first_ingest: object) -> None:
    reranked = MilvusRetriever(store, embedder, rerank=LODO_RERANK)
    result = await reranked.retrieve("Create a new session", corpora=["rest"], top_k=5, mode=RetrievalMode.HYBRID)
    keys = keys_of(result.docs)
    assert "POST /session" in keys, keys
    assert len(set(keys)) == 5
    scores = [d.score for d in result.docs]
    assert scores == sorted(scores, reverse=True)


async def test_dense_and_keyword_modes(retriever: MilvusRetriever) -> None:
    dense = await retriever.retrieve("Create a new session", corpora=["rest"], top_k=5, mode=RetrievalMode.DENSE)
    assert "POST /session" in keys_of(dense.docs)
    assert all(0 < d.score <= 1.0001 for d in dense.docs)  # cosine similarity
    keyword = await retriever.retrieve("Create a new session", corpora=["rest"], top_k=10, mode=RetrievalMode.KEYWORD)
    assert "POST /session" in keys_of(keyword.docs)
    assert keyword.embed_seconds == 0.0
    assert all(d.score > 0 for d in keyword.docs)  # Lite's negative BM25 distances are normalised
    mkdir = await retriever.retrieve("folders mkdir", corpora=["rest"], top_k=3, mode=RetrievalMode.KEYWORD)
    assert mkdir.docs[0].doc.key == "POST /folders/{name}/mkdir"


async def test_demo_and_functional_corpora(retriever: MilvusRetriever) -> None:
    demo = await retriever.retrieve("Create a new session", corpora=["demo"], top_k=3, mode=RetrievalMode.HYBRID)
    assert demo.docs[0].doc.key == "POST /sessions"
    assert demo.docs[0].doc.metadata["function"]["name"] == "createSession"
    func = await retriever.retrieve(
        "Block an access key from making any further API calls without deleting it.",
        corpora=["functional"],
        top_k=5,
        mode=RetrievalMode.HYBRID,
    )
    assert "ai.backend.client.func.keypair.KeyPair.deactivate" in keys_of(func.docs)


async def test_search_across_corpora_merges_by_score(retriever: MilvusRetriever) -> None:
    result = await retriever.retrieve("Create a new session", corpora=None, top_k=8, mode=RetrievalMode.HYBRID)
    assert len(result.docs) == 8
    scores = [d.score for d in result.docs]
    assert scores == sorted(scores, reverse=True)
    assert {d.corpus for d in result.docs} <= {"rest", "functional", "demo", "demo_edit", "rebuilt"}
    both = await retriever.retrieve(
        "Create a new session", corpora=["demo", "rest"], top_k=4, mode=RetrievalMode.HYBRID
    )
    assert {d.corpus for d in both.docs} <= {"demo", "rest"}
    assert {"POST /sessions", "POST /session"} & set(keys_of(both.docs))


async def test_unknown_corpus_and_mode_none(retriever: MilvusRetriever) -> None:
    with pytest.raises(UnknownCorpusError) as caught:
        await retriever.retrieve("x", corpora=["rest", "nope"], top_k=3, mode=RetrievalMode.HYBRID)
    assert caught.value.corpus == "nope" and caught.value.field.endswith("corpora")
    assert "rest" not in str(caught.value)  # the message names only the corpus asked for
    with pytest.raises(UnknownCorpusError):
        await retriever.retrieve("x", corpora=["Not Valid!"], top_k=3, mode=RetrievalMode.DENSE)
    none = await retriever.retrieve("Create a new session", corpora=["rest"], top_k=3, mode=RetrievalMode.NONE)
    assert none.docs == [] and none.embed_seconds == 0.0


async def test_new_corpus_is_seen_without_restart(store: MilvusStore) -> None:
    fake = FakeEmbedder()
    retriever = MilvusRetriever(store, fake, corpora_ttl_s=3600)
    assert "late" not in await retriever.corpus_names()  # now cached for an hour
    await asyncio.to_thread(ingest_corpus, store, fake, "late", sample_corpus_path(), progress=False)
    result = await retriever.retrieve("upload file", corpora=["late"], top_k=1, mode=RetrievalMode.KEYWORD)
    assert result.docs[0].doc.key == "POST /folders/{folder_name}/files"


async def test_blocking_work_stays_off_the_event_loop(store: MilvusStore) -> None:
    slow = FakeEmbedder(delay_s=0.3)
    await asyncio.to_thread(ingest_corpus, store, slow, "slow_demo", sample_corpus_path(), progress=False)
    retriever = MilvusRetriever(store, slow)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    result = await retriever.retrieve("list sessions", corpora=["slow_demo"], top_k=3, mode=RetrievalMode.DENSE)
    task.cancel()
    assert result.embed_seconds >= 0.3
    assert ticks >= 10  # the loop kept running while the query was embedded


async def test_health_and_unavailable(retriever: MilvusRetriever, db_path: Path) -> None:
    await retriever.check_health()
    other = await open_retriever(str(db_path), embedder=FakeEmbedder(), warm_up=False)
    assert "rest" in {i.name for i in await other.list_corpora()}
    await other.close()
    with pytest.raises(RetrieverUnavailableError):
        await other.check_health()
    with pytest.raises(RetrieverUnavailableError) as caught:
        await open_retriever("http://user:secret@127.0.0.1:1", "token", embedder=FakeEmbedder(), timeout_s=1.0)
    assert "secret" not in str(caught.value) and "token" not in str(caught.value)
    with pytest.raises(ConfigurationError):
        MilvusStore(str(db_path.parent / "not-a-db-dir"))


async def test_a_corpus_of_another_embedding_model_is_searched_by_keywords(tmp_path: Path) -> None:
    """One database, two corpora embedded by different models (8 and 16 dimensions). Sending a
    query's vector to the other model's index made Milvus Lite's faiss fail its dimension
    assertion, which came back as ``MilvusException (code=1, message=)`` and failed every hybrid
    search over all corpora (test_search_across_corpora_merges_by_score met it whenever the
    corpus cache expired after test_other_embedding_model_rebuilds_the_corpus)."""
    store = MilvusStore(str(tmp_path / "milvus.db"))
    narrow, wide = FakeEmbedder("fake-8"), FakeEmbedder("fake-16", dim=16)
    ingest_corpus(store, narrow, "old", sample_corpus_path(), progress=False)
    ingest_corpus(store, wide, "new", sample_corpus_path(), progress=False)
    retriever = MilvusRetriever(store, wide)
    try:
        both = await retriever.retrieve("create a session", corpora=None, top_k=40, mode=RetrievalMode.HYBRID)
        assert {hit.corpus for hit in both.docs} == {"old", "new"}
        dense = await retriever.retrieve("create a session", corpora=None, top_k=40, mode=RetrievalMode.DENSE)
        assert dense.docs and {hit.corpus for hit in dense.docs} == {"new"}
        with pytest.raises(ConfigurationError, match="'old' was embedded with another model"):
            await retriever.retrieve("create a session", corpora=["old"], top_k=3, mode=RetrievalMode.DENSE)
        keyword = await retriever.retrieve("create a session", corpora=["old"], top_k=3, mode=RetrievalMode.KEYWORD)
        assert keyword.docs
    finally:
        await retriever.close()
