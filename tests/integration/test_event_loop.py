"""The serving event loop (``event_loop`` setting): uvloop where installed, asyncio on request,
and the whole service streaming, cancelling and draining on uvloop over the real transport."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

from apihelper.errors import ConfigurationError
from apihelper.service.engine.fake import FakeEngine
from apihelper.service.grpc.server import event_loop_factory
from apihelper.service.settings import Settings
from apihelper.v1 import apihelper_pb2 as pb
from tests.support import live_server, stub_for

uvloop = pytest.importorskip("uvloop")


def test_the_setting_picks_the_loop() -> None:
    assert event_loop_factory("asyncio") is None
    for choice in ("auto", "uvloop"):
        factory = event_loop_factory(choice)
        assert factory is not None
        loop = factory()
        try:
            assert isinstance(loop, uvloop.Loop)
        finally:
            loop.close()
    with pytest.raises(ConfigurationError):
        Settings(event_loop="trio")


async def _scenario() -> tuple[str, list[str], int]:
    engine = FakeEngine(token_delay_s=0.005)
    async with live_server(engine) as running, stub_for(running) as stub:
        request = pb.GenerateRequest(instruction="Create a new session")
        kinds = [m.WhichOneof("event") async for m in stub.Generate(request, timeout=10)]
        call = stub.Generate(request, timeout=10)
        await call.read()  # the sources
        call.cancel()
        for _ in range(200):
            if engine.num_in_flight == 0:
                break
            await asyncio.sleep(0.01)
        loop_kind = type(asyncio.get_running_loop()).__module__
        in_flight = engine.num_in_flight
    return loop_kind, kinds, in_flight


def test_the_service_streams_and_cancels_on_uvloop() -> None:
    factory = event_loop_factory("uvloop")

    def run() -> tuple[str, list[str], int]:
        # A thread of its own: the test session's event loop stays untouched.
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(_scenario())

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        loop_kind, kinds, in_flight = pool.submit(run).result(timeout=60)
    assert loop_kind.startswith("uvloop")
    assert kinds[0] == "sources" and kinds[-1] == "completion" and kinds.count("delta") >= 2
    assert in_flight == 0  # the client's cancel reached the engine
