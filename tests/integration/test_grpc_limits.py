"""Auth, TLS and server limits over the real transport, with doubles at the I/O boundaries
(a scripted engine and an in-memory retriever): these tests are about the gRPC layer."""

from __future__ import annotations

import argparse
import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from apihelper.client import cli
from apihelper.service.engine.fake import FakeEngine
from apihelper.service.frontends import RunningServer
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc
from tests.support import live_server, stub_for

GENERATE = pb.GenerateRequest(instruction="Create a new session", sampling=pb.SamplingParams(max_tokens=16))


async def _generate(stub: pb_grpc.ApiHelperAsyncStub, **kwargs: object) -> list[pb.GenerateResponse]:
    return [m async for m in stub.Generate(GENERATE, timeout=10, **kwargs)]  # type: ignore[arg-type]


# -- auth --------------------------------------------------------------------------------------


@pytest.fixture
async def token_server() -> AsyncIterator[RunningServer]:
    async with live_server(auth_token="s3cret-token") as server:
        yield server


@pytest.mark.parametrize(
    ("metadata", "allowed"),
    [
        ((), False),
        ((("authorization", "Bearer wrong"),), False),
        ((("authorization", "s3cret-token"),), False),  # the scheme is part of the value
        ((("authorization", "Bearer s3cret-token"),), True),
    ],
)
async def test_bearer_token(token_server: RunningServer, metadata: tuple[tuple[str, str], ...], allowed: bool) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        stub = pb_grpc.ApiHelperStub(channel)
        if allowed:
            assert (await _generate(stub, metadata=metadata))[-1].HasField("completion")
            await stub.ListCorpora(pb.ListCorporaRequest(), metadata=metadata, timeout=5)
        else:
            for call in (
                lambda: _generate(stub, metadata=metadata),
                lambda: stub.ListCorpora(pb.ListCorporaRequest(), metadata=metadata, timeout=5),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call()
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health stays open for load balancers.
        health = health_pb2_grpc.HealthStub(channel)
        check = health.Check  # type: ignore[attr-defined]
        response = await check(health_pb2.HealthCheckRequest(), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


# -- TLS ---------------------------------------------------------------------------------------


def _client_args(port: int, pki: Path, *command: str, client_cert: bool = False) -> argparse.Namespace:
    argv = ["--address", f"127.0.0.1:{port}", "--ca-cert", str(pki / "ca.pem"), "--timeout", "10"]
    if client_cert:
        argv += ["--client-cert", str(pki / "client.pem"), "--client-key", str(pki / "client.key")]
    return cli._parser().parse_args([*argv, *command])


async def test_tls_with_the_sample_client(pki: Path) -> None:
    async with live_server(tls_cert_file=str(pki / "server.pem"), tls_key_file=str(pki / "server.key")) as server:
        out = io.StringIO()
        assert await cli.run(_client_args(server.port, pki, "ask", "Create a new session"), out) == 0
        assert "Sources (1)" in out.getvalue() and "--- completion ---" in out.getvalue()
        # A plaintext client cannot talk to a TLS server.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await pb_grpc.ApiHelperStub(channel).ListCorpora(pb.ListCorporaRequest(), timeout=3)


async def test_mutual_tls_requires_a_client_certificate(pki: Path) -> None:
    async with live_server(
        tls_cert_file=str(pki / "server.pem"),
        tls_key_file=str(pki / "server.key"),
        tls_client_ca_file=str(pki / "ca.pem"),
    ) as server:
        out = io.StringIO()
        assert await cli.run(_client_args(server.port, pki, "corpora", client_cert=True), out) == 0
        assert out.getvalue().startswith("demo\topenapi")
        assert await cli.run(_client_args(server.port, pki, "corpora"), io.StringIO()) == 1  # no client cert


# -- limits ------------------------------------------------------------------------------------


async def test_streams_beyond_the_limit_are_refused_at_once() -> None:
    engine = FakeEngine(token_delay_s=0.05)
    async with live_server(engine, max_concurrent_streams=2) as server, stub_for(server) as stub:
        busy = [asyncio.create_task(_generate(stub)) for _ in range(2)]
        while engine.num_in_flight < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _generate(stub)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert all(r[-1].HasField("completion") for r in await asyncio.gather(*busy))
        assert (await _generate(stub))[-1].HasField("completion")  # capacity is back


async def test_calls_without_a_deadline_get_the_servers() -> None:
    engine = FakeEngine(token_delay_s=0.2)
    async with live_server(engine, default_deadline_seconds=0.5) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = pb_grpc.ApiHelperStub(channel).Generate(GENERATE)  # no timeout
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(100):
            if engine.num_in_flight == 0:
                break
            await asyncio.sleep(0.02)
        assert engine.num_in_flight == 0


async def test_oversized_message_is_refused() -> None:
    async with live_server(max_message_bytes=64 * 1024) as server, stub_for(server) as stub:
        request = pb.RetrieveRequest(instruction="x" * 100_000)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Retrieve(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_error_details_quoting_huge_values_keep_their_status() -> None:
    # An unknown corpus name of 3,000 emoji would make a 36 KB grpc-message trailer: clients
    # refuse trailers over 8 KiB and would see RESOURCE_EXHAUSTED instead of the real status.
    async with live_server() as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        request = pb.RetrieveRequest(instruction="q", retrieval=pb.RetrievalOptions(corpora=["😀" * 3000]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.ApiHelperStub(channel).Retrieve(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "retrieval.corpora" in (info.value.details() or "")
