"""Hostile clients at the transport (issue 14, server items 1-3), over a real grpc.aio server on
port 0 and raw HTTP/2 frames (``tests.rawh2``) where grpcio's client would not misbehave.

- a client with a zero (or tiny) flow-control window that never reads holds a Generate slot no
  longer than the stall timeout, and its engine request is aborted;
- one connection cannot open more streams than ``max_streams_per_connection``;
- (a client deadline longer than the server's maximum is cut to it: ``test_call_policy``, on
  gRPC and HTTP alike);
- normal requests keep their time to first token, and the server its memory, while 64 stalled
  streams exist;
- health Watch streams are limited, timed out and counted;
- UNAUTHENTICATED, UNIMPLEMENTED, INVALID_ARGUMENT (garbage protobuf) and RESOURCE_EXHAUSTED all
  reach ``apihelper_requests_total``, and garbage gets a plain message, no traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from apihelper.service.engine.config import TransformersConfig
from apihelper.service.engine.fake import FakeEngine
from apihelper.service.frontends import RunningServer
from apihelper.service.metrics.prometheus import PrometheusRecorder
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc
from tests.rawh2 import RawH2Client, grpc_frame
from tests.support import budget, live_server, stub_for, wait_until

GENERATE_PATH = "/apihelper.v1.ApiHelper/Generate"
LONG_REPLY = " ".join(f"word{i}" for i in range(1500))  # ~1,500 tokens, ~12 KB of deltas
SHORT = pb.GenerateRequest(instruction="Create a new session", sampling=pb.SamplingParams(max_tokens=16))
LONG_BODY = grpc_frame(
    pb.GenerateRequest(
        instruction="Create a new session", sampling=pb.SamplingParams(max_tokens=1400)
    ).SerializeToString()
)
FOREVER = "99999999S"  # the longest grpc-timeout the wire format allows
# A stalled stream's HTTP/2 stream stays in the transport until its connection closes, so the
# server's stop waits out its grace period for it: keep that short here.
QUICK_STOP = 0.5


def recorder_for(engine: FakeEngine) -> PrometheusRecorder:
    return PrometheusRecorder(
        version="test",
        engine_kind="fake",
        model="fake",
        prompt_format="gorilla_v0",
        embedding_model="fake-8",
        engine_stats=engine.stats,
    )


def metric(recorder: PrometheusRecorder, name: str, **labels: str) -> float:
    """A sample of the recorder's exposition, as a scrape reads it (0 when absent)."""
    text = generate_latest(recorder.registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@pytest.fixture
async def stalled_clients() -> AsyncIterator[list[RawH2Client]]:
    """Raw HTTP/2 clients a test opens; closed after it."""
    clients: list[RawH2Client] = []
    yield clients
    for client in clients:
        await client.close()


async def stall(server: RunningServer, clients: list[RawH2Client], streams: int, *, window: int, per: int) -> None:
    """Open ``streams`` long Generate calls on connections of ``per`` streams each, with a
    ``window``-byte flow-control window, an endless deadline, and no reading ever."""
    while streams > 0:
        client = RawH2Client("127.0.0.1", server.port, initial_window=window)
        await client.connect()
        clients.append(client)
        await client.open_streams(GENERATE_PATH, LONG_BODY, min(per, streams), timeout=FOREVER)
        streams -= per


async def ttft(stub: pb_grpc.ApiHelperAsyncStub) -> float:
    """Seconds from the call to its first delta (the answer is read to the end)."""
    started = time.perf_counter()
    first = 0.0
    async for message in stub.Generate(SHORT, timeout=30):
        if message.HasField("delta") and not first:
            first = time.perf_counter() - started
    assert first
    return first


# -- item 1: streams cannot outlive their welcome ---------------------------------------------


@pytest.mark.parametrize("window", [0, 400])
async def test_a_client_that_never_reads_holds_a_slot_no_longer_than_the_stall_timeout(
    window: int, stalled_clients: list[RawH2Client]
) -> None:
    stall_s = 0.5
    engine = FakeEngine(LONG_REPLY, token_delay_s=0.001)
    recorder = recorder_for(engine)
    async with live_server(
        engine,
        recorder=recorder,
        max_concurrent_streams=8,
        stream_stall_timeout_seconds=stall_s,
        shutdown_grace_seconds=QUICK_STOP,
    ) as server:
        await stall(server, stalled_clients, 8, window=window, per=8)
        await wait_until(lambda: server.core.streams.active == 8, 5, "the 8 stalled streams being admitted")
        held_from = time.perf_counter()
        if window:  # the sources and the first deltas got through: the engine requests run
            await wait_until(lambda: engine.num_in_flight == 8, 2, "the stalled streams' engine requests starting")
        async with stub_for(server) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await ttft(stub)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # every slot is held now
            await wait_until(lambda: server.core.streams.active == 0, stall_s + 2, "the stalled streams ending")
            held = time.perf_counter() - held_from
            print(f"window {window}: 8 slots held {held:.2f} s for a {stall_s} s stall timeout")
            assert held <= budget(stall_s + 1.0), f"slots held {held:.2f} s for a {stall_s} s stall timeout"
            await wait_until(lambda: engine.num_in_flight == 0, 2, "the stalled engine requests being aborted")
            assert await ttft(stub) > 0  # the slots are back
        assert metric(recorder, "apihelper_stalled_streams_total", rpc="Generate") == 8
        assert metric(recorder, "apihelper_requests_total", rpc="Generate", code="DEADLINE_EXCEEDED") == 8
        assert metric(recorder, "apihelper_requests_in_flight", rpc="Generate") == 0


async def test_one_connection_cannot_take_every_slot(stalled_clients: list[RawH2Client]) -> None:
    engine = FakeEngine(LONG_REPLY, token_delay_s=0.001)
    async with live_server(
        engine,
        max_concurrent_streams=16,
        max_streams_per_connection=4,
        stream_stall_timeout_seconds=30,
        shutdown_grace_seconds=QUICK_STOP,
    ) as server:
        # 12 streams written at once, before the client has read the server's SETTINGS: the
        # server refuses what is over its limit itself.
        await stall(server, stalled_clients, 12, window=0, per=12)
        await wait_until(lambda: server.core.streams.active == 4, 5, "the connection's 4 streams being admitted")
        await asyncio.sleep(0.3)
        assert server.core.streams.active == 4
        async with stub_for(server) as stub:
            assert await ttft(stub) > 0  # another connection still gets a slot
        await stalled_clients[0].read_until_done(list(stalled_clients[0].results)[4:], 5)
        refused = [r for r in stalled_clients[0].results.values() if r.reset is not None]
        assert len(refused) == 8


async def test_a_deadline_that_lands_during_a_write_to_a_reading_client_still_sends_its_status() -> None:
    # An engine that never waits: the handler spends its time writing, so the server's deadline
    # lands while an ordinary message is on its way to a client that reads. That write is taken
    # at once; the call must end with its DEADLINE_EXCEEDED status, not be dropped as if the
    # client had stopped reading (it would then wait out its own deadline).
    engine = FakeEngine(LONG_REPLY * 20, max_model_len=40_000)
    async with (
        live_server(engine, default_deadline_seconds=0.2, max_deadline_seconds=0.2) as server,
        stub_for(server) as stub,
    ):
        request = pb.GenerateRequest(instruction="x", sampling=pb.SamplingParams(max_tokens=30000))
        for _ in range(12):
            started = time.perf_counter()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.Generate(request, timeout=budget(20.0)):
                    pass
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "maximum deadline of 0.2 s" in (info.value.details() or ""), "the client's own deadline ended it"
            assert time.perf_counter() - started <= budget(3.0)
        await wait_until(lambda: engine.num_in_flight == 0, 2, "the engine requests being aborted")


async def test_normal_requests_keep_their_ttft_and_the_server_its_memory_beside_64_stalled_streams(
    stalled_clients: list[RawH2Client],
) -> None:
    engine = FakeEngine(LONG_REPLY, token_delay_s=0.001)
    stall_s = 4.0
    async with (
        live_server(
            engine,
            max_concurrent_streams=96,
            max_streams_per_peer=0,  # the stalled streams stand for many clients, all at 127.0.0.1
            stream_stall_timeout_seconds=stall_s,
            shutdown_grace_seconds=QUICK_STOP,
        ) as server,
        stub_for(server) as stub,
    ):
        for _ in range(3):
            await ttft(stub)  # warm up
        baseline = statistics.median([await ttft(stub) for _ in range(15)])
        rss = psutil.Process().memory_info().rss
        peaks = []
        for _wave in range(3):
            opened = time.perf_counter()
            # The hostile reader: a 400-byte window (the engine starts, then the writes
            # stall), an endless deadline, and never a read; 32 streams per connection.
            await stall(server, stalled_clients, 64, window=400, per=32)
            await wait_until(lambda: server.core.streams.active == 64, 5, "the 64 stalled streams being admitted")
            during = [await ttft(stub) for _ in range(15)]
            assert time.perf_counter() - opened < stall_s, "the stalled streams ended before the measurement"
            assert server.core.streams.active >= 64  # measured while they all existed
            median = statistics.median(during)
            print(f"TTFT beside 64 stalled streams {median * 1000:.2f} ms")
            assert median <= budget(3 * baseline + 0.01), f"TTFT {median * 1000:.1f} ms, {baseline * 1000:.1f} ms alone"
            peaks.append(psutil.Process().memory_info().rss)
            await wait_until(lambda: server.core.streams.active == 0, stall_s + 3, "the stalled streams ending")
            await wait_until(lambda: engine.num_in_flight == 0, 2, "their engine requests being aborted")
            for client in stalled_clients:
                await client.close()
            stalled_clients.clear()
        growth = (max(peaks) - rss) / 2**20
        print(
            f"RSS {rss >> 20} MiB, after each wave {[p >> 20 for p in peaks]} MiB; TTFT alone {baseline * 1000:.2f} ms"
        )
        assert growth < 48, f"RSS grew {growth:.0f} MiB over 3 waves of 64 stalled streams"
        assert peaks[-1] - peaks[0] < 16 * 2**20, f"RSS kept growing: {[p >> 20 for p in peaks]} MiB"


# -- item 2: health Watch streams ---------------------------------------------------------------


async def test_health_watches_are_limited_timed_out_and_counted() -> None:
    engine = FakeEngine()
    recorder = recorder_for(engine)
    async with (
        live_server(engine, recorder=recorder, max_health_watches=2, health_watch_timeout_seconds=1.0) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch  # type: ignore[attr-defined]
        watches = [watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(2)]
        for call in watches:
            first = await call.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
        assert metric(recorder, "apihelper_requests_in_flight", rpc="Watch") == 2
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await watch(health_pb2.HealthCheckRequest(), timeout=5).read()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        started = time.perf_counter()
        for call in watches:
            assert await call.read() is grpc.aio.EOF  # ended by the server, not the client's 30 s
            assert await call.code() == grpc.StatusCode.OK
        assert time.perf_counter() - started <= budget(2.0)
        assert metric(recorder, "apihelper_requests_in_flight", rpc="Watch") == 0
        assert metric(recorder, "apihelper_requests_total", rpc="Watch", code="OK") == 2
        assert metric(recorder, "apihelper_requests_total", rpc="Watch", code="RESOURCE_EXHAUSTED") == 1
        check = health.Check  # type: ignore[attr-defined]
        assert (
            await check(health_pb2.HealthCheckRequest(), timeout=5)
        ).status == health_pb2.HealthCheckResponse.SERVING
        assert metric(recorder, "apihelper_requests_total", rpc="Check", code="OK") == 1


async def test_a_watcher_that_never_reads_is_dropped_and_holds_up_nothing(stalled_clients: list[RawH2Client]) -> None:
    engine = FakeEngine()
    recorder = recorder_for(engine)
    async with live_server(
        engine, recorder=recorder, stream_stall_timeout_seconds=0.5, shutdown_grace_seconds=QUICK_STOP
    ) as server:
        client = RawH2Client("127.0.0.1", server.port, initial_window=0)
        await client.connect()
        stalled_clients.append(client)
        await client.open_streams(
            "/grpc.health.v1.Health/Watch", grpc_frame(health_pb2.HealthCheckRequest().SerializeToString()), 4
        )
        await wait_until(lambda: metric(recorder, "apihelper_stalled_streams_total", rpc="Watch") == 4, 3, "drops")
        assert metric(recorder, "apihelper_requests_in_flight", rpc="Watch") == 0
        async with asyncio.timeout(budget(2.0)):  # the drain's NOT_SERVING is not held up by them
            await server.core.drain()


# -- item 3: every final status counted; garbage gets a plain answer ----------------------------


async def test_statuses_before_the_handler_reach_the_metrics(caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine(LONG_REPLY, token_delay_s=0.01)
    recorder = recorder_for(engine)
    token = (("authorization", "Bearer s3cret"),)
    caplog.set_level(logging.DEBUG)
    async with (
        live_server(engine, recorder=recorder, auth_token="s3cret", max_concurrent_streams=1) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pb_grpc.ApiHelperStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListCorpora(pb.ListCorporaRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

        missing: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/apihelper.v1.ApiHelper/DropEverything"
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await missing(b"", metadata=token, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED

        garbage = b"\xff\xff\xff\xff\x0fnot a protobuf"
        retrieve: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/apihelper.v1.ApiHelper/Retrieve"
        )
        generate: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(GENERATE_PATH)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await retrieve(garbage, metadata=token, timeout=5)
        refusals = [info.value]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in generate(garbage, metadata=token, timeout=5):
                pass
        refusals.append(info.value)
        for refusal in refusals:
            assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = refusal.details() or ""
            assert details.startswith("the request is not a valid ") and "Error" not in details, details
        # Garbage from a client without the token is refused for the token, whatever its bytes.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await retrieve(garbage, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

        busy = stub.Generate(SHORT, metadata=token, timeout=30)
        await busy.read()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Generate(SHORT, metadata=token, timeout=5):
                pass
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        busy.cancel()

        expected = {
            ("ListCorpora", "UNAUTHENTICATED"): 1,
            ("Retrieve", "UNAUTHENTICATED"): 1,
            ("unknown", "UNIMPLEMENTED"): 1,
            ("Retrieve", "INVALID_ARGUMENT"): 1,
            ("Generate", "INVALID_ARGUMENT"): 1,
            ("Generate", "RESOURCE_EXHAUSTED"): 1,
        }
        for (rpc_name, code), count in expected.items():
            assert metric(recorder, "apihelper_requests_total", rpc=rpc_name, code=code) == count, (rpc_name, code)
    # Bad client input is one plain log line: no traceback, no exception class.
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert "DecodeError" not in record.getMessage() and "Traceback" not in record.getMessage()
    assert any("did not decode" in r.getMessage() for r in caplog.records)


# -- the case on the real engine: readers that never read do not fill the batch ----------


@pytest.mark.transformers5
async def test_stalled_readers_do_not_hold_the_transformers_engines_batch(
    dev_model_dir: Path, stalled_clients: list[RawH2Client]
) -> None:
    from apihelper.service.engine.transformers_engine import TransformersEngine

    stall_s = 1.5
    engine = await TransformersEngine.load(
        dev_model_dir, TransformersConfig(device="cpu", max_concurrent=4, num_threads=1, stall_timeout_s=stall_s)
    )
    async with live_server(engine, stream_stall_timeout_seconds=stall_s, shutdown_grace_seconds=QUICK_STOP) as server:
        # 8 readers with a 400-byte window: twice the batch. Before, the engine generated every
        # token for them, the batch stayed full and normal requests queued behind them.
        await stall(server, stalled_clients, 8, window=400, per=8)
        await wait_until(lambda: server.core.streams.active == 8, 10, "the stalled streams being admitted")
        await wait_until(lambda: engine.num_in_flight == 0, stall_s + 10, "the stalled engine requests ending")
        await wait_until(lambda: server.core.streams.active == 0, stall_s + 5, "the stalled streams ending")
        # The batch is the engine thread's: it drops the aborted requests at its next step.
        await wait_until(lambda: engine.stats().running == 0, 5, "the batch emptying")
        async with stub_for(server) as stub:
            replies = [m async for m in stub.Generate(SHORT, timeout=budget(30))]
        assert replies[-1].HasField("completion")


# -- the HTTP front end shares the stall timeout ------------------------------------------------


async def test_an_sse_client_that_never_reads_holds_a_slot_no_longer_than_the_stall_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from apihelper.retriever.memory import MemoryRetriever
    from apihelper.service.frontends import start_server
    from apihelper.service.http.server import bind
    from apihelper.service.settings import Settings

    stall_s = 0.5
    engine = FakeEngine(" ".join(["x" * 200] * 3000), max_model_len=5000)  # ~600 KB of events
    recorder = recorder_for(engine)
    listener = bind("127.0.0.1", 0)
    # Small kernel buffers (accepted sockets inherit the listener's), so a client that reads
    # nothing blocks the server's sends after kilobytes rather than megabytes.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    settings = Settings(port=0, http_port=0, metrics_port=0, stream_stall_timeout_seconds=stall_s)
    server = await start_server(settings, engine, MemoryRetriever(), recorder, http_socket=listener)
    client = socket.socket()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", server.http_port))
        body = json.dumps({"instruction": "x", "sampling": {"max_tokens": 3000}}).encode()
        head = f"POST /v1/generate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        await asyncio.get_running_loop().sock_sendall(client, head.encode() + body)
        await wait_until(lambda: server.core.streams.active == 1, 5, "the stream being admitted")
        started = time.perf_counter()
        await wait_until(lambda: server.core.streams.active == 0, stall_s + 3, "the stalled stream ending")
        assert time.perf_counter() - started <= budget(stall_s + 1.5)
        await wait_until(lambda: engine.num_in_flight == 0, 2, "its engine request being aborted")
        assert metric(recorder, "apihelper_stalled_streams_total", rpc="POST /v1/generate") == 1
        assert metric(recorder, "apihelper_requests_total", rpc="POST /v1/generate", code="DEADLINE_EXCEEDED") == 1
        assert not [r for r in caplog.records if r.exc_info is not None]  # one line, no traceback
    finally:
        client.close()
        await server.stop()
        await engine.shutdown()


async def test_a_stalled_calls_connection_is_closed_after_its_age_and_grace(stalled_clients: list[RawH2Client]) -> None:
    engine = FakeEngine(LONG_REPLY, token_delay_s=0.001)
    async with live_server(
        engine,
        stream_stall_timeout_seconds=0.3,
        default_deadline_seconds=0.5,
        max_deadline_seconds=0.5,  # the grace a connection's streams get once it is too old
        max_connection_age_seconds=0.5,
        shutdown_grace_seconds=QUICK_STOP,
    ) as server:
        client = RawH2Client("127.0.0.1", server.port, initial_window=0)
        await client.connect()
        stalled_clients.append(client)
        ids = await client.open_streams(GENERATE_PATH, LONG_BODY, 4, timeout=FOREVER)
        await wait_until(lambda: server.core.streams.active == 4, 3, "the stalled streams being admitted")
        await wait_until(lambda: server.core.streams.active == 0, 3, "the stalled streams ending")
        # The calls ended but their HTTP/2 streams stay in the transport: the connection's age
        # and grace close it, so a peer that acks pings and never opens its window keeps nothing.
        started = time.perf_counter()
        await client.read_until_done(ids, budget(5.0))
        assert client.goaway and client.closed
        assert time.perf_counter() - started <= budget(3.0)


async def test_reflection_calls_are_counted_and_garbage_on_them_answered_plainly(
    stalled_clients: list[RawH2Client], caplog: pytest.LogCaptureFixture
) -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    engine = FakeEngine()
    recorder = recorder_for(engine)
    path = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    async with live_server(engine, recorder=recorder, shutdown_grace_seconds=QUICK_STOP) as server:
        client = RawH2Client("127.0.0.1", server.port)
        await client.connect()
        stalled_clients.append(client)
        good = grpc_frame(reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString())
        bad = grpc_frame(b"\xff\xff\xff\xff\x0fnot a protobuf")
        ok_id, bad_id = (await client.open_streams(path, good, 1))[0], (await client.open_streams(path, bad, 1))[0]
        await client.read_until_done([ok_id, bad_id], budget(5.0))
        assert client.status(ok_id) == "0" and b"apihelper.v1.ApiHelper" in client.results[ok_id].data
        assert client.status(bad_id) == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
        assert "Error" not in client.message(bad_id)
        assert metric(recorder, "apihelper_requests_total", rpc="ServerReflectionInfo", code="OK") == 1
        assert metric(recorder, "apihelper_requests_total", rpc="ServerReflectionInfo", code="INVALID_ARGUMENT") == 1
    assert not [r for r in caplog.records if r.exc_info is not None or "DecodeError" in r.getMessage()]


async def test_a_deadline_that_passes_during_a_stalled_write_ends_the_call_quietly(
    stalled_clients: list[RawH2Client], caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine(LONG_REPLY, token_delay_s=0.001)
    recorder = recorder_for(engine)
    async with live_server(
        engine,
        recorder=recorder,
        default_deadline_seconds=0.5,
        stream_stall_timeout_seconds=30,  # the deadline comes first
        shutdown_grace_seconds=QUICK_STOP,
    ) as server:
        client = RawH2Client("127.0.0.1", server.port, initial_window=0)
        await client.connect()
        stalled_clients.append(client)
        await client.open_streams(GENERATE_PATH, LONG_BODY, 2)  # no deadline: the server's applies
        await wait_until(lambda: server.core.streams.active == 2, 3, "the streams being admitted")
        await wait_until(lambda: server.core.streams.active == 0, 3, "the deadline ending them")
        await asyncio.sleep(0.2)
        assert metric(recorder, "apihelper_requests_total", rpc="Generate", code="DEADLINE_EXCEEDED") == 2
    assert not [r for r in caplog.records if r.exc_info is not None], [r.getMessage() for r in caplog.records]


async def test_a_watch_whose_time_ends_during_a_stalled_write_ends_quietly(
    stalled_clients: list[RawH2Client], caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine()
    recorder = recorder_for(engine)
    async with live_server(
        engine,
        recorder=recorder,
        health_watch_timeout_seconds=0.5,
        stream_stall_timeout_seconds=30,  # the watch's end comes first
        shutdown_grace_seconds=QUICK_STOP,
    ) as server:
        client = RawH2Client("127.0.0.1", server.port, initial_window=0)
        await client.connect()
        stalled_clients.append(client)
        watch = grpc_frame(health_pb2.HealthCheckRequest().SerializeToString())
        await client.open_streams("/grpc.health.v1.Health/Watch", watch, 2)
        await wait_until(
            lambda: metric(recorder, "apihelper_requests_total", rpc="Watch", code="DEADLINE_EXCEEDED") == 2,
            3,
            "the watches ending",
        )
        assert metric(recorder, "apihelper_requests_in_flight", rpc="Watch") == 0
    assert not [r for r in caplog.records if r.exc_info is not None], [r.getMessage() for r in caplog.records]
