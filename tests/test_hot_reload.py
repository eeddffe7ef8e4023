"""Corpus updates without downtime, across processes, the way production runs it.

Milvus Lite locks its data directory to one process, so the supported way to let ``ingest`` and a
running service share a corpus is to serve the directory with ``milvus-lite server`` (or to use a
Milvus server) and give both the ``http://`` URI. This test does exactly that:

1. starts ``milvus-lite server --data-dir DIR --host 127.0.0.1 --port N`` as a subprocess;
2. ingests a small OpenAPI corpus with ``python -m engine_build.cli ingest`` in another subprocess;
3. starts the gRPC service in this process (real MiniLM retriever, FakeEngine: this is about
   retrieval) and checks Retrieve;
4. changes one operation and removes another, ingests again from a subprocess, and polls the
   *running* service's Retrieve until it shows both (the changed text, the removed key gone),
   without restarting anything. Updates show up as soon as the ingest's flush is searchable;
   the poll allows 30 s and takes about one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc
from retriever.samples import sample_corpus_path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = "hot"
CHANGED_KEY = "GET /users/me"
CHANGED_SUMMARY = "Show my account with its zebra badge"
REMOVED_PATH = "/keypairs/{access_key}"
REMOVED_KEY = "DELETE /keypairs/{access_key}"


def _milvus_lite() -> str:
    beside = Path(sys.executable).with_name("milvus-lite")
    found = str(beside) if beside.exists() else shutil.which("milvus-lite")
    if not found:
        pytest.skip("the milvus-lite command is not installed")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"milvus-lite server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"milvus-lite server did not listen on {port} within {seconds:.0f}s")


@dataclass
class LiteServer:
    uri: str
    log: Path


@pytest.fixture
def lite_server(tmp_path: Path) -> Iterator[LiteServer]:
    """A ``milvus-lite server`` subprocess on a free loopback port; stopped after the test."""
    port = _free_port()
    log = tmp_path / "milvus-lite.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [_milvus_lite(), "server", "--data-dir", str(tmp_path / "milvus"), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_port(port, process)
        yield LiteServer(f"http://127.0.0.1:{port}", log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _ingest_in_subprocess(uri: str, spec: Path) -> str:
    """``apihelper-build ingest`` as its own process (the production path); returns its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "engine_build.cli", "ingest", "--milvus-uri", uri, "--corpus", f"{CORPUS}={spec}", "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@asynccontextmanager
async def _service(uri: str) -> AsyncIterator[pb_grpc.ApiHelperAsyncStub]:
    """The gRPC service in this process on ``uri`` (real MiniLM retriever, FakeEngine)."""
    from retriever.embedding import Embedder
    from retriever.service import open_retriever
    from service.engine.fake import FakeEngine
    from service.grpc.server import start_server
    from service.settings import Settings

    retriever = await open_retriever(uri, "", await asyncio.to_thread(Embedder))
    settings = Settings(port=0, host="127.0.0.1", milvus_uri=uri, metrics_port=0, shutdown_grace_seconds=1.0)
    running = await start_server(settings, FakeEngine(), retriever)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield pb_grpc.ApiHelperStub(channel)
    finally:
        await running.stop()


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
    assert "20 added" in await asyncio.to_thread(_ingest_in_subprocess, lite_server.uri, corpus_file)

    async with _service(lite_server.uri) as stub:
        before = {s.key: s for s in await _retrieve(stub, "revoke an API keypair", 50)}
        assert len(before) == 20 and REMOVED_KEY in before
        assert before[CHANGED_KEY].title != CHANGED_SUMMARY

        # The corpus changes on disk and is re-ingested by another process; the service runs on.
        spec["paths"]["/users/me"]["get"]["summary"] = CHANGED_SUMMARY
        del spec["paths"][REMOVED_PATH]
        corpus_file.write_text(yaml.safe_dump(spec, sort_keys=False))
        report = await asyncio.to_thread(_ingest_in_subprocess, lite_server.uri, corpus_file)
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
