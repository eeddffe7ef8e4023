"""Ask each question through a live apihelper service (``eval-answers --target``): the same
Generate request a user sends, a bounded number at a time, each with its own deadline.

:func:`generate_request` is the one place a question becomes a request (a pure function of the
question and :class:`RequestOptions`), so a new request option is a field there and a line here.
:func:`ask_all` runs the questions with at most ``concurrency`` streams open, reports each
finished one to a callback (the progress bar), and never raises for one question: a failed call
is a :class:`Generation` with its ``error`` (the error class the status maps back to, via
:func:`apihelper.grpc_status.error_from_status`, and the status code).

Timings: ``ttft_ms`` is measured here, from sending the request to the first text delta (what
a user waits for, transport included); ``total_ms`` until the stream ends. The server's own
breakdown (``server_first_token_ms``, ``server_total_ms``) comes from the completion.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from apihelper.build.evaluation.questions import Question
from apihelper.build.evaluation.verdicts import AnswerVerdict, CallVerdict
from apihelper.grpc_status import error_from_status
from apihelper.service.prompts import PromptFormat
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc

RETRIEVAL_MODES = {
    "hybrid": pb.RETRIEVAL_MODE_HYBRID,
    "dense": pb.RETRIEVAL_MODE_DENSE,
    "keyword": pb.RETRIEVAL_MODE_KEYWORD,
    "none": pb.RETRIEVAL_MODE_NONE,
}
PROMPT_FORMATS = {
    "auto": pb.PROMPT_FORMAT_UNSPECIFIED,
    "gorilla_v0": pb.PROMPT_FORMAT_GORILLA_V0,
    "openfunctions_v2": pb.PROMPT_FORMAT_OPENFUNCTIONS_V2,
    "chat_tools": pb.PROMPT_FORMAT_CHAT_TOOLS,
}
_FORMAT_OF_WIRE = {
    pb.PROMPT_FORMAT_GORILLA_V0: PromptFormat.GORILLA_V0,
    pb.PROMPT_FORMAT_OPENFUNCTIONS_V2: PromptFormat.OPENFUNCTIONS_V2,
    pb.PROMPT_FORMAT_CHAT_TOOLS: PromptFormat.CHAT_TOOLS,
}


@dataclass(frozen=True)
class RequestOptions:
    """Everything of a Generate request that is not the question (None: the server's default)."""

    mode: str = "hybrid"
    top_k: int | None = None
    prompt_format: str = "auto"
    corpora: tuple[str, ...] = ()  # empty: the question's own corpus where it names one, else all
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    sampling_top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    constrain_calls: bool | None = None  # None: the server's default (on where its engine can)
    api_choice: str = "auto"  # "model" | "retriever"; auto: the model's manifest


API_CHOICES = {"model": pb.API_CHOICE_MODEL, "retriever": pb.API_CHOICE_RETRIEVER}


def generate_request(question: Question, options: RequestOptions) -> pb.GenerateRequest:
    """The Generate request for one question (request_id = the question's id)."""
    corpora = options.corpora or ((question.corpus,) if question.corpus else ())
    retrieval = pb.RetrievalOptions(corpora=list(corpora), mode=RETRIEVAL_MODES[options.mode])
    if options.top_k is not None:
        retrieval.top_k = options.top_k
    sampling = pb.SamplingParams(stop=list(options.stop))
    if options.max_tokens is not None:
        sampling.max_tokens = options.max_tokens
    if options.temperature is not None:
        sampling.temperature = options.temperature
    if options.top_p is not None:
        sampling.top_p = options.top_p
    if options.sampling_top_k is not None:
        sampling.top_k = options.sampling_top_k
    if options.seed is not None:
        sampling.seed = options.seed
    request = pb.GenerateRequest(
        instruction=question.text,
        retrieval=retrieval,
        sampling=sampling,
        prompt_format=PROMPT_FORMATS[options.prompt_format],
        request_id=question.id,
    )
    if options.constrain_calls is not None:
        request.constrain_calls = options.constrain_calls
    if options.api_choice != "auto":
        request.api_choice = API_CHOICES[options.api_choice]
    return request


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Generation:
    """What the service answered to one question (``text`` None when the call failed)."""

    question_id: str
    text: str | None = None
    prompt_format: PromptFormat | None = None  # the format the answer was generated in
    verdict: AnswerVerdict | None = None  # the completion's
    sources: tuple[str, ...] = ()  # keys of the retrieved docs, best first
    finish_reason: str = ""
    ttft_ms: float | None = None
    total_ms: float | None = None
    server_first_token_ms: float | None = None
    server_total_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls_constrained: bool = False  # generated under the call grammar
    error: str | None = None


def _verdict_name(value: int) -> str:
    return pb.Verdict.Name(value).removeprefix("VERDICT_").lower()


def verdict_of(completion: pb.Completion) -> AnswerVerdict:
    calls = tuple(
        CallVerdict(c.name, c.matched_key, _verdict_name(c.verdict), tuple(c.reasons)) for c in completion.api_calls
    )
    return AnswerVerdict(_verdict_name(completion.verdict), calls)


def generation_of(
    question_id: str, completion: pb.Completion, sources: Sequence[str], ttft_ms: float | None, total_ms: float
) -> Generation:
    return Generation(
        question_id=question_id,
        text=completion.text,
        prompt_format=_FORMAT_OF_WIRE.get(completion.prompt_format),
        verdict=verdict_of(completion),
        sources=tuple(sources),
        finish_reason=pb.FinishReason.Name(completion.finish_reason).removeprefix("FINISH_REASON_").lower(),
        ttft_ms=ttft_ms,
        total_ms=total_ms,
        server_first_token_ms=completion.timings.first_token_ms,
        server_total_ms=completion.timings.total_ms,
        prompt_tokens=completion.usage.prompt_tokens,
        calls_constrained=completion.calls_constrained,
        completion_tokens=completion.usage.completion_tokens,
    )


# ---------------------------------------------------------------------------------------------- the calls


@dataclass(frozen=True)
class ChannelOptions:
    """Where the service is and how to reach it, as ``apihelper-client`` takes it."""

    target: str
    tls: bool = False
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    token: str | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def open_channel(options: ChannelOptions) -> grpc.aio.Channel:
    if not (options.tls or options.ca_cert):
        return grpc.aio.insecure_channel(options.target)
    root = options.ca_cert.read_bytes() if options.ca_cert else None
    key = options.client_key.read_bytes() if options.client_key else None
    chain = options.client_cert.read_bytes() if options.client_cert else None
    return grpc.aio.secure_channel(options.target, grpc.ssl_channel_credentials(root, key, chain))


async def ask_one(
    stub: pb_grpc.ApiHelperAsyncStub,
    question: Question,
    options: RequestOptions,
    *,
    timeout_s: float,
    metadata: tuple[tuple[str, str], ...] = (),
) -> Generation:
    """One question through Generate; a failed call is a Generation with ``error``, never an exception."""
    started = time.perf_counter()
    ttft_ms: float | None = None
    sources: list[str] = []
    try:
        async for message in stub.Generate(generate_request(question, options), timeout=timeout_s, metadata=metadata):
            event = message.WhichOneof("event")
            if event == "sources":
                sources = [s.key for s in message.sources.sources]
            elif event == "delta" and ttft_ms is None and message.delta.text:
                ttft_ms = (time.perf_counter() - started) * 1000.0
            elif event == "completion":
                total_ms = (time.perf_counter() - started) * 1000.0
                return generation_of(question.id, message.completion, sources, ttft_ms, total_ms)
    except grpc.aio.AioRpcError as exc:
        error = error_from_status(exc.code(), exc.details() or "")
        return Generation(
            question.id,
            error=f"{exc.code().name} ({type(error).__name__}): {error}",
            total_ms=(time.perf_counter() - started) * 1000.0,
        )
    return Generation(question.id, error="the stream ended without a completion")


async def ask_all(
    channel: grpc.aio.Channel,
    questions: Sequence[Question],
    options: RequestOptions,
    *,
    concurrency: int = 4,
    timeout_s: float = 300.0,
    metadata: tuple[tuple[str, str], ...] = (),
    on_done: Callable[[Generation], None] | None = None,
) -> tuple[list[Generation], float]:
    """Every question, at most ``concurrency`` at a time; the generations in question order and the
    wall-clock seconds the whole run took."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    stub = pb_grpc.ApiHelperStub(channel)
    gate = asyncio.Semaphore(concurrency)

    async def one(question: Question) -> Generation:
        async with gate:
            generation = await ask_one(stub, question, options, timeout_s=timeout_s, metadata=metadata)
        if on_done is not None:
            on_done(generation)
        return generation

    started = time.perf_counter()
    generations = await asyncio.gather(*(one(q) for q in questions))
    return list(generations), time.perf_counter() - started


__all__ = [
    "PROMPT_FORMATS",
    "RETRIEVAL_MODES",
    "ChannelOptions",
    "Generation",
    "RequestOptions",
    "ask_all",
    "ask_one",
    "generate_request",
    "generation_of",
    "open_channel",
    "verdict_of",
]
