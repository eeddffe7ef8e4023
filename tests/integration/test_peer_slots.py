"""Row 5 of issue 25, the rest: Generate slots are limited per client address, not only per
connection, in the one call policy (``apihelper.service.calls``) every front end admits its
streams through. The policy with peer names as each front end gives them, then the real HTTP
server from several loopback source addresses and the real gRPC server over two channels."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import grpc
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from apihelper.errors import ResourceExhaustedError
from apihelper.service.calls import StreamLimit, peer_address
from apihelper.service.engine.fake import FakeEngine
from apihelper.service.frontends import RunningServer
from apihelper.v1 import apihelper_pb2 as pb
from tests.support import live_server, stub_for, wait_until

SLOW_REPLY = " ".join(f"w{i}" for i in range(400))
GENERATE = {"instruction": "Create a new session", "sampling": {"max_tokens": 400}}


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.2:5555", "127.0.0.2"),
        ("127.0.0.2", "127.0.0.2"),
        ("ipv6:[2001:db8::1]:443", "2001:db8::/64"),
        ("ipv6:%5B2001:db8::ab:1%5D:443", "2001:db8::/64"),
        ("2001:db8::ffff:1", "2001:db8::/64"),
        ("ipv6:[2001:db8:0:1::1]:443", "2001:db8:0:1::/64"),
        ("ipv6:[::ffff:10.0.0.5]:80", "10.0.0.5"),
        ("ipv6:[fe80::1%25eth0]:80", "fe80::/64"),
        ("unix:/run/apihelper.sock", "unix:/run/apihelper.sock"),
        ("", ""),
    ],
)
def test_a_peer_is_counted_by_its_address(peer: str, address: str) -> None:
    assert peer_address(peer) == address


@given(st.ip_addresses(), st.integers(0, 65535))
def test_grpc_and_http_name_one_client_the_same(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    """gRPC's peer string (IPv6 brackets plain or percent-encoded) and HTTP's client host give
    the same address, whatever the port; two IPv6 addresses of one /64 share it."""
    if address.version == 4:
        forms = [f"ipv4:{address}:{port}", str(address)]
    else:
        forms = [f"ipv6:[{address}]:{port}", f"ipv6:%5B{address}%5D:{port}", str(address)]
    keys = {peer_address(form) for form in forms}
    assert len(keys) == 1
    if address.version == 6 and address.ipv4_mapped is None:
        neighbour = ipaddress.IPv6Address(int(address) ^ 1)
        assert peer_address(f"ipv6:[{neighbour}]:{port}") == keys.pop()


def test_one_address_cannot_take_every_slot_and_the_count_is_freed() -> None:
    slots = StreamLimit(4, per_peer=2)
    slots.acquire("a")
    slots.acquire("a")
    with pytest.raises(ResourceExhaustedError, match="per address is 2"):
        slots.acquire("a")
    slots.acquire("b")
    slots.acquire("b")
    with pytest.raises(ResourceExhaustedError, match="the limit is 4"):
        slots.acquire("c")
    slots.release("a")
    slots.acquire("a")  # its own slot back
    assert (slots.active, slots.held_by("a"), slots.held_by("b")) == (4, 2, 2)
    for peer in ("a", "a", "b", "b"):
        slots.release(peer)
    assert slots.active == 0 and slots.held_by("a") == 0
    unlimited = StreamLimit(3, per_peer=0)  # behind a proxy: one address for every client
    for _ in range(3):
        unlimited.acquire("proxy")
    with pytest.raises(ResourceExhaustedError, match="the limit is 3"):
        unlimited.acquire("proxy")


@asynccontextmanager
async def _streaming(stack: AsyncExitStack, server: RunningServer, source: str) -> AsyncIterator[httpx.Response]:
    """A Generate SSE stream from ``source`` (a loopback address), on its own connection, held
    open until the stack closes."""
    client = await stack.enter_async_context(
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.http_port}",
            transport=httpx.AsyncHTTPTransport(local_address=source),
            timeout=60.0,
        )
    )
    response = await stack.enter_async_context(client.stream("POST", "/v1/generate", json=GENERATE))
    yield response


async def test_two_connections_from_one_http_client_address_cannot_take_every_slot() -> None:
    engine = FakeEngine(SLOW_REPLY, token_delay_s=0.1)  # 40 s: held for the whole test
    async with (
        live_server(
            engine, http=True, max_concurrent_streams=3, max_streams_per_peer=2, shutdown_grace_seconds=0.5
        ) as server,
        AsyncExitStack() as held,
    ):
        for _ in range(2):  # two connections from 127.0.0.2, one stream each
            async with _streaming(held, server, "127.0.0.2") as stream:
                assert stream.status_code == 200
        await wait_until(lambda: server.core.streams.held_by("127.0.0.2") == 2, 30, "127.0.0.2's two streams")
        async with AsyncExitStack() as third, _streaming(third, server, "127.0.0.2") as refused:
            assert refused.status_code == 429
            assert "per address is 2" in (await refused.aread()).decode()
        # Another address still gets the last slot.
        async with AsyncExitStack() as other, _streaming(other, server, "127.0.0.3") as admitted:
            assert admitted.status_code == 200
            await wait_until(lambda: server.core.streams.active == 3, 30, "127.0.0.3's stream")
    assert server.core.streams.active == 0


async def test_two_grpc_channels_from_one_address_cannot_take_every_slot() -> None:
    engine = FakeEngine(SLOW_REPLY, token_delay_s=0.1)
    request = pb.GenerateRequest(instruction="Create a new session", sampling=pb.SamplingParams(max_tokens=400))
    async with (
        live_server(engine, max_concurrent_streams=3, max_streams_per_peer=2, shutdown_grace_seconds=0.5) as server,
        stub_for(server) as first,
        stub_for(server) as second,
    ):
        held = [first.Generate(request, timeout=60), second.Generate(request, timeout=60)]
        try:
            for call in held:
                await call.read()  # the sources: the stream is admitted
            assert server.core.streams.active == 2
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in second.Generate(request, timeout=60):
                    pass
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "per address is 2" in (refused.value.details() or "")
        finally:
            for call in held:
                call.cancel()
        await wait_until(lambda: server.core.streams.active == 0, 30, "the held streams ending")


async def test_mcp_tool_calls_count_against_their_http_client_address() -> None:
    engine = FakeEngine(SLOW_REPLY, token_delay_s=0.1)  # write_call generates for tens of seconds
    async with (
        live_server(
            engine, http=True, mcp=True, max_concurrent_streams=3, max_streams_per_peer=1, shutdown_grace_seconds=0.5
        ) as server,
        AsyncExitStack() as clients,
    ):

        async def client(source: str) -> httpx.AsyncClient:
            transport = httpx.AsyncHTTPTransport(local_address=source)
            return await clients.enter_async_context(httpx.AsyncClient(transport=transport, timeout=120.0))

        url = f"http://127.0.0.1:{server.http_port}/mcp"
        headers = {"Accept": "application/json, text/event-stream"}

        def write_call(request_id: int) -> dict[str, object]:
            arguments = {"instruction": "Create a new session"}
            params = {"name": "write_call", "arguments": arguments}
            return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}

        first, second, other = await client("127.0.0.2"), await client("127.0.0.2"), await client("127.0.0.3")
        held = asyncio.ensure_future(first.post(url, json=write_call(1), headers=headers))
        try:
            await wait_until(lambda: server.core.streams.held_by("127.0.0.2") == 1, 30, "127.0.0.2's tool call")
            refused = (await second.post(url, json=write_call(2), headers=headers)).json()
            assert refused["result"]["isError"], refused
            assert "per address is 1" in refused["result"]["content"][0]["text"]
            admitted = asyncio.ensure_future(other.post(url, json=write_call(3), headers=headers))
            try:
                await wait_until(lambda: server.core.streams.held_by("127.0.0.3") == 1, 30, "127.0.0.3's tool call")
            finally:
                admitted.cancel()
        finally:
            held.cancel()
