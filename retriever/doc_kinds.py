"""The contract between the loaders that write documents and the code that reads them.

Every :class:`~apihelper.retriever.types.ApiDoc` carries its :class:`DocKind` in
``metadata["kind"]``, and each kind a fixed set of metadata fields, typed below. The loaders
write these TypedDicts; the verdict (``apihelper.service.answers.check``), the prompts and the
evaluation read them through the accessors here, never through strings of their own and never
by reading the rendered ``text`` back. Metadata travels as JSON through the vector store and may
come back trimmed (``truncated``: a big function schema lost detail or was dropped), so readers
treat every field as optional.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, TypedDict, cast

from apihelper.retriever.types import ApiDoc

# Upper-case HTTP methods, as in REST keys ("POST /sessions") and as an OpenAPI path item names
# its operations (lower-case there).
HTTP_METHODS = ("GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE")


class DocKind(str, enum.Enum):
    REST_OPERATION = "rest_operation"  # one operation of an OpenAPI spec; key "METHOD /path"
    FUNCTION = "function"  # Python: a module-level function; key "package.module.function"
    METHOD = "method"  # Python: key "package.module.Class.method"
    CLASSMETHOD = "classmethod"
    STATICMETHOD = "staticmethod"
    CLASS = "class"  # Python: a class, called as its constructor
    CLI_COMMAND = "cli_command"  # Python: a click/typer command (its framework parses the arguments)
    APIBENCH_RECORD = "apibench_record"  # Gorilla's API record; key its api_call
    FUNCTION_SCHEMA = "function_schema"  # a tool definition (OpenAI, MCP, BFCL); key its name
    TEXT = "text"  # anything else (generic JSONL): searched and shown, never checked as a call

    @property
    def is_python(self) -> bool:
        return self in PYTHON_KINDS


PYTHON_KINDS = frozenset({DocKind.FUNCTION, DocKind.METHOD, DocKind.CLASSMETHOD, DocKind.STATICMETHOD, DocKind.CLASS})


class FunctionSchema(TypedDict, total=False):
    """A JSON function schema, as openfunctions and OpenAI tools take it."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of an object: type, properties, required


# "in" is a keyword: the functional form.
RestParameter = TypedDict("RestParameter", {"name": str, "in": str, "required": bool})
RestParameter.__doc__ = "Where a REST parameter goes: path | query | header; its schema is in the function schema."


class RestMetadata(TypedDict, total=False):
    kind: str  # DocKind.REST_OPERATION
    method: str  # upper case
    path: str  # the template as in the spec, e.g. /folders/{name}/mkdir
    operation_id: str | None
    summary: str
    tags: list[str]
    parameters: list[RestParameter]  # path, query and header parameters (body fields: the schema)
    required: list[str]  # required arguments of the function schema
    function: FunctionSchema
    servers: list[str]  # base URLs the operation is served at (OpenAPI servers; may be relative)
    truncated: bool


class PythonMetadata(TypedDict, total=False):
    kind: str  # one of PYTHON_KINDS
    module: str
    qualname: str
    summary: str
    signature: str  # as written: "async def f(self, a: int = 1, *, b)" or "class C(a, b=2)"
    decorators: list[str]
    is_async: bool
    required: list[str]
    function: FunctionSchema
    bases: list[str]  # classes only
    methods: list[str]  # classes only
    constructor_from: str  # classes only: the base whose __init__ the class inherits
    audience: str  # "cli" (a command, or code of a command-line package) or "api"
    http_calls: list[dict[str, str]]  # REST requests it makes: [{"method", "path"}] (retriever.links)
    truncated: bool


class FunctionSchemaMetadata(TypedDict, total=False):
    kind: str  # DocKind.FUNCTION_SCHEMA
    name: str  # the bare name the model calls (the key may be "name#<hash>")
    schema_format: str  # "openai", "mcp", "bfcl" or "plain"
    summary: str
    required: list[str]
    function: FunctionSchema  # the definition as written (BFCL's "dict" kept; see json_schema)
    variants: int  # distinct schemas seen with this name and description (the first is kept)
    duplicates: int  # identical repeats dropped
    truncated: bool


class ApiBenchMetadata(TypedDict, total=False):
    kind: str  # DocKind.APIBENCH_RECORD
    api_call: str
    api_name: str
    domain: str
    framework: str
    functionality: str
    line: int  # the line of the first record merged into this doc
    variants: int  # distinct records merged (same api_call)
    duplicates: int  # identical records dropped
    truncated: bool


# BFCL type names -> JSON Schema (bfcl_eval's GORILLA_TO_OPENAPI mapping, the JSON-Schema part).
BFCL_TYPES = {
    "dict": "object",
    "float": "number",
    "double": "number",
    "tuple": "array",
    "list": "array",
    "bool": "boolean",
    "any": "string",
    "byte": "integer",
    "short": "integer",
    "long": "integer",
    "char": "string",
}


def json_schema(schema: Any) -> Any:
    """``schema`` with BFCL's type names mapped to JSON Schema's, recursively (a copy).

    For consumers of JSON Schema proper: metadata["function"] keeps the schema as written.
    """
    if isinstance(schema, list):
        return [json_schema(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            out[key] = BFCL_TYPES.get(value, value)
        elif key == "properties" and isinstance(value, Mapping):
            out[key] = {name: json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "not"):
            out[key] = json_schema(value)
        else:
            out[key] = value
    return out


def doc_kind(doc: ApiDoc) -> DocKind:
    """The kind the loader wrote; TEXT for a doc without one (or with a kind this code does not
    know)."""
    try:
        return DocKind(doc.metadata.get("kind"))
    except ValueError:
        return DocKind.TEXT


def rest_metadata(doc: ApiDoc) -> RestMetadata | None:
    return cast(RestMetadata, doc.metadata) if doc_kind(doc) is DocKind.REST_OPERATION else None


def python_metadata(doc: ApiDoc) -> PythonMetadata | None:
    return cast(PythonMetadata, doc.metadata) if doc_kind(doc).is_python else None


def function_schema_metadata(doc: ApiDoc) -> FunctionSchemaMetadata | None:
    return cast(FunctionSchemaMetadata, doc.metadata) if doc_kind(doc) is DocKind.FUNCTION_SCHEMA else None


def apibench_metadata(doc: ApiDoc) -> ApiBenchMetadata | None:
    return cast(ApiBenchMetadata, doc.metadata) if doc_kind(doc) is DocKind.APIBENCH_RECORD else None


def function_schema(doc: ApiDoc) -> FunctionSchema | None:
    """The doc's JSON function schema when it has one (any kind may: generic JSONL docs too)."""
    function = doc.metadata.get("function")
    return cast(FunctionSchema, function) if isinstance(function, Mapping) else None


def rest_servers(doc: ApiDoc) -> list[str]:
    """The base URLs a REST operation's spec names (OpenAPI ``servers``), as written there."""
    meta = rest_metadata(doc)
    servers = meta.get("servers") if meta is not None else None
    return [s for s in servers if isinstance(s, str)] if isinstance(servers, list) else []


def audience(doc: ApiDoc) -> str:
    """``cli`` for command-line code the Python loader marked so, else ``api``."""
    return "cli" if doc.metadata.get("audience") == "cli" else "api"


def domain(doc: ApiDoc) -> str:
    """The API's domain where the source names one (APIBench records; JSONL docs that say)."""
    value = doc.metadata.get("domain")
    return value if isinstance(value, str) else ""
