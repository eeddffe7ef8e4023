"""Fixtures shared by every tier: the costly session-wide artifacts (the dev model, a live server
on the real engine and Milvus Lite) and Milvus Lite servers. Plain helpers: ``tests.support``."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from apihelper.service.engine.config import TransformersConfig
from tests.support import BACKEND_AI_SPEC, FakeEmbedder, free_port, live_server, start_milvus_lite, stop_process

if TYPE_CHECKING:
    from apihelper.retriever.milvus_store import MilvusStore
    from apihelper.service.engine.protocol import Engine
    from apihelper.service.frontends import RunningServer


@pytest.fixture(scope="session")
def dev_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's development model (random weights), built once per test session."""
    from apihelper.build.dev_model import make_dev_model
    from apihelper.retriever.loaders import load_corpus
    from apihelper.retriever.samples import sample_corpus_path

    out = tmp_path_factory.mktemp("dev-model")
    _, loaded = load_corpus(sample_corpus_path(), None)
    make_dev_model(out, (d.text for d in loaded.docs))
    return out


@dataclass
class Serving:
    """A live apihelper server for the whole session (its start costs seconds)."""

    running: RunningServer
    engine: Engine
    metrics_port: int
    milvus_uri: str


@pytest.fixture(scope="session")
async def serving(dev_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Serving]:
    """Milvus Lite in a temp dir with the sample corpus (and Backend.AI's spec when ../shared is
    there), the real transformers engine on the dev model, Prometheus metrics on a free port."""
    from apihelper.retriever.embedding import Embedder
    from apihelper.retriever.ingest import ingest_corpus
    from apihelper.retriever.milvus_retriever import open_retriever
    from apihelper.retriever.milvus_store import MilvusStore
    from apihelper.retriever.samples import sample_corpus_path
    from apihelper.service.engine.transformers_engine import TransformersEngine
    from apihelper.service.metrics.prometheus import PrometheusRecorder

    uri = str(tmp_path_factory.mktemp("milvus") / "milvus.db")
    embedder = await asyncio.to_thread(Embedder)
    store = MilvusStore(uri, "")
    await asyncio.to_thread(ingest_corpus, store, embedder, "demo", sample_corpus_path(), None, progress=False)
    if BACKEND_AI_SPEC.exists():
        await asyncio.to_thread(ingest_corpus, store, embedder, "rest", BACKEND_AI_SPEC, None, progress=False)
    store.close()

    async with AsyncExitStack() as stack:
        retriever = await open_retriever(uri, "", embedder)
        stack.push_async_callback(retriever.close)
        engine = await TransformersEngine.load(dev_model_dir, TransformersConfig(device="cpu"))
        stack.push_async_callback(engine.shutdown)
        recorder = PrometheusRecorder(
            version="test",
            engine_kind=engine.info.kind,
            model=engine.info.model,
            prompt_format=engine.info.prompt_format.value,
            embedding_model=embedder.model_name,
            engine_stats=engine.stats,
        )
        stack.callback(recorder.close)
        metrics_port = recorder.serve("127.0.0.1", 0)
        running = await stack.enter_async_context(
            live_server(engine, retriever, recorder=recorder, milvus_uri=uri, shutdown_grace_seconds=2.0)
        )
        yield Serving(running, engine, metrics_port, uri)


@pytest.fixture(scope="session")
def running(serving: Serving) -> RunningServer:
    return serving.running


@pytest.fixture(scope="session")
def engine(serving: Serving) -> Engine:
    """The session server's engine (the real transformers engine on the dev model)."""
    return serving.engine


@pytest.fixture(scope="session")
async def channel(running: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        yield ch


@dataclass
class LiteServer:
    uri: str
    log: Path


@pytest.fixture
def lite_server(tmp_path: Path) -> Iterator[LiteServer]:
    """A ``milvus-lite server`` subprocess on a free loopback port; stopped after the test."""
    port, log = free_port(), tmp_path / "milvus-lite.log"
    process = start_milvus_lite(tmp_path / "milvus", port, log)
    try:
        yield LiteServer(f"http://127.0.0.1:{port}", log)
    finally:
        stop_process(process)


@pytest.fixture
def lite_store(tmp_path: Path) -> Iterator[MilvusStore]:
    """Milvus Lite in a temp dir holding the sample corpus as ``demo`` (hash embeddings)."""
    from apihelper.retriever.ingest import ingest_corpus
    from apihelper.retriever.milvus_store import MilvusStore
    from apihelper.retriever.samples import sample_corpus_path

    store = MilvusStore(str(tmp_path / "milvus.db"))
    ingest_corpus(store, FakeEmbedder(), "demo", sample_corpus_path(), progress=False)
    yield store
    store.close()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost, and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=apihelper test CA",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.pem"),
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.pem"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(d / f"{name}.ext"),
            "-out",
            str(d / f"{name}.pem"),
        )
    return d
