"""After Milvus drops its loaded collections (a restart does), the health check reloads the ones
in use, so SERVING means searchable again; a search meanwhile fails fast with UNAVAILABLE
instead of waiting out the reload. Milvus Lite in a temp dir; the slow load is a delay put at
the client boundary."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from apihelper.errors import RetrieverUnavailableError
from apihelper.retriever.milvus_retriever import MilvusRetriever
from apihelper.retriever.milvus_store import LOAD_WAIT_SECONDS, MilvusStore, collection_name
from apihelper.retriever.types import RetrievalMode
from tests.support import FakeEmbedder, budget


@pytest.fixture
def store(lite_store: MilvusStore) -> MilvusStore:
    return lite_store


def search(store: MilvusStore) -> list[Any]:
    return store.search("demo", mode=RetrievalMode.KEYWORD, query_text="create session", query_vector=None, top_k=3)


def loaded(store: MilvusStore) -> bool:
    state = store._client.get_load_state(collection_name("demo"))
    return "Loaded" in str(state.get("state", ""))


async def test_the_health_check_reloads_a_released_collection(store: MilvusStore) -> None:
    retriever = MilvusRetriever(store, FakeEmbedder())
    assert search(store)
    store._client.release_collection(collection_name("demo"))  # what a Milvus restart leaves
    assert not loaded(store)
    await retriever.check_health()
    assert loaded(store)
    assert search(store)


def test_a_search_fails_fast_while_the_collection_reloads(store: MilvusStore, monkeypatch: pytest.MonkeyPatch) -> None:
    assert search(store)
    store._client.release_collection(collection_name("demo"))
    real_load = store._client.load_collection
    reloading = threading.Event()

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        reloading.set()
        time.sleep(LOAD_WAIT_SECONDS + 2.0)  # a big collection on a server
        return real_load(*args, **kwargs)

    monkeypatch.setattr(store._client, "load_collection", slow_load)
    health = threading.Thread(target=store.reload_released)
    health.start()
    assert reloading.wait(10)
    started = time.monotonic()
    with pytest.raises(RetrieverUnavailableError, match="loading"):
        search(store)
    assert time.monotonic() - started < LOAD_WAIT_SECONDS + budget(1.0)
    health.join(30)
    assert search(store)  # reloaded: searches run again


def test_a_dropped_corpus_is_forgotten_not_an_error(store: MilvusStore) -> None:
    assert search(store)
    store.drop_corpus("demo")
    store.reload_released()  # no error: health stays up for the corpora that remain
