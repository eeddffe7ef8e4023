"""Shared fixtures: where ../shared corpora are, and the cost-heavy session-wide artifacts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

if TYPE_CHECKING:
    from service.grpc.server import RunningServer

SHARED_CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def shared_corpus(*parts: str) -> Path:
    """A file under ../shared/corpora, or skip the test saying what is missing."""
    path = SHARED_CORPORA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests need the third-party corpora in ../shared/corpora")
    return path


@pytest.fixture(scope="session")
def dev_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's development model, built once per test session."""
    from engine_build.dev_model import make_dev_model
    from retriever.loaders import load_corpus
    from retriever.samples import sample_corpus_path

    out = tmp_path_factory.mktemp("dev-model")
    _, loaded = load_corpus(sample_corpus_path(), None)
    make_dev_model(out, (d.text for d in loaded.docs))
    return out


BACKEND_AI_SPEC = SHARED_CORPORA / "backend.ai" / "openapi.json"


@dataclass
class Serving:
    """A live apihelper server for the whole session (its start costs seconds)."""

    running: RunningServer
    metrics_port: int
    milvus_uri: str


@pytest.fixture(scope="session")
async def serving(dev_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Serving]:
    """Milvus Lite in a temp dir with the sample corpus (and Backend.AI's spec when ../shared is
    there), the real transformers engine on the dev model, Prometheus metrics on a free port."""
    from retriever.embedding import Embedder
    from retriever.ingest import ingest_corpus
    from retriever.milvus_store import MilvusStore
    from retriever.samples import sample_corpus_path
    from retriever.service import open_retriever
    from service.engine.transformers_engine import TransformersEngine
    from service.grpc.server import start_server
    from service.metrics.prometheus import PrometheusRecorder
    from service.settings import Settings

    uri = str(tmp_path_factory.mktemp("milvus") / "milvus.db")
    embedder = await asyncio.to_thread(Embedder)
    store = MilvusStore(uri, "")
    await asyncio.to_thread(ingest_corpus, store, embedder, "demo", sample_corpus_path(), None, progress=False)
    if BACKEND_AI_SPEC.exists():
        await asyncio.to_thread(ingest_corpus, store, embedder, "rest", BACKEND_AI_SPEC, None, progress=False)
    store.close()

    settings = Settings(port=0, milvus_uri=uri, model=str(dev_model_dir), shutdown_grace_seconds=2.0)
    retriever = await open_retriever(uri, "", embedder)
    engine = await TransformersEngine.load(dev_model_dir, device="cpu")
    recorder = PrometheusRecorder(
        version="test",
        engine_kind=engine.info.kind,
        model=engine.info.model,
        prompt_format=engine.info.prompt_format.value,
        embedding_model=embedder.model_name,
        engine_stats=engine.stats,
    )
    metrics_port = recorder.serve("127.0.0.1", 0)
    running = await start_server(settings, engine, retriever, recorder)
    yield Serving(running, metrics_port, uri)
    await running.stop()
    recorder.close()


@pytest.fixture(scope="session")
def running(serving: Serving) -> RunningServer:
    return serving.running


@pytest.fixture(scope="session")
async def channel(running: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        yield ch
