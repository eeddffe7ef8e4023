"""Faults caused for real: an engine failing mid-stream, Milvus going away, SIGTERM to a server
process, random cancellations, and random requests (hypothesis)."""

from __future__ import annotations

import asyncio
import gc
import random
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apihelper.errors import EngineUnavailableError
from apihelper.retriever.memory import MemoryRetriever
from apihelper.service.engine.fake import FakeEngine, pieces
from apihelper.service.engine.protocol import EngineOutput, EngineRequest
from apihelper.service.frontends import RunningServer
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc
from tests.support import budget, live_server, stub_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _health(channel: grpc.aio.Channel) -> int:
    check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]
    response = await check(health_pb2.HealthCheckRequest(service="apihelper.v1.ApiHelper"), timeout=5)
    return int(response.status)


async def _eventually(predicate: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


class FailsOnMarker(FakeEngine):
    """Fails requests whose prompt contains FAIL after three outputs, like a crashing executor."""

    async def stream(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        outputs = 0
        async for out in super().stream(request):
            outputs += 1
            if "FAIL" in request.prompt and outputs > 3:
                self.healthy = False
                raise EngineUnavailableError("the executor died (test double)")
            yield out


@pytest.fixture
async def fault_server() -> AsyncIterator[tuple[RunningServer, FailsOnMarker, MemoryRetriever]]:
    engine = FailsOnMarker(token_delay_s=0.01)
    retriever = MemoryRetriever()
    async with live_server(engine, retriever, health_check_interval_seconds=0.2) as server:
        yield server, engine, retriever


def _generate(instruction: str, max_tokens: int = 64) -> pb.GenerateRequest:
    return pb.GenerateRequest(instruction=instruction, sampling=pb.SamplingParams(max_tokens=max_tokens))


async def test_engine_failing_mid_stream(fault_server: tuple[RunningServer, FailsOnMarker, MemoryRetriever]) -> None:
    server, engine, _ = fault_server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ApiHelperStub(channel)

        async def healthy_stream() -> list[pb.GenerateResponse]:
            return [m async for m in stub.Generate(_generate("Create a new session"), timeout=20)]

        async def failing_stream() -> grpc.StatusCode:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.Generate(_generate("FAIL please"), timeout=20):
                    pass
            return info.value.code()

        good, code = await asyncio.gather(healthy_stream(), failing_stream())
        assert code == grpc.StatusCode.UNAVAILABLE  # an error status, not a hang
        # The other stream is whole and uncorrupted.
        deltas = "".join(m.delta.text for m in good if m.WhichOneof("event") == "delta")
        assert good[-1].completion.text == deltas == "".join(pieces(engine._reply))  # type: ignore[arg-type]
        # Health flips at once, and back once the engine recovers.
        assert await _health(channel) == NOT_SERVING
        engine.healthy = True

        async def serving() -> bool:
            return await _health(channel) == SERVING

        await _eventually(serving)
        assert engine.num_in_flight == 0


async def test_retriever_down_fails_fast_and_recovers(
    fault_server: tuple[RunningServer, FailsOnMarker, MemoryRetriever],
) -> None:
    server, _, retriever = fault_server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ApiHelperStub(channel)
        retriever.down = True
        started = time.monotonic()
        for call in (
            stub.Retrieve(pb.RetrieveRequest(instruction="list sessions"), timeout=10),
            stub.Generate(_generate("list sessions"), timeout=10).read(),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Milvus" in (info.value.details() or "")
        assert time.monotonic() - started < budget(2.0)
        assert await _health(channel) == NOT_SERVING
        retriever.down = False

        async def serving() -> bool:
            return await _health(channel) == SERVING

        await _eventually(serving)
        assert (await stub.Retrieve(pb.RetrieveRequest(instruction="list sessions"), timeout=10)).sources


# -- cancellation storm -------------------------------------------------------------------------


async def test_cancellation_storm_leaves_nothing_behind() -> None:
    engine = FakeEngine(token_delay_s=0.002)
    rng = random.Random(7)
    async with (
        live_server(
            engine, max_concurrent_streams=1000, max_streams_per_connection=1000, max_streams_per_peer=0
        ) as server,
        stub_for(server) as stub,
    ):

        async def cancelled_stream() -> None:
            call = stub.Generate(_generate("Create a new session", max_tokens=200), timeout=30)
            stop_after = rng.randint(0, 8)
            seen = 0
            async for _ in call:
                if seen >= stop_after:
                    break
                seen += 1
            call.cancel()

        async def idle() -> bool:
            return engine.num_in_flight == 0

        tracemalloc.start()
        samples = []
        for _round in range(3):
            await asyncio.gather(*(cancelled_stream() for _ in range(500)))
            await _eventually(idle, 20)
            gc.collect()
            samples.append((len(asyncio.all_tasks()), tracemalloc.get_traced_memory()[0]))
        tracemalloc.stop()
        tasks, memory = zip(*samples, strict=True)
        assert engine.num_in_flight == 0
        assert tasks[2] <= tasks[0], f"tasks grew over rounds: {tasks}"
        assert memory[2] <= memory[0] * 1.2 + 1_000_000, f"memory grew over rounds: {memory}"
        # Still serving normally.
        assert [m async for m in stub.Generate(_generate("q"), timeout=10)][-1].HasField("completion")


# -- random requests ----------------------------------------------------------------------------
# Two strategies: ``wild`` requests (any field any value: mostly rejected) and ``valid`` ones
# (every field inside its documented range: must be served). Each draw carries which it is, so a
# valid request that is refused fails the test, and the tally proves both branches ran.

text = st.text(st.characters(codec="utf-8"), max_size=300) | st.just("x" * 9000) | st.just("")
u32 = st.integers(min_value=0, max_value=2**32 - 1)
KNOWN_CORPUS = "demo"  # MemoryRetriever's one corpus
wild = st.builds(
    pb.GenerateRequest,
    instruction=text,
    retrieval=st.builds(
        pb.RetrievalOptions,
        corpora=st.lists(st.sampled_from([KNOWN_CORPUS, "", "nope", "ü" * 100]) | text, max_size=3),
        top_k=u32,
        mode=st.integers(min_value=0, max_value=2**31 - 1),
    ),
    sampling=st.builds(
        pb.SamplingParams,
        max_tokens=st.integers(min_value=0, max_value=3000) | u32,
        temperature=st.floats(width=32) | st.floats(min_value=0, max_value=2, width=32),
        top_p=st.floats(width=32),
        top_k=u32,
        seed=st.integers(min_value=0, max_value=2**64 - 1),
        stop=st.lists(text, max_size=20),
    ),
    prompt_format=st.integers(min_value=0, max_value=2**31 - 1),
    request_id=text,
)
short_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=200)


def _some(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[dict[str, object]]:
    """``{}`` (the field unset: its default) or ``{"value": <a draw>}``."""
    return st.just({}) | strategy.map(lambda v: {"value": v})


def _message(cls: type, **fields: st.SearchStrategy[dict[str, object]]) -> st.SearchStrategy[object]:
    """``cls`` with each optional field either unset or set to a draw."""
    return st.fixed_dictionaries(fields).map(lambda drawn: cls(**{name: d["value"] for name, d in drawn.items() if d}))


valid = st.builds(
    pb.GenerateRequest,
    instruction=short_text.filter(lambda s: s.strip() != ""),
    retrieval=_message(
        pb.RetrievalOptions,
        corpora=_some(st.lists(st.sampled_from([KNOWN_CORPUS, f" {KNOWN_CORPUS} "]), max_size=3)),
        top_k=_some(st.integers(min_value=1, max_value=50)),
        mode=_some(st.sampled_from(list(pb.RetrievalMode.values()))),
    ),
    sampling=_message(
        pb.SamplingParams,
        max_tokens=_some(st.integers(min_value=1, max_value=64)),
        temperature=_some(st.floats(min_value=0, max_value=2, width=32)),
        top_p=_some(st.floats(min_value=0, max_value=1, exclude_min=True, width=32)),
        top_k=_some(st.integers(min_value=0, max_value=1000)),
        seed=_some(st.integers(min_value=0, max_value=2**64 - 1)),
        stop=_some(st.lists(st.text(min_size=1, max_size=256), max_size=16)),
    ),
    prompt_format=st.sampled_from(list(pb.PromptFormat.values())),
    request_id=st.just("") | st.text(st.characters(codec="ascii", categories=["L", "N", "P"]), max_size=128),
)
requests = st.tuples(st.just(True), valid) | st.tuples(st.just(False), wild)


def _names_unknown_corpus(options: pb.RetrievalOptions) -> bool:
    return any(c.strip() not in ("", KNOWN_CORPUS) for c in options.corpora)


def _refusal_allowed(exc: grpc.aio.AioRpcError, options: pb.RetrievalOptions) -> bool:
    """A bad field is INVALID_ARGUMENT; an unknown corpus NOT_FOUND (and only then)."""
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return _names_unknown_corpus(options)
    return exc.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
async def fuzz_server() -> AsyncIterator[RunningServer]:
    async with live_server() as server:
        yield server


@pytest.fixture(scope="module")
async def fuzz_stub(fuzz_server: RunningServer) -> AsyncIterator[pb_grpc.ApiHelperAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{fuzz_server.port}") as channel:
        yield pb_grpc.ApiHelperStub(channel)


@pytest.fixture(scope="module")
def fuzz_outcomes() -> Counter[str]:
    """How the fuzz test's calls ended ("served" / "refused"), read by the test after it."""
    return Counter()


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(drawn=requests)
async def test_random_requests_are_served_or_refused_by_status(
    fuzz_stub: pb_grpc.ApiHelperAsyncStub, fuzz_outcomes: Counter[str], drawn: tuple[bool, pb.GenerateRequest]
) -> None:
    is_valid, request = drawn
    try:
        messages = [m async for m in fuzz_stub.Generate(request, timeout=budget(10))]
        assert messages[0].HasField("sources") and messages[-1].HasField("completion")
        fuzz_outcomes["served"] += 1
    except grpc.aio.AioRpcError as exc:
        assert not is_valid, ("a valid request was refused", exc.code(), exc.details())
        assert _refusal_allowed(exc, request.retrieval), (exc.code(), exc.details())
        fuzz_outcomes["refused"] += 1
    retrieve = pb.RetrieveRequest(instruction=request.instruction, retrieval=request.retrieval)
    try:
        await fuzz_stub.Retrieve(retrieve, timeout=budget(10))
    except grpc.aio.AioRpcError as exc:
        assert not is_valid, ("a valid retrieval was refused", exc.code(), exc.details())
        assert _refusal_allowed(exc, request.retrieval), (exc.code(), exc.details())


def test_the_fuzz_reached_both_branches(fuzz_outcomes: Counter[str]) -> None:
    if not fuzz_outcomes:
        pytest.skip("the fuzz test did not run in this session (it is the test above; run the module)")
    assert fuzz_outcomes["served"] > 0 and fuzz_outcomes["refused"] > 0, fuzz_outcomes


async def test_still_serving_after_the_fuzz(fuzz_stub: pb_grpc.ApiHelperAsyncStub) -> None:
    messages = [m async for m in fuzz_stub.Generate(_generate("Create a new session"), timeout=10)]
    assert messages[-1].completion.text
