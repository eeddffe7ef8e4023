"""Scale-out, for real: three ``apihelper-serve`` processes share one Milvus, behind a gRPC client
that balances with ``round_robin`` over their addresses (what a Kubernetes headless Service and
the client's service config give; ``docs/kubernetes.md``).

One Milvus (``milvus-lite server``, as the README's live re-ingest runs it) holds the corpus;
three replicas serve the development model from it, each from its own copy (the manifest's name
says which replica wrote a completion). A client channel with the service config the docs
recommend (round_robin, client-side health checking, a retry policy for UNAVAILABLE) runs
Generate streams, ``CONCURRENCY`` at a time, until at least ``TOTAL_STREAMS`` have run and the
scenario is done; the scenario moves on by completed streams, not by wall time:

1. the corpus is re-ingested (one op changed, one corpus added) by another process while the load
   runs; each replica, asked directly, shows both within its corpus-list cache TTL;
2. replica B gets SIGTERM with a stream of its own in flight: that stream finishes whole, B exits
   0, and no call of the load fails;
3. replica C gets SIGKILL with a stream of its own in flight: that stream fails with UNAVAILABLE;
   calls of the load fail only if they were in flight when C died, and only with UNAVAILABLE;
   the survivor's own counters show every Generate it served ended OK.

Kept light for a shared 2-core machine: one torch thread per replica, 8 tokens per stream,
keyword retrieval (no query embedding per call).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import yaml

from apihelper.retriever.milvus_retriever import DEFAULT_CORPORA_TTL_SECONDS
from apihelper.retriever.samples import sample_corpus_path
from apihelper.service.engine.manifest import MANIFEST_NAME
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc
from tests.conftest import LiteServer
from tests.support import budget, free_port, ingest_in_subprocess

BIN = Path(sys.executable).parent
TOTAL_STREAMS = 240
CONCURRENCY = 6
MAX_TOKENS = 8
REINGEST_AFTER, SIGTERM_AFTER, SIGKILL_AFTER = 20, 80, 140  # completed streams
CHANGED_KEY = "GET /users/me"
CHANGED_SUMMARY = "Show my account with its zebra badge"
NEW_CORPUS = "hot"
# What docs/kubernetes.md tells gRPC clients of a headless Service to use.
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": "apihelper.v1.ApiHelper"},
    "methodConfig": [
        {
            "name": [{"service": "apihelper.v1.ApiHelper"}],
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.1s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


@dataclass
class Replica:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int
    port: int = 0


@dataclass
class Stream:
    started: float
    first_message: float | None = None
    ended: float = 0.0
    model: str = ""  # the replica that completed it
    code: grpc.StatusCode = grpc.StatusCode.OK


@dataclass
class Scenario:
    streams: list[Stream] = field(default_factory=list)
    done: bool = False
    sigterm_at: float = 0.0
    sigkill_sent: float = 0.0  # just before C got SIGKILL
    sigkill_at: float = 0.0  # once C is reaped: dead, its sockets closed

    @property
    def completed(self) -> int:
        return sum(1 for s in self.streams if s.ended)


def _replica_model(dev_model_dir: Path, root: Path, name: str) -> Path:
    """A copy of the dev model whose manifest names the replica (completions carry it)."""
    out = root / name
    shutil.copytree(dev_model_dir, out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["name"] = name
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    return out


def _start_replica(name: str, model: Path, milvus_uri: str, tmp_path: Path) -> Replica:
    log, metrics_port = tmp_path / f"{name}.log", free_port()
    args = [
        str(BIN / "apihelper-serve"),
        "--port", "0",
        "--http-port", "0",
        "--metrics-port", str(metrics_port),
        "--milvus-uri", milvus_uri,
        "--model", str(model),
        "--num-threads", "1",
        "--max-batch-size", "4",
        # Far beyond a stream's length on any machine: what is tested is the drain, not the CPU.
        "--shutdown-grace-seconds", "600",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    return Replica(name, process, log, metrics_port)


async def _wait_listening(replica: Replica, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not replica.port:
        if replica.process.poll() is not None:
            pytest.fail(f"{replica.name} exited with {replica.process.returncode}:\n{replica.log.read_text()}")
        assert time.monotonic() < deadline, f"{replica.name} did not listen within {seconds:.0f} s"
        for line in replica.log.read_text().splitlines():
            if line.startswith("apihelper: listening on "):
                replica.port = int(line.rsplit(":", 1)[1])
        await asyncio.sleep(0.2)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def _generate_counts(metrics: str) -> Counter[str]:
    """apihelper_requests_total{rpc="Generate"} by code, from a scrape."""
    counts: Counter[str] = Counter()
    for line in metrics.splitlines():
        if line.startswith("apihelper_requests_total{") and 'rpc="Generate"' in line:
            code = line.split('code="', 1)[1].split('"', 1)[0]
            counts[code] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def _request(max_tokens: int = MAX_TOKENS) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        instruction="Create a new session",
        retrieval=pb.RetrievalOptions(mode=pb.RETRIEVAL_MODE_KEYWORD, corpora=["demo"], top_k=2),
        sampling=pb.SamplingParams(max_tokens=max_tokens),
    )


async def _one_stream(stub: pb_grpc.ApiHelperAsyncStub, scenario: Scenario) -> None:
    stream = Stream(started=time.monotonic())
    scenario.streams.append(stream)
    call = stub.Generate(_request(), timeout=budget(120))
    try:
        async for message in call:
            if stream.first_message is None:
                stream.first_message = time.monotonic()
            if message.HasField("completion"):
                stream.model = message.completion.model
    except grpc.aio.AioRpcError as exc:
        stream.code = exc.code()
    stream.ended = time.monotonic()


async def _load(stub: pb_grpc.ApiHelperAsyncStub, scenario: Scenario) -> None:
    async def worker() -> None:
        while len(scenario.streams) < TOTAL_STREAMS or not scenario.done:
            await _one_stream(stub, scenario)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def _completed(scenario: Scenario, count: int) -> None:
    deadline = time.monotonic() + budget(600)
    while scenario.completed < count:
        assert time.monotonic() < deadline, f"only {scenario.completed} of {count} streams completed"
        await asyncio.sleep(0.05)


async def _sees_reingest(stub: pb_grpc.ApiHelperAsyncStub) -> bool:
    """Whether a search over every corpus (the replica's cached corpus list) finds the changed
    op in both the re-ingested corpus and the new one."""
    response = await stub.Retrieve(
        pb.RetrieveRequest(
            instruction=CHANGED_SUMMARY, retrieval=pb.RetrievalOptions(mode=pb.RETRIEVAL_MODE_KEYWORD, top_k=2)
        ),
        timeout=budget(30),
    )
    hits = {(s.corpus, s.key, s.title) for s in response.sources}
    return hits == {("demo", CHANGED_KEY, CHANGED_SUMMARY), (NEW_CORPUS, CHANGED_KEY, CHANGED_SUMMARY)}


async def _long_stream_in_flight(address: str) -> tuple[grpc.aio.Channel, grpc.aio.UnaryStreamCall]:  # type: ignore[type-arg]
    """A long stream straight to one replica, once its first generated text has arrived."""
    channel = grpc.aio.insecure_channel(address)
    request = _request(max_tokens=200)
    request.retrieval.mode = pb.RETRIEVAL_MODE_NONE
    call = pb_grpc.ApiHelperStub(channel).Generate(request, timeout=budget(600))
    while (message := await call.read()) is not grpc.aio.EOF:
        assert isinstance(message, pb.GenerateResponse)
        if message.WhichOneof("event") == "delta":
            return channel, call
    raise AssertionError("the long stream ended before its first delta")


async def _read_rest(call: grpc.aio.UnaryStreamCall) -> list[pb.GenerateResponse]:  # type: ignore[type-arg]
    rest = []
    while (message := await call.read()) is not grpc.aio.EOF:
        assert isinstance(message, pb.GenerateResponse)
        rest.append(message)
    return rest


async def _scenario(replicas: list[Replica], lite: LiteServer, corpus_file: Path, scenario: Scenario) -> None:
    _, b, c = replicas
    direct = [grpc.aio.insecure_channel(f"127.0.0.1:{r.port}") for r in replicas]
    try:
        # 1. Re-ingest while the load runs; every replica shows it within its cache TTL.
        await _completed(scenario, REINGEST_AFTER)
        for replica_channel in direct:
            assert not await _sees_reingest(pb_grpc.ApiHelperStub(replica_channel))
        spec = yaml.safe_load(sample_corpus_path().read_text())
        spec["paths"]["/users/me"]["get"]["summary"] = CHANGED_SUMMARY
        corpus_file.write_text(yaml.safe_dump(spec, sort_keys=False))
        report = await asyncio.to_thread(
            ingest_in_subprocess, lite.uri, f"demo={corpus_file}", f"{NEW_CORPUS}={corpus_file}"
        )
        assert "1 updated" in report and "20 added" in report, report
        ingested = time.monotonic()
        limit = DEFAULT_CORPORA_TTL_SECONDS + budget(10)
        pending = dict(zip((r.name for r in replicas), direct, strict=True))
        while pending:
            for name, replica_channel in list(pending.items()):
                if await _sees_reingest(pb_grpc.ApiHelperStub(replica_channel)):
                    del pending[name]
            waited = time.monotonic() - ingested
            assert not pending or waited < limit, f"{sorted(pending)} still miss the re-ingest after {waited:.1f} s"
            await asyncio.sleep(0.1)
        print(f"re-ingest seen by all three {time.monotonic() - ingested:.1f} s after it returned")

        # 2. SIGTERM to B with a stream of its own in flight: it finishes whole; B exits 0.
        await _completed(scenario, SIGTERM_AFTER)
        sent = time.monotonic()
        channel_b, long_b = await _long_stream_in_flight(f"127.0.0.1:{b.port}")
        async with channel_b:
            b.process.send_signal(signal.SIGTERM)
            scenario.sigterm_at = time.monotonic()
            rest = await _read_rest(long_b)
            assert rest and rest[-1].HasField("completion"), "B's stream in flight did not finish whole"
            assert rest[-1].completion.model == b.name
            # It went on generating after the signal: drained, not already done.
            assert rest[-1].completion.timings.total_ms > (scenario.sigterm_at - sent) * 1000
        assert await asyncio.to_thread(b.process.wait, budget(120)) == 0, b.log.read_text()

        # 3. SIGKILL to C with a stream of its own in flight: that stream fails with UNAVAILABLE.
        await _completed(scenario, SIGKILL_AFTER)
        channel_c, long_c = await _long_stream_in_flight(f"127.0.0.1:{c.port}")
        async with channel_c:
            scenario.sigkill_sent = time.monotonic()
            c.process.kill()
            await asyncio.to_thread(c.process.wait, budget(60))
            scenario.sigkill_at = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as killed:
                await _read_rest(long_c)
            assert killed.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for replica_channel in direct:
            await replica_channel.close()
        scenario.done = True


@pytest.mark.transformers5
async def test_three_replicas_share_one_milvus_through_sigterm_and_sigkill(
    lite_server: LiteServer, dev_model_dir: Path, tmp_path: Path
) -> None:
    assert "20 added" in await asyncio.to_thread(ingest_in_subprocess, lite_server.uri, f"demo={sample_corpus_path()}")
    replicas = [
        _start_replica(name, _replica_model(dev_model_dir, tmp_path, name), lite_server.uri, tmp_path)
        for name in ("replica-a", "replica-b", "replica-c")
    ]
    try:
        for replica in replicas:
            await _wait_listening(replica, budget(300))
        a, b, c = replicas
        target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
        scenario = Scenario()
        async with grpc.aio.insecure_channel(
            target, options=[("grpc.service_config", json.dumps(SERVICE_CONFIG))]
        ) as channel:
            stub = pb_grpc.ApiHelperStub(channel)
            await asyncio.gather(
                _load(stub, scenario), _scenario(replicas, lite_server, tmp_path / "changed.yaml", scenario)
            )

        streams = scenario.streams
        assert len(streams) >= TOTAL_STREAMS
        failed = [s for s in streams if s.code != grpc.StatusCode.OK]
        # Nothing failed but what was in flight on C when it died, and that only with UNAVAILABLE.
        for s in failed:
            assert s.code == grpc.StatusCode.UNAVAILABLE, s
            assert s.started < scenario.sigkill_at and s.ended >= scenario.sigkill_sent, s
        assert len(failed) <= CONCURRENCY
        ok = [s for s in streams if s.code == grpc.StatusCode.OK]
        assert all(s.model in (a.name, b.name, c.name) for s in ok)
        served = Counter(s.model for s in ok)
        # round_robin spread the load over all three, and after each stopped, nothing went there.
        assert served[a.name] and served[b.name] and served[c.name], served
        assert not [s for s in ok if s.model == b.name and s.started > scenario.sigterm_at + budget(5)]
        assert not [s for s in ok if s.model == c.name and s.started > scenario.sigkill_at]
        # The survivor's own count: every Generate it served ended OK, one per completion it wrote.
        counts = _generate_counts(await asyncio.to_thread(_scrape, a.metrics_port))
        assert counts == Counter({"OK": served[a.name]}), counts
        print(f"streams {len(streams)}, by replica {dict(served)}, failed on C's death {len(failed)}")
    finally:
        for replica in replicas:
            if replica.process.poll() is None:
                replica.process.send_signal(signal.SIGTERM)
        for replica in replicas:
            try:
                replica.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                replica.process.kill()
                replica.process.wait()
