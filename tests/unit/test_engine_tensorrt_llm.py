"""TensorRTLLMEngine (and the engine build) against a double of TensorRT-LLM 1.2.x's LLM API.

tensorrt_llm cannot be installed here, so the double follows the 1.2.x API as its sources define
it, and records every call so the tests can fail:

- ``LLM.generate_async(inputs, sampling_params=None, ..., streaming=False)`` returns a
  ``RequestOutput`` that is its own async iterator: each step yields the same object, updated.
  Its ``outputs[0]`` is a ``CompletionOutput`` whose ``text`` / ``token_ids`` are cumulative and
  whose ``text_diff`` / ``token_ids_diff`` are computed from the previous lengths, exactly like
  the real dataclass; ``finished``, ``prompt_token_ids``, ``abort()`` (the executor then sends a
  final "cancelled" output).
- ``SamplingParams`` and ``KvCacheConfig`` refuse keyword arguments the 1.2.x classes do not have.
- ``get_stats_async(timeout)`` is an async iterable of iteration-stat dicts; ``shutdown()``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from apihelper.errors import (
    ConfigurationError,
    EngineUnavailableError,
    InvalidRequestError,
    MissingDependencyError,
)
from apihelper.service.engine.config import TensorRTLLMConfig
from apihelper.service.engine.manifest import MANIFEST_NAME, ModelManifest, read_manifest
from apihelper.service.engine.protocol import (
    Engine,
    EngineOutput,
    EngineRequest,
    FinishReason,
    GuidedDecoding,
    SamplingParams,
)
from apihelper.service.engine.tensorrt_llm_engine import TensorRTLLMEngine
from apihelper.service.engine.trtllm_runtime import TrtllmApi
from apihelper.service.prompts import PromptFormat
from tests.support import INVALID_SAMPLING

VERSION = "1.2.1"
CAPABILITY = "9.0"
BOS, EOS, OFFSET = 1, 2, 3  # token id = byte + OFFSET


# ---------------------------------------------------------------------- the 1.2.x double


class FakeTokenizer:
    """``llm.tokenizer``: TensorRT-LLM's TransformersTokenizer passes kwargs to HF ``encode``."""

    eos_token_id = EOS
    pad_token_id = None

    def encode(self, text: str, *args: Any, add_special_tokens: bool = True, **kwargs: Any) -> list[int]:
        return ([BOS] if add_special_tokens else []) + [b + OFFSET for b in text.encode()]

    def decode(self, token_ids: Sequence[int], **kwargs: Any) -> str:
        return bytes(i - OFFSET for i in token_ids if i >= OFFSET).decode("utf-8", errors="replace")


def ids(text: str) -> list[int]:
    return [b + OFFSET for b in text.encode()]


# Fields of tensorrt_llm.sampling_params.SamplingParams in 1.2.x (a kw-only dataclass).
SAMPLING_FIELDS = frozenset(
    [
        "end_id",
        "pad_id",
        "max_tokens",
        "bad",
        "bad_token_ids",
        "stop",
        "stop_token_ids",
        "include_stop_str_in_output",
        "embedding_bias",
        "logits_processor",
        "apply_batched_logits_processor",
        "n",
        "best_of",
        "use_beam_search",
        "top_k",
        "top_p",
        "top_p_min",
        "top_p_reset_ids",
        "top_p_decay",
        "seed",
        "temperature",
        "min_tokens",
        "beam_search_diversity_rate",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "length_penalty",
        "early_stopping",
        "no_repeat_ngram_size",
        "min_p",
        "beam_width_array",
        "logprobs",
        "prompt_logprobs",
        "return_context_logits",
        "return_generation_logits",
        "exclude_input_from_output",
        "return_encoder_output",
        "return_perf_metrics",
        "additional_model_outputs",
        "lookahead_config",
        "guided_decoding",
        "ignore_eos",
        "detokenize",
        "add_special_tokens",
        "truncate_prompt_tokens",
        "skip_special_tokens",
        "spaces_between_special_tokens",
    ]
)
KV_CACHE_FIELDS = frozenset(
    [
        "enable_block_reuse",
        "max_tokens",
        "max_attention_window",
        "sink_token_length",
        "free_gpu_memory_fraction",
        "host_cache_size",
        "onboard_blocks",
        "cross_kv_cache_fraction",
        "secondary_offload_min_priority",
        "event_buffer_max_size",
        "enable_partial_reuse",
        "copy_on_partial_reuse",
        "dtype",
    ]
)


class Strict:
    """A keyword-only config object that, like the pydantic/dataclass originals, refuses
    unknown fields and keeps what it was given."""

    FIELDS: frozenset[str] = frozenset()

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - self.FIELDS
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments {sorted(unknown)}")
        self.kwargs = kwargs
        for key, value in kwargs.items():
            setattr(self, key, value)


class FakeSamplingParams(Strict):
    FIELDS = SAMPLING_FIELDS


class FakeKvCacheConfig(Strict):
    FIELDS = KV_CACHE_FIELDS


class FakeBuildConfig(Strict):
    FIELDS = frozenset(
        ["max_input_len", "max_seq_len", "max_batch_size", "max_beam_width", "max_num_tokens", "opt_num_tokens"]
    )


class FakeQuantConfig(Strict):
    FIELDS = frozenset(["quant_algo", "kv_cache_quant_algo", "group_size", "exclude_modules"])


class FakeCalibConfig(Strict):
    FIELDS = frozenset(
        [
            "device",
            "calib_dataset",
            "calib_batches",
            "calib_batch_size",
            "calib_max_seq_length",
            "random_seed",
            "tokenizer_max_seq_length",
        ]
    )


class FakeGuidedDecodingParams(Strict):
    """tensorrt_llm.sampling_params.GuidedDecodingParams (1.2.x): one guide per request."""

    FIELDS = frozenset(["json", "regex", "grammar", "json_object", "structural_tag"])


class FakeQuantAlgo(enum.Enum):
    FP8 = "FP8"
    W4A16_AWQ = "W4A16_AWQ"
    W8A16 = "W8A16"


class FakeRequestError(RuntimeError):
    """tensorrt_llm.executor.utils.RequestError (a RuntimeError)."""


@dataclass
class FakeCompletionOutput:
    """tensorrt_llm.executor.result.CompletionOutput: cumulative fields, diffs by length."""

    index: int = 0
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    request_perf_metrics: Any = None
    _last_text_len: int = 0
    _last_token_ids_len: int = 0

    @property
    def text_diff(self) -> str:
        return self.text[self._last_text_len :]

    @property
    def token_ids_diff(self) -> list[int]:
        return self.token_ids[self._last_token_ids_len :]


@dataclass
class Step:
    """One executor response: new text (and its ids), and on the last one why it ended."""

    text: str = ""
    finish: str | None = None
    stop_reason: str | None = None


class FakeRequestOutput:
    """tensorrt_llm.llmapi.RequestOutput: its own async iterator."""

    def __init__(self, prompt: str, prompt_token_ids: list[int], queue: asyncio.Queue[Step | BaseException]) -> None:
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.outputs = [FakeCompletionOutput()]
        self.abort_calls = 0
        self._queue = queue
        self._done = False

    @property
    def finished(self) -> bool:
        return self._done

    def abort(self) -> None:
        self.abort_calls += 1
        # The executor answers a cancellation with a final "cancelled" response.
        self._queue.put_nowait(Step(finish="cancelled"))

    def __aiter__(self) -> FakeRequestOutput:
        return self

    async def __anext__(self) -> FakeRequestOutput:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        out = self.outputs[0]
        out._last_text_len, out._last_token_ids_len = len(out.text), len(out.token_ids)
        out.text += item.text
        out.token_ids.extend(ids(item.text))
        if item.finish is not None:
            self._done = True
            out.finish_reason = item.finish
            out.stop_reason = item.stop_reason
        return self


@dataclass
class FakeLLM:
    """The double at the ``LLM`` boundary; plays ``script`` for every request."""

    script: list[Step | BaseException] = field(default_factory=list)
    stats: list[Any] = field(default_factory=list)
    stats_returns_none: bool = False
    healthy: bool | None = None  # None: no _check_health (as a release without it)
    tokenizer: Any = field(default_factory=FakeTokenizer)
    calls: list[dict[str, Any]] = field(default_factory=list)
    requests: list[FakeRequestOutput] = field(default_factory=list)
    stats_calls: list[Any] = field(default_factory=list)
    shutdown_calls: int = 0
    saved_to: list[str] = field(default_factory=list)

    def generate_async(
        self,
        inputs: Any,
        sampling_params: Any = None,
        lora_request: Any = None,
        prompt_adapter_request: Any = None,
        streaming: bool = False,
        **kwargs: Any,
    ) -> FakeRequestOutput:
        self.calls.append({"inputs": inputs, "sampling_params": sampling_params, "streaming": streaming, **kwargs})
        queue: asyncio.Queue[Step | BaseException] = asyncio.Queue()
        for item in self.script:
            queue.put_nowait(item)
        request = FakeRequestOutput(inputs, self.tokenizer.encode(inputs), queue)
        self.requests.append(request)
        return request

    def get_stats_async(self, timeout: float | None = 2) -> Any:
        self.stats_calls.append(timeout)
        if self.stats_returns_none:
            return None
        items, self.stats = self.stats, []

        async def iterate() -> AsyncIterator[Any]:
            for item in items:
                yield item

        return iterate()

    def shutdown(self) -> None:
        self.shutdown_calls += 1

    def save(self, engine_dir: str) -> None:
        self.saved_to.append(engine_dir)
        Path(engine_dir, "config.json").write_text(json.dumps({"version": VERSION, "build_config": {}}))
        Path(engine_dir, "rank0.engine").write_bytes(b"engine")

    def __getattr__(self, name: str) -> Any:
        if name == "_check_health" and self.healthy is not None:
            return lambda: self.healthy
        raise AttributeError(name)


def fake_api() -> TrtllmApi:
    def no_llm(**kwargs: Any) -> Any:
        raise AssertionError("tests pass llm_factory")

    return TrtllmApi(
        version=VERSION,
        LLM=no_llm,
        SamplingParams=FakeSamplingParams,
        KvCacheConfig=FakeKvCacheConfig,
        BuildConfig=FakeBuildConfig,
        QuantConfig=FakeQuantConfig,
        QuantAlgo=FakeQuantAlgo,
        CalibConfig=FakeCalibConfig,
        GuidedDecodingParams=FakeGuidedDecodingParams,
    )


@dataclass
class Factory:
    llm: FakeLLM
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, **kwargs: Any) -> FakeLLM:
        self.calls.append(kwargs)
        return self.llm


def write_engine_dir(path: Path, **changes: Any) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    details: dict[str, Any] = {
        "tensorrt_llm_version": VERSION,
        "gpu_compute_capability": CAPABILITY,
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "build": {
            "dtype": "float16",
            "quant": "none",
            "max_batch_size": 8,
            "max_seq_len": 256,
            "max_input_len": 256,
            "max_num_tokens": 1024,
            "tp_size": 1,
        },
    }
    details.update(changes.pop("details", {}))
    manifest = ModelManifest(
        kind=changes.pop("kind", "tensorrt-llm-engine"),
        name="gorilla-test",
        prompt_format=PromptFormat.GORILLA_V0,
        max_model_len=256,
        details=details,
    )
    manifest.write(path)
    return path


async def load(engine_dir: Path, llm: FakeLLM, **kwargs: Any) -> tuple[TensorRTLLMEngine, Factory]:
    """``kwargs``: TensorRTLLMConfig fields and ``load``'s test seams."""
    factory = Factory(llm)
    kwargs.setdefault("compute_capability", lambda: CAPABILITY)
    options = {f.name for f in dataclasses.fields(TensorRTLLMConfig)}
    config = TensorRTLLMConfig(**{k: kwargs.pop(k) for k in list(kwargs) if k in options})
    engine = await TensorRTLLMEngine.load(engine_dir, config, llm_factory=factory, api=fake_api(), **kwargs)
    return engine, factory


def request(prompt: str = "USER: hi\nASSISTANT:", request_id: str = "r1", **sampling: Any) -> EngineRequest:
    sampling.setdefault("max_tokens", 16)
    return EngineRequest(request_id=request_id, prompt=prompt, sampling=SamplingParams(**sampling))


async def collect(engine: Engine, req: EngineRequest) -> list[EngineOutput]:
    return [out async for out in engine.stream(req)]


@pytest.fixture
async def running() -> AsyncIterator[Callable[..., Any]]:
    """Load engines and always shut them down (their stats task must not outlive a test)."""
    engines: list[TensorRTLLMEngine] = []

    async def start(llm: FakeLLM, tmp: Path, **kwargs: Any) -> TensorRTLLMEngine:
        engine, _ = await load(write_engine_dir(tmp / "engine"), llm, **kwargs)
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        await engine.shutdown()


# ---------------------------------------------------------------------- streaming


async def test_deltas_are_forwarded_in_order(running: Any, tmp_path: Path) -> None:
    llm = FakeLLM(script=[Step("<<<api_call>>>"), Step(": POST"), Step(" /sessions"), Step("", finish="length")])
    engine = await running(llm, tmp_path)
    assert isinstance(engine, Engine)
    outs = await collect(engine, request("USER: make a session"))

    assert [o.text_delta for o in outs] == ["<<<api_call>>>", ": POST", " /sessions", ""]
    assert [o.finish_reason for o in outs] == [None, None, None, FinishReason.LENGTH]
    assert [o.completion_tokens for o in outs] == [14, 20, 30, 30]  # cumulative
    prompt_tokens = len(FakeTokenizer().encode("USER: make a session"))
    assert all(o.prompt_tokens == prompt_tokens for o in outs)
    assert outs[0].queue_seconds is not None and all(o.queue_seconds is None for o in outs[1:])
    assert engine.num_in_flight == 0
    assert llm.requests[0].abort_calls == 0  # finished: nothing to abort
    assert llm.calls[0]["inputs"] == "USER: make a session" and llm.calls[0]["streaming"] is True


async def test_sampling_params_follow_the_request(running: Any, tmp_path: Path) -> None:
    llm = FakeLLM(script=[Step("x", finish="stop")])
    engine = await running(llm, tmp_path)
    await collect(engine, request(max_tokens=20, temperature=0.7, top_p=0.9, top_k=40, seed=7, stop=("\n\n",)))
    await collect(engine, request(request_id="r2", max_tokens=5))  # greedy (temperature 0)

    sampled, greedy = (call["sampling_params"] for call in llm.calls)
    assert isinstance(sampled, FakeSamplingParams) and isinstance(greedy, FakeSamplingParams)
    assert sampled.kwargs == {
        "max_tokens": 20,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 7,
        "stop": ["\n\n"],
        "return_perf_metrics": True,
    }
    # max_tokens is always set (TensorRT-LLM's default is 32); greedy is top-k 1.
    assert greedy.kwargs == {"max_tokens": 5, "top_k": 1, "return_perf_metrics": True}


@pytest.mark.parametrize(
    ("trt_reason", "reason"),
    [
        ("stop", FinishReason.STOP),
        ("length", FinishReason.LENGTH),
        ("timeout", FinishReason.CANCELLED),
        ("cancelled", FinishReason.CANCELLED),
    ],
)
async def test_finish_reasons_map(running: Any, tmp_path: Path, trt_reason: str, reason: FinishReason) -> None:
    engine = await running(FakeLLM(script=[Step("ok"), Step(".", finish=trt_reason)]), tmp_path)
    outs = await collect(engine, request())
    assert outs[-1].finish_reason is reason
    assert [o.finish_reason for o in outs[:-1]] == [None]
    assert "".join(o.text_delta for o in outs) == "ok."


async def test_cancelled_consumer_aborts_exactly_once(running: Any, tmp_path: Path) -> None:
    llm = FakeLLM(script=[Step("a"), Step("b")])  # then the executor is busy: no more outputs yet
    engine = await running(llm, tmp_path)
    seen: list[str] = []
    two = asyncio.Event()

    async def consume() -> None:
        async for out in engine.stream(request()):
            seen.append(out.text_delta)
            if len(seen) == 2:
                two.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(two.wait(), 5)
    await asyncio.sleep(0.01)  # the consumer is waiting for the third output
    assert engine.num_in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["a", "b"]
    assert llm.requests[0].abort_calls == 1
    assert engine.num_in_flight == 0


async def test_closing_the_stream_early_aborts_exactly_once(running: Any, tmp_path: Path) -> None:
    llm = FakeLLM(script=[Step("a"), Step("b"), Step("c", finish="length")])
    engine = await running(llm, tmp_path)
    stream = engine.stream(request())
    first = await anext(stream)
    assert first.text_delta == "a"
    await stream.aclose()
    assert llm.requests[0].abort_calls == 1
    assert engine.num_in_flight == 0


async def test_abort_from_outside_ends_the_stream_cancelled(running: Any, tmp_path: Path) -> None:
    llm = FakeLLM(script=[Step("a")])
    engine = await running(llm, tmp_path)
    outs: list[EngineOutput] = []
    async for out in engine.stream(request(request_id="x")):
        outs.append(out)
        if len(outs) == 1:
            await engine.abort("x")
            await engine.abort("x")  # a second abort of the same request is a no-op
    assert outs[-1].finish_reason is FinishReason.CANCELLED
    assert llm.requests[0].abort_calls == 1
    assert engine.num_in_flight == 0


async def test_stop_string_is_never_emitted(running: Any, tmp_path: Path) -> None:
    # TensorRT-LLM streams the first token of a multi-token stop string before it matches; the
    # engine holds back what could begin one and ends the stream itself.
    llm = FakeLLM(script=[Step("abc"), Step("\n"), Step("\nmore"), Step("tail")])
    engine = await running(llm, tmp_path)
    outs = await collect(engine, request(stop=("\n\n",)))
    assert "".join(o.text_delta for o in outs) == "abc"
    assert outs[-1].finish_reason is FinishReason.STOP
    assert llm.requests[0].abort_calls == 1  # the executor had not finished: stop it
    assert engine.num_in_flight == 0


async def test_stop_string_matched_by_the_executor(running: Any, tmp_path: Path) -> None:
    # The executor stopped on "\n\n" (cut from its text) after streaming the first "\n".
    llm = FakeLLM(script=[Step("abc"), Step("\n"), Step("", finish="stop", stop_reason="\n\n")])
    engine = await running(llm, tmp_path)
    outs = await collect(engine, request(stop=("\n\n",)))
    assert "".join(o.text_delta for o in outs) == "abc"
    assert outs[-1].finish_reason is FinishReason.STOP
    assert llm.requests[0].abort_calls == 0


async def test_held_back_text_is_flushed_at_an_eos_stop(running: Any, tmp_path: Path) -> None:
    llm = FakeLLM(script=[Step("abc"), Step("\n", finish="stop")])  # EOS, not the stop string
    engine = await running(llm, tmp_path)
    outs = await collect(engine, request(stop=("\n\n",)))
    assert "".join(o.text_delta for o in outs) == "abc\n"


async def test_executor_error_mid_stream_flips_health(running: Any, tmp_path: Path) -> None:
    llm = FakeLLM(script=[Step("a"), FakeRequestError("Executor worker returned error")])
    engine = await running(llm, tmp_path)
    await engine.check_health()
    seen: list[str] = []
    with pytest.raises(EngineUnavailableError):
        async for out in engine.stream(request()):
            seen.append(out.text_delta)
    assert seen == ["a"]
    assert engine.num_in_flight == 0
    with pytest.raises(EngineUnavailableError):
        await engine.check_health()
    with pytest.raises(EngineUnavailableError):  # no new requests on a failed executor
        await collect(engine, request(request_id="r2"))
    assert len(llm.calls) == 1


async def test_dead_executor_is_noticed_while_waiting(tmp_path: Path) -> None:
    from apihelper.service.engine.protocol import EngineInfo

    llm = FakeLLM(script=[Step("a")], healthy=True)  # then nothing: the executor died
    info = EngineInfo(kind="tensorrt_llm", model="m", prompt_format=PromptFormat.GORILLA_V0, max_model_len=256)
    engine = TensorRTLLMEngine(llm=llm, api=fake_api(), info=info, max_input_len=256, poll_interval_s=0.02)

    async def kill() -> None:
        await asyncio.sleep(0.1)
        llm.healthy = False

    killer = asyncio.create_task(kill())
    with pytest.raises(EngineUnavailableError):
        await asyncio.wait_for(collect(engine, request()), 5)
    await killer
    assert engine.num_in_flight == 0
    assert llm.requests[0].abort_calls == 1
    with pytest.raises(EngineUnavailableError):
        await engine.check_health()
    await engine.shutdown()


async def test_prompt_plus_max_tokens_over_the_limit_is_refused_before_submitting(running: Any, tmp_path: Path) -> None:
    llm = FakeLLM(script=[Step("x", finish="stop")])
    engine = await running(llm, tmp_path)
    prompt = "p" * 200  # 201 tokens with <s>; the engine takes 256
    with pytest.raises(InvalidRequestError) as err:
        await collect(engine, request(prompt, max_tokens=56))
    assert err.value.field == "sampling.max_tokens"
    assert llm.calls == []
    await collect(engine, request(prompt, max_tokens=55))  # exactly fits
    assert engine.count_tokens(prompt) == 201


async def test_prompt_over_max_input_len_is_refused(tmp_path: Path) -> None:
    build = {"max_seq_len": 256, "max_input_len": 100, "max_num_tokens": 256}
    llm = FakeLLM(script=[Step("x", finish="stop")])
    engine, _ = await load(write_engine_dir(tmp_path / "engine", details={"build": build}), llm)
    try:
        with pytest.raises(InvalidRequestError) as err:
            await collect(engine, request("p" * 100, max_tokens=8))  # 101 tokens with <s>
        assert err.value.field == "instruction"
        assert llm.calls == []
        await collect(engine, request("p" * 99, max_tokens=8))
    finally:
        await engine.shutdown()


async def test_an_abort_the_executor_never_answers_still_ends_the_stream(tmp_path: Path) -> None:
    from apihelper.service.engine.protocol import EngineInfo

    class Silent(FakeRequestOutput):
        def abort(self) -> None:
            self.abort_calls += 1  # and no final "cancelled" output ever comes

    llm = FakeLLM(script=[Step("a")])
    original = llm.generate_async

    def generate_async(inputs: Any, sampling_params: Any = None, **kwargs: Any) -> FakeRequestOutput:
        out = original(inputs, sampling_params, **kwargs)
        out.__class__ = Silent
        return out

    llm.generate_async = generate_async  # type: ignore[method-assign,assignment]
    info = EngineInfo(kind="tensorrt_llm", model="m", prompt_format=PromptFormat.GORILLA_V0, max_model_len=256)
    engine = TensorRTLLMEngine(
        llm=llm, api=fake_api(), info=info, max_input_len=256, poll_interval_s=0.02, abort_grace_s=0.1
    )
    outs: list[EngineOutput] = []
    async with asyncio.timeout(5):
        async for out in engine.stream(request(request_id="x")):
            outs.append(out)
            await engine.abort("x")
    assert [o.finish_reason for o in outs] == [None, FinishReason.CANCELLED]
    assert llm.requests[0].abort_calls == 1
    assert engine.num_in_flight == 0
    await engine.shutdown()


@pytest.mark.parametrize(("sampling", "field_name"), INVALID_SAMPLING)
async def test_bad_sampling_is_refused(running: Any, tmp_path: Path, sampling: dict[str, Any], field_name: str) -> None:
    llm = FakeLLM()
    engine = await running(llm, tmp_path)
    with pytest.raises(InvalidRequestError) as err:
        await collect(engine, request(**{"max_tokens": 4, **sampling}))
    assert err.value.field == field_name
    assert llm.calls == []


async def test_duplicate_request_id_is_refused(running: Any, tmp_path: Path) -> None:
    engine = await running(FakeLLM(script=[Step("a")]), tmp_path)
    first = engine.stream(request(request_id="same"))
    await anext(first)
    with pytest.raises(InvalidRequestError) as err:
        await collect(engine, request(request_id="same"))
    assert err.value.field == "request_id"
    await first.aclose()
    assert engine.num_in_flight == 0


# ---------------------------------------------------------------------- stats, shutdown


async def test_iteration_stats_reach_engine_stats(running: Any, tmp_path: Path) -> None:
    llm = FakeLLM(script=[Step("a")])
    llm.stats = [
        {
            "iter": 1,
            "numActiveRequests": 1,
            "numQueuedRequests": 0,
            "gpuMemUsage": 1000,
            "kvCacheStats": {"usedNumBlocks": 1, "maxNumBlocks": 100},
        },
        json.dumps(
            {
                "iter": 2,
                "numActiveRequests": 3,
                "numQueuedRequests": 2,
                "gpuMemUsage": 2**34,
                "kvCacheStats": {"usedNumBlocks": 25, "maxNumBlocks": 100},
            }
        ),  # older releases: JSON
    ]
    engine = await running(llm, tmp_path, stats_interval_s=0.01)
    await asyncio.sleep(0.03)
    assert llm.stats_calls == []  # no stats before the first request (the executor has none)
    stream = engine.stream(request())
    await anext(stream)  # a request in flight
    for _ in range(100):
        if engine.stats().waiting == 2:
            break
        await asyncio.sleep(0.01)
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.kv_cache_usage) == (3, 2, 0.25)
    # ... and through to the metrics recorder, read at scrape time.
    from prometheus_client import generate_latest

    from apihelper.service.metrics.prometheus import PrometheusRecorder

    recorder = PrometheusRecorder(
        version="t",
        engine_kind=engine.info.kind,
        model=engine.info.model,
        prompt_format="gorilla_v0",
        embedding_model="e",
        engine_stats=engine.stats,
    )
    scrape = generate_latest(recorder.registry).decode()
    for line in (
        "apihelper_engine_running_requests 3.0",
        "apihelper_engine_waiting_requests 2.0",
        "apihelper_engine_kv_cache_usage_ratio 0.25",
    ):
        assert line in scrape.splitlines(), line
    assert llm.stats_calls and all(t is not None and t > 0 for t in llm.stats_calls)
    await stream.aclose()
    idle = engine.stats()  # nothing in flight: the executor holds no request of ours
    assert (idle.running, idle.waiting, idle.kv_cache_usage) == (0, 0, 0.0)


@pytest.mark.parametrize("broken", ["none", "junk", "raises"])
async def test_stats_tolerate_an_api_that_returns_nothing(
    running: Any, tmp_path: Path, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    llm = FakeLLM(script=[Step("a", finish="stop")], stats_returns_none=broken == "none")
    calls: list[float | None] = []
    if broken == "junk":
        llm.stats = [object(), "not json", 42]  # not iteration stats: ignored
    if broken == "raises":

        def failing(timeout: float | None = 2) -> Any:
            calls.append(timeout)
            raise RuntimeError("no stats")

        llm.get_stats_async = failing  # type: ignore[method-assign]
    engine = await running(llm, tmp_path, stats_interval_s=0.01)
    assert (await collect(engine, request()))[-1].finish_reason is FinishReason.STOP
    await asyncio.sleep(0.05)  # the poller has run (it starts with the first request)
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.kv_cache_usage) == (0, 0, None)
    assert (await collect(engine, request(request_id="r2")))[-1].finish_reason is FinishReason.STOP
    if broken == "raises":
        assert len(calls) >= 2  # still polling after the failure, and warned once
        assert sum("iteration stats unavailable" in r.message for r in caplog.records) == 1
    else:
        assert llm.stats_calls


async def test_shutdown_fails_running_streams_and_stops_the_executor(tmp_path: Path) -> None:
    llm = FakeLLM(script=[Step("a")])
    engine, _ = await load(write_engine_dir(tmp_path / "engine"), llm, stats_interval_s=0.01)
    stream = engine.stream(request())
    await anext(stream)
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.01)
    await engine.shutdown()
    with pytest.raises(EngineUnavailableError, match="shutting down"):
        await waiting
    assert llm.shutdown_calls == 1
    assert llm.requests[0].abort_calls == 1
    assert engine.num_in_flight == 0
    with pytest.raises(EngineUnavailableError):
        await engine.check_health()
    await engine.shutdown()  # idempotent
    assert llm.shutdown_calls == 1


# ---------------------------------------------------------------------- loading


async def test_load_passes_the_kv_cache_config_and_fills_info(tmp_path: Path) -> None:
    engine, factory = await load(
        write_engine_dir(tmp_path / "engine"),
        FakeLLM(),
        kv_cache_free_gpu_memory_fraction=0.8,
        enable_block_reuse=False,
        prompt_format=PromptFormat.OPENFUNCTIONS_V2,  # the manifest wins
    )
    try:
        (call,) = factory.calls
        assert call["model"] == str(tmp_path / "engine")
        assert call["kv_cache_config"].kwargs == {"free_gpu_memory_fraction": 0.8, "enable_block_reuse": False}
        assert call["guided_decoding_backend"] == "xgrammar" and engine.info.guided_decoding
        info = engine.info
        assert (info.kind, info.model, info.prompt_format, info.max_model_len) == (
            "tensorrt_llm",
            "gorilla-test",
            PromptFormat.GORILLA_V0,
            256,
        )
        assert info.extra["tensorrt_llm"] == VERSION and info.extra["gpu_compute_capability"] == CAPABILITY
        assert engine.count_tokens("abc") == 4  # the LLM's tokenizer, <s> included
    finally:
        await engine.shutdown()


async def test_missing_manifest_is_refused(tmp_path: Path) -> None:
    (tmp_path / "engine").mkdir()
    llm = FakeLLM()
    with pytest.raises(ConfigurationError, match=MANIFEST_NAME):
        await load(tmp_path / "engine", llm)
    with pytest.raises(ConfigurationError, match="not found"):
        await load(tmp_path / "nowhere", llm)


async def test_a_checkpoint_manifest_is_refused(tmp_path: Path) -> None:
    engine_dir = write_engine_dir(tmp_path / "engine", kind="hf-checkpoint")
    with pytest.raises(ConfigurationError, match="'hf-checkpoint' artifact, not a 'tensorrt-llm-engine'"):
        await load(engine_dir, FakeLLM())


async def test_version_mismatch_is_refused(tmp_path: Path) -> None:
    engine_dir = write_engine_dir(tmp_path / "engine")
    with pytest.raises(ConfigurationError, match=r"built with TensorRT-LLM 1\.2\.1, this runtime is 1\.2\.0.*rebuild"):
        await load(engine_dir, FakeLLM(), runtime_version=lambda: "1.2.0")


async def test_compute_capability_mismatch_is_refused(tmp_path: Path) -> None:
    engine_dir = write_engine_dir(tmp_path / "engine")
    factory_calls: list[Any] = []
    with pytest.raises(
        ConfigurationError, match=r"compute capability 9\.0 \(NVIDIA H100 80GB HBM3\), this GPU is 8\.0"
    ):
        await TensorRTLLMEngine.load(
            engine_dir,
            llm_factory=lambda **kw: factory_calls.append(kw),
            api=fake_api(),
            compute_capability=lambda: "8.0",
        )
    assert factory_calls == []  # refused before loading anything onto the GPU


async def test_manifest_without_versions_is_refused(tmp_path: Path) -> None:
    engine_dir = write_engine_dir(tmp_path / "engine", details={"tensorrt_llm_version": ""})
    with pytest.raises(ConfigurationError, match="does not record the TensorRT-LLM version"):
        await load(engine_dir, FakeLLM())


async def test_without_tensorrt_llm_the_error_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # absent, even where it is installed
    with pytest.raises(MissingDependencyError) as err:
        await TensorRTLLMEngine.load(write_engine_dir(tmp_path / "engine"))
    message = str(err.value)
    assert "\n" not in message
    assert "'tensorrt_llm'" in message and "TensorRT-LLM 1.2.x release container" in message
    assert err.value.package == "tensorrt_llm"
    assert err.value.__cause__ is None


# ---------------------------------------------------------------------- the engine build


def make_checkpoint(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 512})
    )
    (path / "model-00001-of-00002.safetensors").write_bytes(b"a" * 1000)
    (path / "model-00002-of-00002.safetensors").write_bytes(b"b" * 10)
    (path / "tokenizer.json").write_text("{}")
    (path / "tokenizer_config.json").write_text("{}")
    (path / "generation_config.json").write_text("{}")
    ModelManifest(
        kind="dev-model",
        name="apihelper-dev-model",
        prompt_format=PromptFormat.OPENFUNCTIONS_V2,
        random_weights=True,
        max_model_len=512,
    ).write(path)
    return path


def test_build_writes_an_engine_the_service_accepts(tmp_path: Path) -> None:
    from apihelper.build.trtllm_build import build_engine, checksum_weights

    checkpoint = make_checkpoint(tmp_path / "ckpt")
    llm = FakeLLM()
    factory = Factory(llm)
    out = tmp_path / "engine"
    manifest = build_engine(
        checkpoint,
        out,
        dtype="bfloat16",
        quant="fp8",
        max_batch_size=4,
        max_seq_len=512,
        max_num_tokens=1024,
        tp_size=1,
        calib_texts=iter(["first doc", "  ", "second doc", "third"]),
        calib_max_texts=2,
        progress=False,
        llm_factory=factory,
        api=fake_api(),
        compute_capability=lambda: "9.0",
        gpu_name=lambda: "NVIDIA H100",
    )

    (call,) = factory.calls
    assert call["model"] == str(checkpoint) and call["tensor_parallel_size"] == 1 and call["dtype"] == "bfloat16"
    assert call["build_config"].kwargs == {
        "max_batch_size": 4,
        "max_num_tokens": 1024,
        "max_seq_len": 512,
        "max_input_len": 512,
    }
    assert call["quant_config"].kwargs == {"quant_algo": FakeQuantAlgo.FP8}
    calib = call["calib_config"].kwargs
    assert calib["calib_batches"] == 2 and calib["calib_max_seq_length"] == 512
    assert not Path(calib["calib_dataset"]).exists()  # a temporary directory, gone after the build
    assert llm.saved_to == [str(out)] and llm.shutdown_calls == 1
    assert (out / "tokenizer.json").exists() and (out / "generation_config.json").exists()
    assert json.loads((out / "config.json").read_text())["version"] == VERSION  # not overwritten

    assert read_manifest(out) == manifest
    assert manifest.kind == "tensorrt-llm-engine" and manifest.max_model_len == 512
    assert manifest.prompt_format is PromptFormat.OPENFUNCTIONS_V2 and manifest.random_weights
    details = manifest.details
    assert details["tensorrt_llm_version"] == VERSION and details["gpu_compute_capability"] == "9.0"
    assert details["source_weights_sha256"] == checksum_weights(checkpoint)[0]
    assert details["source_weight_files"] == 2 and details["source_weight_bytes"] == 1010
    assert details["build"]["quant"] == "fp8" and details["build"]["calibration_texts"] == 2


def test_calibration_dataset_is_what_tensorrt_llm_loads(tmp_path: Path) -> None:
    from apihelper.build.trtllm_build import CALIB_DATASET_FILE, write_calibration_dataset

    assert write_calibration_dataset(tmp_path, ["a", "", "b \n", "c"], 2) == 2
    lines = (tmp_path / CALIB_DATASET_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"text": "a"}, {"text": "b"}]


async def test_built_engine_loads(tmp_path: Path) -> None:
    from apihelper.build.trtllm_build import build_engine

    out = tmp_path / "engine"
    build_engine(
        make_checkpoint(tmp_path / "ckpt"),
        out,
        quant="int8_wo",
        max_seq_len=512,
        progress=False,
        llm_factory=Factory(FakeLLM()),
        api=fake_api(),
        compute_capability=lambda: "9.0",
        gpu_name=lambda: "NVIDIA H100",
    )
    engine, _ = await load(out, FakeLLM())
    try:
        assert engine.info.max_model_len == 512 and engine.info.random_weights
        assert engine.info.extra["quant"] == "int8_wo"
    finally:
        await engine.shutdown()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quant": "int3"}, "quant must be one of"),
        ({"dtype": "float32"}, "dtype must be one of"),
        ({"max_seq_len": 1024}, "exceeds the model's max_position_embeddings 512"),
        ({"max_num_tokens": 100}, "max_num_tokens .* must be at least max_input_len"),
        ({"quant": "fp8", "capability": "8.0"}, "fp8 needs a GPU with compute capability 8.9"),
    ],
)
def test_build_refuses_bad_settings(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    from apihelper.build.trtllm_build import build_engine

    capability = kwargs.pop("capability", "9.0")
    factory = Factory(FakeLLM())
    with pytest.raises(ConfigurationError, match=message):
        build_engine(
            make_checkpoint(tmp_path / "ckpt"),
            tmp_path / "engine",
            progress=False,
            llm_factory=factory,
            api=fake_api(),
            compute_capability=lambda: capability,
            gpu_name=lambda: "GPU",
            **{"max_seq_len": 512, **kwargs},
        )
    assert factory.calls == []
    assert not (tmp_path / "engine").exists()


def test_build_cleans_up_after_a_failed_build(tmp_path: Path) -> None:
    from apihelper.build.trtllm_build import build_engine

    def failing(**kwargs: Any) -> Any:
        raise RuntimeError("[TensorRT-LLM][ERROR] out of memory")

    with pytest.raises(ConfigurationError, match=r"building the engine failed .*out of memory"):
        build_engine(
            make_checkpoint(tmp_path / "ckpt"),
            tmp_path / "engine",
            max_seq_len=512,
            progress=False,
            llm_factory=failing,
            api=fake_api(),
            compute_capability=lambda: "9.0",
            gpu_name=lambda: "GPU",
        )
    assert not (tmp_path / "engine").exists()


# ---------------------------------------------------------------------- guided decoding


async def test_a_guided_request_carries_its_grammar_to_the_executor(running: Any, tmp_path: Path) -> None:
    llm = FakeLLM(script=[Step("<<<api_call>>>: f()"), Step("", finish="stop")])
    engine = await running(llm, tmp_path)
    grammar = GuidedDecoding('root ::= "<<<api_call>>>: f()"', "k1")
    guided = EngineRequest("g1", "USER: call f\nASSISTANT:", SamplingParams(max_tokens=8), grammar)
    await collect(engine, guided)
    await collect(engine, request("USER: hi\nASSISTANT:", request_id="plain"))
    constrained, plain = (call["sampling_params"] for call in llm.calls)
    assert constrained.guided_decoding.kwargs == {"grammar": grammar.ebnf}
    assert "guided_decoding" not in plain.kwargs


async def test_without_guided_decoding_a_guided_request_is_refused(tmp_path: Path) -> None:
    engine, factory = await load(write_engine_dir(tmp_path / "engine"), FakeLLM(), guided_decoding=False)
    try:
        assert "guided_decoding_backend" not in factory.calls[0] and not engine.info.guided_decoding
        guided = EngineRequest(
            "g1", "USER: x\nASSISTANT:", SamplingParams(max_tokens=8), GuidedDecoding('root ::= "x"', "k")
        )
        with pytest.raises(InvalidRequestError) as info:
            await collect(engine, guided)
        assert info.value.field == "constrain_calls"
    finally:
        await engine.shutdown()


async def test_a_consumer_that_takes_nothing_is_aborted_past_the_stall_timeout(tmp_path: Path) -> None:
    llm = FakeLLM(script=[Step("a"), Step("b"), Step("c")])  # the executor keeps the request going
    engine, _ = await load(write_engine_dir(tmp_path / "engine"), llm, stall_timeout_s=0.1)
    try:
        stream = engine.stream(request(request_id="slow"))
        first = await anext(stream)
        assert first.text_delta == "a" and llm.requests[0].abort_calls == 0
        await asyncio.sleep(0.3)  # the consumer takes nothing
        assert llm.requests[0].abort_calls == 1
        async with asyncio.timeout(5):
            rest = [out async for out in stream]
        assert [o.text_delta for o in rest] == ["b", "c", ""]  # what was queued, then the end
        assert rest[-1].finish_reason is FinishReason.CANCELLED
        assert engine.num_in_flight == 0
    finally:
        await engine.shutdown()


async def test_a_consumer_that_reads_on_is_never_aborted_for_stalling(tmp_path: Path) -> None:
    llm = FakeLLM(script=[Step("a"), Step("b"), Step("c", finish="stop")])
    engine, _ = await load(write_engine_dir(tmp_path / "engine"), llm, stall_timeout_s=0.1)
    try:
        outs = []
        async with asyncio.timeout(5):
            async for out in engine.stream(request(request_id="steady")):
                outs.append(out)
                await asyncio.sleep(0.05)  # slower than the executor, faster than the timeout
        assert llm.requests[0].abort_calls == 0
        assert [o.text_delta for o in outs] == ["a", "b", "c"] and outs[-1].finish_reason is FinishReason.STOP
    finally:
        await engine.shutdown()
