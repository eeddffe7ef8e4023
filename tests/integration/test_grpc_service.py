"""End to end over the real transport: a grpc.aio server on a loopback port, a real channel,
Milvus Lite in a temp dir, and the real transformers engine on the development model."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from apihelper.service.engine.protocol import Engine
from apihelper.service.settings import Settings
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc
from tests.support import BACKEND_AI_SPEC

# The real transformers engine (5.x continuous batching); deselected in the compat env.
pytestmark = pytest.mark.transformers5


def _request(
    instruction: str = "Create a new session", max_tokens: int = 24, **retrieval: object
) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        instruction=instruction,
        retrieval=pb.RetrievalOptions(corpora=["demo"], top_k=2, **retrieval),  # type: ignore[arg-type]
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )


async def _wait_idle(engine: Engine, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while engine.num_in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert engine.num_in_flight == 0


async def test_generate_streams_sources_then_deltas_then_completion(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.ApiHelperStub(channel)
    events = [m async for m in stub.Generate(_request(), timeout=60)]
    kinds = [m.WhichOneof("event") for m in events]
    assert kinds[0] == "sources"
    assert kinds[-1] == "completion"
    assert set(kinds[1:-1]) == {"delta"} and len(kinds) - 2 >= 2
    sources = events[0].sources.sources
    assert 1 <= len(sources) <= 2
    assert all(s.corpus == "demo" and s.key and s.text for s in sources)
    assert sources[0].key == "POST /sessions"
    completion = events[-1].completion
    assert completion.text == "".join(m.delta.text for m in events[1:-1])
    assert completion.usage.completion_tokens > 0 and completion.usage.prompt_tokens > 0
    assert completion.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    t = completion.timings
    assert 0 < t.retrieval_ms <= t.first_token_ms <= t.total_ms
    assert completion.request_id


async def test_retrieve_finds_post_session_in_backend_ai_spec(channel: grpc.aio.Channel) -> None:
    if not BACKEND_AI_SPEC.exists():
        pytest.skip(f"{BACKEND_AI_SPEC} is absent: needs the third-party corpora in ../shared/corpora")
    stub = pb_grpc.ApiHelperStub(channel)
    response = await stub.Retrieve(
        pb.RetrieveRequest(
            instruction="Create a new session", retrieval=pb.RetrievalOptions(corpora=["rest"], top_k=5)
        ),
        timeout=30,
    )
    keys = [s.key for s in response.sources]
    assert len(keys) == 5
    assert "POST /session" in keys
    assert response.timings.retrieval_ms > 0


async def test_list_corpora(channel: grpc.aio.Channel) -> None:
    response = await pb_grpc.ApiHelperStub(channel).ListCorpora(pb.ListCorporaRequest(), timeout=10)
    by_name = {c.name: c for c in response.corpora}
    demo = by_name["demo"]
    assert demo.format == "openapi" and demo.doc_count >= 15
    # The source as ingest was given it, and a server path not at all (the sample's is absolute).
    assert demo.embedding_model and demo.source == "demo_cloud_openapi.yaml"
    assert all(not c.source.startswith("/") for c in response.corpora)
    assert demo.HasField("last_ingest")
    if BACKEND_AI_SPEC.exists():
        assert by_name["rest"].doc_count == 169


async def test_health_is_serving_and_reflection_lists_the_service(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "apihelper.v1.ApiHelper"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)  # type: ignore[attr-defined]
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflection: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]  # the stubs know no aio channel
    replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = [s.name async for r in replies for s in r.list_services_response.service]
    assert "apihelper.v1.ApiHelper" in names


async def test_two_streams_interleave(channel: grpc.aio.Channel, engine: Engine) -> None:
    stub = pb_grpc.ApiHelperStub(channel)

    async def consume() -> tuple[float, float]:
        first = 0.0
        async for m in stub.Generate(_request(max_tokens=48), timeout=60):
            if m.WhichOneof("event") == "delta" and not first:
                first = time.monotonic()
        return first, time.monotonic()

    (first_a, end_a), (first_b, end_b) = await asyncio.gather(consume(), consume())
    assert first_a < end_b and first_b < end_a, "one stream finished before the other started"
    await _wait_idle(engine)


async def test_client_cancel_aborts_the_engine_request(channel: grpc.aio.Channel, engine: Engine) -> None:
    stub = pb_grpc.ApiHelperStub(channel)
    call = stub.Generate(_request(max_tokens=1000, mode=pb.RETRIEVAL_MODE_NONE), timeout=60)
    deltas = 0
    async for m in call:
        if m.WhichOneof("event") == "delta":
            deltas += 1
            if deltas == 3:
                break
    assert engine.num_in_flight == 1
    call.cancel()
    await _wait_idle(engine)


async def test_deadline_aborts_the_engine_request(channel: grpc.aio.Channel, engine: Engine) -> None:
    stub = pb_grpc.ApiHelperStub(channel)
    call = stub.Generate(_request(max_tokens=1000, mode=pb.RETRIEVAL_MODE_NONE), timeout=1.0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await _wait_idle(engine)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.GenerateRequest(instruction=""), "instruction"),
        (pb.GenerateRequest(instruction="   "), "instruction"),
        (pb.GenerateRequest(instruction="x" * 8193), "instruction"),
        (pb.GenerateRequest(instruction="é" * 4097), "instruction"),  # 8194 bytes
        (pb.GenerateRequest(instruction="q", retrieval=pb.RetrievalOptions(top_k=0)), "retrieval.top_k"),
        (pb.GenerateRequest(instruction="q", retrieval=pb.RetrievalOptions(top_k=51)), "retrieval.top_k"),
        (pb.GenerateRequest(instruction="q", sampling=pb.SamplingParams(max_tokens=0)), "sampling.max_tokens"),
        (pb.GenerateRequest(instruction="q", sampling=pb.SamplingParams(max_tokens=10**6)), "sampling.max_tokens"),
        (pb.GenerateRequest(instruction="q", sampling=pb.SamplingParams(temperature=-0.5)), "sampling.temperature"),
        (pb.GenerateRequest(instruction="q", sampling=pb.SamplingParams(top_p=0.0)), "sampling.top_p"),
        (pb.GenerateRequest(instruction="q", prompt_format=99), "prompt_format"),  # type: ignore[arg-type]
        (pb.GenerateRequest(instruction="q", retrieval=pb.RetrievalOptions(mode=42)), "retrieval.mode"),  # type: ignore[arg-type]
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    channel: grpc.aio.Channel, request_: pb.GenerateRequest, field: str
) -> None:
    stub = pb_grpc.ApiHelperStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.Generate(request_, timeout=10):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (info.value.details() or "")
    # The server keeps serving.
    ok = await stub.Retrieve(pb.RetrieveRequest(instruction="list sessions"), timeout=10)
    assert ok.sources


@pytest.mark.parametrize(
    "mode",
    [pb.RETRIEVAL_MODE_HYBRID, pb.RETRIEVAL_MODE_DENSE, pb.RETRIEVAL_MODE_KEYWORD, pb.RETRIEVAL_MODE_NONE],
)
async def test_an_unknown_corpus_is_not_found_in_every_mode(channel: grpc.aio.Channel, mode: int) -> None:
    stub = pb_grpc.ApiHelperStub(channel)
    options = pb.RetrievalOptions(corpora=["demo", "nope"], mode=mode)  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as generate:
        async for _ in stub.Generate(pb.GenerateRequest(instruction="q", retrieval=options), timeout=10):
            pass
    with pytest.raises(grpc.aio.AioRpcError) as retrieve:
        await stub.Retrieve(pb.RetrieveRequest(instruction="q", retrieval=options), timeout=10)
    for info in (generate, retrieve):
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        details = info.value.details() or ""
        assert "'nope'" in details and "demo" not in details  # the other corpora are not listed


async def test_unset_top_k_takes_the_server_default(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.ApiHelperStub(channel)
    response = await stub.Retrieve(pb.RetrieveRequest(instruction="list sessions"), timeout=10)
    assert len(response.sources) == Settings().default_top_k


async def test_same_request_same_answer_greedy_and_seeded(channel: grpc.aio.Channel) -> None:
    """Issue 6: identical greedy requests, and identical seeded sampled ones, get byte-identical
    answers through the whole service (retrieval, prompt, engine, repetition filter)."""
    stub = pb_grpc.ApiHelperStub(channel)

    async def answer(sampling: pb.SamplingParams) -> pb.Completion:
        request = pb.GenerateRequest(
            instruction="Create a new session",
            retrieval=pb.RetrievalOptions(corpora=["demo"], top_k=2),
            sampling=sampling,
        )
        messages = [m async for m in stub.Generate(request, timeout=60)]
        return messages[-1].completion

    greedy = pb.SamplingParams(max_tokens=32, temperature=0.0)
    seeded = pb.SamplingParams(max_tokens=32, temperature=1.0, top_p=0.95, seed=2026)
    first_greedy, first_seeded = await answer(greedy), await answer(seeded)
    # The second time, each runs beside the other (a different batch in the engine).
    second_greedy, second_seeded = await asyncio.gather(answer(greedy), answer(seeded))
    assert first_greedy.text and second_greedy.text == first_greedy.text
    assert first_seeded.text and second_seeded.text == first_seeded.text
    assert first_seeded.text != first_greedy.text
    assert second_seeded.sampling.seed == 2026 and second_seeded.corpus_versions == first_seeded.corpus_versions
    other_seed = await answer(pb.SamplingParams(max_tokens=32, temperature=1.0, top_p=0.95, seed=2027))
    assert other_seed.text != first_seeded.text
