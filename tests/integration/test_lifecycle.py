"""Process-level lifecycle, for real: SIGTERM to an apihelper-serve process drains it (gRPC and
HTTP together), and an ingest killed with SIGKILL at any point converges on the right docs when
run again."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from apihelper.retriever.samples import sample_corpus_path
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc
from tests.support import free_port, sse_events

BIN = Path(sys.executable).parent
SERVE = BIN / "apihelper-serve"
BUILD = BIN / "apihelper-build"


def _functional_corpus() -> Path:
    import prometheus_client

    return Path(prometheus_client.__file__).parent


def _ingest(db: Path, *corpora: str) -> subprocess.Popen[bytes]:
    args = [str(BUILD), "ingest", "--quiet", "--milvus-uri", str(db)]
    for corpus in corpora:
        args += ["--corpus", corpus]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.transformers5
async def test_sigterm_drains_in_flight_streams_then_exits_0(dev_model_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "milvus.db"
    ingest = _ingest(db, f"demo={sample_corpus_path()}")
    assert ingest.wait(timeout=180) == 0, ingest.stdout.read() if ingest.stdout else b""
    # The log goes to a file: a pipe nobody drains would fill up and block the server.
    log = tmp_path / "serve.log"
    http_port = free_port()
    server = subprocess.Popen(
        [
            str(SERVE),
            "--port",
            "0",
            "--http-port",
            str(http_port),
            "--metrics-port",
            "0",
            "--milvus-uri",
            str(db),
            "--model",
            str(dev_model_dir),
            # A grace far beyond the stream's length on any machine, however loaded: what is tested
            # is that the stream in flight is drained whole, not how fast this CPU is.
            "--shutdown-grace-seconds",
            "600",
            "--health-check-interval-seconds",
            "60",
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        port = 0
        deadline = time.monotonic() + 180
        while not port and time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"apihelper-serve exited with {server.returncode}:\n{log.read_text()}")
            for line in log.read_text().splitlines():
                if line.startswith("apihelper: listening on "):
                    port = int(line.rsplit(":", 1)[1])
            await asyncio.sleep(0.2)
        assert port, "the server never said where it listens"
        http_request = {
            "instruction": "Create a new session",
            "retrieval": {"mode": "RETRIEVAL_MODE_NONE"},
            "sampling": {"max_tokens": 400},
        }
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=600) as http,
            http.stream("POST", "/v1/generate", json=http_request) as http_stream,
        ):
            http_events = sse_events(http_stream.aiter_lines())
            assert (await anext(http_events))[0] == "sources"  # an HTTP stream in flight too
            stub = pb_grpc.ApiHelperStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            long_request = pb.GenerateRequest(
                instruction="Create a new session",
                retrieval=pb.RetrievalOptions(mode=pb.RETRIEVAL_MODE_NONE),
                sampling=pb.SamplingParams(max_tokens=400),
            )
            sent = time.monotonic()
            stream = stub.Generate(long_request, timeout=600)
            first = await stream.read()
            assert isinstance(first, pb.GenerateResponse) and first.HasField("sources")
            watch = health.Watch(health_pb2.HealthCheckRequest(service="apihelper.v1.ApiHelper"))  # type: ignore[attr-defined]
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

            server.send_signal(signal.SIGTERM)
            signalled_ms = (time.monotonic() - sent) * 1000
            # Health says NOT_SERVING at once ...
            assert (await asyncio.wait_for(watch.read(), 10)).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
            # ... new calls are refused ...
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ListCorpora(pb.ListCorporaRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            # ... and the stream in flight finishes whole.
            rest: list[pb.GenerateResponse] = []
            while (message := await stream.read()) is not grpc.aio.EOF:
                assert isinstance(message, pb.GenerateResponse)
                rest.append(message)
            assert rest[-1].HasField("completion")
            # Generation went on after the signal: the stream was drained, not already done.
            assert rest[-1].completion.timings.total_ms > signalled_ms
            deltas = "".join(m.delta.text for m in rest if m.WhichOneof("event") == "delta")
            assert rest[-1].completion.text == deltas
            assert rest[-1].completion.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_STOP)
            # The HTTP stream in flight finishes whole too; new HTTP connections are refused.
            http_rest = [event async for event, _ in http_events]
            assert http_rest[-1] == "completion" and set(http_rest[:-1]) == {"delta"}
            async with httpx.AsyncClient(timeout=5) as fresh:
                with pytest.raises(httpx.ConnectError):
                    await fresh.get(f"http://127.0.0.1:{http_port}/healthz")
        assert await asyncio.to_thread(server.wait, 60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        print(log.read_text())


def test_ingest_killed_at_any_point_converges(tmp_path: Path) -> None:
    from apihelper.retriever.loaders import load_corpus
    from apihelper.retriever.milvus_store import MAX_VIEWS, MilvusStore

    db = tmp_path / "milvus.db"
    corpus = f"functional={_functional_corpus()}:python"
    rng = random.Random(11)
    for _ in range(2):
        run = _ingest(db, corpus)
        time.sleep(rng.uniform(3.0, 9.0))  # model load, embedding or writes, whichever is on
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
    final = _ingest(db, corpus)
    output = final.communicate(timeout=300)[0].decode()
    assert final.returncode == 0, output
    again = _ingest(db, corpus)
    output = again.communicate(timeout=300)[0].decode()
    assert again.returncode == 0 and "0 docs written" in output, output

    _, loaded = load_corpus(_functional_corpus(), None)
    # What ingest stores by default: each doc with its views (at most MAX_VIEWS; --no-views: none).
    expected = {d.key: dataclasses.replace(d, views=d.views[:MAX_VIEWS]).content_hash for d in loaded.docs}
    store = MilvusStore(str(db))
    try:
        # Keys are primary keys (a hash of the key), so a duplicate cannot exist; what must hold
        # is that exactly the right docs, with the right content, are there.
        assert store.content_hashes("functional") == expected
        info = store.corpus_info("functional")
        assert info is not None and info.doc_count == len(expected)
    finally:
        store.close()
