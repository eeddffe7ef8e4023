"""Corpus updates without downtime, across processes, the way production runs it.

Milvus Lite locks its data directory to one process, so the supported way to let ``ingest`` and a
running service share a corpus is to serve the directory with ``milvus-lite server`` (or to use a
Milvus server) and give both the ``http://`` URI. This test does exactly that:

1. starts ``milvus-lite server --data-dir DIR --host 127.0.0.1 --port N`` as a subprocess;
2. ingests a small OpenAPI corpus with ``apihelper-build ingest`` in another subprocess;
3. starts the gRPC service in this process (real MiniLM retriever, FakeEngine: this is about
   retrieval) and checks Retrieve;
4. changes one operation and removes another, ingests again from a subprocess, and polls the
   *running* service's Retrieve until it shows both (the changed text, the removed key gone),
   without restarting anything. Updates show up as soon as the ingest's flush is searchable;
   the poll allows 30 s and takes about one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import yaml

from apihelper.retriever.samples import sample_corpus_path
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc
from tests.conftest import LiteServer  # the lite_server fixture's type
from tests.support import ingest_in_subprocess, live_server, stub_for

CORPUS = "hot"
CHANGED_KEY = "GET /users/me"
CHANGED_SUMMARY = "Show my account with its zebra badge"
REMOVED_PATH = "/keypairs/{access_key}"
REMOVED_KEY = "DELETE /keypairs/{access_key}"


@asynccontextmanager
async def _service(uri: str) -> AsyncIterator[pb_grpc.ApiHelperAsyncStub]:
    """The gRPC service in this process on ``uri`` (real MiniLM retriever, FakeEngine)."""
    from apihelper.retriever.embedding import Embedder
    from apihelper.retriever.milvus_retriever import open_retriever

    retriever = await open_retriever(uri, "", await asyncio.to_thread(Embedder))
    async with (
        live_server(None, retriever, milvus_uri=uri, shutdown_grace_seconds=1.0) as running,
        stub_for(running) as stub,
    ):
        yield stub


async def _retrieve(stub: pb_grpc.ApiHelperAsyncStub, text: str, top_k: int) -> list[pb.Source]:
    response = await stub.Retrieve(
        pb.RetrieveRequest(instruction=text, retrieval=pb.RetrievalOptions(corpora=[CORPUS], top_k=top_k)),
        timeout=30,
    )
    return list(response.sources)


async def test_running_service_answers_from_reingested_docs(lite_server: LiteServer, tmp_path: Path) -> None:
    spec = yaml.safe_load(sample_corpus_path().read_text())
    corpus_file = tmp_path / "demo.yaml"
    corpus_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert "20 added" in await asyncio.to_thread(ingest_in_subprocess, lite_server.uri, f"{CORPUS}={corpus_file}")

    async with _service(lite_server.uri) as stub:
        before = {s.key: s for s in await _retrieve(stub, "revoke an API keypair", 50)}
        assert len(before) == 20 and REMOVED_KEY in before
        assert before[CHANGED_KEY].title != CHANGED_SUMMARY

        # The corpus changes on disk and is re-ingested by another process; the service runs on.
        spec["paths"]["/users/me"]["get"]["summary"] = CHANGED_SUMMARY
        del spec["paths"][REMOVED_PATH]
        corpus_file.write_text(yaml.safe_dump(spec, sort_keys=False))
        report = await asyncio.to_thread(ingest_in_subprocess, lite_server.uri, f"{CORPUS}={corpus_file}")
        assert "0 added, 1 updated, 1 deleted, 18 unchanged" in report

        deadline = time.monotonic() + 30
        while True:
            everything = {s.key: s for s in await _retrieve(stub, "revoke an API keypair", 50)}
            zebra = await _retrieve(stub, "zebra badge", 1)
            changed = everything.get(CHANGED_KEY)
            if (
                REMOVED_KEY not in everything
                and changed is not None
                and changed.title == CHANGED_SUMMARY
                and zebra
                and zebra[0].key == CHANGED_KEY
            ):
                break
            assert time.monotonic() < deadline, (
                f"after 30 s the service still shows removed={REMOVED_KEY in everything} "
                f"title={changed.title if changed else None!r} zebra={[s.key for s in zebra]}"
            )
            await asyncio.sleep(0.2)
        assert len(everything) == 19
        assert CHANGED_SUMMARY in everything[CHANGED_KEY].text
