"""Pure conversions between apihelper.v1 protobuf messages and domain types.

Inbound conversions validate and name the offending field (``InvalidRequestError``); outbound
ones never fail. The HTTP front end reuses them (its JSON is these messages in protobuf's JSON
mapping), so a request means the same and is validated the same over either protocol.
"""

from __future__ import annotations

import math
import uuid

from apihelper.errors import InvalidRequestError
from apihelper.retriever.types import CorpusInfo, RetrievalMode, RetrievedDoc
from apihelper.service.answers.check import CallCheck, Verdict
from apihelper.service.core import RequestLimits
from apihelper.service.engine.protocol import ApiChoice, FinishReason, SamplingParams
from apihelper.service.pipeline import (
    CompletionEvent,
    DeltaEvent,
    GenerateParams,
    PipelineEvent,
    RetrieveOutcome,
    RetrieveParams,
    SourcesEvent,
    Timings,
)
from apihelper.service.prompts import PromptFormat
from apihelper.v1 import apihelper_pb2 as pb

_MODES = {
    pb.RETRIEVAL_MODE_UNSPECIFIED: RetrievalMode.HYBRID,
    pb.RETRIEVAL_MODE_HYBRID: RetrievalMode.HYBRID,
    pb.RETRIEVAL_MODE_DENSE: RetrievalMode.DENSE,
    pb.RETRIEVAL_MODE_KEYWORD: RetrievalMode.KEYWORD,
    pb.RETRIEVAL_MODE_NONE: RetrievalMode.NONE,
}
_FORMATS_IN: dict[pb.PromptFormat, PromptFormat | None] = {
    pb.PROMPT_FORMAT_UNSPECIFIED: None,
    pb.PROMPT_FORMAT_GORILLA_V0: PromptFormat.GORILLA_V0,
    pb.PROMPT_FORMAT_OPENFUNCTIONS_V2: PromptFormat.OPENFUNCTIONS_V2,
    pb.PROMPT_FORMAT_CHAT_TOOLS: PromptFormat.CHAT_TOOLS,
}
_FORMATS_OUT: dict[PromptFormat, pb.PromptFormat] = {fmt: code for code, fmt in _FORMATS_IN.items() if fmt is not None}
_FINISH = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
}
_VERDICTS = {
    Verdict.VALID: pb.VERDICT_VALID,
    Verdict.WRONG_ARGUMENTS: pb.VERDICT_WRONG_ARGUMENTS,
    Verdict.UNKNOWN_API: pb.VERDICT_UNKNOWN_API,
    Verdict.UNPARSEABLE: pb.VERDICT_UNPARSEABLE,
    Verdict.UNCHECKED: pb.VERDICT_UNCHECKED,
    Verdict.UNGROUNDED: pb.VERDICT_UNGROUNDED,
}
_MAX_STOP_STRINGS = 16
_MAX_STOP_CHARS = 256
_MAX_CORPORA = 64
_MAX_REQUEST_ID_CHARS = 128


# -- inbound -----------------------------------------------------------------------------------


def retrieve_params(request: pb.RetrieveRequest, limits: RequestLimits) -> RetrieveParams:
    return _retrieve_params(request.instruction, request.retrieval, limits)


def generate_params(request: pb.GenerateRequest, limits: RequestLimits) -> GenerateParams:
    retrieval = _retrieve_params(request.instruction, request.retrieval, limits)
    if request.prompt_format not in _FORMATS_IN:
        raise InvalidRequestError("prompt_format", f"unknown value {request.prompt_format}")
    request_id = request.request_id or uuid.uuid4().hex
    if len(request_id) > _MAX_REQUEST_ID_CHARS or not request_id.isprintable():
        raise InvalidRequestError("request_id", f"must be printable and at most {_MAX_REQUEST_ID_CHARS} characters")
    return GenerateParams(
        retrieval=retrieval,
        sampling=_sampling(request.sampling, limits),
        prompt_format=_FORMATS_IN[request.prompt_format],
        request_id=request_id,
        suppress_repeated_lines=(
            request.suppress_repeated_lines if request.HasField("suppress_repeated_lines") else True
        ),
        constrain_calls=request.constrain_calls if request.HasField("constrain_calls") else None,
        api_choice=_api_choice(request.api_choice),
    )


_CHOICES_OUT = {ApiChoice.MODEL: pb.API_CHOICE_MODEL, ApiChoice.RETRIEVER: pb.API_CHOICE_RETRIEVER}
_CHOICES_IN: dict[pb.ApiChoice, ApiChoice | None] = {
    pb.API_CHOICE_UNSPECIFIED: None,
    **{v: k for k, v in _CHOICES_OUT.items()},
}


def _api_choice(value: pb.ApiChoice) -> ApiChoice | None:
    if value not in _CHOICES_IN:
        raise InvalidRequestError("api_choice", f"unknown value {value}")
    return _CHOICES_IN[value]


def _retrieve_params(instruction: str, options: pb.RetrievalOptions, limits: RequestLimits) -> RetrieveParams:
    if not instruction.strip():
        raise InvalidRequestError("instruction", "must not be empty")
    size = len(instruction.encode("utf-8", errors="surrogatepass"))
    if size > limits.max_instruction_bytes:
        raise InvalidRequestError("instruction", f"is {size} bytes, over the limit of {limits.max_instruction_bytes}")
    top_k = options.top_k if options.HasField("top_k") else limits.default_top_k
    if not 1 <= top_k <= limits.max_top_k:
        raise InvalidRequestError("retrieval.top_k", f"must be between 1 and {limits.max_top_k}, got {top_k}")
    if options.mode not in _MODES:
        raise InvalidRequestError("retrieval.mode", f"unknown value {options.mode}")
    if len(options.corpora) > _MAX_CORPORA:
        raise InvalidRequestError("retrieval.corpora", f"at most {_MAX_CORPORA} corpora")
    corpora = tuple(dict.fromkeys(c.strip() for c in options.corpora))
    if any(not c for c in corpora):
        raise InvalidRequestError("retrieval.corpora", "corpus names must not be empty")
    return RetrieveParams(instruction=instruction, corpora=corpora, top_k=top_k, mode=_MODES[options.mode])


def _sampling(s: pb.SamplingParams, limits: RequestLimits) -> SamplingParams:
    max_tokens = s.max_tokens if s.HasField("max_tokens") else limits.default_max_tokens
    if not 1 <= max_tokens < limits.max_model_len:
        raise InvalidRequestError(
            "sampling.max_tokens",
            f"must be between 1 and {limits.max_model_len - 1} (the model's context), got {max_tokens}",
        )
    temperature = s.temperature if s.HasField("temperature") else 0.0
    if not math.isfinite(temperature) or not 0.0 <= temperature <= 2.0:
        raise InvalidRequestError("sampling.temperature", f"must be between 0 and 2, got {temperature}")
    top_p = s.top_p if s.HasField("top_p") else 1.0
    if not math.isfinite(top_p) or not 0.0 < top_p <= 1.0:
        raise InvalidRequestError("sampling.top_p", f"must be in (0, 1], got {top_p}")
    top_k = s.top_k if s.HasField("top_k") else 0
    if top_k > 1000:
        raise InvalidRequestError("sampling.top_k", f"must be at most 1000, got {top_k}")
    if len(s.stop) > _MAX_STOP_STRINGS or any(not 0 < len(x) <= _MAX_STOP_CHARS for x in s.stop):
        raise InvalidRequestError(
            "sampling.stop", f"at most {_MAX_STOP_STRINGS} non-empty strings of up to {_MAX_STOP_CHARS} characters"
        )
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
    )


# -- outbound ----------------------------------------------------------------------------------


def source_pb(doc: RetrievedDoc) -> pb.Source:
    return pb.Source(key=doc.doc.key, corpus=doc.corpus, title=doc.doc.title, score=doc.score, text=doc.doc.text)


def timings_pb(t: Timings) -> pb.Timings:
    return pb.Timings(
        retrieval_ms=t.retrieval_ms,
        embed_ms=t.embed_ms,
        search_ms=t.search_ms,
        queue_ms=t.queue_ms,
        first_token_ms=t.first_token_ms,
        total_ms=t.total_ms,
    )


def retrieve_response(outcome: RetrieveOutcome) -> pb.RetrieveResponse:
    return pb.RetrieveResponse(sources=[source_pb(d) for d in outcome.docs], timings=timings_pb(outcome.timings))


def generate_response(event: PipelineEvent) -> pb.GenerateResponse:
    if isinstance(event, SourcesEvent):
        return pb.GenerateResponse(sources=pb.Sources(sources=[source_pb(d) for d in event.docs]))
    if isinstance(event, DeltaEvent):
        return pb.GenerateResponse(delta=pb.TextDelta(text=event.text))
    return pb.GenerateResponse(completion=_completion_pb(event))


def sampling_pb(s: SamplingParams) -> pb.SamplingParams:
    out = pb.SamplingParams(
        max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, stop=s.stop
    )
    if s.seed is not None:
        out.seed = s.seed
    return out


def api_call_pb(check: CallCheck) -> pb.ApiCall:
    c = check.call
    return pb.ApiCall(
        raw=c.raw,
        name=c.name,
        arguments=c.arguments,
        matched_key=check.doc_key or c.matched_key,
        verdict=_VERDICTS[check.verdict],
        reasons=check.reasons,
        retrieved=check.retrieved,
        suggestion=check.suggestion,
    )


def _completion_pb(event: CompletionEvent) -> pb.Completion:
    return pb.Completion(
        finish_reason=_FINISH[event.finish_reason],
        usage=pb.Usage(prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens),
        timings=timings_pb(event.timings),
        api_calls=[api_call_pb(check) for check in event.checks if check.call.raw],
        text=event.text,
        request_id=event.request_id,
        model=event.model,
        prompt_format=_FORMATS_OUT[event.prompt_format],
        fields=event.fields,
        verdict=_VERDICTS[event.verdict],
        verdict_reasons=event.verdict_reasons,
        suppressed_lines=event.suppressed_lines,
        sampling=sampling_pb(event.sampling),
        corpus_versions=event.corpus_versions,
        calls_constrained=event.calls_constrained,
        api_choice=_CHOICES_OUT[event.api_choice] if event.api_choice is not None else pb.API_CHOICE_UNSPECIFIED,
    )


def corpora_response(corpora: list[CorpusInfo]) -> pb.ListCorporaResponse:
    out = pb.ListCorporaResponse()
    for c in corpora:
        item = out.corpora.add(
            name=c.name,
            format=c.format.value,
            doc_count=c.doc_count,
            source=c.source,
            embedding_model=c.embedding_model,
        )
        if c.last_ingest is not None:
            item.last_ingest.FromDatetime(c.last_ingest)
    return out
