"""The request pipeline: retrieve -> prompt -> engine stream -> parse and validate, with timings.

It speaks only domain types (``GenerateParams`` in, ``PipelineEvent`` out); the gRPC layer
converts to and from protobuf. Cancellation flows straight through: when the caller stops
consuming ``generate`` (client gone, deadline), the engine stream is closed, which aborts the
engine request, and ``CancelledError`` propagates unchanged.

The verdict checks the answer's calls against the retrieved docs and the whole corpora the
sources came from (``apihelper.service.answers.corpus_cache``). It is computed after the last
delta, so it never delays the stream; the corpus catalog is started as soon as the sources are
known, so its read (after a re-ingest) overlaps generation instead of following it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from apihelper.errors import InvalidRequestError
from apihelper.retriever.types import ApiDoc, CorpusInfo, RetrievalMode, RetrievalResult, RetrievedDoc, Retriever
from apihelper.service.answers.check import CallCheck, CheckedAnswer, Verdict
from apihelper.service.answers.constraint import CallConstraints
from apihelper.service.answers.corpus_cache import CorpusCache, corpus_version
from apihelper.service.answers.parse import ParsedAnswer, parse_call
from apihelper.service.answers.repetition import RepetitionFilter
from apihelper.service.engine.protocol import (
    ApiChoice,
    Engine,
    EngineInfo,
    EngineRequest,
    FinishReason,
    GuidedDecoding,
    SamplingParams,
)
from apihelper.service.metrics import NullRecorder, Recorder
from apihelper.service.prompt_fit import PromptFitter
from apihelper.service.prompts import PromptFormat

MAX_KEY_CHARS = 120  # of an API key quoted in an error message


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
    # Only calls to real APIs in the call part of the answer (guided decoding). None: where the
    # engine can constrain and the docs give something to call.
    constrain_calls: bool | None = None
    # How a constrained answer's API is chosen; None: the engine's (its model's manifest).
    api_choice: ApiChoice | None = None
    # The prompt's docs as the caller gave them (an OpenAI request's ``tools``), instead of
    # retrieving; None: retrieve. Given docs belong to no corpus (``corpus == ""``): the verdict
    # checks calls against them alone.
    docs: tuple[RetrievedDoc, ...] | None = None


@dataclass(frozen=True)
class CheckParams:
    """A call the caller wrote itself, to be checked against one corpus."""

    call: str
    corpus: str
    question: str  # what the call is meant to do ("": not given); its docs are retrieved first
    top_k: int  # docs retrieved for the question


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
    calls_constrained: bool  # generated under the call grammar
    corpus_versions: dict[str, str]  # corpus -> last ingest time of the corpora the sources came from
    api_choice: ApiChoice | None = None  # how the API was chosen (constrained answers only)


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
    def __init__(
        self,
        retriever: Retriever,
        engine: Engine,
        recorder: Recorder | None = None,
        *,
        base_urls: Sequence[str] = (),
    ) -> None:
        """``base_urls``: where the documented APIs are served beside their specs' servers (the
        verdict flags calls to other hosts)."""
        self._retriever = retriever
        self._engine = engine
        self._recorder = recorder or NullRecorder()
        self._corpora = CorpusCache(retriever, base_urls=base_urls)
        self._constraints = CallConstraints(base_urls=base_urls)
        self._fitter = PromptFitter(engine)  # the tokenizer's work, in its own worker thread

    @property
    def engine_info(self) -> EngineInfo:
        """What is served: the model's name, prompt format and context length."""
        return self._engine.info

    async def close(self) -> None:
        """Stop the background work of the corpus cache (catalog builds)."""
        await self._corpora.close()
        self._fitter.close()

    async def list_corpora(self) -> list[CorpusInfo]:
        return await self._retriever.list_corpora()

    async def retrieve(self, params: RetrieveParams) -> RetrieveOutcome:
        clock = _Clock()
        result = await self._retrieve(params)
        return RetrieveOutcome(result.docs, _retrieval_timings(result, clock.ms()))

    async def get_api(self, corpus: str, key: str) -> ApiDoc:
        """One API's doc, as ingested: from the corpus catalog, or read when there is none yet."""
        catalog = await self._corpora.corpus_catalog(corpus)
        doc = catalog.get(key) if catalog is not None else None
        if doc is None and catalog is None:  # too big for a catalog, or still building
            doc = next((d for d in await self._retriever.corpus_docs(corpus) if d.key == key), None)
        if doc is None:
            shown = key if len(key) <= MAX_KEY_CHARS else key[:MAX_KEY_CHARS] + "..."
            raise InvalidRequestError("key", f"no API {shown!r} in the corpus {corpus!r}")
        return doc

    async def check_call(self, params: CheckParams) -> CheckedAnswer:
        """The verdict on a caller's own call, against the whole corpus; the docs retrieved for
        ``question`` are searched first, as the docs shown to the model are for a generated call."""
        catalog = await self._corpora.corpus_catalog(params.corpus)
        docs: list[RetrievedDoc] = []
        if params.question:
            retrieval = RetrieveParams(params.question, (params.corpus,), params.top_k, RetrievalMode.HYBRID)
            docs = (await self._retrieve(retrieval)).docs
        return await self._corpora.check_parsed(ParsedAnswer({}, [parse_call(params.call)]), docs, catalog)

    async def trim_texts(self, texts: Sequence[str], max_tokens: int) -> list[tuple[str, int]]:
        """``texts`` cut, in turn, to ``max_tokens`` in all by the engine's tokenizer: (text,
        tokens) each. Off the event loop."""
        return await self._fitter.trim(texts, max_tokens)

    async def generate(self, params: GenerateParams) -> AsyncGenerator[PipelineEvent, None]:
        clock = _Clock()
        info = self._engine.info
        if params.docs is None:
            result = await self._retrieve(params.retrieval)
        else:
            result = RetrievalResult(list(params.docs))
        retrieval = _retrieval_timings(result, clock.ms())

        fmt = params.prompt_format or info.prompt_format
        constrain = _constrain(params.constrain_calls, info.guided_decoding, info.kind)
        docs, prompt = await self._fitter.fit(
            fmt, params.retrieval.instruction, result.docs, params.sampling.max_tokens
        )
        sources = {d.corpus for d in docs if d.corpus}
        self._corpora.warm(sources)
        yield SourcesEvent(docs)
        question = params.retrieval.instruction
        choice = params.api_choice or info.api_choice
        guided = await self._call_grammar(fmt, docs, sources, question, choice) if constrain else None

        repeats = RepetitionFilter(enabled=params.suppress_repeated_lines)
        first_token_ms = queue_ms = 0.0
        finish = FinishReason.STOP
        prompt_tokens = completion_tokens = tokens_at_last_delta = 0
        last_delta_at = 0.0
        request = EngineRequest(params.request_id, prompt, params.sampling, guided)
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
        infos = await self._corpora.infos(sources)
        checked = await self._corpora.check(fmt, text, docs, infos, question=question)
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
            calls_constrained=guided is not None,
            api_choice=choice if guided is not None else None,
            corpus_versions={c: corpus_version(infos[c]) if c in infos else "" for c in sorted(sources)},
        )

    async def _retrieve(self, params: RetrieveParams) -> RetrievalResult:
        if params.mode is RetrievalMode.NONE:
            if params.corpora:
                # No docs, but the corpora named must exist, as in every other mode (NOT_FOUND).
                await self._retriever.retrieve(
                    params.instruction, corpora=params.corpora, top_k=0, mode=RetrievalMode.NONE
                )
            return RetrievalResult([])
        result = await self._retriever.retrieve(
            params.instruction,
            corpora=params.corpora or None,
            top_k=params.top_k,
            mode=params.mode,
        )
        self._recorder.retrieval(params.mode.value, result.embed_seconds, result.search_seconds, len(result.docs))
        return result

    async def _call_grammar(
        self, fmt: PromptFormat, docs: Sequence[RetrievedDoc], sources: set[str], question: str, choice: ApiChoice
    ) -> GuidedDecoding | None:
        """The grammar of the calls the answer may make (None: nothing in the docs to call),
        their arguments grounded in ``question``. ``choice`` retriever: only the top-ranked doc's
        API (the first doc that can be called), whatever the format."""
        if not docs:
            return None
        if choice is ApiChoice.RETRIEVER:
            for i in range(len(docs)):
                guided = await self._constraints.grammar(fmt, docs[i : i + 1], None, question)
                if guided is not None:
                    return guided
            return None
        catalog = None
        if fmt is PromptFormat.GORILLA_V0:  # its answers may name any API of the corpus
            catalog = await self._corpora.catalog(docs, await self._corpora.infos(sources))
        return await self._constraints.grammar(fmt, docs, catalog, question)


def _constrain(asked: bool | None, supported: bool, engine: str) -> bool:
    if asked and not supported:
        raise InvalidRequestError("constrain_calls", f"the {engine} engine cannot constrain decoding")
    return supported if asked is None else asked


def _retrieval_timings(result: RetrievalResult, retrieval_ms: float) -> Timings:
    return Timings(
        retrieval_ms=retrieval_ms,
        embed_ms=result.embed_seconds * 1000.0,
        search_ms=result.search_seconds * 1000.0,
    )
