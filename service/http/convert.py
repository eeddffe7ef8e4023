"""Pure conversions between HTTP JSON bodies and domain types.

The JSON of ``/v1/generate``, ``/v1/retrieve`` and ``/v1/corpora`` *is* the apihelper.v1 messages
in protobuf's JSON mapping (``google.protobuf.json_format``; field names as in the proto, enums by
name, every field present): a body is parsed into the request message, then validated by the very
functions the gRPC servicer uses (``apihelper.service.grpc.convert``), and events go out through
the same domain -> message functions. One conversion, two encodings.

The seed's routes are thin layers over the same messages: ``{"instruction"}`` on ``/rest_api``
and ``/functional`` is a RetrieveRequest on one corpus; ``{"text"}`` on ``/inference`` is a
GenerateRequest whose ``instruction`` is ``text`` (Gorilla's ``<<<api_domain>>>:`` suffixes stay in
it as plain instruction text).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from apihelper.errors import InvalidRequestError
from apihelper.retriever.types import CorpusInfo, RetrievedDoc
from apihelper.service.core import RequestLimits
from apihelper.service.grpc import convert
from apihelper.service.pipeline import (
    CompletionEvent,
    DeltaEvent,
    GenerateParams,
    PipelineEvent,
    RetrieveOutcome,
    RetrieveParams,
    SourcesEvent,
)
from apihelper.v1 import apihelper_pb2 as pb

M = TypeVar("M", bound=Message)

# json_format names the failing field in three ways: "Failed to parse <field> field: ..." (nested
# for nested messages), a trailing "at <Message>.<path>" (sometimes deeper, sometimes not as
# deep), and 'no field named "<field>" at "<Message>.<path>"'.
_FAILED_FIELD_RE = re.compile(r"Failed to parse (\w+) field: ")
_NO_FIELD_RE = re.compile(r'has no field named "(\w+)" at "([\w.]+)"')
_CAMEL_RE = re.compile(r"(?<=[a-z0-9])([A-Z])")
_TRAILING_AT_RE = re.compile(r"\s+at ([\w.]+?)\.*$")


def snake_case(name: str) -> str:
    """A proto JSON name (``topK``) as the proto field name (``top_k``)."""
    return _CAMEL_RE.sub(r"_\1", name).lower()


def parse_error_field(text: str) -> tuple[str, str]:
    """(field path, what is wrong) from a ``json_format.ParseError`` message."""
    unknown = _NO_FIELD_RE.search(text)
    if unknown:
        path = [*unknown.group(2).split(".")[1:], unknown.group(1)]
        return ".".join(snake_case(p) for p in path), "unknown field"
    path = _FAILED_FIELD_RE.findall(text)
    detail = _FAILED_FIELD_RE.sub("", text).strip()
    at = _TRAILING_AT_RE.search(detail)
    if at is not None:
        located = at.group(1).split(".")[1:]  # without the message's name
        path = located if len(located) > len(path) else path
        detail = detail[: at.start()]
    return ".".join(snake_case(p) for p in path), detail.rstrip(".") or "invalid value"


def parse_message(body: Any, message: M) -> M:
    """``body`` (decoded JSON) into ``message`` by protobuf's JSON mapping; InvalidRequestError
    naming the field that does not fit."""
    if not isinstance(body, dict):
        raise InvalidRequestError("body", "must be a JSON object")
    try:
        json_format.ParseDict(body, message)
    except json_format.ParseError as exc:
        field, detail = parse_error_field(str(exc))
        raise InvalidRequestError(field or "body", detail) from None
    return message


def message_json(message: Message) -> dict[str, Any]:
    """A message as the HTTP API's JSON: proto field names, enums by name, every field present."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


# -- requests ----------------------------------------------------------------------------------


def retrieve_params(body: Any, limits: RequestLimits) -> RetrieveParams:
    return convert.retrieve_params(parse_message(body, pb.RetrieveRequest()), limits)


def generate_params(body: Any, limits: RequestLimits) -> GenerateParams:
    return convert.generate_params(parse_message(body, pb.GenerateRequest()), limits)


def seed_retrieve_params(body: Any, corpus: str, route: str, limits: RequestLimits) -> RetrieveParams:
    """``{"instruction": ...}`` (a RetrieveRequest) on the one corpus ``route`` stands for."""
    request = parse_message(body, pb.RetrieveRequest())
    if request.retrieval.corpora:
        raise InvalidRequestError("retrieval.corpora", f"{route} searches the corpus {corpus!r}: use /v1/retrieve")
    request.retrieval.corpora.append(corpus)
    return convert.retrieve_params(request, limits)


def inference_params(body: Any, limits: RequestLimits) -> GenerateParams:
    """``{"text": ...}``: a GenerateRequest whose instruction is ``text``, over every corpus."""
    if not isinstance(body, Mapping):
        raise InvalidRequestError("body", "must be a JSON object")
    if "instruction" in body:
        raise InvalidRequestError("instruction", "/inference takes the instruction as text")
    if not isinstance(body.get("text"), str):
        raise InvalidRequestError("text", "is required and must be a string")
    fields = {("instruction" if k == "text" else k): v for k, v in body.items()}
    try:
        return generate_params(fields, limits)
    except InvalidRequestError as exc:
        if exc.field == "instruction":  # say it in the route's own words
            raise InvalidRequestError("text", exc.message) from None
        raise


# -- responses ---------------------------------------------------------------------------------


# Timings a retrieval alone does not have: left out of its JSON rather than written as 0.
_GENERATION_TIMINGS = ("queue_ms", "first_token_ms", "total_ms")


def retrieve_json(outcome: RetrieveOutcome) -> dict[str, Any]:
    out = message_json(convert.retrieve_response(outcome))
    for name in _GENERATION_TIMINGS:
        out["timings"].pop(name, None)
    return out


def corpora_json(corpora: list[CorpusInfo]) -> dict[str, Any]:
    return message_json(convert.corpora_response(corpora))


def sources_json(docs: list[RetrievedDoc]) -> list[dict[str, Any]]:
    return [message_json(convert.source_pb(d)) for d in docs]


def completion_json(event: CompletionEvent) -> dict[str, Any]:
    return message_json(convert.generate_response(event).completion)


def inference_json(docs: list[RetrievedDoc], completion: CompletionEvent) -> dict[str, Any]:
    """``/inference``'s answer: the completion (its ``text`` is the generated answer) with the
    sources the prompt carried."""
    return {**completion_json(completion), "sources": sources_json(docs)}


def event_name(event: PipelineEvent) -> str:
    """The SSE event name of a Generate event: the GenerateResponse oneof it fills."""
    if isinstance(event, DeltaEvent):
        return "delta"
    if isinstance(event, CompletionEvent):
        return "completion"
    return "sources"


def event_data(event: PipelineEvent) -> str:
    """A Generate event as the JSON of its GenerateResponse. The events before the first token
    (the sources) and each delta take a short cut that writes the same JSON without building
    and walking a message (json_format's walk costs ~0.4 ms for three sources, on the path to the
    first token); unit tests hold both equal to json_format's output."""
    if isinstance(event, DeltaEvent):
        return '{"delta":{"text":' + json.dumps(event.text, ensure_ascii=False) + "}}"
    if isinstance(event, SourcesEvent):
        fast = _sources_fast(event.docs)
        if fast is not None:
            return dumps({"sources": {"sources": fast}})
    return dumps(message_json(convert.generate_response(event)))


def _sources_fast(docs: list[RetrievedDoc]) -> list[dict[str, Any]] | None:
    """The Source messages' JSON, or None for a score the short cut does not write (not finite,
    or beyond float32: json_format writes those)."""
    try:
        return [
            {
                "key": d.doc.key,
                "corpus": d.corpus,
                "title": d.doc.title,
                "score": float32_json(d.score),
                "text": d.doc.text,
            }
            for d in docs
        ]
    except (OverflowError, ValueError):
        return None


def float32_json(value: float) -> float:
    """A proto ``float`` field as the JSON mapping writes it: the value rounded to float32, then
    the shortest decimal (6 significant digits or more) that reads back as that float32."""
    if not math.isfinite(value):
        raise ValueError("not finite")
    single = _to_float32(value)
    digits = 6
    shortest = float(f"{single:.{digits}g}")
    while _to_float32(shortest) != single:
        digits += 1
        shortest = float(f"{single:.{digits}g}")
    return shortest


def _to_float32(value: float) -> float:
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def dumps(value: Any) -> str:
    """Compact JSON, UTF-8 as is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
