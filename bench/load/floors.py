"""In-process servers to measure against: the service around a timed fake (or real) engine, and the bare floors."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from apihelper.bench.load.config import LoadConfig
from apihelper.retriever.memory import MemoryRetriever
from apihelper.retriever.types import (
    ApiDoc,
    RetrievalMode,
    RetrievalResult,
    RetrievedDoc,
)
from apihelper.service.engine.config import TransformersConfig
from apihelper.service.engine.protocol import (
    Engine,
    EngineInfo,
    EngineOutput,
    EngineRequest,
    EngineStats,
    SamplingParams,
)
from apihelper.service.prompts import ChatPrompt
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc

# In-process modes around the fake engine: the service, and the two floors it is compared with.
FAKE_KINDS = ("fake", "bare", "bare-engine")


# request id -> (handler reached the retriever, engine.stream called, engine's first token), in
# perf_counter seconds; the first is NaN where the retriever is not ours.
Marks = dict[str, tuple[float, float, float]]


class TimedEngine:
    """An ``Engine`` that forwards to another and notes, per request id, when ``stream`` was
    called and when its first text came out (perf_counter), for the TTFT breakdown. When the
    retriever is a :class:`TimedRetriever` sharing ``retrieval_started``, the time the same
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

    def render_chat(self, prompt: ChatPrompt) -> str:
        return self._inner.render_chat(prompt)

    def stream(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        # A plain function: the retrieval mark belongs to the task that calls it (the handler's,
        # which retrieved), whichever task first runs the generator.
        called = time.perf_counter()
        retrieval = math.nan
        if self._retrieval_started is not None:
            retrieval = self._retrieval_started.pop(asyncio.current_task(), math.nan)
        return self._stream(request, called, retrieval)

    async def _stream(
        self, request: EngineRequest, called: float, retrieval: float
    ) -> AsyncGenerator[EngineOutput, None]:
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


class TimedRetriever(MemoryRetriever):
    """The in-memory retriever over the sample corpus, noting when each request's task reached it
    (for the handler -> engine share of the TTFT overhead)."""

    def __init__(self, docs: Sequence[ApiDoc]) -> None:
        super().__init__(docs)
        self.started: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()  # task -> when

    async def retrieve(
        self, query: str, *, corpora: Sequence[str] | None, top_k: int, mode: RetrievalMode
    ) -> RetrievalResult:
        task = asyncio.current_task()
        if task is not None:
            self.started[task] = time.perf_counter()
        return await super().retrieve(query, corpora=corpora, top_k=top_k, mode=mode)


class BareServicer(pb_grpc.ApiHelperServicer):
    """The floors to compare the service with: a bare grpc.aio handler that streams the same
    messages (sources, one delta per token every ``delay`` s, a completion) with no pipeline,
    validation, limits or metrics. With ``engine`` the deltas are the outputs of that engine
    (the ``FakeEngine`` the service is measured with, on the same prompt), so the engine's own
    cost is in the floor too. What the real servicer costs beyond it is the service's own."""

    def __init__(
        self, docs: Sequence[ApiDoc], reply: str, delay: float, marks: Marks, engine: Engine | None = None
    ) -> None:
        from apihelper.service.engine.fake import pieces
        from apihelper.service.prompts import gorilla_v0_prompt

        self._sources = pb.Sources(
            sources=[pb.Source(key=d.key, corpus="demo", title=d.title, score=1.0, text=d.text) for d in docs[:3]]
        )
        self._reply = reply
        self._pieces = pieces(reply)
        self._delay = delay
        self._marks = marks
        self._engine = engine
        retrieved = [RetrievedDoc(d, "demo", 1.0) for d in docs[:3]]
        self._prompt = gorilla_v0_prompt("Create a new session", retrieved)

    async def Generate(self, request: pb.GenerateRequest, context: Any) -> AsyncGenerator[pb.GenerateResponse, None]:
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

    async def _from_engine(
        self, request: pb.GenerateRequest, called: float
    ) -> AsyncGenerator[pb.GenerateResponse, None]:
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
    http_port: int = 0  # the service's HTTP front end (0: none, as for the bare floors)


def fake_reply(words: int = 0) -> str:
    """The fake engine's answer: its default Gorilla reply, or that text repeated to ``words`` words."""
    from apihelper.service.engine.fake import GORILLA_V0_REPLY

    if words <= 0:
        return GORILLA_V0_REPLY
    parts = GORILLA_V0_REPLY.split(" ")
    return " ".join((parts * (words // len(parts) + 1))[:words])


def fake_stream_seconds(words: int, token_rate: float) -> float:
    """How long one fake-engine stream lasts: a step per token plus the step that finds the end."""
    from apihelper.service.engine.fake import pieces

    return (len(pieces(fake_reply(words))) + 1) / token_rate


def _sample_docs() -> list[ApiDoc]:
    from apihelper.retriever.loaders import load_corpus
    from apihelper.retriever.samples import sample_corpus_path

    _, loaded = load_corpus(sample_corpus_path(), None)
    return loaded.docs


def _recorder(kind: str, engine: Engine, embedding_model: str) -> Any:
    from apihelper.service.metrics import NullRecorder

    if kind == "null":
        return NullRecorder()
    from apihelper.service.metrics.prometheus import PrometheusRecorder

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
    kind: str,
    *,
    token_rate: float,
    reply_words: int,
    max_streams: int,
    recorder: str,
    device: str,
    work_dir: Path,
    cfg: LoadConfig | None = None,
) -> InProcessServer:
    """Start the real gRPC server in this process around the fake or the real engine."""
    from apihelper.service.frontends import start_server
    from apihelper.service.http.server import bind
    from apihelper.service.settings import Settings

    # One client channel carries every stream here: the per-connection and per-address limits (a
    # defence against one hostile peer) are lifted to the server's whole limit.
    settings = Settings(
        port=0,
        http_port=0,
        max_concurrent_streams=max_streams,
        max_streams_per_connection=max_streams,
        max_streams_per_peer=0,
        metrics_port=0,
        shutdown_grace_seconds=2.0,
    )
    if kind in FAKE_KINDS:
        from apihelper.service.engine.fake import FakeEngine

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
        static = TimedRetriever(_sample_docs())
        fake = FakeEngine(reply, token_delay_s=delay)
        timed = TimedEngine(fake, static.started)
        running = await start_server(
            settings, timed, static, _recorder(recorder, timed, "none"), http_socket=bind("127.0.0.1", 0)
        )

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
        return InProcessServer(running.port, timed.marks, delay, desc, stop_fake, http_port=running.http_port)

    from apihelper.build.dev_model import make_dev_model
    from apihelper.retriever.embedding import Embedder
    from apihelper.retriever.ingest import ingest_corpus
    from apihelper.retriever.milvus_retriever import open_retriever
    from apihelper.retriever.milvus_store import MilvusStore
    from apihelper.retriever.samples import sample_corpus_path
    from apihelper.service.engine.transformers_engine import TransformersEngine

    model_dir = work_dir / "dev-model"
    make_dev_model(model_dir, (d.text for d in _sample_docs()))
    uri = str(work_dir / "milvus.db")
    embedder = await asyncio.to_thread(Embedder)
    store = MilvusStore(uri, "")
    await asyncio.to_thread(ingest_corpus, store, embedder, "demo", sample_corpus_path(), None, False)
    store.close()
    retriever = await open_retriever(uri, "", embedder)
    real_engine = await TransformersEngine.load(model_dir, TransformersConfig(device=device))
    timed = TimedEngine(real_engine)
    running = await start_server(
        settings, timed, retriever, _recorder(recorder, timed, embedder.model_name), http_socket=bind("127.0.0.1", 0)
    )
    desc = f"in-process server, transformers dev model on {device}, Milvus Lite with the sample corpus"
    return InProcessServer(
        running.port,
        timed.marks,
        None,
        desc,
        running.stop,
        engine=real_engine,
        prompt=await _service_prompt(retriever, real_engine, cfg or LoadConfig(concurrency=1, duration_s=1.0)),
        default_max_tokens=min(settings.default_max_tokens, real_engine.info.max_model_len // 2),
        http_port=running.http_port,
    )


async def _service_prompt(retriever: Any, engine: Engine, cfg: LoadConfig) -> str:
    """The prompt the service builds for the load's requests (instruction and retrieval options)."""
    from apihelper.retriever.types import RetrievalMode
    from apihelper.service.prompt_fit import prompt_text
    from apihelper.service.prompts import build_prompt
    from apihelper.service.settings import Settings

    docs = []
    mode = RetrievalMode(cfg.retrieval_mode)
    if mode is not RetrievalMode.NONE:
        result = await retriever.retrieve(
            cfg.instruction, corpora=cfg.corpora or None, top_k=cfg.top_k or Settings().default_top_k, mode=mode
        )
        docs = result.docs
    return prompt_text(engine, build_prompt(engine.info.prompt_format, cfg.instruction, docs))


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
