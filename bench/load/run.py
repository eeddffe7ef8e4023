"""Load generator for the apihelper gRPC service: N concurrent Generate streams for T seconds.

    .venv/bin/python bench/load/run.py --inprocess fake [--concurrency 256] [--duration 30]
        [--token-rate 50] [--cancel-prob 0.1] [--deadline S] [--compare-bare] [--json-out FILE]
    .venv/bin/python bench/load/run.py --inprocess real [--device cpu] [--max-tokens 32] ...
    .venv/bin/python bench/load/run.py --target 127.0.0.1:50051 [--corpora demo] ...

Each of ``--concurrency`` workers loops for ``--duration`` seconds (after ``--warmup``): open a
Generate stream, read it to its end, or with probability ``--cancel-prob`` cancel it after a
random number of messages (0 = before the first), optionally under a per-call ``--deadline``.
Streams still open when the time is up are cancelled and counted as "cut", not as errors.
Workers start spread over ``--ramp`` seconds (default: one fake stream's length, so that streams
of equal length do not arrive in synchronized waves).

Server placement:
  --target HOST:PORT   an existing server (loopback addresses only); event-loop lag is n/a.
  --inprocess fake     this process starts the real gRPC server (servicer, pipeline, Prometheus
                       recorder) around ``FakeEngine`` emitting a token every 1/--token-rate s per
                       stream and an in-memory retriever holding docs of the sample corpus: what is
                       left is the service's own cost (and gRPC's, and the fake engine's).
  --inprocess bare     no service code: a bare grpc.aio handler streaming the same messages at
                       the same rate (asyncio.sleep per token, no engine).
  --inprocess bare-engine
                       no service code either, but the deltas come from the same ``FakeEngine``
                       the service drives: the floor "retrieval and engine" excluded, as issue 7
                       words it. ``--compare-bare`` runs both floors before ``fake`` under the
                       same load and reports what the service adds over each.
  --inprocess real     the real stack: the development transformers model (built in a temp dir),
                       Milvus Lite in a temp dir with the sample corpus, the MiniLM embedder.

Client placement (in-process modes): by default the load generator runs in ``--client-procs``
separate processes (spawned), so its own CPU cost does not run on the server's event loop;
``--client inline`` runs it in the server's loop instead (cheaper to start, inflates every
number). Timestamps are compared across processes: ``time.perf_counter`` is CLOCK_MONOTONIC
on Linux, one clock for the whole machine.

What it reports (a table, and JSON with ``--json-out``; a window of ``--duration`` s after
``--warmup`` s):
  - streams started / completed / cancelled by the client / cut at the end / failed, and the
    failures by gRPC status code (CANCELLED caused by our own cancel is not an error);
  - throughput: streamed deltas/s and tokens/s (completion tokens of the completion messages,
    plus the deltas of streams that ended without one);
  - TTFT at the client (request sent -> first delta) p50/p90/p99/max;
  - the service's overhead on TTFT: client TTFT minus the retrieval time the server reports and
    minus the engine's own first-token time. For the fake engine that is the nominal token delay
    (so gRPC's round trip, event-loop lag and asyncio's 1 ms timer slack count against the
    service); in-process modes also break it down with timestamps taken at the engine boundary
    and at the retriever: client -> handler, handler -> engine call, engine call -> first token,
    first token -> client; ``--compare-bare`` adds what the service adds over a bare handler;
  - the server's event-loop lag (in-process modes): a probe task in the server's loop sleeps
    10 ms again and again and records by how much each sleep overshoots; also the loop's busy
    fraction (time outside its selector wait) and the garbage collector's pauses;
  - CPU used by the server process, the client processes and other processes over the run
    (other processes on the machine skew every number: check that figure).

Only loopback addresses are ever contacted, and the run is bounded by ``--duration`` (at most
one hour) and ``--max-calls`` streams in all.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import cProfile
import dataclasses
import gc
import ipaddress
import itertools
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import pstats
import random
import sys
import tempfile
import time
import weakref
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from apihelper.v1 import apihelper_pb2 as pb  # noqa: E402
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc  # noqa: E402
from retriever.types import (  # noqa: E402
    ApiDoc,
    CorpusFormat,
    CorpusInfo,
    RetrievalMode,
    RetrievalResult,
    RetrievedDoc,
)
from service.engine.protocol import (  # noqa: E402
    Engine,
    EngineInfo,
    EngineOutput,
    EngineRequest,
    EngineStats,
    SamplingParams,
)

MAX_DURATION_S = 3600.0
LAG_PROBE_INTERVAL_S = 0.010
DEFAULT_INSTRUCTION = "Create a new compute session with the python:3.11 image"
_MODES = {
    "hybrid": pb.RETRIEVAL_MODE_HYBRID,
    "dense": pb.RETRIEVAL_MODE_DENSE,
    "keyword": pb.RETRIEVAL_MODE_KEYWORD,
    "none": pb.RETRIEVAL_MODE_NONE,
}

# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadConfig:
    """What the load generator does; picklable, so client processes get it as is."""

    concurrency: int = 16
    duration_s: float = 10.0
    warmup_s: float = 1.0
    ramp_s: float = 0.5  # workers start spread over this many seconds
    cancel_prob: float = 0.0
    cancel_max_messages: int = 24  # a cancelled stream is cut after randint(0, this) messages
    deadline_s: float | None = None
    channels: int = 1  # per client process; streams are spread round-robin
    max_calls: int = 2_000_000  # streams in all, across client processes
    seed: int = 0
    instruction: str = DEFAULT_INSTRUCTION
    max_tokens: int | None = None
    retrieval_mode: str = "hybrid"
    corpora: tuple[str, ...] = ()
    top_k: int | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.channels < 1 or self.max_calls < 1:
            raise ValueError("concurrency, channels and max_calls must be positive")
        if not 0 < self.duration_s <= MAX_DURATION_S or not 0 <= self.warmup_s <= MAX_DURATION_S:
            raise ValueError(f"duration must be in (0, {MAX_DURATION_S:g}] s and warmup in [0, {MAX_DURATION_S:g}] s")
        if not 0.0 <= self.cancel_prob <= 1.0:
            raise ValueError("cancel_prob must be in [0, 1]")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError("deadline must be positive")
        if self.retrieval_mode not in _MODES:
            raise ValueError(f"retrieval_mode must be one of {', '.join(_MODES)}")


def check_loopback(target: str) -> str:
    """``target`` (HOST:PORT) when HOST is a loopback address or localhost; ValueError otherwise."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"target must be HOST:PORT, got {target!r}")
    bare = host.strip("[]")
    if bare == "localhost":
        return target
    try:
        loopback = ipaddress.ip_address(bare).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"only loopback targets (127.0.0.0/8, ::1, localhost) are allowed, got {host!r}")
    return target


# -- the client --------------------------------------------------------------------------------


@dataclass(slots=True)
class StreamRecord:
    """One Generate stream as the client saw it (perf_counter seconds)."""

    request_id: str
    started: float
    ended: float = 0.0
    first_message: float | None = None
    first_delta: float | None = None
    outcome: str = "completed"  # completed | cancelled (by us) | cut (time up) | error
    code: str = "OK"
    deltas: int = 0  # deltas received inside the measurement window
    completion_tokens: int | None = None  # from the completion message
    completion_in_window: bool = False
    retrieval_ms: float | None = None  # the server's timings, from the completion
    server_first_token_ms: float | None = None
    detail: str = ""


@dataclass
class ClientResult:
    records: list[StreamRecord]
    cpu_s: float  # CPU time of the client process over the run
    calls_started: int
    window_start: float
    lag_samples: list[tuple[float, float]] = field(default_factory=list)  # the client loop's own lag


@dataclass(frozen=True)
class Window:
    start: float  # load starts (workers ramp up from here)
    measure_from: float  # start + warmup
    end: float  # measure_from + duration: no stream starts later, open ones are cut


def _request(cfg: LoadConfig, request_id: str) -> pb.GenerateRequest:
    retrieval = pb.RetrievalOptions(corpora=list(cfg.corpora), mode=_MODES[cfg.retrieval_mode])
    if cfg.top_k is not None:
        retrieval.top_k = cfg.top_k
    sampling = pb.SamplingParams(temperature=0.0)
    if cfg.max_tokens is not None:
        sampling.max_tokens = cfg.max_tokens
    return pb.GenerateRequest(
        instruction=cfg.instruction, retrieval=retrieval, sampling=sampling, request_id=request_id
    )


async def _one_stream(
    stub: pb_grpc.ApiHelperStub, cfg: LoadConfig, window: Window, request_id: str, cancel_at: int | None
) -> StreamRecord:
    rec = StreamRecord(request_id, time.perf_counter())
    call = cast(
        "grpc.aio.UnaryStreamCall[pb.GenerateRequest, pb.GenerateResponse]",
        stub.Generate(_request(cfg, request_id), timeout=cfg.deadline_s),
    )
    received = 0
    try:
        if cancel_at == 0:
            call.cancel()
            rec.outcome, rec.code = "cancelled", "CANCELLED"
            return rec
        async with asyncio.timeout(max(0.0, window.end - time.perf_counter())):
            while True:
                msg = await call.read()
                if not isinstance(msg, pb.GenerateResponse):  # grpc.aio.EOF
                    break
                now = time.perf_counter()
                received += 1
                if rec.first_message is None:
                    rec.first_message = now
                kind = msg.WhichOneof("event")
                if kind == "delta":
                    if rec.first_delta is None:
                        rec.first_delta = now
                    if now >= window.measure_from:
                        rec.deltas += 1
                elif kind == "completion":
                    c = msg.completion
                    rec.completion_tokens = c.usage.completion_tokens
                    rec.completion_in_window = now >= window.measure_from
                    rec.retrieval_ms = c.timings.retrieval_ms
                    rec.server_first_token_ms = c.timings.first_token_ms
                    continue
                if cancel_at is not None and received >= cancel_at:
                    call.cancel()
                    rec.outcome, rec.code = "cancelled", "CANCELLED"
                    return rec
            code = await call.code()
            rec.code = code.name
            if code is not grpc.StatusCode.OK:
                rec.outcome = "error"
    except TimeoutError:
        call.cancel()
        rec.outcome, rec.code = "cut", "CANCELLED"
    except grpc.aio.AioRpcError as exc:
        rec.outcome, rec.code, rec.detail = "error", exc.code().name, (exc.details() or "")[:200]
    finally:
        rec.ended = time.perf_counter()
    return rec


async def run_load(cfg: LoadConfig, target: str, *, client_index: int = 0, clients: int = 1,
                   start_at: float | None = None,
                   ready: Callable[[], Any] | None = None, probe_loop: bool = True) -> ClientResult:
    """Run this client's share of the workers against ``target``; ``start_at`` (perf_counter)
    fixes the window for every client process, ``ready`` (awaitable factory) is awaited once the
    channels are connected and returns the start time when ``start_at`` is None. ``probe_loop``:
    record this loop's own lag (the client's, unless it shares the server's loop)."""
    check_loopback(target)
    workers = [i for i in range(cfg.concurrency) if i % clients == client_index]
    cap = math.ceil(cfg.max_calls / clients)
    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(cfg.channels)]
    records: list[StreamRecord] = []
    started = [0]
    cpu0 = time.process_time()
    window = Window(0.0, 0.0, 0.0)
    probe = LagProbe()
    try:
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), timeout=30)
        if ready is not None:
            got = await ready()
            if start_at is None:
                start_at = float(got)
        if start_at is None:
            start_at = time.perf_counter()
        window = Window(start_at, start_at + cfg.warmup_s, start_at + cfg.warmup_s + cfg.duration_s)
        stubs = [pb_grpc.ApiHelperStub(ch) for ch in channels]
        if probe_loop:
            probe.start()

        async def worker(index: int) -> None:
            rng = random.Random(cfg.seed * 1_000_003 + index)
            stub = stubs[index % len(stubs)]
            delay = window.start - time.perf_counter() + rng.uniform(0.0, cfg.ramp_s)
            if delay > 0:
                await asyncio.sleep(delay)
            n = 0
            while time.perf_counter() < window.end and started[0] < cap:
                started[0] += 1
                cancel_at = rng.randint(0, cfg.cancel_max_messages) if rng.random() < cfg.cancel_prob else None
                records.append(await _one_stream(stub, cfg, window, f"load-{index}-{n}", cancel_at))
                n += 1

        await asyncio.gather(*(worker(i) for i in workers))
    finally:
        await probe.stop()
        for ch in channels:
            await ch.close(grace=None)
    return ClientResult(records, time.process_time() - cpu0, started[0], window.start, probe.samples)


def _client_process(
    cfg: LoadConfig, target: str, client_index: int, clients: int, conn: multiprocessing.connection.Connection
) -> None:
    """Entry point of a spawned client process: connect, say ready, wait for the start time."""

    async def ready() -> float:
        conn.send("ready")
        return float(await asyncio.to_thread(conn.recv))

    try:
        result = asyncio.run(run_load(cfg, target, client_index=client_index, clients=clients, ready=ready))
        conn.send(result)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the run
        conn.send(f"client {client_index} failed: {exc!r}")
        raise
    finally:
        conn.close()


# -- the in-process server ---------------------------------------------------------------------


# In-process modes around the fake engine: the service, and the two floors it is compared with.
FAKE_KINDS = ("fake", "bare", "bare-engine")

# request id -> (handler reached the retriever, engine.stream called, engine's first token), in
# perf_counter seconds; the first is NaN where the retriever is not ours.
Marks = dict[str, tuple[float, float, float]]


class TimedEngine:
    """An ``Engine`` that forwards to another and notes, per request id, when ``stream`` was
    called and when its first text came out (perf_counter), for the TTFT breakdown. When the
    retriever is a :class:`StaticRetriever` sharing ``retrieval_started``, the time the same
    handler task asked it for docs is noted too (no request id reaches a retriever)."""

    def __init__(self, inner: Engine, retrieval_started: weakref.WeakKeyDictionary[Any, float] | None = None) -> None:
        self._inner = inner
        self._retrieval_started = retrieval_started
        self.marks: Marks = {}

    @property
    def info(self) -> EngineInfo:
        return self._inner.info

    @property
    def num_in_flight(self) -> int:
        return self._inner.num_in_flight

    def count_tokens(self, text: str) -> int:
        return self._inner.count_tokens(text)

    def stream(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        # A plain function: the retrieval mark belongs to the task that calls it (the handler's,
        # which retrieved), whichever task first runs the generator.
        called = time.perf_counter()
        retrieval = math.nan
        if self._retrieval_started is not None:
            retrieval = self._retrieval_started.pop(asyncio.current_task(), math.nan)
        return self._stream(request, called, retrieval)

    async def _stream(self, request: EngineRequest, called: float, retrieval: float) -> AsyncGenerator[EngineOutput, None]:
        first = True
        async with contextlib.aclosing(self._inner.stream(request)) as outputs:
            async for out in outputs:
                if first and out.text_delta:
                    self.marks[request.request_id] = (retrieval, called, time.perf_counter())
                    first = False
                yield out

    async def abort(self, request_id: str) -> None:
        await self._inner.abort(request_id)

    async def check_health(self) -> None:
        await self._inner.check_health()

    def stats(self) -> EngineStats:
        return self._inner.stats()

    async def shutdown(self) -> None:
        await self._inner.shutdown()


class StaticRetriever:
    """A retriever with no I/O: the first ``top_k`` docs of a fixed list (the sample corpus)."""

    def __init__(self, docs: Sequence[ApiDoc], corpus: str = "demo") -> None:
        self._docs = [RetrievedDoc(d, corpus, 1.0 - i / 100) for i, d in enumerate(docs)]
        self._corpus = corpus
        self.started: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()  # task -> when

    async def retrieve(
        self, query: str, *, corpora: Sequence[str] | None, top_k: int, mode: RetrievalMode
    ) -> RetrievalResult:
        task = asyncio.current_task()
        if task is not None:
            self.started[task] = time.perf_counter()
        return RetrievalResult(self._docs[:top_k])

    async def list_corpora(self) -> list[CorpusInfo]:
        return [CorpusInfo(self._corpus, CorpusFormat.OPENAPI, len(self._docs), "memory", "none", None)]

    async def corpus_docs(self, corpus: str, *, limit: int | None = None) -> list[ApiDoc]:
        return [d.doc for d in self._docs][:limit]

    async def check_health(self) -> None:
        pass

    async def close(self) -> None:
        pass


class LagProbe:
    """Sleeps ``interval`` s in a loop on the running event loop and records each overshoot."""

    def __init__(self, interval: float = LAG_PROBE_INTERVAL_S) -> None:
        self.interval = interval
        # (when, overshoot seconds), in arrays: no objects for the garbage collector to track
        self._when = array.array("d")
        self._lag = array.array("d")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bench-lag-probe")

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.interval)
            now = time.perf_counter()
            self._when.append(now)
            self._lag.append(now - before - self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def between(self, start: float, end: float) -> list[float]:
        return [lag for when, lag in zip(self._when, self._lag) if start <= when <= end]

    @property
    def samples(self) -> list[tuple[float, float]]:
        return list(zip(self._when, self._lag))


class GcMeter:
    """Garbage-collector pauses in this process (they stop the event loop), by when they ended."""

    def __init__(self) -> None:
        self._end = array.array("d")
        self._seconds = array.array("d")
        self._generation = array.array("b")
        self._began = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._began = now
        else:
            self._end.append(now)
            self._seconds.append(now - self._began)
            self._generation.append(info.get("generation", -1))

    def start(self) -> None:
        gc.callbacks.append(self._callback)

    def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)

    def summary(self, start: float, end: float) -> dict[str, Any]:
        inside = [(d, g) for when, d, g in zip(self._end, self._seconds, self._generation) if start <= when <= end]
        by_gen: dict[str, dict[str, float]] = {}
        for g in sorted({g for _, g in inside}):
            ds = [d for d, gen in inside if gen == g]
            by_gen[str(g)] = {"n": len(ds), "total_ms": round(sum(ds) * 1000.0, 2), "max_ms": round(max(ds) * 1000.0, 3)}
        return {
            "collections": len(inside),
            "by_generation": by_gen,
            "total_ms": round(sum(d for d, _ in inside) * 1000.0, 2),
            "max_ms": round(max((d for d, _ in inside), default=0.0) * 1000.0, 3),
        }


class LoopBusyMeter:
    """How much of the time the event loop spends outside its selector wait, i.e. running
    callbacks: 100% means saturated. Wraps the loop's selector (a private attribute of asyncio's
    selector loops); on other loops it reports nothing."""

    def __init__(self) -> None:
        self._wait_end = array.array("d")  # when each selector wait ended
        self._waited = array.array("d")  # and how long it was
        self._selector: Any = None
        self._original: Any = None

    def start(self) -> None:
        selector = getattr(asyncio.get_running_loop(), "_selector", None)
        if selector is None or not hasattr(selector, "select"):
            return
        original = selector.select
        wait_end, waited = self._wait_end, self._waited

        def select(timeout: float | None = None) -> Any:
            before = time.perf_counter()
            try:
                return original(timeout)
            finally:
                now = time.perf_counter()
                wait_end.append(now)
                waited.append(now - before)

        self._selector, self._original = selector, original
        selector.select = select

    def stop(self) -> None:
        if self._selector is not None:
            self._selector.select = self._original
            self._selector = None

    def iterations(self, start: float, end: float) -> int:
        return sum(1 for when in self._wait_end if start <= when <= end)

    def busy_fraction(self, start: float, end: float) -> float | None:
        if not self._wait_end or end <= start:
            return None
        waited = sum(w for when, w in zip(self._wait_end, self._waited) if start <= when <= end)
        return max(0.0, 1.0 - waited / (end - start))


class BareServicer(pb_grpc.ApiHelperServicer):
    """The floors to compare the service with: a bare grpc.aio handler that streams the same
    messages (sources, one delta per token every ``delay`` s, a completion) with no pipeline,
    validation, limits or metrics. With ``engine`` the deltas are the outputs of that engine
    (the ``FakeEngine`` the service is measured with, on the same prompt), so the engine's own
    cost is in the floor too. What the real servicer costs beyond it is the service's own."""

    def __init__(
        self, docs: Sequence[ApiDoc], reply: str, delay: float, marks: Marks, engine: Engine | None = None
    ) -> None:
        from service.engine.fake import pieces
        from service.prompts import PromptFormat, build_prompt

        self._sources = pb.Sources(
            sources=[pb.Source(key=d.key, corpus="demo", title=d.title, score=1.0, text=d.text) for d in docs[:3]]
        )
        self._reply = reply
        self._pieces = pieces(reply)
        self._delay = delay
        self._marks = marks
        self._engine = engine
        retrieved = [RetrievedDoc(d, "demo", 1.0) for d in docs[:3]]
        self._prompt = build_prompt(PromptFormat.GORILLA_V0, "Create a new session", retrieved)

    async def Generate(
        self, request: pb.GenerateRequest, context: Any
    ) -> AsyncGenerator[pb.GenerateResponse, None]:
        called = time.perf_counter()
        if self._engine is not None:
            async for message in self._from_engine(request, called):
                yield message
            return
        yield pb.GenerateResponse(sources=self._sources)
        for i, piece in enumerate(self._pieces):
            await asyncio.sleep(self._delay)
            if i == 0:
                self._marks[request.request_id] = (called, called, time.perf_counter())
            yield pb.GenerateResponse(delta=pb.TextDelta(text=piece))
        await asyncio.sleep(self._delay)  # as FakeEngine: one more step finds the end
        yield self._completion(request, called)

    async def _from_engine(self, request: pb.GenerateRequest, called: float) -> AsyncGenerator[pb.GenerateResponse, None]:
        assert self._engine is not None
        engine_request = EngineRequest(request.request_id, self._prompt, SamplingParams(max_tokens=512))
        yield pb.GenerateResponse(sources=self._sources)
        first = True
        async with contextlib.aclosing(self._engine.stream(engine_request)) as outputs:
            async for out in outputs:
                if first and out.text_delta:
                    self._marks[request.request_id] = (called, called, time.perf_counter())
                    first = False
                if out.text_delta:
                    yield pb.GenerateResponse(delta=pb.TextDelta(text=out.text_delta))
        yield self._completion(request, called)

    def _completion(self, request: pb.GenerateRequest, called: float) -> pb.GenerateResponse:
        total_ms = (time.perf_counter() - called) * 1000.0
        return pb.GenerateResponse(
            completion=pb.Completion(
                finish_reason=pb.FINISH_REASON_STOP,
                usage=pb.Usage(prompt_tokens=100, completion_tokens=len(self._pieces)),
                timings=pb.Timings(first_token_ms=self._delay * 1000.0, total_ms=total_ms),
                text=self._reply,
                request_id=request.request_id,
            )
        )

    async def Retrieve(self, request: pb.RetrieveRequest, context: Any) -> pb.RetrieveResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the bare server streams Generate only")
        raise AssertionError("unreachable")

    async def ListCorpora(self, request: pb.ListCorporaRequest, context: Any) -> pb.ListCorporaResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the bare server streams Generate only")
        raise AssertionError("unreachable")


@dataclass
class InProcessServer:
    port: int
    marks: Marks
    nominal_first_token_s: float | None  # the fake engine's token delay; None for real engines
    description: str
    stop: Callable[[], Any]  # async: stops the server and cleans up
    # The real stack's engine and the prompt the service builds for the bench's instruction:
    # --compare-direct drives that engine with that prompt, without the service.
    engine: Engine | None = None
    prompt: str = ""
    default_max_tokens: int = 0


def fake_reply(words: int = 0) -> str:
    """The fake engine's answer: its default Gorilla reply, or that text repeated to ``words`` words."""
    from service.engine.fake import GORILLA_V0_REPLY

    if words <= 0:
        return GORILLA_V0_REPLY
    parts = GORILLA_V0_REPLY.split(" ")
    return " ".join((parts * (words // len(parts) + 1))[:words])


def fake_stream_seconds(words: int, token_rate: float) -> float:
    """How long one fake-engine stream lasts: a step per token plus the step that finds the end."""
    from service.engine.fake import pieces

    return (len(pieces(fake_reply(words))) + 1) / token_rate


def _sample_docs() -> list[ApiDoc]:
    from retriever.loaders import load_corpus
    from retriever.samples import sample_corpus_path

    _, loaded = load_corpus(sample_corpus_path(), None)
    return loaded.docs


def _recorder(kind: str, engine: Engine, embedding_model: str) -> Any:
    from service.metrics import NullRecorder

    if kind == "null":
        return NullRecorder()
    from service.metrics.prometheus import PrometheusRecorder

    # Built as service.__main__ builds it, not served over HTTP (nothing scrapes during the run).
    return PrometheusRecorder(
        version="bench",
        engine_kind=engine.info.kind,
        model=engine.info.model,
        prompt_format=engine.info.prompt_format.value,
        embedding_model=embedding_model,
        engine_stats=engine.stats,
    )


async def start_inprocess(
    kind: str, *, token_rate: float, reply_words: int, max_streams: int, recorder: str, device: str,
    work_dir: Path, cfg: LoadConfig | None = None,
) -> InProcessServer:
    """Start the real gRPC server in this process around the fake or the real engine."""
    from service.grpc.server import start_server
    from service.settings import Settings

    settings = Settings(port=0, max_concurrent_streams=max_streams, metrics_port=0, shutdown_grace_seconds=2.0)
    if kind in FAKE_KINDS:
        from service.engine.fake import FakeEngine

        reply = fake_reply(reply_words)
        delay = 1.0 / token_rate
        if kind in ("bare", "bare-engine"):
            marks: Marks = {}
            server = grpc.aio.server()
            engine = FakeEngine(reply, token_delay_s=delay) if kind == "bare-engine" else None
            pb_grpc.add_ApiHelperServicer_to_server(BareServicer(_sample_docs(), reply, delay, marks, engine), server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()

            async def stop() -> None:
                await server.stop(None)

            what = "the same FakeEngine" if engine is not None else "asyncio.sleep per token"
            desc = f"bare grpc.aio handler (no service code) on {what}, {token_rate:g} tokens/s per stream"
            return InProcessServer(port, marks, delay, desc, stop)
        static = StaticRetriever(_sample_docs())
        fake = FakeEngine(reply, token_delay_s=delay)
        timed = TimedEngine(fake, static.started)
        running = await start_server(settings, timed, static, _recorder(recorder, timed, "none"))

        async def forget_requests() -> None:
            # FakeEngine keeps every request it accepted (for test assertions): over a long run
            # that list would grow the heap the garbage collector walks, which no real engine does.
            while True:
                await asyncio.sleep(1.0)
                fake.requests.clear()

        janitor = asyncio.get_running_loop().create_task(forget_requests())

        async def stop_fake() -> None:
            janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await janitor
            await running.stop()

        desc = f"in-process server, FakeEngine at {token_rate:g} tokens/s per stream, static retriever"
        return InProcessServer(running.port, timed.marks, delay, desc, stop_fake)

    from engine_build.dev_model import make_dev_model
    from retriever.embedding import Embedder
    from retriever.ingest import ingest_corpus
    from retriever.milvus_store import MilvusStore
    from retriever.samples import sample_corpus_path
    from retriever.service import open_retriever
    from service.engine.transformers_engine import TransformersEngine

    model_dir = work_dir / "dev-model"
    make_dev_model(model_dir, (d.text for d in _sample_docs()))
    uri = str(work_dir / "milvus.db")
    embedder = await asyncio.to_thread(Embedder)
    store = MilvusStore(uri, "")
    await asyncio.to_thread(ingest_corpus, store, embedder, "demo", sample_corpus_path(), None, False)
    store.close()
    retriever = await open_retriever(uri, "", embedder)
    real_engine = await TransformersEngine.load(model_dir, device=device)
    timed = TimedEngine(real_engine)
    running = await start_server(settings, timed, retriever, _recorder(recorder, timed, embedder.model_name))
    desc = f"in-process server, transformers dev model on {device}, Milvus Lite with the sample corpus"
    return InProcessServer(
        running.port, timed.marks, None, desc, running.stop, engine=real_engine,
        prompt=await _service_prompt(retriever, real_engine, cfg or LoadConfig(concurrency=1, duration_s=1.0)),
        default_max_tokens=min(settings.default_max_tokens, real_engine.info.max_model_len // 2),
    )


async def _service_prompt(retriever: Any, engine: Engine, cfg: LoadConfig) -> str:
    """The prompt the service builds for the load's requests (instruction and retrieval options)."""
    from retriever.types import RetrievalMode
    from service.prompts import build_prompt
    from service.settings import Settings

    docs = []
    mode = RetrievalMode(cfg.retrieval_mode)
    if mode is not RetrievalMode.NONE:
        result = await retriever.retrieve(
            cfg.instruction, corpora=cfg.corpora or None, top_k=cfg.top_k or Settings().default_top_k, mode=mode
        )
        docs = result.docs
    return build_prompt(engine.info.prompt_format, cfg.instruction, docs)


async def drive_engine_directly(
    engine: Engine, prompt: str, *, concurrency: int, max_tokens: int, warmup_s: float, duration_s: float
) -> dict[str, float]:
    """``concurrency`` workers stream greedy requests for ``prompt`` straight from ``engine`` (no
    gRPC, no pipeline) for ``warmup_s + duration_s``; tokens/s generated in the last
    ``duration_s``. The figure the service's throughput is compared with."""
    start = time.perf_counter()
    measure_from, end = start + warmup_s, start + warmup_s + duration_s
    tokens = 0
    streams = 0

    async def worker(index: int) -> None:
        nonlocal tokens, streams
        for n in itertools.count():
            if time.perf_counter() >= end:
                return
            request = EngineRequest(f"direct-{index}-{n}", prompt, SamplingParams(max_tokens=max_tokens))
            counted = 0  # completion tokens, as the service's completion messages count them
            async with contextlib.aclosing(engine.stream(request)) as outputs:
                async for out in outputs:
                    now = time.perf_counter()
                    if measure_from <= now < end:
                        tokens += out.completion_tokens - counted
                    counted = out.completion_tokens
                    if now >= end:
                        return
            streams += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return {"tokens_per_s": round(tokens / duration_s, 1), "streams": streams}


# -- statistics and the report -----------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _dist_ms(values_s: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {"n": len(values_s)}
    for q in qs:
        v = percentile(values_s, q)
        out[f"p{q:g}"] = None if v is None else round(v * 1000.0, 3)
    out["max"] = round(max(values_s) * 1000.0, 3) if values_s else None
    return out


@dataclass
class Report:
    settings: dict[str, Any]
    streams: dict[str, int]
    errors_by_status: dict[str, int]
    error_examples: list[str]
    throughput: dict[str, float]
    ttft_ms: dict[str, float | int | None]
    time_to_first_message_ms: dict[str, float | int | None]
    ttft_overhead_ms: dict[str, Any]
    event_loop_lag_ms: dict[str, Any]
    cpu: dict[str, Any]
    acceptance: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None  # --compare-bare: the bare gRPC floor under the same load
    baseline_engine: dict[str, Any] | None = None  # --compare-bare: bare gRPC + the same fake engine
    direct: dict[str, Any] | None = None  # --compare-direct: the real engine driven without the service


def build_report(
    cfg: LoadConfig,
    window: Window,
    results: Sequence[ClientResult],
    *,
    settings: dict[str, Any],
    marks: Marks | None,
    nominal_first_token_s: float | None,
    lag_s: Sequence[float] | None,
    server_cpu_s: float | None,
    wall_s: float,
    server_loop_busy: float | None = None,
    server_loop_iterations: int | None = None,
    machine_busy_s: float | None = None,
    server_gc: dict[str, Any] | None = None,
) -> Report:
    records = [r for res in results for r in res.records]
    measured = [r for r in records if window.measure_from <= r.started < window.end]
    outcomes = Counter(r.outcome for r in measured)
    errors = Counter(r.code for r in measured if r.outcome == "error")
    examples = sorted({f"{r.code}: {r.detail}" for r in measured if r.outcome == "error"})[:5]
    span = window.end - window.measure_from
    deltas = sum(r.deltas for r in records)
    tokens = sum(
        (r.completion_tokens or 0) if r.completion_in_window else 0 for r in records
    ) + sum(r.deltas for r in records if r.completion_tokens is None)
    completed_in_window = sum(1 for r in records if r.completion_in_window)

    ttft = [r.first_delta - r.started for r in measured if r.first_delta is not None]
    ttfm = [r.first_message - r.started for r in measured if r.first_message is not None]

    overhead: dict[str, Any] = {}
    with_first = [r for r in measured if r.first_delta is not None]
    if nominal_first_token_s is not None:
        # Retrieval time is known from the completion; for streams cancelled before it, the
        # in-memory retriever's ~0 ms is assumed (it does no I/O).
        strict = [
            (r.first_delta - r.started) - nominal_first_token_s - (r.retrieval_ms or 0.0) / 1000.0
            for r in with_first
            if r.first_delta is not None
        ]
        overhead["client_ttft_minus_nominal_engine_and_retrieval"] = _dist_ms(strict)
        overhead["nominal_engine_first_token_ms"] = round(nominal_first_token_s * 1000.0, 3)
    if marks is not None:
        to_handler, handler_to_engine, to_engine, engine_ft, from_engine, beyond = [], [], [], [], [], []
        for r in with_first:
            mark = marks.get(r.request_id)
            if mark is None or r.first_delta is None:
                continue
            handler, called, first = mark
            if not math.isnan(handler):
                to_handler.append(handler - r.started)
                handler_to_engine.append(called - handler)
            to_engine.append(called - r.started)
            engine_ft.append(first - called)
            from_engine.append(r.first_delta - first)
            beyond.append((r.first_delta - r.started) - (first - called) - (r.retrieval_ms or 0.0) / 1000.0)
        overhead["client_ttft_minus_measured_engine_and_retrieval"] = _dist_ms(beyond)
        overhead["client_to_engine_call"] = _dist_ms(to_engine)
        if to_handler:
            overhead["client_to_handler_retrieval"] = _dist_ms(to_handler)
            overhead["handler_retrieval_to_engine_call"] = _dist_ms(handler_to_engine)
        overhead["engine_call_to_first_token"] = _dist_ms(engine_ft)
        overhead["engine_first_token_to_client"] = _dist_ms(from_engine)
    server_side = [
        (r.first_delta - r.started) - r.server_first_token_ms / 1000.0
        for r in with_first
        if r.first_delta is not None and r.server_first_token_ms is not None
    ]
    overhead["client_ttft_minus_server_reported_ttft"] = _dist_ms(server_side)

    lag: dict[str, Any] = {"probe_interval_ms": LAG_PROBE_INTERVAL_S * 1000.0}
    if lag_s is None:
        lag["n/a"] = "the server runs elsewhere (--target)"
    else:
        lag.update(_dist_ms(lag_s))
        if server_gc is not None:
            lag["server_gc_pauses"] = server_gc

    client_lag = [lag for res in results for when, lag in res.lag_samples if window.measure_from <= when <= window.end]
    lag["client_loop"] = _dist_ms(client_lag) if client_lag else "n/a (the client shares the server's loop)"
    client_cpu = sum(r.cpu_s for r in results)
    cpu = {
        "cores": os.cpu_count(),
        "client_processes_cpu_s": round(client_cpu, 2),
        "client_cpu_pct_of_one_core": round(100.0 * client_cpu / wall_s, 1) if wall_s > 0 else None,
        "server_process_cpu_s": None if server_cpu_s is None else round(server_cpu_s, 2),
        "server_cpu_pct_of_one_core": None if server_cpu_s is None else round(100.0 * server_cpu_s / wall_s, 1),
        "server_loop_busy_pct": None if server_loop_busy is None else round(100.0 * server_loop_busy, 1),
        "server_loop_iterations_per_s": (
            None if not server_loop_iterations else round(server_loop_iterations / (window.end - window.measure_from), 1)
        ),
        "run_wall_s": round(wall_s, 2),
        # Other processes on the machine over the run: anything much above 0 skews the numbers.
        "other_processes_cpu_pct_of_one_core": (
            None
            if machine_busy_s is None or server_cpu_s is None
            else round(max(0.0, 100.0 * (machine_busy_s - server_cpu_s - client_cpu) / wall_s), 1)
        ),
    }
    report = Report(
        settings=settings,
        streams={
            "started_in_window": len(measured),
            "completed": outcomes["completed"],
            "cancelled_by_client": outcomes["cancelled"],
            "cut_at_end": outcomes["cut"],
            "errors": outcomes["error"],
            "started_in_warmup": sum(1 for r in records if r.started < window.measure_from),
            "calls_started_total": sum(res.calls_started for res in results),
        },
        errors_by_status=dict(sorted(errors.items())),
        error_examples=examples,
        throughput={
            "window_s": round(span, 3),
            "deltas_per_s": round(deltas / span, 1),
            "tokens_per_s": round(tokens / span, 1),
            "completions_per_s": round(completed_in_window / span, 1),
        },
        ttft_ms=_dist_ms(ttft),
        time_to_first_message_ms=_dist_ms(ttfm),
        ttft_overhead_ms=overhead,
        event_loop_lag_ms=lag,
        cpu=cpu,
    )
    report.acceptance = _acceptance(report, nominal_first_token_s)
    return report


def _acceptance(report: Report, nominal: float | None) -> dict[str, Any]:
    """Issue 7, acceptance 5 (fake engine): no errors, lag p99 < 20 ms, overhead p50 < 1 ms.

    The TTFT overhead is judged three ways: against the engine's nominal first-token time (this
    charges gRPC's own round trip and the fake engine's timer slack to the service), and, with
    ``--compare-bare``, against the two floors under the same load: a bare grpc.aio handler
    streaming the same messages on ``asyncio.sleep`` (this charges the fake engine's CPU on the
    loop to the service), and the same handler on the same fake engine (what the service's own
    code adds "beyond retrieval and engine", the acceptance's words)."""
    out: dict[str, Any] = {"no_errors": report.streams["errors"] == 0}
    lag_p99 = report.event_loop_lag_ms.get("p99")
    out["event_loop_lag_p99_under_20ms"] = None if lag_p99 is None else lag_p99 < 20.0
    if nominal is not None:
        p50 = report.ttft_overhead_ms["client_ttft_minus_nominal_engine_and_retrieval"]["p50"]
        out["ttft_overhead_p50_under_1ms"] = None if p50 is None else p50 < 1.0
    for key, baseline in (("grpc", report.baseline), ("grpc_and_engine", report.baseline_engine)):
        if baseline is not None:
            added = baseline["service_adds_ttft_ms"]["p50"]
            out[f"service_adds_under_1ms_p50_over_bare_{key}"] = None if added is None else added < 1.0
    return out


def attach_baseline(report: Report, bare: Report, *, with_engine: bool = False) -> None:
    """Put a floor's run beside ``report`` and judge what the service adds to TTFT over it."""

    def diff(q: str) -> float | None:
        a, b = report.ttft_ms.get(q), bare.ttft_ms.get(q)
        return None if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) else round(a - b, 3)

    baseline = {
        "server": bare.settings.get("server"),
        "ttft_ms": bare.ttft_ms,
        "ttft_overhead_ms": bare.ttft_overhead_ms,
        "event_loop_lag_ms": {k: v for k, v in bare.event_loop_lag_ms.items() if k in ("n", "p50", "p99", "max")},
        "throughput": bare.throughput,
        "streams": bare.streams,
        "cpu": bare.cpu,
        "service_adds_ttft_ms": {"p50": diff("p50"), "p90": diff("p90"), "p99": diff("p99")},
    }
    if with_engine:
        report.baseline_engine = baseline
    else:
        report.baseline = baseline
    nominal = report.ttft_overhead_ms.get("nominal_engine_first_token_ms")
    report.acceptance = _acceptance(report, None if nominal is None else nominal / 1000.0)


def attach_direct(report: Report, direct: dict[str, float]) -> None:
    """Issue 7, acceptance 5 (real engine): the service's throughput is >= 95% of the engine's
    own at the same concurrency."""
    service = report.throughput.get("tokens_per_s") or 0.0
    ratio = service / direct["tokens_per_s"] if direct["tokens_per_s"] else None
    report.direct = {**direct, "service_tokens_per_s": service, "ratio": None if ratio is None else round(ratio, 3)}
    report.acceptance["service_throughput_at_least_95pct_of_direct"] = None if ratio is None else ratio >= 0.95


def format_table(report: Report) -> str:
    def fmt(d: dict[str, Any], keys: Sequence[str] = ("n", "p50", "p90", "p99", "max")) -> str:
        return "  ".join(f"{k}={'n/a' if d.get(k) is None else d[k]}" for k in keys if k in d)

    s = report.streams
    t = report.throughput
    lines = [
        "apihelper load: " + ", ".join(f"{k}={v}" for k, v in report.settings.items()),
        "",
        f"{'streams':34} started={s['started_in_window']} completed={s['completed']} "
        f"cancelled={s['cancelled_by_client']} cut_at_end={s['cut_at_end']} errors={s['errors']}",
        f"{'errors by status':34} {report.errors_by_status or 'none'}",
        f"{'throughput (window ' + str(t['window_s']) + ' s)':34} tokens/s={t['tokens_per_s']} "
        f"deltas/s={t['deltas_per_s']} completions/s={t['completions_per_s']}",
        f"{'TTFT at the client (ms)':34} {fmt(report.ttft_ms)}",
        f"{'first message, sources (ms)':34} {fmt(report.time_to_first_message_ms)}",
    ]
    labels = {
        "client_ttft_minus_nominal_engine_and_retrieval": "service overhead on TTFT (ms)",
        "client_ttft_minus_measured_engine_and_retrieval": "  same, engine time as measured",
        "client_to_engine_call": "  client -> engine.stream called",
        "client_to_handler_retrieval": "    client -> handler at retrieval",
        "handler_retrieval_to_engine_call": "    retrieval -> engine.stream",
        "engine_call_to_first_token": "  engine call -> first token",
        "engine_first_token_to_client": "  engine first token -> client",
        "client_ttft_minus_server_reported_ttft": "client TTFT - server's first_token_ms",
    }
    for key, label in labels.items():
        if key in report.ttft_overhead_ms:
            lines.append(f"{label:34} {fmt(report.ttft_overhead_ms[key], ('n', 'p50', 'p99', 'max'))}")
    lag = report.event_loop_lag_ms
    lines.append(
        f"{'server event-loop lag (ms)':34} " + (lag["n/a"] if "n/a" in lag else fmt(lag, ("n", "p50", "p99", "max")))
    )
    if isinstance(lag.get("server_gc_pauses"), dict):
        g = lag["server_gc_pauses"]
        lines.append(f"{'  server GC pauses':34} n={g['collections']} total={g['total_ms']} ms max={g['max_ms']} ms")
    client_lag = lag["client_loop"]
    lines.append(
        f"{'client event-loop lag (ms)':34} "
        + (fmt(client_lag, ("n", "p50", "p99", "max")) if isinstance(client_lag, dict) else str(client_lag))
    )
    c = report.cpu
    if c["server_cpu_pct_of_one_core"] is None:
        lines.append(f"{'CPU (% of one core)':34} clients={c['client_cpu_pct_of_one_core']} (server: n/a, it runs elsewhere)")
    else:
        lines.append(
            f"{'CPU (% of one core)':34} server={c['server_cpu_pct_of_one_core']} "
            f"(its event loop busy {c['server_loop_busy_pct']}%, {c['server_loop_iterations_per_s']} iterations/s) "
            f"clients={c['client_cpu_pct_of_one_core']} other processes={c['other_processes_cpu_pct_of_one_core']} "
            f"(machine cores: {c['cores']})"
        )
    floors = (("bare grpc.aio floor", report.baseline), ("bare grpc.aio + same engine", report.baseline_engine))
    for name, b in floors:
        if b is None:
            continue
        lines.append(
            f"{name + ', same load':34} TTFT {fmt(b['ttft_ms'])}; lag {fmt(b['event_loop_lag_ms'], ('p50', 'p99', 'max'))}; "
            f"server CPU {b['cpu']['server_cpu_pct_of_one_core']}%"
        )
        lines.append(f"{'  service adds to TTFT (ms)':34} {fmt(b['service_adds_ttft_ms'], ('p50', 'p90', 'p99'))}")
    if report.direct is not None:
        d = report.direct
        lines.append(
            f"{'engine driven directly, same load':34} tokens/s={d['tokens_per_s']} streams={d['streams']}; "
            f"through the service {d['service_tokens_per_s']} = {d['ratio']} of it"
        )
    lines.append(f"{'acceptance 5':34} " + " ".join(f"{k}={v}" for k, v in report.acceptance.items()))
    return "\n".join(lines)


# -- orchestration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    cfg: LoadConfig
    target: str | None = None
    inprocess: str | None = None  # fake | real | bare
    client: str = "process"  # process | inline (in-process modes)
    client_procs: int = 1
    token_rate: float = 50.0
    reply_words: int = 0  # 0: FakeEngine's default Gorilla reply
    server_max_streams: int = 0  # 0: 2 x concurrency
    recorder: str = "prometheus"
    device: str = "cpu"
    profile: str | None = None  # cProfile the server process over the run, dump here
    compare_bare: bool = False  # --inprocess fake: first run the bare grpc.aio floor under the same load
    gc_freeze: bool = True  # gc.freeze() in the server process once it has started, as service/__main__.py does
    event_loop: str = "auto"  # the server process's loop, chosen as service/__main__.py does (main() applies it)
    compare_direct: bool = False  # --inprocess real: first drive the engine directly at the same concurrency


async def _spawn_clients(
    opts: RunOptions, target: str
) -> tuple[list[multiprocessing.process.BaseProcess], list[multiprocessing.connection.Connection]]:
    ctx = multiprocessing.get_context("spawn")
    procs: list[multiprocessing.process.BaseProcess] = []
    conns: list[multiprocessing.connection.Connection] = []
    for i in range(opts.client_procs):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_client_process, args=(opts.cfg, target, i, opts.client_procs, child), daemon=True)
        p.start()
        child.close()
        procs.append(p)
        conns.append(parent)
    for conn in conns:
        msg = await asyncio.to_thread(_recv, conn, 120.0)
        if msg != "ready":
            raise RuntimeError(f"a client process did not start: {msg}")
    return procs, conns


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat); None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _recv(conn: multiprocessing.connection.Connection, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError(f"no answer from a client process in {timeout:g} s")
    return conn.recv()


async def run(opts: RunOptions) -> Report:
    cfg = opts.cfg
    if (opts.target is None) == (opts.inprocess is None):
        raise ValueError("give exactly one of --target and --inprocess")
    settings: dict[str, Any] = {
        "concurrency": cfg.concurrency,
        "duration_s": cfg.duration_s,
        "warmup_s": cfg.warmup_s,
        "ramp_s": round(cfg.ramp_s, 3),
        "cancel_prob": cfg.cancel_prob,
        "deadline_s": cfg.deadline_s,
    }
    if opts.target is not None:
        target = check_loopback(opts.target)
        settings.update(server=f"--target {target}", client="this process")
        t0 = time.perf_counter()
        result = await run_load(cfg, target)
        wall = time.perf_counter() - t0
        start = result.window_start  # run_load started right after its channels were ready
        window = Window(start, start + cfg.warmup_s, start + cfg.warmup_s + cfg.duration_s)
        return build_report(
            cfg, window, [result], settings=settings, marks=None, nominal_first_token_s=None,
            lag_s=None, server_cpu_s=None, wall_s=wall,
        )

    assert opts.inprocess in ("real", *FAKE_KINDS)
    max_streams = opts.server_max_streams or 2 * cfg.concurrency
    with tempfile.TemporaryDirectory(prefix="apihelper-load-") as tmp:
        server = await start_inprocess(
            opts.inprocess, token_rate=opts.token_rate, reply_words=opts.reply_words, max_streams=max_streams,
            recorder=opts.recorder, device=opts.device, work_dir=Path(tmp), cfg=cfg,
        )
        settings.update(
            server=server.description, server_max_concurrent_streams=max_streams, recorder=opts.recorder,
            client=(f"{opts.client_procs} separate process(es)" if opts.client == "process" else "inline, server loop"),
        )
        target = f"127.0.0.1:{server.port}"
        if opts.gc_freeze:
            gc.collect()
            gc.freeze()  # what start-up allocated is never walked again by the collector
        settings["server_gc_freeze"] = opts.gc_freeze
        settings["server_event_loop"] = type(asyncio.get_running_loop()).__module__.split(".")[0]
        direct = None
        if opts.compare_direct and server.engine is not None:
            # First, while the engine is idle: the same engine, the same prompt, no service.
            direct = await drive_engine_directly(
                server.engine, server.prompt, concurrency=cfg.concurrency,
                max_tokens=cfg.max_tokens or server.default_max_tokens,
                warmup_s=cfg.warmup_s, duration_s=cfg.duration_s,
            )
        probe = LagProbe()
        busy = LoopBusyMeter()
        gc_meter = GcMeter()
        profiler = cProfile.Profile() if opts.profile else None
        procs: list[multiprocessing.process.BaseProcess] = []
        try:
            probe.start()
            busy.start()
            gc_meter.start()
            machine0 = machine_busy_s()
            if opts.client == "inline":
                cpu0, t0 = time.process_time(), time.perf_counter()
                start = t0 + 0.2
                if profiler:
                    profiler.enable()
                results = [await run_load(cfg, target, start_at=start, probe_loop=False)]
                if profiler:
                    profiler.disable()
                wall, server_cpu = time.perf_counter() - t0, time.process_time() - cpu0
                results[0].cpu_s = 0.0  # one process: its whole CPU time is reported as the server's
            else:
                procs, conns = await _spawn_clients(opts, target)
                start = time.perf_counter() + 0.2
                cpu0, t0 = time.process_time(), time.perf_counter()
                for conn in conns:
                    conn.send(start)
                if profiler:
                    profiler.enable()
                limit = cfg.warmup_s + cfg.duration_s + 120.0
                answers = await asyncio.gather(*(asyncio.to_thread(_recv, c, limit) for c in conns))
                if profiler:
                    profiler.disable()
                wall, server_cpu = time.perf_counter() - t0, time.process_time() - cpu0
                for p in procs:
                    p.join(timeout=10)
                bad = [a for a in answers if not isinstance(a, ClientResult)]
                if bad:
                    raise RuntimeError("; ".join(map(str, bad)))
                results = [a for a in answers if isinstance(a, ClientResult)]
            machine1 = machine_busy_s()
            machine = None if machine0 is None or machine1 is None else machine1 - machine0
            window = Window(start, start + cfg.warmup_s, start + cfg.warmup_s + cfg.duration_s)
            lag = probe.between(window.measure_from, window.end)
            loop_busy = busy.busy_fraction(window.measure_from, window.end)
            loop_iterations = busy.iterations(window.measure_from, window.end)
            gc_pauses = gc_meter.summary(window.measure_from, window.end)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            gc_meter.stop()
            busy.stop()
            await probe.stop()
            await server.stop()
            if opts.gc_freeze:
                gc.unfreeze()
        if profiler is not None and opts.profile:
            profiler.dump_stats(opts.profile)
            stats = pstats.Stats(profiler, stream=sys.stderr)
            stats.sort_stats("tottime").print_stats(25)
        settings["client_procs"] = opts.client_procs if opts.client == "process" else 0
        if opts.inprocess in FAKE_KINDS:
            settings["token_rate_per_stream"] = opts.token_rate
        report = build_report(
            cfg, window, results, settings=settings, marks=server.marks,
            nominal_first_token_s=server.nominal_first_token_s, lag_s=lag, server_cpu_s=server_cpu, wall_s=wall,
            server_loop_busy=loop_busy, server_loop_iterations=loop_iterations, machine_busy_s=machine,
            server_gc=gc_pauses,
        )
        if direct is not None:
            attach_direct(report, direct)
        return report


async def run_compared(opts: RunOptions) -> Report:
    """The two bare grpc.aio floors first, then the service, under the same load; one report."""
    bare = await run(dataclasses.replace(opts, inprocess="bare", compare_bare=False, profile=None))
    bare_engine = await run(dataclasses.replace(opts, inprocess="bare-engine", compare_bare=False, profile=None))
    report = await run(dataclasses.replace(opts, compare_bare=False))
    attach_baseline(report, bare)
    attach_baseline(report, bare_engine, with_engine=True)
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/load/run.py",
        description="Concurrent Generate streams against apihelper; reports throughput, TTFT, errors, loop lag.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="HOST:PORT of a running server (loopback only)")
    where.add_argument(
        "--inprocess", choices=("fake", "real", "bare", "bare-engine"),
        help="start a server in this process: the service around the fake or the real engine, or a bare grpc.aio "
        "handler streaming the same messages, on asyncio.sleep (bare) or on the same fake engine (bare-engine): "
        "the floors the service is compared with",
    )
    p.add_argument("--concurrency", type=int, default=256, help="concurrent streams (default 256)")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds (default 30)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds of load before measuring (default: the ramp + 1 s, at least 2 s)")
    p.add_argument("--ramp", type=float, default=None,
                   help="workers start spread over this many seconds (default: one fake-engine stream's length, "
                   "so streams of equal length do not start in waves; 1 s otherwise)")
    p.add_argument("--cancel-prob", type=float, default=0.0, help="chance a stream is cancelled (default 0)")
    p.add_argument("--cancel-max-messages", type=int, default=24, help="cancel after randint(0, N) messages")
    p.add_argument("--deadline", type=float, default=None, help="per-call deadline in seconds")
    p.add_argument("--channels", type=int, default=1, help="gRPC channels per client process (default 1)")
    p.add_argument("--max-calls", type=int, default=2_000_000, help="streams in all, at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--instruction", default=DEFAULT_INSTRUCTION)
    p.add_argument("--max-tokens", type=int, default=None, help="sampling.max_tokens (default: the server's)")
    p.add_argument("--mode", default="hybrid", choices=sorted(_MODES), help="retrieval mode (default hybrid)")
    p.add_argument("--corpora", default="", help="comma-separated corpora (default: all)")
    p.add_argument("--top-k", type=int, default=None, help="retrieval top_k (default: the server's)")
    p.add_argument("--client", choices=("process", "inline"), default="process",
                   help="in-process modes: load generator in separate processes (default) or in the server's loop")
    p.add_argument("--client-procs", type=int, default=1, help="client processes (default 1)")
    p.add_argument("--token-rate", type=float, default=50.0, help="fake engine tokens/s per stream (default 50)")
    p.add_argument("--reply-words", type=int, default=0, help="fake engine reply length in words (default: ~24)")
    p.add_argument("--server-max-streams", type=int, default=0, help="server's max_concurrent_streams (default 2x)")
    p.add_argument("--recorder", choices=("prometheus", "null"), default="prometheus",
                   help="in-process server's metrics recorder (default prometheus, as served)")
    p.add_argument("--device", default="cpu", help="--inprocess real: cpu | cuda | auto")
    p.add_argument("--profile", default=None, help="cProfile the server process over the run into this file")
    p.add_argument("--gc-freeze", action=argparse.BooleanOptionalAction, default=True,
                   help="in-process modes: gc.freeze() in the server process after start-up, as "
                   "service/__main__.py does (default on)")
    p.add_argument("--event-loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                   help="the server process's event loop, as the service's event_loop setting (default auto: "
                   "uvloop where installed)")
    p.add_argument("--compare-bare", action="store_true",
                   help="--inprocess fake: first run the same load against the two bare grpc.aio floors and report "
                   "what the service adds to TTFT over each")
    p.add_argument("--compare-direct", action="store_true",
                   help="--inprocess real: first drive the same engine directly (no gRPC, no pipeline) with the "
                   "service's prompt at the same concurrency, and report the service's throughput as a share of it")
    p.add_argument("--json-out", type=Path, default=None, help="write the report as JSON here")
    return p


def options_from_args(argv: Sequence[str] | None = None) -> tuple[RunOptions, Path | None]:
    a = _parser().parse_args(argv)
    if a.token_rate <= 0 or a.client_procs < 1:
        raise ValueError("--token-rate and --client-procs must be positive")
    ramp = a.ramp
    if ramp is None:
        ramp = 1.0
        if a.inprocess in FAKE_KINDS:
            ramp = min(10.0, fake_stream_seconds(a.reply_words, a.token_rate))
    warmup = a.warmup if a.warmup is not None else max(2.0, ramp + 1.0)
    cfg = LoadConfig(
        concurrency=a.concurrency, duration_s=a.duration, warmup_s=warmup, ramp_s=ramp,
        cancel_prob=a.cancel_prob, cancel_max_messages=a.cancel_max_messages, deadline_s=a.deadline,
        channels=a.channels, max_calls=a.max_calls, seed=a.seed, instruction=a.instruction,
        max_tokens=a.max_tokens, retrieval_mode=a.mode,
        corpora=tuple(c for c in a.corpora.split(",") if c), top_k=a.top_k,
    )
    opts = RunOptions(
        cfg=cfg, target=a.target, inprocess=a.inprocess, client=a.client, client_procs=a.client_procs,
        token_rate=a.token_rate, reply_words=a.reply_words, server_max_streams=a.server_max_streams,
        recorder=a.recorder, device=a.device, profile=a.profile, compare_bare=a.compare_bare,
        gc_freeze=a.gc_freeze, event_loop=a.event_loop, compare_direct=a.compare_direct,
    )
    if a.target is not None:
        check_loopback(a.target)
    if a.compare_bare and a.inprocess != "fake":
        raise ValueError("--compare-bare goes with --inprocess fake")
    if a.compare_direct and a.inprocess != "real":
        raise ValueError("--compare-direct goes with --inprocess real")
    return opts, a.json_out


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts, json_out = options_from_args(argv)
    except ValueError as exc:
        print(f"bench/load: {exc}", file=sys.stderr)
        return 2
    from service.__main__ import event_loop_factory

    with asyncio.Runner(loop_factory=event_loop_factory(opts.event_loop)) as runner:
        report = runner.run(run_compared(opts) if opts.compare_bare else run(opts))
    print(format_table(report))
    if json_out is not None:
        json_out.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
