"""One vector per way an API is described: views stored as rows of their own in Milvus Lite,
searched and collapsed by key, counted once; and REST <-> SDK links through ingest."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from apihelper.retriever.ingest import ingest_corpus
from apihelper.retriever.milvus_store import MilvusStore
from apihelper.retriever.types import CorpusFormat, RetrievalMode
from tests.support import FakeEmbedder

RECORDS = [
    {
        "domain": "Computer Vision Image Classification",
        "api_name": "dogs",
        "api_call": "hub.load('zoo', 'dogs')",
        "functionality": "classify dog breeds",
        "description": "tells a beagle from a poodle",
    },
    {  # the same call described for another task: a view of its own
        "domain": "Medical Imaging",
        "api_name": "dogs",
        "api_call": "hub.load('zoo', 'dogs')",
        "functionality": "segment tumour scans",
        "description": "outlines lesions in radiology images",
    },
    {
        "domain": "Audio Speech Recognition",
        "api_name": "ears",
        "api_call": "hub.load('zoo', 'ears')",
        "functionality": "transcribe speech",
        "description": "turns recorded talk into text",
    },
]
SECOND_VIEW = "dogs\nsegment tumour scans\nMedical Imaging\noutlines lesions in radiology images"


def write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MilvusStore]:
    milvus = MilvusStore(str(tmp_path / "views.db"))
    yield milvus
    milvus.close()


def dense_hits(store: MilvusStore, embedder: FakeEmbedder, query: str) -> list[tuple[str, float]]:
    hits = store.search(
        "zoo", mode=RetrievalMode.DENSE, query_text=query, query_vector=embedder.embed_query(query), top_k=10
    )
    return [(h.doc.key, h.score) for h in hits]


def test_views_are_searched_collapsed_by_key_and_counted_once(store: MilvusStore, tmp_path: Path) -> None:
    embedder = FakeEmbedder(dim=64)
    source = write_jsonl(tmp_path / "zoo_api.jsonl", RECORDS)
    report = ingest_corpus(store, embedder, "zoo", source, CorpusFormat.APIBENCH, progress=False, views=True)
    assert (report.added, report.updated, report.deleted) == (2, 0, 0)
    info = store.corpus_info("zoo")
    assert info is not None and info.doc_count == 2
    assert sorted(d.key for d in store.corpus_docs("zoo")) == ["hub.load('zoo', 'dogs')", "hub.load('zoo', 'ears')"]
    assert len(store.content_hashes("zoo")) == 2

    hits = dense_hits(store, embedder, SECOND_VIEW)
    assert [key for key, _ in hits] == ["hub.load('zoo', 'dogs')", "hub.load('zoo', 'ears')"]  # each key once
    assert hits[0][1] > 0.999  # the second record's own vector answered, not the merged text's

    unchanged = ingest_corpus(store, embedder, "zoo", source, CorpusFormat.APIBENCH, progress=False, views=True)
    assert (unchanged.added, unchanged.updated, unchanged.unchanged) == (0, 0, 2)

    # Without views a doc is one vector again: the merged text no longer matches the view exactly.
    flat = ingest_corpus(store, embedder, "zoo", source, CorpusFormat.APIBENCH, progress=False, views=False)
    assert flat.updated == 2
    hits = dense_hits(store, embedder, SECOND_VIEW)
    assert hits[0][0] == "hub.load('zoo', 'dogs')" and hits[0][1] < 0.99

    # Views back on, then a doc removed: its views' rows go with it.
    ingest_corpus(store, embedder, "zoo", source, CorpusFormat.APIBENCH, progress=False, views=True)
    removed = ingest_corpus(
        store,
        embedder,
        "zoo",
        write_jsonl(tmp_path / "ears.jsonl", RECORDS[2:]),
        CorpusFormat.APIBENCH,
        progress=False,
        views=True,
    )
    assert removed.deleted == 1
    assert [key for key, _ in dense_hits(store, embedder, SECOND_VIEW)] == ["hub.load('zoo', 'ears')"]


@pytest.mark.parametrize("overfetch", [1, 4])
def test_collapsing_over_fetched_rows_and_grouping_search_agree(
    store: MilvusStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overfetch: int
) -> None:
    """A views collection's dense search collapses over-fetched rows by key; when those rows hold
    too few docs (here: one doc's views fill them all) it asks Milvus' grouping search. Both paths
    give each doc once, at its best row's score."""
    import apihelper.retriever.milvus_store as milvus_store

    monkeypatch.setattr(milvus_store, "OVERFETCH", overfetch)
    embedder = FakeEmbedder(dim=64)
    dogs = [
        {**RECORDS[0], "description": f"tells a beagle from a poodle, variant {n}", "domain": f"Vision {n}"}
        for n in range(6)
    ]
    cats = {**RECORDS[0], "api_name": "cats", "api_call": "hub.load('zoo', 'cats')", "description": "a beagle"}
    source = write_jsonl(tmp_path / "zoo_api.jsonl", [*dogs, cats, RECORDS[2]])
    ingest_corpus(store, embedder, "zoo", source, CorpusFormat.APIBENCH, progress=False, views=True)

    grouped: list[bool] = []
    rows = store._dense_rows

    def dense_rows(corpus: str, vector: Sequence[float], limit: int, *, group: bool) -> Any:
        grouped.append(group)
        return rows(corpus, vector, limit, group=group)

    monkeypatch.setattr(store, "_dense_rows", dense_rows)
    query = "classify dog breeds: tells a beagle from a poodle"
    hits = store.search(
        "zoo", mode=RetrievalMode.DENSE, query_text=query, query_vector=embedder.embed_query(query), top_k=2
    )
    keys = [h.doc.key for h in hits]
    assert keys == ["hub.load('zoo', 'dogs')", "hub.load('zoo', 'cats')"], keys
    assert hits[0].score > hits[1].score
    assert grouped == ([False, True] if overfetch == 1 else [False])  # 2 rows: both the dogs' views


SDK = '''
class Request:
    def __init__(self, method, path): ...

class Folder:
    def make_directory(self, name):
        """Create a subdirectory inside the folder."""
        return Request("POST", f"/folders/{self.name}/mkdir")
'''

SPEC = {
    "openapi": "3.0.0",
    "info": {"title": "t", "version": "1"},
    "paths": {
        "/folders/{name}/mkdir": {"post": {"operationId": "mkdir"}},
        "/folders/{name}": {"delete": {"summary": "Delete a folder"}},
    },
}


def test_linked_ingest_stores_the_link_on_both_sides(store: MilvusStore, tmp_path: Path) -> None:
    from apihelper.retriever.loaders import load_corpus

    wheel = tmp_path / "sdk-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("sdk/__init__.py", "")
        archive.writestr("sdk/folder.py", SDK)
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(SPEC), encoding="utf-8")
    embedder = FakeEmbedder(dim=64)
    _, sdk = load_corpus(wheel, CorpusFormat.PYTHON)
    _, rest = load_corpus(spec, CorpusFormat.OPENAPI)
    ingest_corpus(store, embedder, "api", spec, CorpusFormat.OPENAPI, progress=False, linked=("sdk", sdk.docs))
    ingest_corpus(store, embedder, "sdk", wheel, CorpusFormat.PYTHON, progress=False, linked=("api", rest.docs))
    api = {d.key: d for d in store.corpus_docs("api")}
    mkdir = api["POST /folders/{name}/mkdir"]
    assert [link["key"] for link in mkdir.metadata["links"]] == ["sdk.folder.Folder.make_directory"]
    assert "subdirectory" in mkdir.index_text  # the docstring's words find the operation
    assert "links" not in api["DELETE /folders/{name}"].metadata
    # a keyword search for the SDK's words finds the operation whose spec has none of them
    hits = store.search("api", mode=RetrievalMode.KEYWORD, query_text="subdirectory", query_vector=None, top_k=3)
    assert [h.doc.key for h in hits] == ["POST /folders/{name}/mkdir"]
    assert hits[0].doc.metadata["links"][0]["corpus"] == "sdk"
    sdk_docs = {d.key: d for d in store.corpus_docs("sdk")}
    function = sdk_docs["sdk.folder.Folder.make_directory"]
    assert function.metadata["http_calls"] == [{"method": "POST", "path": "/folders/{self.name}/mkdir"}]
    assert [link["key"] for link in function.metadata["links"]] == ["POST /folders/{name}/mkdir"]
