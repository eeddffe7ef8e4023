"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``.

The schemas of the proto-mirroring routes are derived from the apihelper.v1 descriptors
(:func:`message_schemas`), so the document cannot drift from the proto: protobuf's JSON mapping
with proto field names, enums by name, 64-bit integers as strings (numbers accepted), Timestamps
as RFC 3339 strings. The seed's routes and the OpenAI-compatible ones are written out here.
"""

from __future__ import annotations

from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from apihelper.v1 import apihelper_pb2 as pb

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "uint32", "minimum": 0},
    FieldDescriptor.TYPE_INT64: {"type": ["string", "integer"], "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": ["string", "integer"], "format": "int64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": ["string", "integer"], "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": ["string", "integer"], "format": "uint64"},
    FieldDescriptor.TYPE_FIXED64: {"type": ["string", "integer"], "format": "uint64"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_WELL_KNOWN = {"google.protobuf.Timestamp": {"type": "string", "format": "date-time"}}


def message_schemas(*roots: type[Message]) -> dict[str, Any]:
    """JSON Schemas of the ``roots`` messages and every message and enum they reach, by short name."""
    out: dict[str, Any] = {}
    todo = [cast(Descriptor, m.DESCRIPTOR) for m in roots]
    while todo:
        message = todo.pop()
        if message.name in out:
            continue
        properties: dict[str, Any] = {}
        for f in message.fields:
            schema, reached = _field_schema(f)
            properties[f.name] = schema
            todo.extend(reached)
            if f.enum_type is not None and f.enum_type.name not in out:
                out[f.enum_type.name] = {"type": "string", "enum": [v.name for v in f.enum_type.values]}
        schema = {"type": "object", "properties": properties, "additionalProperties": False}
        oneofs = [o for o in message.oneofs if not o.name.startswith("_")]  # not proto3 `optional`
        if oneofs:
            schema["description"] = "; ".join(f"at most one of {', '.join(f.name for f in o.fields)}" for o in oneofs)
        out[message.name] = schema
    return dict(sorted(out.items()))


def _field_schema(f: FieldDescriptor) -> tuple[dict[str, Any], list[Descriptor]]:
    reached: list[Descriptor] = []
    message = f.message_type
    if message is not None and message.GetOptions().map_entry:
        value, reached = _field_schema(message.fields_by_name["value"])
        return {"type": "object", "additionalProperties": value}, reached
    if message is not None and message.full_name in _WELL_KNOWN:
        item: dict[str, Any] = dict(_WELL_KNOWN[message.full_name])
    elif message is not None:
        item = {"$ref": f"#/components/schemas/{message.name}"}
        reached.append(message)
    elif f.enum_type is not None:
        item = {"$ref": f"#/components/schemas/{f.enum_type.name}"}
    else:
        item = dict(_SCALARS[f.type])
    if f.is_repeated:
        return {"type": "array", "items": item}, reached
    return item, reached


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"required": True, "content": {"application/json": media}}


def _answers(schema: dict[str, Any], description: str, *, stream: bool = False) -> dict[str, Any]:
    media = "text/event-stream" if stream else "application/json"
    return {
        "200": {"description": description, "content": {media: {"schema": schema}}},
        "400": {"$ref": "#/components/responses/Error"},
        "401": {"$ref": "#/components/responses/Error"},
        "429": {"$ref": "#/components/responses/Error"},
        "503": {"$ref": "#/components/responses/Error"},
        "504": {"$ref": "#/components/responses/Error"},
    }


def openapi_spec(model: str) -> dict[str, Any]:
    schemas = message_schemas(
        pb.GenerateRequest, pb.GenerateResponse, pb.RetrieveRequest, pb.RetrieveResponse, pb.ListCorporaResponse
    )
    schemas.update(
        Error={
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "message": {"type": "string"},
                        "type": {
                            "type": "string",
                            "description": "the outcome, by gRPC's name (INVALID_ARGUMENT, ...)",
                        },
                        "param": {"type": ["string", "null"], "description": "the offending field of a bad request"},
                        "code": {"type": "integer", "description": "the HTTP status"},
                    },
                }
            },
        },
        Instruction={
            "type": "object",
            "required": ["instruction"],
            "properties": {"instruction": {"type": "string"}},
            "description": "a RetrieveRequest (other fields accepted) on the route's corpus",
        },
        InferenceRequest={
            "type": "object",
            "required": ["text"],
            "properties": {"text": {"type": "string", "description": "the instruction"}},
            "description": "a GenerateRequest whose `instruction` is called `text` (other fields accepted)",
        },
        InferenceResponse={
            "allOf": [
                _ref("Completion"),
                {"type": "object", "properties": {"sources": {"type": "array", "items": _ref("Source")}}},
            ]
        },
        ChatCompletionRequest={
            "type": "object",
            "required": ["model", "messages"],
            "properties": {
                "model": {"type": "string", "enum": [model]},
                "messages": {"type": "array", "items": {"type": "object"}},
                "tools": {"type": "array", "items": {"type": "object"}},
                "tool_choice": {
                    "oneOf": [{"type": "string", "enum": ["auto", "required", "none"]}, {"type": "object"}]
                },
                "stream": {"type": "boolean"},
                "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
                "max_tokens": {"type": "integer"},
                "max_completion_tokens": {"type": "integer"},
                "temperature": {"type": "number"},
                "top_p": {"type": "number"},
                "seed": {"type": "integer"},
                "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                "retrieval": {**_ref("RetrievalOptions"), "description": "apihelper: where to retrieve (no tools)"},
            },
        },
        ChatCompletion={"type": "object", "description": "OpenAI's chat.completion, plus `apihelper` (the verdict)"},
        Models={"type": "object", "description": "OpenAI's model list: the one model served"},
        Health={"type": "object", "properties": {"status": {"type": "string", "enum": ["SERVING", "NOT_SERVING"]}}},
    )
    events = (
        "Server-Sent Events: `event: sources`, then `event: delta` (one per text piece), then "
        "`event: completion`; each `data` is a GenerateResponse. An error after the first event is "
        "`event: error` with an Error as data, and ends the stream."
    )
    seed = {
        "/rest_api": ("rest", "Create a new session"),
        "/functional": ("functional", "Create a new session"),
    }
    paths: dict[str, Any] = {
        route: {
            "post": {
                "summary": f"The seed's route: the docs of the `{corpus}` corpus that match the instruction",
                "requestBody": _json_body(_ref("Instruction"), {"instruction": example}),
                "responses": _answers(_ref("RetrieveResponse"), "the retrieved docs"),
            }
        }
        for route, (corpus, example) in seed.items()
    }
    paths.update(
        {
            "/inference": {
                "post": {
                    "summary": "The seed's route: the generated answer, whole",
                    "requestBody": _json_body(
                        _ref("InferenceRequest"), {"text": "Object detection on a photo. <<<api_domain>>>:"}
                    ),
                    "responses": _answers(_ref("InferenceResponse"), "the completion, with its sources"),
                }
            },
            "/v1/generate": {
                "post": {
                    "summary": "Generate, streamed: sources, text deltas, the completion with its verdict",
                    "requestBody": _json_body(_ref("GenerateRequest"), {"instruction": "Create a new session"}),
                    "responses": _answers(_ref("GenerateResponse"), events, stream=True),
                }
            },
            "/v1/retrieve": {
                "post": {
                    "summary": "Retrieve: the docs only",
                    "requestBody": _json_body(_ref("RetrieveRequest")),
                    "responses": _answers(_ref("RetrieveResponse"), "the retrieved docs"),
                }
            },
            "/v1/corpora": {
                "get": {"summary": "ListCorpora", "responses": _answers(_ref("ListCorporaResponse"), "the corpora")}
            },
            "/v1/chat/completions": {
                "post": {
                    "summary": "OpenAI-compatible chat completions (streamed with `stream: true`, ending `data: [DONE]`)",
                    "requestBody": _json_body(_ref("ChatCompletionRequest")),
                    "responses": _answers(_ref("ChatCompletion"), "a chat.completion, or chat.completion.chunk events"),
                }
            },
            "/v1/models": {
                "get": {"summary": "OpenAI-compatible model list", "responses": _answers(_ref("Models"), "")}
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness; the body says gRPC's health",
                    "security": [],
                    "responses": {
                        "200": {"description": "", "content": {"application/json": {"schema": _ref("Health")}}}
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: 200 while SERVING, 503 otherwise",
                    "security": [],
                    "responses": {
                        "200": {"description": "SERVING", "content": {"application/json": {"schema": _ref("Health")}}},
                        "503": {
                            "description": "NOT_SERVING",
                            "content": {"application/json": {"schema": _ref("Health")}},
                        },
                    },
                }
            },
        }
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "apihelper",
            "version": "v1",
            "description": "Retrieval-augmented API-call generation over HTTP: the JSON of the /v1 routes "
            "is the apihelper.v1 proto in protobuf's JSON mapping. Deadline: the `X-Request-Timeout` "
            "header (seconds).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {"description": "an error", "content": {"application/json": {"schema": _ref("Error")}}}
            },
        },
    }
