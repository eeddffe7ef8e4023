"""The pipeline starts the engine before it hands out the sources, and a consumer that leaves at
the sources still ends the engine request."""

from __future__ import annotations

import asyncio
import contextlib

from retriever.types import RetrievalMode
from service.engine.fake import FakeEngine
from service.engine.protocol import FinishReason, SamplingParams
from service.pipeline import CompletionEvent, GenerateParams, Pipeline, RetrieveParams, SourcesEvent
from tests.doubles import MemoryRetriever


def params(request_id: str = "r") -> GenerateParams:
    return GenerateParams(
        retrieval=RetrieveParams("Create a new session", ("demo",), 3, RetrievalMode.HYBRID),
        sampling=SamplingParams(max_tokens=64),
        prompt_format=None,
        request_id=request_id,
    )


async def test_the_engine_is_generating_while_the_sources_go_out() -> None:
    engine = FakeEngine(token_delay_s=0.05)
    events = Pipeline(MemoryRetriever(), engine).generate(params())
    sources = await anext(events)
    assert isinstance(sources, SourcesEvent)
    await asyncio.sleep(0)  # whatever the consumer awaits while writing the sources
    assert engine.num_in_flight == 1 and engine.requests[-1].request_id == "r"
    rest = [e async for e in events]
    assert isinstance(rest[-1], CompletionEvent) and rest[-1].finish_reason is FinishReason.STOP
    assert engine.num_in_flight == 0


async def test_leaving_at_the_sources_ends_the_engine_request() -> None:
    engine = FakeEngine(token_delay_s=10.0)
    events = Pipeline(MemoryRetriever(), engine).generate(params())
    await anext(events)
    await asyncio.sleep(0.01)
    assert engine.num_in_flight == 1
    await events.aclose()
    assert engine.num_in_flight == 0


async def test_a_consumer_cancelled_at_the_sources_ends_the_engine_request() -> None:
    engine = FakeEngine(token_delay_s=10.0)
    got_sources = asyncio.Event()

    async def consume() -> None:  # as the servicer does
        async with contextlib.aclosing(Pipeline(MemoryRetriever(), engine).generate(params())) as events:
            async for event in events:
                if isinstance(event, SourcesEvent):
                    got_sources.set()
                    await asyncio.sleep(10)  # a slow write of the sources

    task = asyncio.create_task(consume())
    await got_sources.wait()
    await asyncio.sleep(0.01)
    assert engine.num_in_flight == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert engine.num_in_flight == 0
