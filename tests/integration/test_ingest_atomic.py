"""Ingest is atomic per corpus: a run that fails half-way leaves the previous version served and
counted as it was; a first ingest that fails leaves no corpus; a run that writes bumps the
version. Failures are injected at the store's one write boundary (``_insert_rows``)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apihelper.errors import RetrieverUnavailableError
from apihelper.retriever.ingest import ingest_corpus
from apihelper.retriever.milvus_store import STAGED_PREFIX, CorpusSettings, MilvusStore
from apihelper.retriever.types import CorpusFormat, CorpusInfo, RetrievalMode
from tests.conftest import LiteServer  # the lite_server fixture's type
from tests.support import BIN, FakeEmbedder, ingest_in_subprocess

BATCH = 4


def _write_corpus(path: Path, n: int, tag: str) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"doc{i}", "title": f"Doc {i}", "text": f"{tag} text {i}"}) + "\n" for i in range(n))
    )
    return path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MilvusStore]:
    milvus = MilvusStore(str(tmp_path / "db" / "m.db"))
    yield milvus
    milvus.close()


def _info(store: MilvusStore, name: str) -> CorpusInfo:
    info = store.corpus_info(name)
    assert info is not None
    return info


def _texts(store: MilvusStore, name: str) -> dict[str, str]:
    return {d.key: d.text for d in store.corpus_docs(name)}


def _fail_on_insert(store: MilvusStore, monkeypatch: pytest.MonkeyPatch, nth: int) -> list[int]:
    real = store._insert_rows
    calls: list[int] = []

    def insert(collection: str, rows: list[dict[str, Any]], *, upsert: bool) -> None:
        calls.append(len(rows))
        if len(calls) == nth:
            raise RetrieverUnavailableError("Milvus insert failed: injected")
        real(collection, rows, upsert=upsert)

    monkeypatch.setattr(store, "_insert_rows", insert)
    return calls


def _staged_left(store: MilvusStore) -> list[str]:
    return [n for n in store._client.list_collections() if n.startswith(STAGED_PREFIX)]


def test_a_reingest_that_fails_half_way_leaves_the_previous_version(
    store: MilvusStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedder = FakeEmbedder()
    ingest_corpus(
        store, embedder, "c", _write_corpus(tmp_path / "v1.jsonl", 4, "old"), progress=False, batch_size=BATCH
    )
    before, texts = _info(store, "c"), _texts(store, "c")
    assert before.doc_count == 4 and len(texts) == 4

    # 68 docs, every one changed: the second batch written fails.
    calls = _fail_on_insert(store, monkeypatch, 2)
    with pytest.raises(RetrieverUnavailableError, match="injected"):
        ingest_corpus(
            store, embedder, "c", _write_corpus(tmp_path / "v2.jsonl", 68, "new"), progress=False, batch_size=BATCH
        )
    assert len(calls) == 2  # it did fail half-way, after one batch was written
    after = _info(store, "c")
    assert (after.doc_count, after.last_ingest) == (before.doc_count, before.last_ingest)
    assert _texts(store, "c") == texts  # served as it was: 4 docs, the old text
    assert _staged_left(store) == [store.serving_collection("c")]  # what it staged is gone
    assert store.corpus_names() == ["c"]

    # The next run (no failure) serves the new version, and counts it.
    monkeypatch.undo()
    report = ingest_corpus(store, embedder, "c", tmp_path / "v2.jsonl", progress=False, batch_size=BATCH)
    assert report.added == 64 and report.updated == 4
    new = _info(store, "c")
    assert new.doc_count == 68 == len(_texts(store, "c"))
    assert new.last_ingest is not None and before.last_ingest is not None and new.last_ingest > before.last_ingest
    assert len(_staged_left(store)) == 1  # only the version served


def test_a_partial_change_copies_the_unchanged_docs_and_bumps_the_version(store: MilvusStore, tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    path = _write_corpus(tmp_path / "c.jsonl", 10, "same")
    ingest_corpus(store, embedder, "c", path, progress=False, batch_size=BATCH)
    first = _info(store, "c")
    lines = path.read_text().splitlines()
    lines[3] = json.dumps({"id": "doc3", "title": "Doc 3", "text": "changed"})
    path.write_text("\n".join(lines[:-1]) + "\n")  # doc3 changed, doc9 gone
    report = ingest_corpus(store, embedder, "c", path, progress=False, batch_size=BATCH)
    assert (report.added, report.updated, report.deleted, report.unchanged) == (0, 1, 1, 8)
    second = _info(store, "c")
    texts = _texts(store, "c")
    assert second.doc_count == 9 == len(texts) and texts["doc3"] == "changed" and "doc9" not in texts
    assert second.last_ingest is not None and first.last_ingest is not None and second.last_ingest > first.last_ingest
    hits = store.search("c", mode=RetrievalMode.KEYWORD, query_text="same text 5", query_vector=None, top_k=3)
    assert any(h.doc.key == "doc5" for h in hits)  # copied rows are searchable (BM25 rebuilt)
    # Unchanged input: nothing written, the version stays.
    again = ingest_corpus(store, embedder, "c", path, progress=False, batch_size=BATCH)
    assert again.written == 0 and _info(store, "c").last_ingest == second.last_ingest


def test_a_first_ingest_that_fails_leaves_no_corpus(
    store: MilvusStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedder = FakeEmbedder()
    _fail_on_insert(store, monkeypatch, 2)
    with pytest.raises(RetrieverUnavailableError):
        ingest_corpus(
            store, embedder, "fresh", _write_corpus(tmp_path / "f.jsonl", 20, "x"), progress=False, batch_size=BATCH
        )
    assert store.corpus_names() == [] and not store.has_corpus("fresh")
    assert _staged_left(store) == []
    monkeypatch.undo()
    ingest_corpus(store, embedder, "fresh", tmp_path / "f.jsonl", progress=False, batch_size=BATCH)
    assert _info(store, "fresh").doc_count == 20


def test_a_legacy_collection_is_replaced_by_a_version(store: MilvusStore, tmp_path: Path) -> None:
    # A corpus made before versions: a plain collection under the served name.
    embedder = FakeEmbedder()
    settings = CorpusSettings(CorpusFormat.JSONL, "/srv/corpora/old.jsonl", embedder.model_name, embedder.dim)
    store._create_collection("apihelper_legacy", settings)
    assert store.corpus_names() == ["legacy"]
    assert _info(store, "legacy").source == "old.jsonl"  # an older ingest's absolute path: its name only
    ingest_corpus(store, embedder, "legacy", _write_corpus(tmp_path / "l.jsonl", 3, "l"), progress=False)
    assert store.corpus_names() == ["legacy"] and _info(store, "legacy").doc_count == 3
    assert _info(store, "legacy").source == "l.jsonl"
    assert store.serving_collection("legacy") == STAGED_PREFIX + "legacy_v1"


def test_the_source_is_shown_as_given(store: MilvusStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "specs").mkdir()
    _write_corpus(tmp_path / "specs" / "a.jsonl", 2, "a")
    monkeypatch.chdir(tmp_path)
    ingest_corpus(store, FakeEmbedder(), "rel", Path("specs/a.jsonl"), progress=False)
    assert _info(store, "rel").source == "specs/a.jsonl"
    ingest_corpus(store, FakeEmbedder(), "abs", tmp_path / "specs" / "a.jsonl", progress=False)
    assert _info(store, "abs").source == "a.jsonl"


@pytest.mark.parametrize("name", ["demo\n", "demo\r", " demo", "Demo", "d" * 64, "9demo", ""])
def test_bad_corpus_names_are_refused(store: MilvusStore, tmp_path: Path, name: str) -> None:
    from apihelper.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="invalid corpus name"):
        ingest_corpus(store, FakeEmbedder(), name, _write_corpus(tmp_path / "n.jsonl", 1, "n"), progress=False)
    assert store.corpus_names() == []


def test_a_reingest_killed_half_way_leaves_the_previous_version(lite_server: LiteServer, tmp_path: Path) -> None:
    """The real ``apihelper-build ingest`` in a subprocess, SIGKILLed once it has written part of
    the new version (its progress bar past the first batch): nothing runs after a kill, so only
    the switch-at-the-end design can leave the served version as it was."""
    small = _write_corpus(tmp_path / "small.jsonl", 8, "old")
    ingest_in_subprocess(lite_server.uri, f"k={small}")
    store = MilvusStore(lite_server.uri)
    try:
        before, texts = _info(store, "k"), _texts(store, "k")
    finally:
        store.close()
    assert before.doc_count == 8

    big = _write_corpus(tmp_path / "big.jsonl", 600, "new")
    args = [str(BIN / "apihelper-build"), "ingest", "--milvus-uri", lite_server.uri, "--corpus", f"k={big}"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    assert process.stderr is not None
    seen = b""
    killed_at = 0
    while process.poll() is None:
        chunk = os.read(process.stderr.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
        done = [int(n) for n in re.findall(rb"embedding k:[^\r\n]*?\b(\d+)/600", seen)]
        if done and 0 < done[-1] < 600:
            process.send_signal(signal.SIGKILL)
            killed_at = done[-1]
            break
    process.wait(timeout=60)
    assert killed_at, f"the ingest was not caught half-way: {seen[-2000:]!r}"
    assert process.returncode == -signal.SIGKILL

    store = MilvusStore(lite_server.uri)
    try:
        after = _info(store, "k")
        assert (after.doc_count, after.last_ingest) == (before.doc_count, before.last_ingest)
        assert _texts(store, "k") == texts
        assert store.corpus_names() == ["k"]
    finally:
        store.close()

    # The next run finishes, and drops what the killed one left.
    ingest_in_subprocess(lite_server.uri, f"k={big}")
    store = MilvusStore(lite_server.uri)
    try:
        assert _info(store, "k").doc_count == 600 == len(_texts(store, "k"))
        assert _staged_left(store) == [store.serving_collection("k")]
    finally:
        store.close()
