"""The production engine: a compiled TensorRT-LLM engine (the 1.2.x line) behind ``Engine``.

This is the only module of apihelper that imports ``tensorrt_llm`` (lazily, in ``import_trtllm``;
the offline build in ``engine_build.trtllm_build`` goes through the same function). It owns:

- refusing an engine directory the runtime cannot run, at start-up: no apihelper manifest, a
  manifest of another kind, or an engine built by another TensorRT-LLM version or for another GPU
  architecture (compiled engines are tied to both);
- turning an ``EngineRequest`` into TensorRT-LLM ``SamplingParams`` and streaming
  ``LLM.generate_async(..., streaming=True)`` into ``EngineOutput`` deltas;
- aborting the request in the executor however a stream ends early, keeping ``num_in_flight``
  exact, and flipping health when the executor fails;
- aborting a request whose consumer takes nothing for ``stall_timeout_s`` (the executor would
  otherwise generate every token for a reader that never reads, holding its batch slot and KV
  blocks); the stream then ends with ``FinishReason.CANCELLED`` when next read;
- iteration statistics (``LLM.get_stats_async``) polled in the background for ``stats()``.

Facts of the 1.2.x API this relies on (checked against NVIDIA/TensorRT-LLM sources):
- ``from tensorrt_llm._tensorrt_engine import LLM`` is the compiled-engine (TensorRT backend) LLM;
  ``LLM(model=<engine dir>, kv_cache_config=KvCacheConfig(...))`` loads a saved engine.
- ``generate_async(prompt, sampling_params, streaming=True)`` returns a ``RequestOutput`` that is
  its own async iterator: every step yields the same object, updated; ``outputs[0].text_diff`` and
  ``token_ids_diff`` are the new text and ids, ``finished`` ends it, ``finish_reason`` is one of
  stop | length | timeout | cancelled, ``stop_reason`` names the stop string that ended it, and
  ``abort()`` cancels it in the executor (which then sends a final "cancelled" output).
- ``SamplingParams`` (a kw-only dataclass): ``max_tokens`` defaults to 32, so it is always set;
  ``seed`` (not ``random_seed``), ``top_k``/``top_p``/``temperature`` None mean runtime defaults;
  ``end_id``/``pad_id`` None are filled from the engine directory's tokenizer.
- ``get_stats_async(timeout)`` returns an async iterable of per-iteration dicts (``numActiveRequests``,
  ``numQueuedRequests``, ``kvCacheStats.usedNumBlocks/maxNumBlocks``, ``gpuMemUsage``); it ends when
  no new iteration arrives within ``timeout`` (an idle executor produces none), and yields nothing
  (with a printed warning) until the first request has been submitted.

Stop strings are applied twice, on purpose: TensorRT-LLM gets them (it stops generating at once,
on the GPU), but it matches token sequences and streams the first tokens of a multi-token stop
string before it knows; the text-level filter here holds back what could begin a stop string and
never emits one, exactly as the transformers engine does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apihelper.errors import (
    ConfigurationError,
    EngineUnavailableError,
    InvalidRequestError,
)
from apihelper.service.engine.base import EngineBase, check_sampling, render_with_template, tokenized
from apihelper.service.engine.config import TensorRTLLMConfig
from apihelper.service.engine.protocol import (
    EngineInfo,
    EngineOutput,
    EngineRequest,
    EngineStats,
    FinishReason,
    GuidedDecoding,
    SamplingParams,
)
from apihelper.service.engine.stops import StopFilter
from apihelper.service.engine.trtllm_runtime import (
    IterationStats,
    TrtllmApi,
    cuda_compute_capability,
    engine_manifest,
    import_trtllm,
    parse_iteration_stats,
)
from apihelper.service.prompts import ChatPrompt

logger = logging.getLogger(__name__)

ENGINE_KIND = "tensorrt_llm"
HONOURED_SAMPLING = ("max_tokens", "stop", "temperature", "top_p", "top_k", "seed", "repetition_penalty")

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "timeout": FinishReason.CANCELLED,
    "cancelled": FinishReason.CANCELLED,
}


# ---------------------------------------------------------------------- stream bookkeeping


class _End:
    """The request's async iterator is exhausted."""


class _AbortTimedOut:
    """An aborted request sent no final output within the grace period."""


_END = _End()
_ABORT_TIMED_OUT = _AbortTimedOut()


async def _step(iterator: Any) -> Any:
    # StopAsyncIteration must not escape into the ``stream`` generator (it would become a
    # RuntimeError there), so the end is a sentinel.
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _END


@dataclass
class _InFlight:
    """Bookkeeping of one stream, owned by the event loop."""

    request_id: str
    result: Any = None  # the RequestOutput once submitted
    pending: asyncio.Task[Any] | None = None  # the step being awaited
    finished: bool = False  # the executor sent the final output: nothing to abort
    aborted_at: float | None = None  # abort() was called on the RequestOutput (exactly once)
    abort_requested: bool = False  # Engine.abort came before the request was submitted
    failure: str | None = None  # set by shutdown: the stream raises EngineUnavailableError


# ---------------------------------------------------------------------- the engine


class TensorRTLLMEngine(EngineBase[_InFlight]):
    """An ``Engine`` on a compiled TensorRT-LLM engine; build it with ``load``."""

    def __init__(
        self,
        *,
        llm: Any,
        api: TrtllmApi,
        info: EngineInfo,
        max_input_len: int,
        return_perf_metrics: bool = True,
        stats_interval_s: float = 1.0,
        stats_timeout_s: float = 2.0,
        poll_interval_s: float = 1.0,
        abort_grace_s: float = 5.0,
        shutdown_timeout_s: float = 60.0,
        stall_timeout_s: float | None = None,
    ) -> None:
        """Wrap a loaded ``LLM``. ``load`` is the normal way in; tests pass their own parts."""
        self._llm = llm
        self._api = api
        self._info = info
        self._tokenizer: Any = llm.tokenizer
        self._max_input_len = max_input_len
        self._return_perf_metrics = return_perf_metrics
        self._stats_interval_s = stats_interval_s
        self._stats_timeout_s = stats_timeout_s
        # How often a waiting stream checks the executor: a request whose executor died would
        # otherwise wait for an output that never comes.
        self._poll_interval_s = poll_interval_s
        # An aborted request gets a final "cancelled" output from the executor; if none comes
        # within this time the stream ends on its own.
        self._abort_grace_s = abort_grace_s
        self._shutdown_timeout_s = shutdown_timeout_s
        # A stream whose consumer takes nothing for this long is aborted (None: never).
        self._stall_timeout_s = stall_timeout_s
        self._in_flight = {}
        self._closed = False
        self._unhealthy: str | None = None
        self._latest: IterationStats | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._stats_warned = False
        # The executor creates its iteration-stats queue with the first request (before that
        # get_stats_async prints a warning and yields nothing): poll only after one.
        self._submitted = asyncio.Event()

    # ------------------------------------------------------------------ loading

    @classmethod
    async def load(
        cls,
        engine_dir: Path,
        config: TensorRTLLMConfig | None = None,
        *,
        llm_factory: Callable[..., Any] | None = None,
        api: TrtllmApi | None = None,
        runtime_version: Callable[[], str] | None = None,
        compute_capability: Callable[[], str] | None = None,
        return_perf_metrics: bool = True,
        stats_interval_s: float = 1.0,
    ) -> TensorRTLLMEngine:
        """Load the engine in ``engine_dir`` (written by ``apihelper-build trtllm-engine``).
        ``config`` (``service.engine.config.TensorRTLLMConfig``):

        - ``prompt_format``: only a fallback; the engine's manifest always names one and wins.
        - ``kv_cache_free_gpu_memory_fraction``: share of the GPU memory left free after loading
          the engine that the paged KV cache takes (TensorRT-LLM's ``KvCacheConfig``).
        - ``enable_block_reuse``: reuse KV-cache blocks of shared prompt prefixes (the Gorilla
          system prompt is the same for every request).
        - ``guided_decoding``: load with TensorRT-LLM's xgrammar backend, so that requests with a
          call grammar are constrained (``GuidedDecodingParams(grammar=...)``); it needs a fast
          (Rust) Hugging Face tokenizer in the engine directory.
        - ``llm_factory``: what builds the ``LLM`` (default ``tensorrt_llm._tensorrt_engine.LLM``);
          ``api``, ``runtime_version`` and ``compute_capability`` replace the tensorrt_llm names,
          ``tensorrt_llm.__version__`` and ``torch.cuda.get_device_capability()``: test seams.
        - ``stall_timeout_s``: abort a request whose consumer takes nothing for this long.

        Raises ``MissingDependencyError`` without tensorrt_llm and ``ConfigurationError`` for an
        engine this runtime must not run. Loading runs in a thread; the event loop stays free.
        """
        config = config or TensorRTLLMConfig()
        trt = api if api is not None else import_trtllm()
        manifest = engine_manifest(engine_dir)
        details = manifest.details
        built_version = str(details.get("tensorrt_llm_version", ""))
        running_version = (runtime_version or (lambda: trt.version))()
        if not built_version:
            raise ConfigurationError(
                f"{engine_dir}: the manifest does not record the TensorRT-LLM version the engine "
                "was built with; rebuild it with `apihelper-build trtllm-engine`"
            )
        if built_version != running_version:
            raise ConfigurationError(
                f"{engine_dir}: engine built with TensorRT-LLM {built_version}, this runtime is "
                f"{running_version}; compiled engines only run on the version that built them: "
                "rebuild the engine in this container"
            )
        built_capability = str(details.get("gpu_compute_capability", ""))
        capability = await asyncio.to_thread(compute_capability or cuda_compute_capability)
        if built_capability != capability:
            raise ConfigurationError(
                f"{engine_dir}: engine built for GPU compute capability "
                f"{built_capability or 'unknown'} ({details.get('gpu_name', 'unknown GPU')}), this "
                f"GPU is {capability}; rebuild the engine on this GPU type"
            )
        if config.prompt_format is not None and config.prompt_format is not manifest.prompt_format:
            logger.info(
                "%s: manifest prompt format %s overrides the configured %s",
                engine_dir,
                manifest.prompt_format.value,
                config.prompt_format.value,
            )
        raw_build = details.get("build")
        build: dict[str, Any] = raw_build if isinstance(raw_build, dict) else {}
        # The engine's static limits: prompt + completion (max_seq_len) and prompt (max_input_len).
        max_model_len = int(build.get("max_seq_len") or manifest.max_model_len)
        max_input_len = min(int(build.get("max_input_len") or max_model_len), max_model_len)

        kv_cache_config = trt.KvCacheConfig(
            free_gpu_memory_fraction=config.kv_cache_free_gpu_memory_fraction,
            enable_block_reuse=config.enable_block_reuse,
        )
        factory = llm_factory if llm_factory is not None else trt.LLM
        try:
            llm = await asyncio.to_thread(
                factory,
                model=str(engine_dir),
                kv_cache_config=kv_cache_config,
                **({"guided_decoding_backend": "xgrammar"} if config.guided_decoding else {}),
            )
        except Exception as exc:
            raise ConfigurationError(
                f"{engine_dir}: TensorRT-LLM cannot load the engine ({type(exc).__name__}: {exc})"
            ) from exc
        if getattr(llm, "tokenizer", None) is None:
            await asyncio.to_thread(llm.shutdown)
            raise ConfigurationError(
                f"{engine_dir}: no tokenizer in the engine directory; rebuild the engine with "
                "`apihelper-build trtllm-engine` (it copies the tokenizer files)"
            )

        info = EngineInfo(
            kind=ENGINE_KIND,
            model=manifest.name,
            prompt_format=manifest.prompt_format,
            max_model_len=max_model_len,
            random_weights=manifest.random_weights,
            guided_decoding=config.guided_decoding,
            extra={
                "engine_dir": str(engine_dir),
                "tensorrt_llm": running_version,
                "gpu_compute_capability": capability,
                "dtype": str(build.get("dtype", "")),
                "quant": str(build.get("quant", "")),
                "max_batch_size": str(build.get("max_batch_size", "")),
                "max_num_tokens": str(build.get("max_num_tokens", "")),
                "max_input_len": str(max_input_len),
                "tp_size": str(build.get("tp_size", "")),
                "kv_cache_free_gpu_memory_fraction": str(config.kv_cache_free_gpu_memory_fraction),
                "enable_block_reuse": str(config.enable_block_reuse).lower(),
                "sampling_per_request": ",".join(HONOURED_SAMPLING),
            },
        )
        engine = cls(
            llm=llm,
            api=trt,
            info=info,
            max_input_len=max_input_len,
            return_perf_metrics=return_perf_metrics,
            stats_interval_s=stats_interval_s,
            stall_timeout_s=config.stall_timeout_s,
        )
        engine._start_stats()
        logger.info(
            "TensorRT-LLM engine: %s (TensorRT-LLM %s, sm %s), max_model_len %d, KV cache %.0f%% "
            "of free GPU memory, block reuse %s",
            manifest.name,
            running_version,
            capability,
            max_model_len,
            config.kv_cache_free_gpu_memory_fraction * 100,
            config.enable_block_reuse,
        )
        return engine

    # ------------------------------------------------------------------ Engine protocol

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` encodes to as a prompt, special tokens included (as the executor
        tokenizes prompts: ``SamplingParams.add_special_tokens`` defaults to True)."""
        return len(self._tokenizer.encode(text, add_special_tokens=True))

    def render_chat(self, prompt: ChatPrompt) -> str:
        """With the engine directory's tokenizer's chat template (TensorRT-LLM's tokenizer wraps
        the Hugging Face one and forwards ``apply_chat_template``)."""
        return render_with_template(self._tokenizer, prompt, self._info.model, tokenize=False)

    async def stream(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        """Generate for ``request``, yielding text deltas; the last output has a finish reason."""
        self._ensure_serving()
        sampling = request.sampling
        params = self._sampling_params(sampling, request.guided)
        try:
            stop_filter = StopFilter(sampling.stop)
        except ValueError as exc:
            raise InvalidRequestError("sampling.stop", str(exc)) from exc
        prompt_tokens = await tokenized(self.count_tokens, request.prompt)
        if prompt_tokens > self._max_input_len:
            raise InvalidRequestError(
                "instruction",
                f"the prompt ({prompt_tokens} tokens) exceeds the engine's max_input_len "
                f"({self._max_input_len}); shorten the instruction or retrieve fewer documents",
            )
        self._admit(request, prompt_tokens)
        self._ensure_serving()

        flight = _InFlight(request.request_id)
        self._in_flight[request.request_id] = flight
        try:
            submitted_at = time.perf_counter()
            try:
                result = self._llm.generate_async(request.prompt, sampling_params=params, streaming=True)
            except ValueError as exc:
                # TensorRT-LLM's own argument checks (lengths against the build limits); the
                # checks above should have caught them first.
                raise InvalidRequestError("sampling", f"rejected by TensorRT-LLM: {exc}") from exc
            except Exception as exc:
                self._mark_unhealthy(f"submitting a request failed ({type(exc).__name__}: {exc})")
                raise EngineUnavailableError(
                    f"the TensorRT-LLM executor refused the request ({type(exc).__name__})"
                ) from exc
            flight.result = result
            self._submitted.set()
            if flight.abort_requested:
                self._abort_flight(flight)
            iterator = result.__aiter__()

            completion_tokens = 0
            first = True
            while True:
                try:
                    out = await self._next(flight, iterator)
                except EngineUnavailableError:
                    raise
                except Exception as exc:
                    self._mark_unhealthy(f"a request failed in the executor ({type(exc).__name__}: {exc})")
                    raise EngineUnavailableError(
                        f"generation failed in the TensorRT-LLM executor ({type(exc).__name__})"
                    ) from exc
                if out is _END:
                    flight.finished = True
                    raise EngineUnavailableError("the TensorRT-LLM stream ended without a final output")
                if out is _ABORT_TIMED_OUT:
                    yield EngineOutput(
                        text_delta="",
                        finish_reason=FinishReason.CANCELLED,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        queue_seconds=(time.perf_counter() - submitted_at) if first else None,
                    )
                    return

                completion = out.outputs[0]
                finished = bool(out.finished)
                flight.finished = finished
                ids = [int(i) for i in completion.token_ids_diff]
                completion_tokens += len(ids)
                reason: FinishReason | None = None
                engine_stopped_on_string = False
                if finished:
                    reason = _FINISH_REASONS.get(str(completion.finish_reason))
                    if reason is None:  # finished without a reason: say why from the count
                        reason = FinishReason.LENGTH if completion_tokens >= sampling.max_tokens else FinishReason.STOP
                    engine_stopped_on_string = reason is FinishReason.STOP and isinstance(
                        getattr(completion, "stop_reason", None), str
                    )
                delta, stopped = stop_filter.push(
                    str(completion.text_diff), final=finished, drop_tail=engine_stopped_on_string
                )
                if stopped:
                    reason = FinishReason.STOP
                if not delta and reason is None:
                    continue  # held back (a possible stop string): wait for more text
                queue_seconds = None
                if first:
                    queue_seconds = _queue_seconds(completion, time.perf_counter() - submitted_at)
                    first = False
                prompt_ids = getattr(out, "prompt_token_ids", None)
                # While the consumer holds this output the executor keeps generating: past the
                # stall timeout the request is aborted (its queued outputs still reach the stream).
                watchdog = None
                if reason is None and self._stall_timeout_s is not None:
                    watchdog = asyncio.get_running_loop().call_later(self._stall_timeout_s, self._stalled, flight)
                try:
                    yield EngineOutput(
                        text_delta=delta,
                        finish_reason=reason,
                        prompt_tokens=len(prompt_ids) if prompt_ids is not None else prompt_tokens,
                        completion_tokens=completion_tokens,
                        queue_seconds=queue_seconds,
                    )
                finally:
                    if watchdog is not None:
                        watchdog.cancel()
                if reason is not None:
                    return
        finally:
            # Runs however the stream ends: finished, stop string, consumer cancelled
            # (CancelledError) or closed early (GeneratorExit), engine failure, shutdown.
            self._release(flight)

    async def check_health(self) -> None:
        self._ensure_serving()
        self._check_executor()

    def stats(self) -> EngineStats:
        """Load from the executor's latest iteration statistics.

        An idle executor runs no iterations and reports none, so the latest statistics keep the
        numbers of the last busy iteration; when this engine holds no request (it is the
        executor's only client) running and waiting are 0 and the KV cache holds no request.
        """
        latest = self._latest
        if not self._in_flight:
            usage = 0.0 if latest is not None and latest.kv_cache_usage is not None else None
            return EngineStats(running=0, waiting=0, kv_cache_usage=usage)
        if latest is None:
            return EngineStats(running=len(self._in_flight), waiting=0, kv_cache_usage=None)
        return EngineStats(running=latest.running, waiting=latest.waiting, kv_cache_usage=latest.kv_cache_usage)

    async def shutdown(self) -> None:
        """Fail the running streams with ``EngineUnavailableError`` and shut the executor down."""
        if self._closed:
            return
        self._closed = True
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
        for flight in list(self._in_flight.values()):
            flight.failure = "the generation engine is shutting down"
            if flight.result is not None and not flight.finished:
                self._abort_flight(flight)
            if flight.pending is not None:
                flight.pending.cancel()  # wakes the stream, which then sees ``failure``
        try:
            await asyncio.wait_for(asyncio.to_thread(self._llm.shutdown), self._shutdown_timeout_s)
        except TimeoutError:
            logger.warning("TensorRT-LLM engine: the executor did not shut down in time")
        except Exception as exc:  # shutting down anyway
            logger.warning("TensorRT-LLM engine: shutdown failed (%s: %s)", type(exc).__name__, exc)

    # ------------------------------------------------------------------ internals

    def _sampling_params(self, sampling: SamplingParams, guided: GuidedDecoding | None = None) -> Any:
        """TensorRT-LLM ``SamplingParams`` for ``sampling`` (validated here, with field names) and,
        for a guided request, its grammar (the executor's xgrammar compiles and applies it)."""
        check_sampling(sampling)
        # max_tokens always: TensorRT-LLM's default is 32.
        kwargs: dict[str, Any] = {"max_tokens": sampling.max_tokens}
        if sampling.temperature == 0.0:
            # Greedy: top-k 1 is an argmax whatever the temperature; temperature stays at the
            # runtime default (a zero temperature is not a valid sampling temperature there).
            kwargs["top_k"] = 1
        else:
            kwargs["temperature"] = float(sampling.temperature)
            if sampling.top_p < 1.0:
                kwargs["top_p"] = float(sampling.top_p)
            if sampling.top_k > 0:
                kwargs["top_k"] = int(sampling.top_k)
        if sampling.seed is not None:
            kwargs["seed"] = int(sampling.seed)
        if sampling.stop:
            kwargs["stop"] = list(sampling.stop)
        if sampling.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = float(sampling.repetition_penalty)
        if self._return_perf_metrics:
            kwargs["return_perf_metrics"] = True  # for queue time (arrival -> first scheduled)
        if guided is not None:
            if not self._info.guided_decoding:
                raise InvalidRequestError(
                    "constrain_calls", "this engine was loaded without guided decoding (--guided-decoding)"
                )
            kwargs["guided_decoding"] = self._api.GuidedDecodingParams(grammar=guided.ebnf)
        # end_id / pad_id are left unset: the executor takes them from the engine directory's
        # tokenizer, which the build copies from the checkpoint.
        return self._api.SamplingParams(**kwargs)

    async def _next(self, flight: _InFlight, iterator: Any) -> Any:
        """The next output of ``flight``'s request, without ever waiting blind.

        The step runs as a task that is never cancelled while the stream wants it (cancelling
        TensorRT-LLM's queue read mid-way could lose an output); the wait for it wakes every
        ``poll_interval_s`` to check the executor and the abort grace period.
        """
        if flight.failure is not None:
            raise EngineUnavailableError(flight.failure)
        if flight.pending is None:
            flight.pending = asyncio.ensure_future(_step(iterator))
        task = flight.pending
        while True:
            done, _ = await asyncio.wait((task,), timeout=self._poll_interval_s)
            if flight.failure is not None:
                raise EngineUnavailableError(flight.failure)
            if done:
                flight.pending = None
                return task.result()
            self._ensure_serving()
            self._check_executor()
            if flight.aborted_at is not None and time.monotonic() - flight.aborted_at > self._abort_grace_s:
                return _ABORT_TIMED_OUT

    def _stalled(self, flight: _InFlight) -> None:
        """The consumer took nothing for the stall timeout: abort the request in the executor."""
        if flight.finished or flight.aborted_at is not None:
            return
        logger.info(
            "TensorRT-LLM engine: request %s aborted: its consumer took nothing for %g s",
            flight.request_id,
            self._stall_timeout_s,
        )
        self._abort_flight(flight)

    def _abort(self, flight: _InFlight) -> None:
        if flight.result is None:
            flight.abort_requested = True  # aborted once submitted
            return
        self._abort_flight(flight)

    def _abort_flight(self, flight: _InFlight) -> None:
        """Call ``abort()`` on the request, at most once per request."""
        if flight.aborted_at is not None or flight.result is None:
            return
        flight.aborted_at = time.monotonic()
        try:
            flight.result.abort()
        except Exception as exc:  # the request may already be gone
            logger.warning(
                "TensorRT-LLM engine: aborting request %s failed (%s: %s)",
                flight.request_id,
                type(exc).__name__,
                exc,
            )

    def _release(self, flight: _InFlight) -> None:
        """Abort ``flight`` in the executor if it still runs and forget it (idempotent)."""
        if flight.pending is not None and not flight.pending.done():
            flight.pending.cancel()
        flight.pending = None
        if flight.result is not None and not flight.finished:
            self._abort_flight(flight)
        if self._in_flight.get(flight.request_id) is flight:
            del self._in_flight[flight.request_id]

    def _ensure_serving(self) -> None:
        if self._closed:
            raise EngineUnavailableError("the generation engine is shut down")
        if self._unhealthy is not None:
            raise EngineUnavailableError(f"the TensorRT-LLM executor failed: {self._unhealthy}")

    def _check_executor(self) -> None:
        """Ask the LLM whether its executor is alive, where this release can tell."""
        # BaseLLM._check_health (what trtllm-serve's /health uses) is not public API: probe it
        # defensively, and only a definite False or an error counts as dead.
        probe = getattr(self._llm, "_check_health", None)
        if not callable(probe):
            return
        try:
            alive = probe()
        except Exception as exc:
            self._mark_unhealthy(f"health probe failed ({type(exc).__name__}: {exc})")
            raise EngineUnavailableError("the TensorRT-LLM executor is not healthy") from exc
        if alive is False:
            self._mark_unhealthy("the executor reports it is not healthy")
            raise EngineUnavailableError("the TensorRT-LLM executor is not healthy")

    def _mark_unhealthy(self, reason: str) -> None:
        # An error from the executor means it is in a state we cannot reason about (requests
        # are validated before they are submitted): stop taking requests and let health checks
        # report it, so the orchestrator restarts the process.
        if self._unhealthy is None:
            self._unhealthy = reason
            logger.error("TensorRT-LLM engine is now unhealthy: %s", reason)

    def _start_stats(self) -> None:
        if self._stats_task is None:
            self._stats_task = asyncio.get_running_loop().create_task(self._poll_stats(), name="trtllm-stats")

    async def _poll_stats(self) -> None:
        await self._submitted.wait()
        while not self._closed:
            try:
                stats = self._llm.get_stats_async(timeout=self._stats_timeout_s)
                if stats is not None and hasattr(stats, "__aiter__"):
                    async for item in stats:
                        parsed = parse_iteration_stats(item)
                        if parsed is not None:
                            self._latest = parsed
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # stats are best effort, never fatal
                if not self._stats_warned:
                    self._stats_warned = True
                    logger.warning(
                        "TensorRT-LLM engine: iteration stats unavailable (%s: %s)",
                        type(exc).__name__,
                        exc,
                    )
            await asyncio.sleep(self._stats_interval_s)


# ---------------------------------------------------------------------- helpers


def _queue_seconds(completion: Any, fallback: float) -> float:
    """Arrival to first scheduling from the request's perf metrics, else time to first output."""
    metrics: Any = getattr(getattr(completion, "request_perf_metrics", None), "timing_metrics", None)
    if metrics is None:
        return fallback
    try:
        arrival = metrics.arrival_time.total_seconds()
        scheduled = metrics.first_scheduled_time.total_seconds()
    except AttributeError:
        return fallback
    if arrival > 0 and scheduled >= arrival:
        return float(scheduled - arrival)
    return fallback
