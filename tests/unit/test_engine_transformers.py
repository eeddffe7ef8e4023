"""TransformersEngine's stream logic against a scripted manager: EOS, failures, a dead thread.

No torch here: the manager and tokenizer are small fakes with the shapes transformers uses
(``GenerationOutput`` carries every id generated so far; status 3 finished, 4 failed).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from apihelper.errors import EngineUnavailableError
from apihelper.service.engine.protocol import EngineInfo, EngineOutput, EngineRequest, FinishReason, SamplingParams
from apihelper.service.engine.transformers_engine import TransformersEngine
from apihelper.service.prompts import PromptFormat

BOS, EOS, OFFSET = 0, 1, 2  # token id = byte + OFFSET


class ByteTokenizer:
    def encode(self, prompt: str) -> list[int]:
        return [BOS] + [b + OFFSET for b in prompt.encode()]

    def decode(self, token_ids: Sequence[int]) -> str:
        return bytes(i - OFFSET for i in token_ids if i >= OFFSET).decode("utf-8", errors="replace")


def tokens(text: str) -> list[int]:
    return [b + OFFSET for b in text.encode()]


@dataclass
class Output:
    request_id: str
    generated_tokens: list[int]
    status: int
    error: str | None = None
    created_time: float = 0.0
    lifespan: tuple[float, float] = (-1.0, -1.0)

    def is_finished(self) -> bool:
        return self.status >= 3


@dataclass
class ScriptedManager:
    """Plays ``script`` (token ids) for every request, one token per loop turn; the request
    finishes at EOS, at ``max_new_tokens`` or at the end of the script."""

    script: list[int]
    fail_after: int | None = None  # send a FAILED output after this many tokens
    go_silent_after: int | None = None  # the thread "dies": no more outputs, is_running False
    accept: bool = True
    running: bool = True
    token_delay_s: float = 0.0  # between tokens (0: one token per loop turn)
    delivered: int = 0  # outputs handed to handlers, all requests
    handlers: dict[str, Callable[[Any], None]] = field(default_factory=dict)
    added: list[tuple[str, list[int], int, dict[str, Any]]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    stopped: bool = False

    @property
    def output_router(self) -> SimpleNamespace:
        """transformers keeps handlers in ``output_router.result_handlers`` under its ``_lock``."""
        return SimpleNamespace(result_handlers=self.handlers, _lock=self._lock)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def register_result_handler(self, request_id: str, callback: Callable[..., Any]) -> None:
        self.handlers[request_id] = callback

    def add_request(
        self,
        input_ids: list[int],
        request_id: str | None = None,
        max_new_tokens: int | None = None,
        streaming: bool = False,
        record_timestamps: bool = False,
        eos_token_id: int | list[int] | None = None,
        **kwargs: Any,
    ) -> str | None:
        if not self.accept:
            return None
        assert request_id is not None and max_new_tokens is not None and streaming
        self.added.append((request_id, input_ids, max_new_tokens, kwargs))
        asyncio.get_running_loop().create_task(self._play(request_id, max_new_tokens))
        return request_id

    async def _play(self, request_id: str, max_new_tokens: int) -> None:
        created = time.perf_counter()
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        generated: list[int] = []
        script = self.script[:max_new_tokens]
        for token in script:
            await asyncio.sleep(self.token_delay_s)
            if request_id in self.cancelled:
                return
            if self.go_silent_after is not None and len(generated) >= self.go_silent_after:
                self.running = False
                return
            if self.fail_after is not None and len(generated) >= self.fail_after:
                self._deliver(Output(request_id, list(generated), 4, "boom", created, (started, -1)))
                return
            generated.append(token)
            done = token == EOS or len(generated) == len(script)  # a script's end ends it
            self._deliver(Output(request_id, list(generated), 3 if done else 2, None, created, (started, -1)))
            if done:
                return

    def _deliver(self, output: Output) -> None:
        handler = self.handlers.get(output.request_id)
        if handler is not None:
            self.delivered += 1
            handler(output)
            if output.is_finished():
                del self.handlers[output.request_id]

    def cancel_request(self, request_id: str) -> None:
        self.cancelled.append(request_id)

    def is_running(self) -> bool:
        return self.running

    def stop(
        self,
        block: bool = True,
        timeout: float | None = None,
        keep_for_next_session: bool = False,
        hard_stop: bool = False,
    ) -> None:
        self.stopped = True
        self.running = False


INFO = EngineInfo(kind="transformers", model="scripted", prompt_format=PromptFormat.GORILLA_V0, max_model_len=64)


def make_engine(manager: ScriptedManager, **options: Any) -> TransformersEngine:
    return TransformersEngine(
        manager=manager,
        tokenizer=ByteTokenizer(),
        info=INFO,
        eos_token_ids=[EOS],
        vocab_size=258,
        poll_interval_s=0.05,
        **options,
    )


def req(max_tokens: int = 16, request_id: str = "r", **sampling: Any) -> EngineRequest:
    return EngineRequest(request_id, "hi", SamplingParams(max_tokens=max_tokens, **sampling))


async def collect(engine: TransformersEngine, request: EngineRequest) -> list[EngineOutput]:
    return [o async for o in engine.stream(request)]


async def test_eos_ends_with_stop_and_is_not_emitted() -> None:
    manager = ScriptedManager([*tokens("hello"), EOS, *tokens("never")])
    engine = make_engine(manager)
    outputs = await collect(engine, req())
    assert "".join(o.text_delta for o in outputs) == "hello"
    assert outputs[-1].finish_reason is FinishReason.STOP
    assert outputs[-1].completion_tokens == 6  # the EOS counts as generated
    assert manager.cancelled == []  # finished in the manager: nothing to cancel
    assert engine.num_in_flight == 0 and manager.handlers == {}


async def test_max_tokens_ends_with_length() -> None:
    engine = make_engine(ScriptedManager(tokens("abcdefgh")))
    outputs = await collect(engine, req(max_tokens=3))
    assert "".join(o.text_delta for o in outputs) == "abc"
    assert outputs[-1].finish_reason is FinishReason.LENGTH


async def test_first_output_carries_the_queue_time() -> None:
    engine = make_engine(ScriptedManager(tokens("abc")))
    outputs = await collect(engine, req())
    assert outputs[0].queue_seconds is not None and 0.005 < outputs[0].queue_seconds < 1.0
    assert all(o.queue_seconds is None for o in outputs[1:])
    assert outputs[0].prompt_tokens == 3  # <s> h i


async def test_stop_string_cancels_the_request_in_the_manager() -> None:
    manager = ScriptedManager(tokens("answer\n###more text"))
    engine = make_engine(manager)
    outputs = await collect(engine, req(stop=("###",)))
    assert "".join(o.text_delta for o in outputs) == "answer\n"
    assert outputs[-1].finish_reason is FinishReason.STOP
    assert manager.cancelled == [manager.added[0][0]]
    assert engine.num_in_flight == 0 and manager.handlers == {}


async def test_split_characters_never_show_a_replacement_char() -> None:
    engine = make_engine(ScriptedManager(tokens("日本🙂")))
    outputs = await collect(engine, req())
    assert [o.text_delta for o in outputs] == ["日", "本", "🙂"]


async def test_a_failed_request_raises_unavailable() -> None:
    manager = ScriptedManager(tokens("abcdef"), fail_after=2)
    engine = make_engine(manager)
    seen: list[str] = []
    with pytest.raises(EngineUnavailableError, match="boom"):
        async for out in engine.stream(req()):
            seen.append(out.text_delta)
    assert seen == ["a", "b"]
    assert engine.num_in_flight == 0 and manager.cancelled == []


async def test_a_silent_dead_manager_raises_instead_of_hanging() -> None:
    manager = ScriptedManager(tokens("abcdef"), go_silent_after=2)
    engine = make_engine(manager)
    with pytest.raises(EngineUnavailableError):
        async with asyncio.timeout(5):
            await collect(engine, req())
    assert engine.num_in_flight == 0
    with pytest.raises(EngineUnavailableError):
        await engine.check_health()


async def test_a_refused_submission_raises_unavailable() -> None:
    manager = ScriptedManager(tokens("abc"), accept=False)
    engine = make_engine(manager)
    with pytest.raises(EngineUnavailableError):
        await collect(engine, req())
    assert engine.num_in_flight == 0 and manager.handlers == {}


async def test_closing_early_cancels_in_the_manager() -> None:
    manager = ScriptedManager(tokens("abcdefghijkl"))
    engine = make_engine(manager)
    stream = engine.stream(req())
    await anext(stream)
    await stream.aclose()
    assert manager.cancelled == [manager.added[0][0]]
    assert engine.num_in_flight == 0 and manager.handlers == {}


async def test_shutdown_stops_the_manager() -> None:
    manager = ScriptedManager(tokens("abcdefghijkl"))
    engine = make_engine(manager)
    stream = engine.stream(req())
    await anext(stream)
    await engine.shutdown()
    assert manager.stopped
    with pytest.raises(EngineUnavailableError):
        await anext(stream)


async def test_sampling_maps_to_per_request_processor_kwargs(caplog: pytest.LogCaptureFixture) -> None:
    manager = ScriptedManager(tokens("ab"))
    engine = make_engine(manager)
    await collect(engine, req(request_id="greedy"))
    await collect(engine, req(request_id="sampled", temperature=0.8, top_p=0.9, top_k=40))
    await collect(engine, req(request_id="no-top-k", temperature=1.2))
    with caplog.at_level(logging.WARNING):
        await collect(engine, req(request_id="seeded", seed=1, repetition_penalty=1.2))
        await collect(engine, req(request_id="seeded-2", seed=2, repetition_penalty=1.1))
    kwargs = [added[3] for added in manager.added]
    assert kwargs[0] == {"temperature": 1.0, "top_k": 1, "top_p": 1.0}  # greedy = top-k 1
    assert kwargs[1] == {"temperature": 0.8, "top_k": 40, "top_p": 0.9}
    assert kwargs[2] == {"temperature": 1.2, "top_k": 258, "top_p": 1.0}
    assert all(type(k["temperature"]) is float and type(k["top_k"]) is int for k in kwargs)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("seed" in w for w in warnings) == 1  # once per engine, not per request
    assert sum("repetition_penalty" in w for w in warnings) == 1
    assert all("seed" not in k for k in kwargs)  # this manager has no seeded sampling


async def test_a_seed_is_passed_on_where_the_manager_samples_seeded() -> None:
    manager = ScriptedManager(tokens("ab"))
    engine = TransformersEngine(
        manager=manager,
        tokenizer=ByteTokenizer(),
        info=INFO,
        eos_token_ids=[EOS],
        vocab_size=258,
        poll_interval_s=0.05,
        seeded_sampling=True,
    )
    await collect(engine, req(request_id="seeded", temperature=0.7, seed=2**64 - 1))
    await collect(engine, req(request_id="greedy", seed=5))  # greedy needs no seed
    assert manager.added[0][3]["seed"] == 2**64 - 1
    assert "seed" not in manager.added[1][3]


async def test_count_tokens_counts_as_the_stream_does() -> None:
    engine = make_engine(ScriptedManager([]))
    assert engine.count_tokens("hi") == 3


# -- backpressure: a consumer that does not drain ---------------------------------------------------


async def test_the_manager_never_runs_far_ahead_of_a_consumer_that_stopped_taking() -> None:
    script = tokens("x" * 60)
    manager = ScriptedManager(script)
    engine = make_engine(manager, max_tokens_ahead=8)
    stream = engine.stream(req(max_tokens=60))
    first = await anext(stream)  # then the consumer stops taking
    for _ in range(200):
        if manager.cancelled:
            break
        await asyncio.sleep(0)
    assert manager.cancelled == [manager.added[0][0]]  # cancelled in the manager, not run to the end
    assert manager.delivered <= first.completion_tokens + 8 + 1
    flight = next(iter(engine._in_flight.values()), None)
    assert flight is None  # released: no bookkeeping, no handler left behind
    assert manager.handlers == {}
    rest = [o async for o in stream]
    assert rest[-1].finish_reason is FinishReason.CANCELLED
    text = first.text_delta + "".join(o.text_delta for o in rest)
    assert text == "x" * len(text) and len(text) <= first.completion_tokens + 8 + 1
    assert engine.num_in_flight == 0


async def test_a_stalled_consumer_is_ended_past_the_stall_timeout() -> None:
    manager = ScriptedManager(tokens("y" * 60), token_delay_s=0.01)
    engine = make_engine(manager, max_tokens_ahead=1000, stall_timeout_s=0.1)
    stream = engine.stream(req(max_tokens=60))
    await anext(stream)
    await asyncio.sleep(0.3)  # takes nothing for longer than the stall timeout
    assert manager.cancelled == [manager.added[0][0]]
    assert manager.delivered < 55  # the script's 60 tokens take 0.6 s: it was cut short
    outputs = [o async for o in stream]
    assert outputs[-1].finish_reason is FinishReason.CANCELLED
    assert engine.num_in_flight == 0 and manager.handlers == {}


async def test_a_slow_consumer_holds_one_output_not_one_per_token() -> None:
    manager = ScriptedManager(tokens("z" * 40))
    engine = make_engine(manager, max_tokens_ahead=1000)
    stream = engine.stream(req(max_tokens=40))
    await anext(stream)
    for _ in range(100):
        await asyncio.sleep(0)
    flight = engine._in_flight["r"]
    assert manager.delivered >= 30 and len(flight.pending) == 1  # the newest output only
    outputs = [o async for o in stream]
    assert outputs[-1].finish_reason is FinishReason.LENGTH
    assert "".join(o.text_delta for o in outputs) == "z" * 39  # with the first delta: all 40


async def test_a_consumer_that_drains_is_never_cut() -> None:
    engine = make_engine(ScriptedManager(tokens("w" * 50)), max_tokens_ahead=4, stall_timeout_s=0.5)
    outputs = await collect(engine, req(max_tokens=50))
    assert "".join(o.text_delta for o in outputs) == "w" * 50
    assert outputs[-1].finish_reason is FinishReason.LENGTH
