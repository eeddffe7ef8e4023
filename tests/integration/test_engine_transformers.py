"""The transformers engine on the real dev model: streaming, stops, concurrency, cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from apihelper.build.dev_model import make_dev_model
from apihelper.errors import ConfigurationError, EngineUnavailableError, InvalidRequestError
from apihelper.service.engine.protocol import Engine, EngineOutput, EngineRequest, FinishReason, SamplingParams
from apihelper.service.prompts import PromptFormat

pytest.importorskip("torch")
pytest.importorskip("transformers")

from apihelper.service.engine.transformers_engine import TransformersEngine

# The real transformers engine (5.x continuous batching); deselected in the compat env.
pytestmark = pytest.mark.transformers5

PROMPT = "USER: Create a new session with a python image\nASSISTANT:"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dev-model")
    make_dev_model(out)
    return out


@pytest_asyncio.fixture(scope="module")
async def engine(model_dir: Path) -> AsyncIterator[TransformersEngine]:
    eng = await TransformersEngine.load(model_dir, device="cpu", seed=0)
    yield eng
    await eng.shutdown()


def request(request_id: str, max_tokens: int = 24, prompt: str = PROMPT, **sampling: object) -> EngineRequest:
    return EngineRequest(request_id, prompt, SamplingParams(max_tokens=max_tokens, **sampling))  # type: ignore[arg-type]


async def collect(eng: TransformersEngine, req: EngineRequest) -> list[EngineOutput]:
    return [out async for out in eng.stream(req)]


def text_of(outputs: Sequence[EngineOutput]) -> str:
    return "".join(o.text_delta for o in outputs)


async def wait_for_idle(eng: TransformersEngine, timeout: float = 3.0) -> None:
    """Poll until the engine holds no request and the manager runs none."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = eng.stats()
        if eng.num_in_flight == 0 and stats.running == 0 and stats.waiting == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"engine not idle: {eng.num_in_flight} in flight, {eng.stats()}")


async def test_is_an_engine_with_info_from_the_manifest(engine: TransformersEngine) -> None:
    assert isinstance(engine, Engine)
    info = engine.info
    assert info.kind == "transformers"
    assert info.prompt_format is PromptFormat.GORILLA_V0
    assert info.random_weights is True
    assert info.max_model_len == 2048
    assert info.extra["device"] == "cpu"
    await engine.check_health()


async def test_stream_yields_deltas_then_one_final(engine: TransformersEngine) -> None:
    outputs = await collect(engine, request("deltas", max_tokens=24))
    assert sum(1 for o in outputs if o.text_delta) >= 2
    assert [o.finish_reason is not None for o in outputs] == [False] * (len(outputs) - 1) + [True]
    assert outputs[-1].finish_reason is FinishReason.LENGTH
    assert outputs[-1].completion_tokens == 24
    assert all(o.prompt_tokens == outputs[0].prompt_tokens > 5 for o in outputs)
    counts = [o.completion_tokens for o in outputs]
    assert counts == sorted(counts)
    assert outputs[0].queue_seconds is not None and outputs[0].queue_seconds >= 0
    assert all(o.queue_seconds is None for o in outputs[1:])
    # The deltas add up to the one-shot decode of the generated ids.
    ids = [i for o in outputs for i in o.token_ids_delta]
    assert len(ids) == 24
    tokenizer = engine._tokenizer
    assert text_of(outputs) == tokenizer.decode(ids)
    assert engine.num_in_flight == 0


async def test_greedy_is_deterministic(engine: TransformersEngine) -> None:
    first = text_of(await collect(engine, request("greedy-1", max_tokens=32)))
    second = text_of(await collect(engine, request("greedy-2", max_tokens=32)))
    assert first and first == second


async def test_a_seeded_sampled_request_is_reproducible(engine: TransformersEngine) -> None:
    assert "seed" in engine.info.extra["sampling_per_request"].split(",")
    sampled: dict[str, Any] = {"max_tokens": 32, "temperature": 1.0, "top_p": 0.95, "top_k": 0}
    alone = text_of(await collect(engine, request("seeded-1", seed=11, **sampled)))

    # Again, now batched with other sampled requests that draw from the manager's generator.
    async def other(i: int) -> str:
        return text_of(await collect(engine, request(f"noise-{i}", temperature=1.0, max_tokens=40)))

    noise = [asyncio.create_task(other(i)) for i in range(3)]
    batched = await collect(engine, request("seeded-2", seed=11, **sampled))
    await asyncio.gather(*noise)
    assert alone and text_of(batched) == alone
    # It is sampled, not greedy: other seeds give other answers.
    reseeded = {text_of(await collect(engine, request(f"seed-{s}", seed=s, **sampled))) for s in (12, 13, 14)}
    assert alone not in reseeded and len(reseeded) > 1
    greedy = text_of(await collect(engine, request("greedy", max_tokens=32)))
    assert alone != greedy


async def test_max_tokens_is_respected(engine: TransformersEngine) -> None:
    outputs = await collect(engine, request("short", max_tokens=3))
    assert outputs[-1].finish_reason is FinishReason.LENGTH
    assert outputs[-1].completion_tokens == 3


async def test_stop_string_ends_before_it(engine: TransformersEngine) -> None:
    full = text_of(await collect(engine, request("nostop", max_tokens=32)))
    stop = full[12:15]
    cut = full.index(stop)
    outputs = await collect(engine, request("stop", max_tokens=32, stop=("never-there", stop)))
    assert outputs[-1].finish_reason is FinishReason.STOP
    assert text_of(outputs) == full[:cut]
    assert stop not in text_of(outputs)
    await wait_for_idle(engine)  # the manager's request was cancelled, not left running


async def test_sampling_parameters_are_accepted(engine: TransformersEngine) -> None:
    outputs = await collect(engine, request("sampled", max_tokens=16, temperature=0.9, top_p=0.9, top_k=50, seed=3))
    assert outputs[-1].finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
    assert text_of(outputs)


async def test_concurrent_streams_interleave(engine: TransformersEngine) -> None:
    first_token: dict[str, float] = {}
    finished: dict[str, float] = {}

    async def run(name: str, prompt: str) -> None:
        async for out in engine.stream(request(name, max_tokens=48, prompt=prompt)):
            if out.text_delta and name not in first_token:
                first_token[name] = time.perf_counter()
        finished[name] = time.perf_counter()

    await asyncio.gather(run("A", PROMPT), run("B", "USER: delete every file\nASSISTANT:"))
    assert first_token["A"] < finished["B"]
    assert first_token["B"] < finished["A"]
    assert engine.num_in_flight == 0


async def test_cancelling_the_consumer_cancels_the_request(engine: TransformersEngine) -> None:
    got_tokens = asyncio.Event()

    async def consume() -> None:
        count = 0
        async for out in engine.stream(request("cancel-me", max_tokens=1500)):
            count += bool(out.text_delta)
            if count >= 2:
                got_tokens.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_tokens.wait(), timeout=10)
    assert engine.num_in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for_idle(engine)


async def test_deadline_cancels_the_request(engine: TransformersEngine) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(collect(engine, request("deadline", max_tokens=1500)), timeout=0.3)
    await wait_for_idle(engine)


async def test_closing_the_stream_early_cancels_the_request(engine: TransformersEngine) -> None:
    stream = engine.stream(request("aclose", max_tokens=1500))
    assert isinstance(stream, AsyncIterator)
    await anext(stream)
    await anext(stream)
    assert engine.num_in_flight == 1
    await stream.aclose()
    assert engine.num_in_flight == 0
    await wait_for_idle(engine)


async def test_abort_ends_the_stream_as_cancelled(engine: TransformersEngine) -> None:
    outputs: list[EngineOutput] = []
    async for out in engine.stream(request("abort-me", max_tokens=1500)):
        outputs.append(out)
        if len(outputs) == 2:
            await engine.abort("abort-me")
    assert outputs[-1].finish_reason is FinishReason.CANCELLED
    assert len(outputs) == 3
    await engine.abort("abort-me")  # unknown now: a no-op
    await wait_for_idle(engine)


async def test_prompt_too_long_is_refused_before_submitting(engine: TransformersEngine) -> None:
    with pytest.raises(InvalidRequestError) as err:
        await collect(engine, request("long", max_tokens=2040))
    assert err.value.field == "sampling.max_tokens"
    with pytest.raises(InvalidRequestError) as err:
        await collect(engine, request("huge", max_tokens=8, prompt="session " * 3000))
    assert err.value.field == "sampling.max_tokens"
    assert engine.num_in_flight == 0
    assert engine.stats().waiting == 0


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"stop": ("",)}, "stop"),
    ],
)
async def test_invalid_sampling_is_refused(engine: TransformersEngine, sampling: dict[str, object], field: str) -> None:
    params = {"max_tokens": 8, **sampling}
    with pytest.raises(InvalidRequestError) as err:
        await collect(engine, request("bad", **params))  # type: ignore[arg-type]
    assert err.value.field == f"sampling.{field}"
    assert engine.num_in_flight == 0


async def test_a_running_request_id_cannot_be_reused(engine: TransformersEngine) -> None:
    stream = engine.stream(request("twice", max_tokens=1500))
    await anext(stream)
    with pytest.raises(InvalidRequestError) as err:
        await collect(engine, request("twice"))
    assert err.value.field == "request_id"
    await stream.aclose()
    outputs = await collect(engine, request("twice", max_tokens=4))  # free again
    assert outputs[-1].finish_reason is FinishReason.LENGTH
    await wait_for_idle(engine)


async def test_stats_report_the_running_request(engine: TransformersEngine) -> None:
    stream = engine.stream(request("stats", max_tokens=1500))
    await anext(stream)
    stats = engine.stats()
    assert stats.running + stats.waiting == 1
    assert stats.kv_cache_usage is not None and 0.0 < stats.kv_cache_usage <= 1.0
    await stream.aclose()
    await wait_for_idle(engine)


async def test_shutdown_fails_running_streams_and_refuses_new_ones(model_dir: Path) -> None:
    eng = await TransformersEngine.load(model_dir, device="cpu", max_concurrent=2)
    stream = eng.stream(request("running", max_tokens=1500))
    await anext(stream)
    await eng.shutdown()
    assert eng.num_in_flight == 0
    with pytest.raises(EngineUnavailableError):
        async for _ in stream:
            pass
    with pytest.raises(EngineUnavailableError):
        await collect(eng, request("after"))
    with pytest.raises(EngineUnavailableError):
        await eng.check_health()
    await eng.shutdown()  # idempotent


async def test_a_dead_manager_fails_streams_instead_of_hanging(model_dir: Path) -> None:
    eng = await TransformersEngine.load(model_dir, device="cpu", max_concurrent=2)
    try:
        stream = eng.stream(request("orphan", max_tokens=1500))
        await anext(stream)
        # Stop the manager behind the engine's back, as a crash of its thread would.
        await asyncio.to_thread(eng._manager.stop, block=True, timeout=5, hard_stop=True)
        with pytest.raises(EngineUnavailableError):
            async with asyncio.timeout(10):
                async for _ in stream:
                    pass
        assert eng.num_in_flight == 0
        with pytest.raises(EngineUnavailableError):
            await eng.check_health()
        with pytest.raises(EngineUnavailableError):
            await collect(eng, request("refused"))
    finally:
        await eng.shutdown()


async def test_load_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        await TransformersEngine.load(tmp_path / "nope", device="cpu")


async def test_load_fails_fast_when_the_kv_cache_does_not_fit(model_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="num_blocks"):
        await TransformersEngine.load(model_dir, device="cpu", num_blocks=10**9)


async def test_load_refuses_a_context_longer_than_the_model(model_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="max_position_embeddings"):
        await TransformersEngine.load(model_dir, device="cpu", max_model_len=4096)
