"""The OpenAI-compatible chat API as pure functions: a chat request -> GenerateParams, pipeline
events -> chat completion (chunks), parsed calls -> ``tool_calls``.

Request
- The instruction is the last ``user`` message's text. Gorilla's prompt formats are single-turn:
  earlier turns, system and tool messages are not part of them, so they are not used.
- ``tools`` (OpenAI function tools) become the prompt's docs (:func:`tool_docs`): the model sees
  the caller's functions instead of retrieved ones, and the verdict checks the calls against
  their JSON schemas. Without ``tools`` the docs are retrieved as for Generate (from every
  corpus, or as an extra ``retrieval`` object says: the RetrievalOptions JSON), and the
  retrieved docs' function schemas are the tools.
- ``tool_choice``: ``"auto"`` (the default) and ``"required"`` use the tools as they are;
  ``{"type": "function", "function": {"name": N}}`` shows the model only N; ``"none"`` shows it no
  tools and no docs, and the answer carries no tool calls. The engine is not constrained to
  emit a call ("required" with an answer that holds none ends with ``finish_reason`` "stop").
- ``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop`` map to
  the sampling settings and are validated by the same code as gRPC's; ``n`` must be 1. Fields
  this server has no use for (``user``, penalties, ``logprobs``...) are ignored.

Response
- ``message.content`` is the answer's text (streamed as it is generated); ``tool_calls`` are the
  calls read from it (:func:`tool_calls`), ``finish_reason`` "tool_calls" when there are any.
  ``usage`` counts prompt and completion tokens. An ``apihelper`` object adds the verdict.

The seam for a chat-with-tools prompt format (``<tool_call>`` JSON): it reads the tools through
``function_schema(doc)`` of the docs :func:`tool_docs` makes, and its parser's ParsedCalls come
back through :func:`tool_calls` unchanged: nothing here depends on the answer's syntax.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from apihelper.errors import InvalidRequestError
from apihelper.retriever.doc_kinds import DocKind, FunctionSchema, FunctionSchemaMetadata, function_schema
from apihelper.retriever.types import ApiDoc, RetrievalMode, RetrievedDoc
from apihelper.service.answers.check import CallCheck
from apihelper.service.answers.parse import ArgWhere, ParsedCall
from apihelper.service.core import RequestLimits
from apihelper.service.engine.protocol import FinishReason
from apihelper.service.grpc import convert
from apihelper.service.http.convert import message_json, parse_message
from apihelper.service.pipeline import CompletionEvent, GenerateParams
from apihelper.v1 import apihelper_pb2 as pb

MAX_TOOLS = 128
_TOOL_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # OpenAI's rule, plus dots (Python names); fullmatch
_FINISH = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length", FinishReason.CANCELLED: "stop"}


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat completion request."""

    params: GenerateParams
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage
    tool_choice: str  # auto | required | none | function
    model: str


def chat_request(body: Any, limits: RequestLimits, model: str, request_id: str) -> ChatRequest:
    """Validate an OpenAI chat completion body against what this server serves (``model``)."""
    if not isinstance(body, Mapping):
        raise InvalidRequestError("body", "must be a JSON object")
    asked = body.get("model")
    if not isinstance(asked, str) or asked != model:
        raise InvalidRequestError("model", f"unknown model {asked!r}: this server serves {model!r} (GET /v1/models)")
    if body.get("n", 1) != 1:
        raise InvalidRequestError("n", "only 1 choice is generated")
    stream = _bool(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, Mapping):
        raise InvalidRequestError("stream_options", "must be an object")
    tools = parse_tools(body.get("tools"))
    choice, chosen = parse_tool_choice(body.get("tool_choice"), tools)

    request = pb.GenerateRequest(instruction=instruction(body.get("messages")), request_id=request_id)
    if "retrieval" in body:
        request.retrieval.CopyFrom(_retrieval(body["retrieval"]))
    _sampling(body, request.sampling)
    params = convert.generate_params(request, limits)
    if choice == "none":
        none = dataclasses.replace(params.retrieval, mode=RetrievalMode.NONE)
        params = dataclasses.replace(params, retrieval=none, docs=())
    elif tools:
        params = dataclasses.replace(params, docs=tool_docs([t for t in tools if chosen in ("", t["name"])]))
    return ChatRequest(params, stream, _bool(options, "include_usage"), choice, model)


def instruction(messages: Any) -> str:
    """The text of the last user message (string content, or the text parts of a list)."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages", "must be a non-empty list")
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise InvalidRequestError(f"messages[{i}]", "must be an object with a role")
        if message["role"] != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [p.get("text") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
            if texts and all(isinstance(t, str) for t in texts):
                return "\n".join(t for t in texts if isinstance(t, str))
        raise InvalidRequestError(f"messages[{i}].content", "must be a string or a list of text parts")
    raise InvalidRequestError("messages", "has no user message")


def parse_tools(tools: Any) -> list[FunctionSchema]:
    """OpenAI function tools -> their function schemas (name, description, parameters)."""
    if tools is None:
        return []
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise InvalidRequestError("tools", f"must be a list of at most {MAX_TOOLS} tools")
    out: list[FunctionSchema] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            raise InvalidRequestError(f"tools[{i}].type", 'must be "function"')
        function = tool.get("function")
        if not isinstance(function, Mapping):
            raise InvalidRequestError(f"tools[{i}].function", "must be an object")
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME_RE.fullmatch(name):
            raise InvalidRequestError(f"tools[{i}].function.name", "must be 1-64 letters, digits, _ . or -")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, Mapping):
            raise InvalidRequestError(f"tools[{i}].function.parameters", "must be a JSON Schema object")
        description = function.get("description", "")
        if not isinstance(description, str):
            raise InvalidRequestError(f"tools[{i}].function.description", "must be a string")
        out.append(FunctionSchema(name=name, description=description, parameters=dict(parameters)))
    return out


def parse_tool_choice(choice: Any, tools: Sequence[FunctionSchema]) -> tuple[str, str]:
    """(auto | required | none | function, the chosen function's name or "")."""
    if choice is None or choice in ("auto", "required", "none"):
        return (choice or "auto"), ""
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str) or name not in {t["name"] for t in tools}:
            raise InvalidRequestError("tool_choice.function.name", "must name one of the request's tools")
        return "function", name
    raise InvalidRequestError("tool_choice", 'must be "auto", "required", "none" or {"type": "function", ...}')


def tool_docs(tools: Sequence[FunctionSchema]) -> tuple[RetrievedDoc, ...]:
    """A caller's tools as the prompt's docs: function schemas (``DocKind.FUNCTION_SCHEMA``) keyed
    by name, belonging to no corpus. The prompt formats read the schema
    (openfunctions' function list) or the text (gorilla_v0's reference block); the verdict binds
    a call's arguments to the schema."""
    docs = []
    for tool in tools:
        text = json.dumps(tool, ensure_ascii=False)
        metadata: FunctionSchemaMetadata = {
            "kind": DocKind.FUNCTION_SCHEMA.value,
            "name": tool["name"],
            "schema_format": "openai",
            "summary": tool.get("description", ""),
            "function": tool,
        }
        doc = ApiDoc(key=tool["name"], title=tool["name"], text=text, index_text="", metadata=metadata)
        docs.append(RetrievedDoc(doc, corpus="", score=1.0))
    return tuple(docs)


def _bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise InvalidRequestError(name, "must be true or false")
    return value


def _retrieval(value: Any) -> pb.RetrievalOptions:
    try:
        return parse_message(value, pb.RetrievalOptions())
    except InvalidRequestError as exc:
        raise InvalidRequestError(
            f"retrieval.{exc.field}" if exc.field != "body" else "retrieval", exc.message
        ) from None


def _sampling(body: Mapping[str, Any], out: pb.SamplingParams) -> None:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 0 < max_tokens < 2**32:
            raise InvalidRequestError("max_tokens", "must be a positive integer")
        out.max_tokens = max_tokens
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise InvalidRequestError(name, "must be a number")
            setattr(out, name, float(value))
    seed = body.get("seed")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
            raise InvalidRequestError("seed", "must be a non-negative integer")
        out.seed = seed
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidRequestError("stop", "must be a string or a list of strings")
        out.stop.extend(stops)


# -- responses ---------------------------------------------------------------------------------


def tool_calls(checks: Sequence[CallCheck], docs: Sequence[RetrievedDoc], request_id: str) -> list[dict[str, Any]]:
    """The answer's calls as OpenAI ``tool_calls``: one per call that has a name, its
    ``arguments`` a JSON object string. The name is the function name of the doc the call matched
    (a REST call ``POST /sessions`` comes back as its operation's function, ``createSession``) when
    that doc was in the prompt, else the name as written. Arguments: :func:`call_arguments`."""
    by_key = {d.doc.key: d.doc for d in docs}
    out: list[dict[str, Any]] = []
    for i, check in enumerate(c for c in checks if c.call.name):
        doc = by_key.get(check.doc_key)
        schema = function_schema(doc) if doc is not None else None
        name = (schema or {}).get("name") or check.call.name
        out.append(
            {
                "id": f"call_{request_id[:24]}_{i}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(call_arguments(check.call, schema))},
            }
        )
    return out


def call_arguments(call: ParsedCall, schema: FunctionSchema | None = None) -> dict[str, Any]:
    """A call's arguments by name: each value as a JSON value where the model wrote a literal,
    else as its source text. Positional arguments take the schema's parameter names in order
    (``arg0``... without a schema); a name written twice keeps its first value."""
    params = (schema or {}).get("parameters") or {}
    properties = params.get("properties") if isinstance(params, Mapping) else None
    names = list(properties) if isinstance(properties, Mapping) else []
    out: dict[str, Any] = {}
    for arg in call.args:  # the parser's names (keyword, arg0..., body, query, *, **); the first wins
        key = arg.key
        if arg.where is ArgWhere.POSITIONAL and 0 <= arg.position < len(names):
            key = names[arg.position]
        out.setdefault(key, arg.value if arg.literal else arg.source)
    return out


def chat_completion(
    event: CompletionEvent, docs: Sequence[RetrievedDoc], request: ChatRequest, created: int
) -> dict[str, Any]:
    """The whole (non-streamed) chat completion."""
    calls = _calls(event, docs, request)
    message: dict[str, Any] = {"role": "assistant", "content": event.text}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": completion_id(event.request_id),
        "object": "chat.completion",
        "created": created,
        "model": request.model,
        "choices": [{"index": 0, "message": message, "finish_reason": _finish(event, calls), "logprobs": None}],
        "usage": usage(event),
        "apihelper": verdict_json(event),
    }


def chunk(
    request_id: str, model: str, created: int, delta: dict[str, Any], finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": completion_id(request_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def final_chunks(
    event: CompletionEvent, docs: Sequence[RetrievedDoc], request: ChatRequest, created: int
) -> list[dict[str, Any]]:
    """What a stream ends with after the content deltas: the tool calls (one chunk, each with its
    index), the finish reason with the verdict, and the usage where the request asked for it."""
    calls = _calls(event, docs, request)
    rid, model = event.request_id, request.model
    out = []
    if calls:
        out.append(chunk(rid, model, created, {"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}))
    last = chunk(rid, model, created, {}, _finish(event, calls))
    last["apihelper"] = verdict_json(event)
    out.append(last)
    if request.include_usage:
        out.append({**chunk(rid, model, created, {}), "choices": [], "usage": usage(event)})
    return out


def usage(event: CompletionEvent) -> dict[str, int]:
    return {
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "total_tokens": event.prompt_tokens + event.completion_tokens,
    }


def verdict_json(event: CompletionEvent) -> dict[str, Any]:
    """apihelper's own addition: the verdict on the answer's calls, as the Completion message has it."""
    completion = message_json(convert.generate_response(event).completion)
    return {k: completion[k] for k in ("verdict", "verdict_reasons", "api_calls", "timings")}


def models_json(model: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "apihelper"}]}


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def now() -> int:
    return int(time.time())


def _calls(event: CompletionEvent, docs: Sequence[RetrievedDoc], request: ChatRequest) -> list[dict[str, Any]]:
    return [] if request.tool_choice == "none" else tool_calls(event.checks, docs, event.request_id)


def _finish(event: CompletionEvent, calls: list[dict[str, Any]]) -> str:
    return "tool_calls" if calls else _FINISH[event.finish_reason]
