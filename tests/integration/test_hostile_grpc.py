"""Issue 25 row 5 (the part done): a normal gRPC client queues its calls on the server's
SETTINGS_MAX_CONCURRENT_STREAMS and never sees one refused. grpc's "overload protection" counted
streams the server had not yet deallocated, so a client keeping to the limit had calls reset
(REFUSED_STREAM: UNAVAILABLE): 38-63 of 100 concurrent calls on one channel failed."""

from __future__ import annotations

import asyncio

import grpc

from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc
from tests.support import budget, live_server, stub_for


async def _retrieve(stub: pb_grpc.ApiHelperAsyncStub) -> str:
    try:
        await stub.Retrieve(pb.RetrieveRequest(instruction="Create a new session"), timeout=budget(60.0))
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return "OK"


async def test_a_hundred_concurrent_calls_on_one_channel_all_succeed() -> None:
    async with live_server(max_streams_per_connection=32) as server, stub_for(server) as stub:
        for _ in range(3):  # the first burst, and bursts on a connection whose streams are recycling
            outcomes = await asyncio.gather(*(_retrieve(stub) for _ in range(100)))
            assert outcomes == ["OK"] * 100, {o: outcomes.count(o) for o in set(outcomes)}


async def test_many_channels_with_a_call_each_all_succeed() -> None:
    async with live_server() as server:
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") for _ in range(200)]
        try:
            stubs: list[pb_grpc.ApiHelperAsyncStub] = [pb_grpc.ApiHelperStub(c) for c in channels]
            outcomes = await asyncio.gather(*(_retrieve(s) for s in stubs))
        finally:
            await asyncio.gather(*(c.close() for c in channels))
        assert outcomes == ["OK"] * 200, {o: outcomes.count(o) for o in set(outcomes)}
