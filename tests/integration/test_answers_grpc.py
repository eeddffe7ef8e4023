"""Answers as the client sees them: repeated lines suppressed while streaming, a structured
verdict, the effective sampling settings, over the real transport (scripted engine)."""

from __future__ import annotations

from apihelper.service.engine.fake import FakeEngine
from apihelper.v1 import apihelper_pb2 as pb
from tests.support import live_server, stub_for

LOOPING = (
    "<<<domain>>>: Sessions\n"
    "<<<api_call>>>: POST /sessions\n"
    "<<<explanation>>>: Create the session with the image you need.\n"
    "<<<explanation>>>: Create the session with the image you need.\n"
    "<<<explanation>>>: Create the session with the image you need.\n"
    "<<<code>>>: client.post('/sessions')\n"
)
REPEATED = "<<<explanation>>>: Create the session with the image you need.\n"


async def _ask(request: pb.GenerateRequest, reply: str) -> list[pb.GenerateResponse]:
    async with live_server(FakeEngine(reply)) as running, stub_for(running) as stub:
        return [m async for m in stub.Generate(request, timeout=10)]


def _deltas(messages: list[pb.GenerateResponse]) -> str:
    return "".join(m.delta.text for m in messages if m.WhichOneof("event") == "delta")


async def test_a_line_repeated_three_times_reaches_the_client_once() -> None:
    messages = await _ask(pb.GenerateRequest(instruction="Create a new session"), LOOPING)
    streamed = _deltas(messages)
    completion = messages[-1].completion
    assert streamed.count(REPEATED) == 1
    assert streamed == completion.text  # the deltas are exactly the final text
    assert completion.suppressed_lines == 2
    assert sum(m.WhichOneof("event") == "delta" for m in messages) >= 2


async def test_repeats_are_kept_when_asked() -> None:
    request = pb.GenerateRequest(instruction="Create a new session", suppress_repeated_lines=False)
    messages = await _ask(request, LOOPING)
    assert _deltas(messages).count(REPEATED) == 3
    assert messages[-1].completion.suppressed_lines == 0


async def test_completion_carries_verdict_and_effective_sampling() -> None:
    request = pb.GenerateRequest(
        instruction="Create a new session", sampling=pb.SamplingParams(max_tokens=40, temperature=0.5, seed=7)
    )
    completion = (await _ask(request, LOOPING))[-1].completion
    assert completion.verdict != pb.VERDICT_UNSPECIFIED
    assert [c.name for c in completion.api_calls] == ["POST /sessions"]
    assert completion.api_calls[0].verdict != pb.VERDICT_UNSPECIFIED
    assert completion.sampling.max_tokens == 40 and completion.sampling.seed == 7
    assert abs(completion.sampling.temperature - 0.5) < 1e-6
    assert "demo" in completion.corpus_versions


async def test_an_answer_without_a_call_is_unparseable() -> None:
    completion = (await _ask(pb.GenerateRequest(instruction="hi"), "I cannot help with that."))[-1].completion
    assert completion.verdict == pb.VERDICT_UNPARSEABLE
    assert all(c.verdict == pb.VERDICT_UNPARSEABLE and c.reasons for c in completion.api_calls)
    assert completion.verdict_reasons
