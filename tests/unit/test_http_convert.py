"""The HTTP front end's pure parts: JSON <-> domain conversion, the OpenAI mapping, the error
table and the OpenAPI document (no server, no sockets)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st

from apihelper.errors import (
    ConfigurationError,
    DeadlineExceededError,
    EngineUnavailableError,
    InvalidRequestError,
    RequestTooLargeError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnknownCorpusError,
)
from apihelper.http_status import STATUSES, error_body, http_outcome, http_status
from apihelper.retriever.doc_kinds import DocKind, doc_kind, function_schema
from apihelper.retriever.loaders import load_corpus
from apihelper.retriever.samples import sample_corpus_path
from apihelper.retriever.types import ApiDoc, CorpusFormat, CorpusInfo, RetrievalMode, RetrievedDoc
from apihelper.service.answers.check import check_answer
from apihelper.service.answers.parse import parse_answer
from apihelper.service.core import RequestLimits
from apihelper.service.engine.protocol import FinishReason, SamplingParams
from apihelper.service.grpc import convert as grpc_convert
from apihelper.service.http import convert, openai
from apihelper.service.http.openapi import message_schemas, openapi_spec
from apihelper.service.pipeline import CompletionEvent, DeltaEvent, RetrieveOutcome, SourcesEvent, Timings
from apihelper.service.prompts import PromptFormat, build_prompt
from apihelper.v1 import apihelper_pb2 as pb

LIMITS = RequestLimits(
    max_instruction_bytes=8192, default_top_k=3, max_top_k=50, default_max_tokens=128, max_model_len=2048
)
SCHEMA = {
    "name": "createSession",
    "description": "Create a session",
    "parameters": {
        "type": "object",
        "properties": {"image": {"type": "string"}, "cpu": {"type": "integer"}},
        "required": ["image"],
    },
}
TOOL = {"type": "function", "function": SCHEMA}


def _field(call: Any) -> str:
    with pytest.raises(InvalidRequestError) as info:
        call()
    return info.value.field


# -- protobuf JSON -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"instruction": 3}, "instruction"),
        ({"retrieval": {"top_k": "x"}}, "retrieval.top_k"),
        ({"retrieval": {"topK": -1}}, "retrieval.top_k"),
        ({"retrieval": {"mode": "BAD"}}, "retrieval.mode"),
        ({"retrieval": {"nope": 1}}, "retrieval.nope"),
        ({"sampling": {"temperature": "hot"}}, "sampling.temperature"),
        ({"sampling": {"stop": "x"}}, "sampling.stop"),
        ({"promptFormat": "PROMPT_FORMAT_NONE"}, "prompt_format"),
        ({"extra": 1}, "extra"),
        ([], "body"),
        ("text", "body"),
    ],
)
def test_json_mapping_errors_name_the_field(body: Any, field: str) -> None:
    assert _field(lambda: convert.parse_message(body, pb.GenerateRequest())) == field


def test_the_json_mapping_takes_proto_and_json_names() -> None:
    params = convert.generate_params(
        {"instruction": "x", "retrieval": {"topK": 5, "mode": "RETRIEVAL_MODE_DENSE"}, "sampling": {"max_tokens": 9}},
        LIMITS,
    )
    assert params.retrieval.top_k == 5 and params.retrieval.mode is RetrievalMode.DENSE
    assert params.sampling.max_tokens == 9 and params.request_id  # generated when not given
    # Validation is gRPC's: the same field names, the same limits.
    assert _field(lambda: convert.generate_params({"instruction": "x", "retrieval": {"top_k": 99}}, LIMITS)) == (
        "retrieval.top_k"
    )


@given(st.text())
def test_the_delta_shortcut_writes_what_json_format_writes(text: str) -> None:
    message = pb.GenerateResponse(delta=pb.TextDelta(text=text))
    assert json.loads(convert.event_data(DeltaEvent(text))) == convert.message_json(message)
    assert convert.event_data(DeltaEvent(text)) == convert.dumps(convert.message_json(message))
    assert convert.event_name(DeltaEvent(text)) == "delta"


@given(st.lists(st.tuples(st.text(), st.text(), st.text(), st.floats(allow_nan=False)), max_size=4))
def test_the_sources_shortcut_writes_what_json_format_writes(rows: list[tuple[str, str, str, float]]) -> None:
    event = SourcesEvent(
        [RetrievedDoc(ApiDoc(key, text[:9], text, ""), corpus, score) for key, corpus, text, score in rows]
    )
    assert json.loads(convert.event_data(event)) == convert.message_json(grpc_convert.generate_response(event))


def test_the_seeds_routes() -> None:
    rest = convert.seed_retrieve_params({"instruction": "Create a new session"}, "rest", "/rest_api", LIMITS)
    assert rest.corpora == ("rest",) and rest.instruction == "Create a new session"
    chosen = {"instruction": "x", "retrieval": {"corpora": ["other"]}}
    assert _field(lambda: convert.seed_retrieve_params(chosen, "rest", "/rest_api", LIMITS)) == "retrieval.corpora"

    text = "Object detection on a photo. <<<api_domain>>>:"
    inference = convert.inference_params({"text": text}, LIMITS)
    assert inference.retrieval.instruction == text and inference.retrieval.corpora == ()  # every corpus
    assert _field(lambda: convert.inference_params({"text": "  "}, LIMITS)) == "text"
    assert _field(lambda: convert.inference_params({"instruction": "x"}, LIMITS)) == "instruction"
    assert _field(lambda: convert.inference_params({"text": 1}, LIMITS)) == "text"


# -- the error table ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (InvalidRequestError("sampling.top_p", "bad"), 400, "INVALID_ARGUMENT"),
        (UnknownCorpusError("nope"), 404, "NOT_FOUND"),
        (RequestTooLargeError(10), 413, "INVALID_ARGUMENT"),
        (UnauthenticatedError("no"), 401, "UNAUTHENTICATED"),
        (ResourceExhaustedError("full"), 429, "RESOURCE_EXHAUSTED"),
        (DeadlineExceededError("late"), 504, "DEADLINE_EXCEEDED"),
        (EngineUnavailableError("down"), 503, "UNAVAILABLE"),
        (ConfigurationError("bad"), 400, "FAILED_PRECONDITION"),
        (ValueError("a bug with a secret"), 500, "INTERNAL"),
    ],
)
def test_errors_map_to_http_statuses(error: Exception, status: int, code: str) -> None:
    assert http_status(error) == status and http_outcome(error).code == code
    body = error_body(error)["error"]
    assert body["code"] == status and body["type"] == code
    assert body["message"] == ("internal error" if status == 500 else str(error))
    assert body["param"] == (error.field if isinstance(error, InvalidRequestError) else None)


def test_every_row_of_the_table_is_reachable() -> None:
    classes = [cls for cls, _ in STATUSES]
    for i, cls in enumerate(classes):  # no row is shadowed by a more general one above it
        assert not any(issubclass(cls, earlier) for earlier in classes[:i])
    assert len(error_body(InvalidRequestError("f", "x" * 1000))["error"]["message"]) == 400


# -- OpenAI ------------------------------------------------------------------------------------


def _chat(**body: Any) -> openai.ChatRequest:
    base = {"model": "m", "messages": [{"role": "user", "content": "Create a session"}]}
    return openai.chat_request({**base, **body}, LIMITS, "m", "rid")


def test_the_instruction_is_the_last_user_message() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url"}]},
    ]
    assert openai.instruction(messages) == "second"
    assert _field(lambda: openai.instruction([{"role": "assistant", "content": "x"}])) == "messages"
    assert _field(lambda: openai.instruction([{"role": "user", "content": 3}])) == "messages[0].content"
    assert _field(lambda: openai.instruction(["x"])) == "messages[0]"


def test_chat_requests_map_to_generate_params() -> None:
    chat = _chat(max_tokens=7, temperature=0.5, top_p=0.9, seed=3, stop="END", stream=True)
    sampling = chat.params.sampling
    assert (sampling.max_tokens, sampling.temperature, sampling.seed, sampling.stop) == (7, 0.5, 3, ("END",))
    assert sampling.top_p == pytest.approx(0.9)
    assert chat.stream and not chat.include_usage and chat.params.docs is None  # no tools: retrieve
    assert chat.params.request_id == "rid"
    assert _chat(max_completion_tokens=5).params.sampling.max_tokens == 5
    assert _chat(retrieval={"corpora": ["rest"], "top_k": 2}).params.retrieval.corpora == ("rest",)
    for body, field in (
        ({"model": "other"}, "model"),
        ({"n": 2}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3}, "sampling.temperature"),
        ({"stop": [1]}, "stop"),
        ({"retrieval": {"top_k": "x"}}, "retrieval.top_k"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
        ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice.function.name",
        ),
    ):
        assert _field(lambda body=body: _chat(**body)) == field, body


def test_tools_become_the_prompts_docs_and_tool_choice_picks_them() -> None:
    other = {"type": "function", "function": {"name": "listImages", "parameters": {"type": "object"}}}
    chat = _chat(tools=[TOOL, other])
    docs = chat.params.docs
    assert docs is not None and [d.doc.key for d in docs] == ["createSession", "listImages"]
    assert all(d.corpus == "" and doc_kind(d.doc) is DocKind.FUNCTION_SCHEMA for d in docs)
    assert function_schema(docs[0].doc) == SCHEMA
    # openfunctions_v2 shows the model exactly the caller's schemas.
    prompt = build_prompt(PromptFormat.OPENFUNCTIONS_V2, "x", docs)
    assert isinstance(prompt, str) and json.dumps(SCHEMA) in prompt
    named = _chat(tools=[TOOL, other], tool_choice={"type": "function", "function": {"name": "listImages"}})
    assert named.params.docs is not None and [d.doc.key for d in named.params.docs] == ["listImages"]
    none = _chat(tools=[TOOL], tool_choice="none")
    assert none.params.docs == () and none.params.retrieval.mode is RetrievalMode.NONE


def test_calls_to_a_callers_tools_are_checked_against_their_schemas() -> None:
    docs = list(openai.tool_docs([openai.parse_tools([TOOL])[0]]))
    good = check_answer(PromptFormat.OPENFUNCTIONS_V2, "<<function>>createSession(image='python:3.11')", docs)
    assert good.verdict.value == "valid", good.reasons
    missing = check_answer(PromptFormat.OPENFUNCTIONS_V2, "<<function>>createSession(cpu=2)", docs)
    assert missing.verdict.value == "wrong_arguments"
    unknown = check_answer(PromptFormat.OPENFUNCTIONS_V2, "<<function>>dropDatabase()", docs)
    assert unknown.verdict.value == "unknown_api"


def _sample_docs() -> list[ApiDoc]:
    _, loaded = load_corpus(sample_corpus_path(), None)
    return loaded.docs


def _completion(text: str, fmt: PromptFormat, docs: list[RetrievedDoc]) -> CompletionEvent:
    checked = check_answer(fmt, text, docs)
    return CompletionEvent(
        request_id="rid",
        finish_reason=FinishReason.STOP,
        text=text,
        prompt_tokens=10,
        completion_tokens=5,
        timings=Timings(),
        checks=checked.checks,
        fields=checked.fields,
        model="m",
        prompt_format=fmt,
        verdict=checked.verdict,
        verdict_reasons=checked.reasons,
        suppressed_lines=0,
        sampling=SamplingParams(max_tokens=8),
        calls_constrained=False,
        corpus_versions={},
    )


def test_parsed_calls_become_tool_calls_with_json_arguments() -> None:
    docs = [RetrievedDoc(d, "rest", 1.0) for d in _sample_docs() if d.key in ("POST /sessions", "GET /images")]
    # A REST call comes back under its operation's function name; literals as JSON values.
    rest = _completion("<<<api_call>>>: POST /sessions", PromptFormat.GORILLA_V0, docs)
    calls = openai.tool_calls(rest.checks, docs, "rid")
    assert [c["function"]["name"] for c in calls] == ["createSession"]
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    text = "<<function>>createSession(image='python:3.11', resources={'cpu': 2}, name=make_name())"
    python = _completion(text, PromptFormat.OPENFUNCTIONS_V2, docs)
    (call,) = openai.tool_calls(python.checks, docs, "rid")
    assert json.loads(call["function"]["arguments"]) == {
        "image": "python:3.11",
        "resources": {"cpu": 2},
        "name": "make_name()",  # not a literal: its source text
    }
    # Positional arguments take the schema's parameter names, in order; an unmatched call keeps its name.
    (positional,) = parse_answer(PromptFormat.OPENFUNCTIONS_V2, "<<function>>createSession('img', 4)").calls
    assert openai.call_arguments(positional, SCHEMA) == {"image": "img", "cpu": 4}  # type: ignore[arg-type]
    assert openai.call_arguments(positional) == {"arg0": "img", "arg1": 4}
    stray = _completion("<<function>>frobnicate(x=1)", PromptFormat.OPENFUNCTIONS_V2, docs)
    assert [c["function"]["name"] for c in openai.tool_calls(stray.checks, docs, "r")] == ["frobnicate"]
    assert openai.tool_calls(_completion("no call here", PromptFormat.OPENFUNCTIONS_V2, docs).checks, docs, "r") == []


def test_tool_call_text_is_not_repeated_in_the_content() -> None:
    """When tool_calls carry the calls, message.content keeps only the prose around them, in
    the whole completion and in a stream; a block no call was read from is given back."""
    docs = [RetrievedDoc(d, "rest", 1.0) for d in _sample_docs() if d.key == "POST /sessions"]
    block = '<tool_call>[{"name": "createSession", "arguments": {"image": "<image>"}}]</tool_call>'
    event = _completion("Creating it.\n" + block, PromptFormat.CHAT_TOOLS, docs)
    message = openai.chat_completion(event, docs, _chat(), 1)["choices"][0]["message"]
    assert message["content"] == "Creating it." and message["tool_calls"][0]["function"]["name"] == "createSession"
    bare = openai.chat_completion(_completion(block, PromptFormat.CHAT_TOOLS, docs), docs, _chat(), 1)
    assert bare["choices"][0]["message"]["content"] is None

    for text, calls in ((event.text, True), ("Hm <tool_call>not json</tool_call>", False)):
        done = _completion(text, PromptFormat.CHAT_TOOLS, docs)
        content = openai.StreamedContent(_chat(stream=True))
        shown = "".join(content.delta(text[i : i + 3]) for i in range(0, len(text), 3))
        last = openai.final_chunks(done, docs, _chat(stream=True), 1, content)
        shown += "".join(c["choices"][0]["delta"].get("content", "") for c in last if c["choices"])
        assert shown == ("Creating it.\n" if calls else text)


def test_chat_completion_and_its_last_chunks() -> None:
    docs = [RetrievedDoc(d, "rest", 1.0) for d in _sample_docs() if d.key == "POST /sessions"]
    event = _completion("<<function>>createSession(image='x')", PromptFormat.OPENFUNCTIONS_V2, docs)
    whole = openai.chat_completion(event, docs, _chat(), 1)
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == event.text
    assert whole["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    assert whole["object"] == "chat.completion" and whole["id"] == "chatcmpl-rid"
    assert whole["apihelper"]["verdict"].startswith("VERDICT_")

    streamed = _chat(stream=True, stream_options={"include_usage": True})
    chunks = openai.final_chunks(event, docs, streamed, 1)
    assert chunks[0]["choices"][0]["delta"]["tool_calls"][0]["index"] == 0
    assert chunks[1]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[2]["choices"] == [] and chunks[2]["usage"]["total_tokens"] == 15
    silent = openai.final_chunks(event, docs, _chat(tools=[TOOL], tool_choice="none"), 1)
    assert len(silent) == 1 and silent[0]["choices"][0]["finish_reason"] == "stop"


# -- OpenAPI -----------------------------------------------------------------------------------


def test_the_openapi_schemas_mirror_every_proto_field() -> None:
    schemas = message_schemas(pb.GenerateRequest, pb.GenerateResponse, pb.ListCorporaResponse)
    for message in (pb.GenerateRequest, pb.Completion, pb.ApiCall, pb.Corpus, pb.SamplingParams, pb.Timings):
        descriptor = message.DESCRIPTOR
        assert set(schemas[descriptor.name]["properties"]) == {f.name for f in descriptor.fields}
    assert schemas["Verdict"]["enum"][1] == "VERDICT_VALID"
    assert schemas["SamplingParams"]["properties"]["stop"] == {"type": "array", "items": {"type": "string"}}
    assert schemas["Completion"]["properties"]["fields"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
    }
    assert schemas["Corpus"]["properties"]["last_ingest"]["format"] == "date-time"
    assert "at most one of sources, delta, completion" in schemas["GenerateResponse"]["description"]
    # A message as the server writes it fits its schema's property names.
    written = json_format.MessageToDict(pb.Completion(text="x"), preserving_proto_field_name=True)
    assert set(written) <= set(schemas["Completion"]["properties"])


def test_the_spec_is_json_and_every_reference_resolves() -> None:
    spec = openapi_spec("m")
    text = json.dumps(spec)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/')[1:]}:
        section, name = ref.split("/")
        assert name in spec["components"][section], ref
    assert all("responses" in op for path in spec["paths"].values() for op in path.values())


def test_retrieval_json_has_no_generation_timings_and_counts_are_numbers() -> None:
    outcome = RetrieveOutcome([], Timings(retrieval_ms=3.0, embed_ms=1.0, search_ms=2.0))
    assert convert.retrieve_json(outcome)["timings"] == {"retrieval_ms": 3.0, "embed_ms": 1.0, "search_ms": 2.0}
    info = CorpusInfo("rest", CorpusFormat.OPENAPI, 200_000, "spec.yaml", "m", None)
    assert convert.corpora_json([info])["corpora"][0]["doc_count"] == 200_000  # a JSON number, not "200000"
