"""The development engine: Hugging Face transformers' continuous batching behind ``Engine``.

This module owns everything the service does with transformers and torch (the only service module
that imports them, lazily, inside functions): loading a model directory, sizing the paged KV cache,
driving the continuous-batching manager, and turning its token outputs into ``EngineOutput``
deltas. It runs the project's small dev model on a CPU and any Llama-class checkpoint (Gorilla) on
a GPU.

How a request flows:
- ``stream`` validates and tokenizes, registers a result handler, then ``add_request``s the ids
  with ``streaming=True``. The manager's thread generates; for every token it hands a
  ``GenerationOutput`` (all generated ids so far) to the handler through the event loop's
  ``call_soon_threadsafe``, and the handler keeps it for the stream: only the newest output of a
  request is kept (each carries every id so far), so a consumer that falls behind costs one
  output, not one per token.
- The stream decodes the ids (``service.engine.stops``), holds back half characters and possible
  stop-string beginnings, and yields text deltas. Requests run concurrently in the manager's
  batches: nothing here serializes them.
- Backpressure: transformers' manager cannot pause a request, so a request whose consumer does
  not drain is ended instead: once the manager is ``max_tokens_ahead`` tokens ahead of what the
  consumer took, or the consumer has taken nothing for ``stall_timeout_s`` while output waits,
  the request is cancelled in the manager (its batch slot and KV pages freed) and the stream ends
  with ``FinishReason.CANCELLED`` after the text already generated.
- However a stream ends (finished, stop string, consumer cancelled, ``aclose``, ``abort``,
  failure), its ``finally`` cancels the request in the manager if it still runs, removes the
  handler, and drops the bookkeeping, so ``num_in_flight`` returns to 0.

Sampling, per request (transformers' continuous batching cannot do everything per request):
- honoured exactly: ``max_tokens``, ``stop``, greedy (``temperature == 0``, run as top-k 1, so it
  is deterministic), ``temperature``, ``top_p``, ``top_k`` (through the manager's per-request
  logits processors), and ``seed``: the manager has one random generator for all requests, so a
  seeded request chooses its tokens in ``service.engine.seeded_sampling`` instead, from noise
  that depends only on its seed (reproducible whatever else is batched with it);
- not honoured, logged once per engine and listed in ``info.extra``: ``repetition_penalty`` (no
  continuous-batching support in transformers), and ``seed`` where the installed transformers'
  processor list is not the one ``seeded_sampling`` knows.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from apihelper.errors import (
    ConfigurationError,
    EngineUnavailableError,
    InvalidRequestError,
    MissingDependencyError,
)
from apihelper.service.engine import cb_internals
from apihelper.service.engine.base import (
    MAX_TOKENS_AHEAD,
    EngineBase,
    check_sampling,
    incremental_text,
    render_with_template,
    runaway_reason,
    text_step,
    tokenized,
    wait_for_news,
)
from apihelper.service.engine.config import TransformersConfig
from apihelper.service.engine.manifest import manifest_api_choice, read_manifest
from apihelper.service.engine.protocol import (
    EngineInfo,
    EngineOutput,
    EngineRequest,
    EngineStats,
    FinishReason,
    GuidedDecoding,
    SamplingParams,
)
from apihelper.service.prompts import ChatPrompt

logger = logging.getLogger(__name__)

ENGINE_KIND = "transformers"
# Manifest kinds this engine can run; a TensorRT-LLM engine directory is not a HF checkpoint.
RUNNABLE_KINDS = ("dev-model", "hf-checkpoint")
HONOURED_SAMPLING = ("max_tokens", "stop", "temperature", "top_p", "top_k")
IGNORED_SAMPLING = ("repetition_penalty",)


class ContinuousBatchingManager(Protocol):
    """The part of transformers' ``ContinuousBatchingManager`` this engine uses."""

    def add_request(
        self,
        input_ids: list[int],
        request_id: str | None = None,
        max_new_tokens: int | None = None,
        streaming: bool = False,
        record_timestamps: bool = False,
        eos_token_id: int | list[int] | None = None,
        **logit_processor_kwargs: Any,
    ) -> str | None: ...

    def cancel_request(self, request_id: str) -> None: ...

    def register_result_handler(self, request_id: str, callback: Callable[..., Any]) -> None: ...

    def is_running(self) -> bool: ...

    def stop(
        self,
        block: bool = True,
        timeout: float | None = None,
        keep_for_next_session: bool = False,
        hard_stop: bool = False,
    ) -> None: ...


class TokenizerLike(Protocol):
    """What the engine needs from a tokenizer: prompt to ids, generated ids to text."""

    def encode(self, prompt: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...


class HFTokenizer:
    """A transformers tokenizer as a ``TokenizerLike``."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def encode(self, prompt: str) -> list[int]:
        # add_special_tokens: Llama checkpoints (Gorilla, the dev model) expect a leading <s>.
        return list(self._tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(
            self._tokenizer.decode(list(token_ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )


@dataclass(frozen=True)
class _Aborted:
    """Queued into a stream by ``abort``: end it with ``FinishReason.CANCELLED``."""


@dataclass(frozen=True)
class _Failed:
    """Queued into a stream by ``shutdown``: end it with ``EngineUnavailableError``."""

    message: str


@dataclass
class _InFlight:
    """Bookkeeping of one stream, owned by the event loop thread."""

    request_id: str  # the caller's id
    manager_id: str  # unique per submission, so a reused caller id never meets a stale one
    # What the stream has not taken yet: at most the newest manager output, then a marker.
    pending: deque[Any] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    finished_in_manager: bool = False  # the manager sent its final output: nothing to cancel
    cancelled: bool = False  # cancel_request already sent
    taken: int = 0  # generated tokens the consumer has taken
    waiting: bool = False  # the consumer is waiting for output now
    last_take: float = field(default_factory=time.monotonic)  # when the consumer last took output
    # Called when the consumer does not drain (see the module docstring); set by the engine.
    on_runaway: Callable[[_InFlight, str], None] | None = None
    max_ahead: int = MAX_TOKENS_AHEAD
    stall_timeout_s: float | None = None

    def deliver(self, output: Any) -> None:
        """The manager's result handler; runs on the event loop (``call_soon_threadsafe``)."""
        if self.pending and _is_progress(self.pending[-1]):
            self.pending[-1] = output  # it carries every id the replaced one did
        else:
            self.pending.append(output)
        self.ready.set()
        if self.waiting or self.on_runaway is None or not _is_progress(output):
            return
        ahead = len(output.generated_tokens) - self.taken
        why = runaway_reason(ahead, self.last_take, self.max_ahead, self.stall_timeout_s)
        if why is not None:
            self.on_runaway(self, why)

    def put_marker(self, marker: _Aborted | _Failed) -> None:
        self.pending.append(marker)
        self.ready.set()


def _is_progress(item: Any) -> bool:
    """A manager output that a newer one may replace (not final, not failed, not a marker)."""
    return not isinstance(item, (_Aborted, _Failed)) and item.error is None and not item.is_finished()


class TransformersEngine(EngineBase[_InFlight]):
    """An ``Engine`` on transformers' continuous batching; build it with ``load``."""

    def __init__(
        self,
        *,
        manager: ContinuousBatchingManager,
        tokenizer: TokenizerLike,
        info: EngineInfo,
        eos_token_ids: Sequence[int],
        vocab_size: int,
        stop_timeout_s: float = 10.0,
        poll_interval_s: float = 1.0,
        seeded_sampling: bool = False,
        guidance: Guidance | None = None,
        chat_tokenizer: Any = None,
        max_tokens_ahead: int = MAX_TOKENS_AHEAD,
        stall_timeout_s: float | None = None,
    ) -> None:
        """Wrap a started manager. ``load`` is the normal way in; tests pass their own parts.
        ``seeded_sampling``: the manager runs ``seeded_sampling``'s processor (``seed`` kwarg).
        ``guidance``: the manager runs ``grammar_mask``'s processor (guided requests).
        ``chat_tokenizer``: the Hugging Face tokenizer whose chat template writes chat prompts;
        None (or one without a template): no chat formats.
        ``max_tokens_ahead``, ``stall_timeout_s``: when a request whose consumer does not drain
        is ended (the module docstring); None: no stall timeout, the token bound only."""
        self._manager = manager
        self._guidance = guidance
        self._chat_tokenizer = chat_tokenizer
        self._tokenizer = tokenizer
        self._info = info
        self._eos_token_ids = tuple(eos_token_ids)
        self._vocab_size = vocab_size
        self._seeded_sampling = seeded_sampling
        self._stop_timeout_s = stop_timeout_s
        # How often a waiting stream checks that the manager thread is still alive: a request
        # queued when the thread died would otherwise wait for an output that never comes.
        self._poll_interval_s = poll_interval_s
        self._max_tokens_ahead = max_tokens_ahead
        self._stall_timeout_s = stall_timeout_s
        self._in_flight = {}
        self._ids = itertools.count()
        self._closed = False
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ loading

    @classmethod
    async def load(cls, model_dir: Path, config: TransformersConfig | None = None) -> TransformersEngine:
        """Load ``model_dir`` (a HF checkpoint, optionally with an apihelper manifest) and start
        the continuous-batching manager. The work runs in a thread; the event loop stays free.
        ``config`` (``service.engine.config.TransformersConfig``):

        - ``device``: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        - ``dtype``: "auto" (float32 on CPU, bfloat16/float16 on CUDA), or a torch dtype name.
        - ``prompt_format``: used when the directory has no manifest (the manifest wins).
        - ``max_model_len``: prompt + completion tokens per request; defaults to the manifest's,
          else the model's ``max_position_embeddings``; never more than the latter.
        - ``max_concurrent``: requests batched together in one step (more wait in the manager).
        - ``block_size``: tokens per KV-cache page (transformers' ``page_size``).
        - ``num_blocks``: KV-cache capacity in pages; default holds ``max_concurrent`` requests
          of ``max_model_len`` tokens. Set explicitly: transformers' default sizes the cache from
          free memory (60% of free RAM on a CPU, 90% of a GPU).
        - ``max_batch_tokens``: tokens per forward step (longer prompts prefill in chunks).
        - ``seed``: seeds the manager's one random generator, used by sampled requests that
          carry no seed of their own.
        - ``num_threads``: torch's intra-op CPU threads, process-wide (``torch.set_num_threads``);
          None keeps torch's default (one per core). On a small shared CPU, 1 keeps the dev
          model fast when other processes compete for the cores (OpenMP's spinning threads
          slow down 10-30x when oversubscribed).
        - ``guided_decoding``: install the grammar mask (xgrammar), so requests with a call grammar
          are constrained; a request without one pays one dictionary lookup per step.
        - ``stall_timeout_s``: a request whose consumer takes nothing for this long while output
          waits is cancelled (None: only the ``MAX_TOKENS_AHEAD`` bound).
        """
        return await asyncio.to_thread(cls._load_sync, model_dir, config or TransformersConfig())

    @classmethod
    def _load_sync(cls, model_dir: Path, config: TransformersConfig) -> TransformersEngine:
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise MissingDependencyError(
                "transformers", "the transformers engine", "pip install transformers torch psutil"
            ) from exc
        # transformers ships partial type hints (many constructors are untyped); treat it as
        # dynamic so strict mypy passes whichever version is installed.
        tf: Any = transformers
        if not hasattr(tf, "ContinuousBatchingConfig"):
            raise ConfigurationError(
                f"the transformers engine needs transformers 5.x (continuous batching with "
                f"ContinuousBatchingConfig); {tf.__version__} is installed"
            )

        if not model_dir.is_dir():
            raise ConfigurationError(f"{model_dir}: model directory not found")
        manifest = read_manifest(model_dir)
        if manifest is not None and manifest.kind not in RUNNABLE_KINDS:
            raise ConfigurationError(
                f"{model_dir}: a {manifest.kind!r} artifact; the transformers engine runs "
                f"{', '.join(RUNNABLE_KINDS)} directories"
            )
        if manifest is not None:
            if config.prompt_format is not None and config.prompt_format is not manifest.prompt_format:
                logger.info(
                    "%s: manifest prompt format %s overrides the configured %s",
                    model_dir,
                    manifest.prompt_format.value,
                    config.prompt_format.value,
                )
            fmt = manifest.prompt_format
        elif config.prompt_format is not None:
            fmt = config.prompt_format
        else:
            raise ConfigurationError(f"{model_dir}: no {read_manifest.__module__} manifest; set the prompt format")

        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        torch_device = _resolve_device(torch, config.device)
        torch_dtype = _resolve_dtype(torch, config.dtype, torch_device)
        try:
            tokenizer = tf.AutoTokenizer.from_pretrained(str(model_dir))
            model = tf.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigurationError(f"{model_dir}: cannot load the model ({exc})") from exc
        model = model.to(torch_device).eval()
        model_config = model.config.get_text_config()

        position_limit = int(getattr(model_config, "max_position_embeddings", 0) or 0) or None
        limit = config.max_model_len or (manifest.max_model_len if manifest else None) or position_limit
        if limit is None:
            raise ConfigurationError(f"{model_dir}: set max_model_len (the config has no limit)")
        if position_limit is not None and limit > position_limit:
            raise ConfigurationError(
                f"{model_dir}: max_model_len {limit} exceeds the model's max_position_embeddings {position_limit}"
            )

        eos_ids = _eos_token_ids(model.generation_config, tokenizer)
        num_blocks = config.num_blocks or math.ceil(config.max_concurrent * limit / config.block_size)
        kv_bytes = num_blocks * config.block_size * _kv_bytes_per_token(model_config, torch_dtype.itemsize)

        # Per-request temperature / top-k / top-p exist only as processors the generation config
        # creates: do_sample on, temperature != 1, top_k != 0, top_p < 1. Each request then sends
        # its own values (greedy = top-k 1), so these defaults never apply to a request.
        generation_config = tf.GenerationConfig(
            do_sample=True,
            temperature=0.7,
            top_k=50,
            top_p=0.95,
            eos_token_id=list(eos_ids) or None,
            pad_token_id=_pad_token_id(model.generation_config, tokenizer, eos_ids),
            max_new_tokens=limit,
        )
        cb_config = tf.ContinuousBatchingConfig(
            page_size=config.block_size,
            num_blocks=num_blocks,
            max_batch_tokens=config.max_batch_tokens,
            max_requests_per_batch=config.max_concurrent,
            per_request_processors=True,
            seed=config.seed,
            # Guided decoding feeds each sampled token to its grammar before the next step is
            # prepared: asynchronous batching (on by default with CUDA graphs) prepares it first.
            use_async_batching=False,
        )
        try:
            manager = model.init_continuous_batching(
                generation_config=generation_config, continuous_batching_config=cb_config
            )
            # Before start: the manager sizes its processor-argument tensors when it starts.
            guidance = (
                _install_grammar_mask(manager, tokenizer, int(model_config.vocab_size), eos_ids)
                if config.guided_decoding
                else None
            )
            seeded = _install_seeded_sampling(manager)
            _start_manager(torch, manager)
        except (MemoryError, ValueError, RuntimeError) as exc:
            raise ConfigurationError(f"{model_dir}: cannot start continuous batching ({exc})") from exc
        error = _wait_until_ready(manager, timeout_s=120.0)
        if error is not None:
            manager.stop(block=True, timeout=config.stop_timeout_s)
            raise ConfigurationError(
                f"{model_dir}: continuous batching failed to start ({error}); check "
                f"num_blocks ({num_blocks} x {config.block_size} tokens = {kv_bytes / 2**20:.0f} MiB) "
                "and max_batch_tokens against the memory available"
            )
        missing = cb_internals.missing_internals(manager)
        if missing:
            logger.warning(
                "transformers engine: this transformers (%s) lacks %s; stats, health or handler "
                "cleanup degrade (service.engine.cb_internals)",
                tf.__version__,
                ", ".join(missing),
            )

        name = manifest.name if manifest else model_dir.name
        info = EngineInfo(
            kind=ENGINE_KIND,
            model=name,
            prompt_format=fmt,
            max_model_len=limit,
            random_weights=manifest.random_weights if manifest else False,
            guided_decoding=guidance is not None,
            api_choice=manifest_api_choice(manifest),
            extra={
                "model_dir": str(model_dir),
                "device": str(torch_device),
                "dtype": str(torch_dtype).removeprefix("torch."),
                "transformers": str(tf.__version__),
                "block_size": str(config.block_size),
                "num_blocks": str(num_blocks),
                "kv_cache_mib": f"{kv_bytes / 2**20:.1f}",
                "max_batch_tokens": str(config.max_batch_tokens),
                "max_concurrent": str(config.max_concurrent),
                "num_threads": str(torch.get_num_threads()),
                "sampling_per_request": ",".join(HONOURED_SAMPLING + (("seed",) if seeded else ())),
                "sampling_ignored": ",".join(IGNORED_SAMPLING + (() if seeded else ("seed",))),
            },
        )
        logger.info(
            "transformers engine: %s on %s (%s), max_model_len %d, KV cache %d x %d tokens (%.1f MiB)",
            name,
            torch_device,
            info.extra["dtype"],
            limit,
            num_blocks,
            config.block_size,
            kv_bytes / 2**20,
        )
        return cls(
            manager=manager,
            tokenizer=HFTokenizer(tokenizer),
            info=info,
            eos_token_ids=eos_ids,
            vocab_size=int(model_config.vocab_size),
            stop_timeout_s=config.stop_timeout_s,
            seeded_sampling=seeded,
            guidance=guidance,
            chat_tokenizer=tokenizer,
            stall_timeout_s=config.stall_timeout_s,
        )

    # ------------------------------------------------------------------ Engine protocol

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` encodes to as a prompt (the leading <s> included, as ``stream`` counts)."""
        return len(self._tokenizer.encode(text))

    def render_chat(self, prompt: ChatPrompt) -> str:
        return render_with_template(self._chat_tokenizer, prompt, self._info.model, tokenize=False)

    async def stream(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        """Generate for ``request``, yielding text deltas; the last output has a finish reason."""
        if self._closed:
            raise EngineUnavailableError("the generation engine is shut down")
        sampling = request.sampling
        processor_kwargs = self._processor_kwargs(sampling)
        text = incremental_text(self._tokenizer.decode, sampling.stop)
        prompt_ids = await tokenized(self._tokenizer.encode, request.prompt)
        self._admit(request, len(prompt_ids))
        grammar = await self._compiled(request.guided)
        self._check_alive()

        flight = _InFlight(
            request.request_id,
            f"{request.request_id}#{next(self._ids)}",
            on_runaway=self._runaway,
            max_ahead=self._max_tokens_ahead,
            stall_timeout_s=self._stall_timeout_s,
        )
        self._in_flight[request.request_id] = flight
        try:
            if grammar is not None and self._guidance is not None:
                self._guidance.constraints.add(flight.manager_id, grammar)
            # The handler must exist before the request does, or early outputs go to the
            # manager's shared queue; it is bound to the running loop, so register it here.
            self._manager.register_result_handler(flight.manager_id, flight.deliver)
            submitted_at = time.perf_counter()
            accepted = self._manager.add_request(
                prompt_ids,
                request_id=flight.manager_id,
                max_new_tokens=sampling.max_tokens,
                streaming=True,
                eos_token_id=list(self._eos_token_ids) or -1,
                **processor_kwargs,
            )
            if accepted is None:  # the manager refuses new requests once stopping or dead
                raise EngineUnavailableError("the generation engine is not accepting requests")

            completion_tokens = 0
            first = True
            while True:
                output = await self._next_output(flight)
                if isinstance(output, _Aborted):
                    yield EngineOutput(
                        text_delta="",
                        finish_reason=FinishReason.CANCELLED,
                        prompt_tokens=len(prompt_ids),
                        completion_tokens=completion_tokens,
                        queue_seconds=(time.perf_counter() - submitted_at) if first else None,
                    )
                    return
                if isinstance(output, _Failed):
                    raise EngineUnavailableError(output.message)
                if cb_internals.is_failed(output):
                    flight.finished_in_manager = True
                    raise EngineUnavailableError(f"generation failed in the engine: {output.error}")

                generated = list(output.generated_tokens)
                completion_tokens = len(generated)
                finished = bool(output.is_finished())
                flight.finished_in_manager = finished
                delta, reason = text_step(text, generated, finished=finished, eos_token_ids=self._eos_token_ids)
                if not delta and reason is None:
                    continue  # held back (half a character, a possible stop string): wait
                queue_seconds = None
                if first:
                    started = float(output.lifespan[0])
                    queue_seconds = (
                        max(0.0, started - float(output.created_time))
                        if started > 0
                        else time.perf_counter() - submitted_at
                    )
                    first = False
                yield EngineOutput(
                    text_delta=delta,
                    finish_reason=reason,
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=completion_tokens,
                    queue_seconds=queue_seconds,
                )
                if reason is not None:
                    return
        finally:
            self._release(flight)

    async def check_health(self) -> None:
        self._check_alive()

    def stats(self) -> EngineStats:
        load = cb_internals.scheduler_load(self._manager)
        if load is None:
            return EngineStats(running=0, waiting=len(self._in_flight))
        return EngineStats(running=load.running, waiting=load.waiting, kv_cache_usage=load.kv_cache_usage)

    async def shutdown(self) -> None:
        """Fail the running streams with ``EngineUnavailableError`` and stop the manager."""
        if self._closed:
            return
        self._closed = True
        for flight in list(self._in_flight.values()):
            self._release(flight)
            flight.put_marker(_Failed("the generation engine is shutting down"))
        try:
            await asyncio.wait_for(asyncio.to_thread(self._stop_manager), timeout=self._stop_timeout_s + 5.0)
        except TimeoutError:
            logger.warning("transformers engine: the manager did not stop in time")

    # ------------------------------------------------------------------ internals

    def _processor_kwargs(self, sampling: SamplingParams) -> dict[str, Any]:
        """The manager's per-request logits-processor arguments for ``sampling``."""
        check_sampling(sampling)
        if sampling.seed is not None and not self._seeded_sampling:
            self._warn_once(
                "seed",
                "per-request seeds are not supported by this transformers "
                "version; sampling uses the engine's generator (greedy requests are "
                "deterministic)",
            )
        if sampling.repetition_penalty != 1.0:
            self._warn_once(
                "repetition_penalty",
                "repetition_penalty is not supported by transformers' continuous batching and is ignored",
            )
        # The kwargs' Python types are checked by transformers (float / int exactly).
        if sampling.temperature == 0.0:
            # Greedy: keep only the best token, so sampling from what is left is an argmax.
            return {"temperature": 1.0, "top_k": 1, "top_p": 1.0}
        top_k = sampling.top_k if sampling.top_k > 0 else self._vocab_size
        kwargs: dict[str, Any] = {
            "temperature": float(sampling.temperature),
            "top_k": int(min(top_k, self._vocab_size)),
            "top_p": float(sampling.top_p),
        }
        if sampling.seed is not None and self._seeded_sampling:
            kwargs["seed"] = int(sampling.seed)
        return kwargs

    async def _next_output(self, flight: _InFlight) -> Any:
        """The next item for ``flight``: the newest manager output, or an abort/failure marker
        (outputs carry every id so far, so only the newest is kept; markers are never dropped)."""
        flight.waiting = True
        try:
            await wait_for_news(flight.ready, lambda: bool(flight.pending), self._poll_interval_s, self._check_alive)
            item = flight.pending.popleft()
        finally:
            flight.waiting = False
            flight.last_take = time.monotonic()
        if not isinstance(item, (_Aborted, _Failed)):
            flight.taken = len(item.generated_tokens)
        return item

    def _runaway(self, flight: _InFlight, why: str) -> None:
        """End a request whose consumer does not drain: cancelled in the manager now, its
        stream ends (CANCELLED) after what was generated."""
        if flight.cancelled or flight.finished_in_manager:
            return
        logger.info("transformers engine: request %s ended: %s", flight.request_id, why)
        self._abort(flight)

    def _abort(self, flight: _InFlight) -> None:
        self._release(flight)
        flight.put_marker(_Aborted())

    def _check_alive(self) -> None:
        if self._closed:
            raise EngineUnavailableError("the generation engine is shut down")
        if not self._manager.is_running():
            raise EngineUnavailableError("the generation engine's worker thread is not running")
        if cb_internals.fatal_error(self._manager) is not None:
            raise EngineUnavailableError("the generation engine's worker thread failed")

    async def _compiled(self, guided: GuidedDecoding | None) -> Any:
        """The compiled grammar of a guided request (compiled in a worker thread, cached)."""
        if guided is None:
            return None
        if self._guidance is None:
            raise InvalidRequestError("constrain_calls", "this engine cannot constrain decoding (no xgrammar)")
        try:
            return (await self._guidance.compiler.compile_async(guided)).grammar
        except (RuntimeError, ValueError) as exc:  # xgrammar's errors for a grammar it cannot compile
            raise InvalidRequestError("constrain_calls", f"the call grammar does not compile: {exc}") from exc

    def _release(self, flight: _InFlight) -> None:
        """Cancel ``flight`` in the manager if it still runs and forget it (idempotent)."""
        if self._guidance is not None:
            self._guidance.constraints.discard(flight.manager_id)
        if not flight.finished_in_manager and not flight.cancelled:
            flight.cancelled = True
            self._manager.cancel_request(flight.manager_id)
        # A cancelled request never gets a final output, so the manager never drops its handler.
        cb_internals.drop_result_handler(self._manager, flight.manager_id)
        if self._in_flight.get(flight.request_id) is flight:
            del self._in_flight[flight.request_id]

    def _stop_manager(self) -> None:
        # hard_stop: running requests were cancelled above; don't let the loop finish them.
        self._manager.stop(block=True, timeout=self._stop_timeout_s, hard_stop=True)
        destroy = getattr(self._manager, "destroy", None)
        if callable(destroy) and not self._manager.is_running():
            destroy()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("transformers engine: %s", message)


# ---------------------------------------------------------------------- helpers


def _start_manager(torch: Any, manager: Any) -> None:
    """Start the manager's generation thread as a daemon thread.

    transformers starts a non-daemon thread that runs until ``stop``; if the service dies
    without a clean shutdown, the interpreter would wait for it forever. A thread inherits its
    daemon flag from the thread that creates it, so create it from a daemon thread. Inference
    mode is thread-local and the manager copies the creator's, so enable it there too.
    """
    errors: list[BaseException] = []

    def start() -> None:
        try:
            with torch.inference_mode():
                manager.start()
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    starter = threading.Thread(target=start, name="cb-manager-starter", daemon=True)
    starter.start()
    starter.join()
    if errors:
        raise errors[0]


@dataclass(frozen=True)
class Guidance:
    """Guided decoding in the manager: which requests are constrained, and their compiler."""

    constraints: Any  # grammar_mask.GrammarConstraints
    compiler: Any  # grammar_mask.GrammarCompilerCache


def _install_grammar_mask(manager: Any, tokenizer: Any, vocab_size: int, eos_ids: Sequence[int]) -> Guidance | None:
    """Add ``grammar_mask``'s processor to ``manager``; None (no guided decoding) without
    xgrammar or where this transformers differs."""
    try:
        from transformers.generation.continuous_batching.cb_logits_processors import (
            ContinuousBatchingLogitsProcessor,
        )

        from apihelper.service.engine import grammar_mask
    except ImportError as exc:
        logger.info("transformers engine: no guided decoding (%s)", exc)
        return None
    constraints = grammar_mask.GrammarConstraints()
    installed = grammar_mask.install(
        manager, ContinuousBatchingLogitsProcessor, constraints, vocab_size=vocab_size, stop_token_ids=eos_ids
    )
    if installed is None:
        logger.info("transformers engine: no guided decoding (this continuous-batching manager differs)")
        return None
    compiler = grammar_mask.GrammarCompilerCache.for_hf_tokenizer(
        tokenizer, vocab_size=vocab_size, stop_token_ids=eos_ids
    )
    return Guidance(constraints, compiler)


def _install_seeded_sampling(manager: Any) -> bool:
    """Add ``seeded_sampling``'s processor to ``manager``; False where this transformers differs."""
    try:
        from transformers.generation.continuous_batching.cb_logits_processors import (
            ContinuousBatchingLogitsProcessor,
        )
    except ImportError:
        return False
    from apihelper.service.engine import seeded_sampling

    processors = getattr(manager, "logit_processor", None)
    return processors is not None and seeded_sampling.install(processors, ContinuousBatchingLogitsProcessor)


def _wait_until_ready(manager: Any, timeout_s: float) -> str | None:
    """Wait for the manager's thread to build its batch processor (the KV cache is allocated
    there); the error that stopped it, or None once it is ready.

    Without this a cache that does not fit would only show up as a dead engine on the first
    request; with it, ``load`` fails with the reason.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fatal = cb_internals.fatal_error(manager)
        if fatal is not None:
            return f"{type(fatal).__name__}: {fatal}"
        if not manager.is_running():
            return "the generation thread exited"
        if cb_internals.processor_ready(manager):
            return None
        time.sleep(0.01)
    return f"not ready after {timeout_s:.0f}s"


def _resolve_device(torch: Any, device: str) -> Any:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigurationError(f"unknown device {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"device {device!r} requested but CUDA is not available")
    return resolved


def _resolve_dtype(torch: Any, dtype: str, device: Any) -> Any:
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32  # half precision on a CPU is slow and not always supported
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ConfigurationError(f"unknown dtype {dtype!r}")
    return resolved


def _eos_token_ids(generation_config: Any, tokenizer: Any) -> tuple[int, ...]:
    ids: list[int] = []
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.append(configured)
    elif isinstance(configured, (list, tuple)):
        ids.extend(int(i) for i in configured)
    if isinstance(getattr(tokenizer, "eos_token_id", None), int):
        ids.append(tokenizer.eos_token_id)
    return tuple(dict.fromkeys(i for i in ids if i >= 0))


def _pad_token_id(generation_config: Any, tokenizer: Any, eos_ids: Sequence[int]) -> int | None:
    for candidate in (
        getattr(generation_config, "pad_token_id", None),
        getattr(tokenizer, "pad_token_id", None),
    ):
        if isinstance(candidate, int):
            return candidate
    return eos_ids[0] if eos_ids else None


def _kv_bytes_per_token(config: Any, itemsize: int) -> int:
    heads = int(getattr(config, "num_attention_heads", 1))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return 2 * int(config.num_hidden_layers) * kv_heads * head_dim * itemsize
