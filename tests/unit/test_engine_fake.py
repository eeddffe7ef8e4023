"""The scripted FakeEngine keeps the Engine contract the pipeline relies on."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apihelper.errors import EngineUnavailableError, InvalidRequestError
from apihelper.service.engine.fake import GORILLA_V0_REPLY, FakeEngine, count_pieces, pieces
from apihelper.service.engine.protocol import Engine, EngineOutput, EngineRequest, FinishReason, SamplingParams


def req(max_tokens: int = 64, request_id: str = "r", prompt: str = "hi", **kw: object) -> EngineRequest:
    return EngineRequest(request_id, prompt, SamplingParams(max_tokens=max_tokens, **kw))  # type: ignore[arg-type]


async def collect(engine: FakeEngine, request: EngineRequest) -> list[EngineOutput]:
    return [o async for o in engine.stream(request)]


async def test_streams_the_reply_word_by_word() -> None:
    engine = FakeEngine()
    assert isinstance(engine, Engine)
    outputs = await collect(engine, req())
    assert "".join(o.text_delta for o in outputs) == GORILLA_V0_REPLY
    assert outputs[-1].finish_reason is FinishReason.STOP
    assert [o.finish_reason is None for o in outputs[:-1]] == [True] * (len(outputs) - 1)
    assert outputs[0].queue_seconds == 0.0
    assert engine.num_in_flight == 0 and engine.requests[0].prompt == "hi"


async def test_max_tokens_stop_strings_and_context() -> None:
    engine = FakeEngine(lambda prompt: f"echo {prompt} END tail", max_model_len=16)
    outputs = await collect(engine, req(max_tokens=2, prompt="x"))
    assert "".join(o.text_delta for o in outputs) == "echo x"
    assert outputs[-1].finish_reason is FinishReason.LENGTH
    outputs = await collect(engine, req(max_tokens=8, prompt="x", stop=(" END",)))
    assert "".join(o.text_delta for o in outputs) == "echo x"
    assert outputs[-1].finish_reason is FinishReason.STOP
    with pytest.raises(InvalidRequestError) as err:
        await collect(engine, req(max_tokens=15, prompt="a b"))
    assert err.value.field == "sampling.max_tokens"


async def test_cancellation_abort_failure_and_shutdown() -> None:
    engine = FakeEngine("a b c d e f g h", token_delay_s=0.01)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(collect(engine, req()), timeout=0.03)
    assert engine.num_in_flight == 0

    outputs: list[EngineOutput] = []
    async for out in engine.stream(req(request_id="ab")):
        outputs.append(out)
        if len(outputs) == 2:
            await engine.abort("ab")
    assert outputs[-1].finish_reason is FinishReason.CANCELLED and engine.num_in_flight == 0

    engine.fail_after = 1
    with pytest.raises(EngineUnavailableError):
        await collect(engine, req())
    engine.fail_after = None

    stream = engine.stream(req(request_id="late"))
    await anext(stream)
    await engine.shutdown()
    with pytest.raises(EngineUnavailableError):
        await anext(stream)
    with pytest.raises(EngineUnavailableError):
        await engine.check_health()
    assert engine.num_in_flight == 0


@given(st.text(alphabet="ab \n\t\x0b\x1c\xa0\u3000é", max_size=30))
def test_token_count_matches_the_pieces(text: str) -> None:
    assert count_pieces(text) == len(pieces(text))
