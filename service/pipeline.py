"""The request pipeline: retrieve -> prompt -> engine stream -> parse and validate, with timings.

It speaks only domain types (``GenerateParams`` in, ``PipelineEvent`` out); the gRPC layer
converts to and from protobuf. Cancellation flows straight through: when the caller stops
consuming ``generate`` (client gone, deadline), the engine stream is closed, which aborts the
engine request, and ``CancelledError`` propagates unchanged.

The verdict checks the answer's calls against the retrieved docs and the whole corpora the
sources came from (``service.corpus_catalogs``). It is computed after the last delta, so it
never delays the stream; the corpus catalog is started as soon as the sources are known, so
its read (after a re-ingest) overlaps generation instead of following it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from retriever.types import CorpusInfo, RetrievalMode, RetrievalResult, RetrievedDoc, Retriever
from service.corpus_catalogs import CorpusCatalogs, CorpusVersion, corpus_version
from service.engine.protocol import Engine, EngineRequest, FinishReason, SamplingParams
from service.errors import InvalidRequestError
from service.metrics import NullRecorder, Recorder
from service.prompts import PromptFormat, build_prompt
from service.repetition import RepetitionFilter
from service.validation import CallCheck, CheckedAnswer, Verdict, check_answer

# How long corpus versions (last ingest times) are reused before Milvus is asked again.
CORPUS_VERSIONS_TTL_SECONDS = 5.0
# How long a completion waits for its corpus catalog (only the first requests after a re-ingest
# wait: reading runs at ~4000 docs/s on 2 cores, and started with the sources). Past it the
# answer is checked against the retrieved docs only, and says so, while the build goes on.
CATALOG_WAIT_SECONDS = 10.0
# Answers are checked on the event loop against catalogs up to this size (a few ms: an unknown API
# is compared with every key, ~3 us each); against bigger ones in a worker thread.
INLINE_CHECK_MAX_DOCS = 2000


@dataclass(frozen=True)
class RetrieveParams:
    instruction: str
    corpora: tuple[str, ...]  # empty: every corpus
    top_k: int
    mode: RetrievalMode


@dataclass(frozen=True)
class GenerateParams:
    retrieval: RetrieveParams
    sampling: SamplingParams
    prompt_format: PromptFormat | None  # None: the model's own
    request_id: str
    suppress_repeated_lines: bool = True


@dataclass(frozen=True)
class Timings:
    retrieval_ms: float = 0.0
    embed_ms: float = 0.0
    search_ms: float = 0.0
    queue_ms: float = 0.0
    first_token_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True)
class SourcesEvent:
    docs: list[RetrievedDoc]


@dataclass(frozen=True)
class DeltaEvent:
    text: str


@dataclass(frozen=True)
class CompletionEvent:
    request_id: str
    finish_reason: FinishReason
    text: str
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    checks: list[CallCheck]  # one per call read from the answer, with its verdict
    fields: dict[str, str]
    model: str
    prompt_format: PromptFormat
    verdict: Verdict
    verdict_reasons: tuple[str, ...]
    suppressed_lines: int
    sampling: SamplingParams  # as applied, defaults filled in
    corpus_versions: dict[str, str]  # corpus -> last ingest time of the corpora the sources came from


PipelineEvent = SourcesEvent | DeltaEvent | CompletionEvent


@dataclass(frozen=True)
class RetrieveOutcome:
    docs: list[RetrievedDoc]
    timings: Timings


@dataclass
class _Clock:
    start: float = field(default_factory=time.perf_counter)

    def ms(self) -> float:
        return (time.perf_counter() - self.start) * 1000.0


class Pipeline:
    def __init__(self, retriever: Retriever, engine: Engine, recorder: Recorder | None = None) -> None:
        self._retriever = retriever
        self._engine = engine
        self._recorder = recorder or NullRecorder()
        self._catalogs = CorpusCatalogs(retriever)
        self._infos: dict[str, CorpusInfo] = {}  # corpus -> as last listed
        self._infos_at = float("-inf")
        self._infos_lock = asyncio.Lock()  # one list_corpora at a time; the others use its answer
        self._background: set[asyncio.Task[None]] = set()  # strong references to warm-ups

    @property
    def engine(self) -> Engine:
        return self._engine

    async def list_corpora(self) -> list[CorpusInfo]:
        return await self._retriever.list_corpora()

    async def retrieve(self, params: RetrieveParams) -> RetrieveOutcome:
        clock = _Clock()
        result = await self._retrieve(params)
        return RetrieveOutcome(result.docs, _retrieval_timings(result, clock.ms()))

    async def generate(self, params: GenerateParams) -> AsyncGenerator[PipelineEvent, None]:
        clock = _Clock()
        info = self._engine.info
        result = await self._retrieve(params.retrieval)
        retrieval = _retrieval_timings(result, clock.ms())

        fmt = params.prompt_format or info.prompt_format
        docs, prompt = self._fit_prompt(fmt, params.retrieval.instruction, result.docs, params.sampling)
        sources = {d.corpus for d in docs}
        self._warm_catalog(sources)
        yield SourcesEvent(docs)

        repeats = RepetitionFilter(enabled=params.suppress_repeated_lines)
        first_token_ms = queue_ms = 0.0
        finish = FinishReason.STOP
        prompt_tokens = completion_tokens = tokens_at_last_delta = 0
        last_delta_at = 0.0
        request = EngineRequest(params.request_id, prompt, params.sampling)
        # aclosing: leaving early (a stop below, an error, or our own consumer closing us)
        # releases the engine request now, not whenever the generator is garbage-collected.
        async with contextlib.aclosing(self._engine.stream(request)) as stream:
            async for out in stream:
                if out.queue_seconds is not None:
                    queue_ms = out.queue_seconds * 1000.0
                    self._recorder.queue_time(out.queue_seconds)
                prompt_tokens, completion_tokens = out.prompt_tokens, out.completion_tokens
                if out.finish_reason is not None:
                    finish = out.finish_reason
                if not out.text_delta:
                    continue
                # Latency is the engine's: a suppressed repeat was still generated.
                now = time.perf_counter()
                if not last_delta_at:
                    first_token_ms = clock.ms()
                    self._recorder.first_token(first_token_ms / 1000.0)
                else:
                    self._recorder.inter_token(now - last_delta_at, completion_tokens - tokens_at_last_delta)
                last_delta_at, tokens_at_last_delta = now, completion_tokens
                shown = repeats.feed(out.text_delta)
                if shown:
                    yield DeltaEvent(shown)
                if repeats.should_stop:
                    finish = FinishReason.STOP
                    break
        tail = repeats.flush()
        if tail:
            yield DeltaEvent(tail)

        text = repeats.text  # exactly what the client was sent
        infos = await self._corpus_infos(sources)
        checked = await self._check(fmt, text, docs, infos)
        timings = Timings(
            retrieval_ms=retrieval.retrieval_ms,
            embed_ms=retrieval.embed_ms,
            search_ms=retrieval.search_ms,
            queue_ms=queue_ms,
            first_token_ms=first_token_ms,
            total_ms=clock.ms(),
        )
        self._recorder.generation_finished(timings.total_ms / 1000.0, prompt_tokens, completion_tokens, finish.value)
        yield CompletionEvent(
            request_id=params.request_id,
            finish_reason=finish,
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            timings=timings,
            checks=checked.checks,
            fields=checked.fields,
            model=info.model,
            prompt_format=fmt,
            verdict=checked.verdict,
            verdict_reasons=checked.reasons,
            suppressed_lines=repeats.suppressed_lines,
            sampling=params.sampling,
            corpus_versions={c: corpus_version(infos[c]) if c in infos else "" for c in sorted(sources)},
        )

    async def _check(
        self, fmt: PromptFormat, text: str, docs: Sequence[RetrievedDoc], infos: dict[str, CorpusInfo]
    ) -> CheckedAnswer:
        """The verdict, against the retrieved docs and the catalog of the sources' corpora (the
        retrieved docs only when that catalog cannot be had; the reasons then say so)."""
        corpora = {d.corpus for d in docs}
        catalog = None
        if corpora and corpora <= set(infos):  # a corpus not listed (dropped) has no catalog
            catalog = await self._catalogs.get(
                (CorpusVersion.of(infos[c]) for c in corpora), timeout_s=CATALOG_WAIT_SECONDS
            )
        if catalog is not None and len(catalog) > INLINE_CHECK_MAX_DOCS:
            return await asyncio.to_thread(check_answer, fmt, text, docs, catalog)
        return check_answer(fmt, text, docs, catalog)

    def _warm_catalog(self, corpora: set[str]) -> None:
        """Start the catalog of ``corpora`` now, so that a read after a re-ingest overlaps
        generation; the completion waits for the same shared build."""
        if not corpora:
            return
        if self._infos_fresh(corpora):
            self._catalogs.warm(CorpusVersion.of(self._infos[c]) for c in corpora)
            return

        async def warm() -> None:
            try:
                infos = await self._corpus_infos(corpora)
            except Exception:  # noqa: BLE001 - the completion asks again and reports it there
                return
            if corpora <= set(infos):
                self._catalogs.warm(CorpusVersion.of(i) for i in infos.values())

        task = asyncio.create_task(warm(), name="apihelper-catalog-warm-up")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _infos_fresh(self, corpora: set[str]) -> bool:
        return time.monotonic() - self._infos_at <= CORPUS_VERSIONS_TTL_SECONDS and corpora <= set(self._infos)

    async def _corpus_infos(self, corpora: set[str]) -> dict[str, CorpusInfo]:
        """The listed info (version: last ingest time) of each of ``corpora`` that exists, cached
        briefly: a re-ingest shows within seconds."""
        if not corpora:
            return {}
        if not self._infos_fresh(corpora):
            async with self._infos_lock:
                if not self._infos_fresh(corpora):  # not refreshed while this request waited
                    infos = await self._retriever.list_corpora()
                    self._infos = {i.name: i for i in infos}
                    self._infos_at = time.monotonic()
                    self._catalogs.keep_only(self._infos)
        return {c: self._infos[c] for c in corpora if c in self._infos}

    async def _retrieve(self, params: RetrieveParams) -> RetrievalResult:
        if params.mode is RetrievalMode.NONE:
            return RetrievalResult([])
        result = await self._retriever.retrieve(
            params.instruction,
            corpora=params.corpora or None,
            top_k=params.top_k,
            mode=params.mode,
        )
        self._recorder.retrieval(params.mode.value, result.embed_seconds, result.search_seconds, len(result.docs))
        return result

    def _fit_prompt(
        self,
        fmt: PromptFormat,
        instruction: str,
        docs: Sequence[RetrievedDoc],
        sampling: SamplingParams,
    ) -> tuple[list[RetrievedDoc], str]:
        """The prompt with as many docs (best first) as fit beside ``max_tokens``.

        Dropping the weakest docs beats failing the request: the best match carries most of
        the value (Gorilla's paper: the retriever's top document is what the model follows).
        """
        budget = self._engine.info.max_model_len - sampling.max_tokens
        kept = list(docs)
        while True:
            prompt = build_prompt(fmt, instruction, kept)
            if self._engine.count_tokens(prompt) <= budget:
                return kept, prompt
            if not kept:
                raise InvalidRequestError(
                    "sampling.max_tokens",
                    f"the instruction plus max_tokens={sampling.max_tokens} exceeds the model's "
                    f"context of {self._engine.info.max_model_len} tokens",
                )
            kept.pop()


def _retrieval_timings(result: RetrievalResult, retrieval_ms: float) -> Timings:
    return Timings(
        retrieval_ms=retrieval_ms,
        embed_ms=result.embed_seconds * 1000.0,
        search_ms=result.search_seconds * 1000.0,
    )
