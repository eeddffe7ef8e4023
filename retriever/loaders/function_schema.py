"""Loader for function-schema corpora: lists of tool definitions as LLM tool-use APIs write them.

Accepted shapes, per definition (mixed freely in one file):

- OpenAI tools: ``{"type": "function", "function": {"name", "description", "parameters"}}``;
- MCP ``tools/list`` entries: ``{"name", "description", "inputSchema"}`` (plus ``title``,
  ``annotations``, ``outputSchema``, which are kept);
- BFCL and plain openfunctions definitions: ``{"name", "description", "parameters"}``, where BFCL
  writes ``"type": "dict"`` (and ``float``, ``tuple``, ``any``) instead of JSON Schema's names.

Containers: a JSON file holding one definition, a list of them, an MCP result ``{"tools": [...]}``
or a JSON-RPC response ``{"result": {"tools": [...]}}``; or JSON lines, each line one definition,
a list, or a ``{"tools": [...]}`` object.

Keys. A definition is identified by its name and description. The first definition of a name
(in file order) is keyed by the bare name; a later one with the same name but another
description is keyed ``name#<first 8 hex digits of sha256(description)>``, so both are found and
neither is lost. ``metadata["name"]`` is always the bare name: the prompt and validation use
the schema under the name the model must call. A later definition with the same name *and*
description is folded into the first (its schema is not kept; ``metadata["variants"]`` counts
the distinct schemas seen, ``metadata["duplicates"]`` the identical repeats).

``metadata["function"]`` is the definition as given, in openfunctions shape: ``name``,
``description`` and ``parameters`` (an MCP ``inputSchema`` is stored under ``parameters``; other
keys of the definition are kept as they are). The parameters are *not* rewritten: BFCL's
``"dict"`` stays ``"dict"``, because that is what the schema's author wrote and what Gorilla's
openfunctions models were trained on. Consumers that need JSON Schema proper (type checks in
validation, grammar-constrained decoding) call ``doc_kinds.json_schema``, which maps BFCL's type names
the way BFCL's own OpenAI handler does.

``text`` (what the model reads) is the definition as compact JSON; ``index_text`` (what is
embedded and BM25-indexed) is built by :func:`index_text` from the name's words, the description
and the parameters' names; ``views`` (:func:`views`) are the name with the description and the
name with the parameters, each embedded on its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apihelper.retriever.doc_kinds import BFCL_TYPES, DocKind, FunctionSchemaMetadata
from apihelper.retriever.limits import DEFAULT_LIMITS, IngestLimits
from apihelper.retriever.loaders._files import contained, decode_text, parse_json, problem_message, read_bytes
from apihelper.retriever.loaders._text import (
    expanded_words,
    first_paragraphs,
    identifier_words,
    join_nonempty,
    json_lines,
    trim,
)
from apihelper.retriever.types import ApiDoc, LoadProblem, LoadResult

MAX_TEXT = 4000
MAX_DESCRIPTION_INDEX = 600
INDEX_PARAM_NAMES = 40
MAX_PARAM_DESCRIPTION = 160
INDEX_ENUM_VALUES = 30
KEY_HASH_DIGITS = 8

_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class FunctionDef:
    """One tool definition, read from any accepted shape."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    schema_format: str  # "openai", "mcp", "bfcl" or "plain"
    extra: Mapping[str, Any] = field(default_factory=dict)  # other keys of the definition, as given

    def function(self) -> dict[str, Any]:
        """The openfunctions-shaped definition stored in metadata["function"]."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters, **self.extra}


def description_hash(description: str) -> str:
    return hashlib.sha256(description.encode("utf-8")).hexdigest()[:KEY_HASH_DIGITS]


def assign_keys(definitions: list[tuple[str, str]]) -> list[str]:
    """The key of each ``(name, description)`` pair, in order (see the module docstring).

    Pairs seen before get the key they got then. Shared with builders that write questions for a
    corpus, so their answer keys are the loader's.
    """
    first_description: dict[str, str] = {}
    keys: dict[tuple[str, str], str] = {}
    out: list[str] = []
    for name, description in definitions:
        pair = (name, description)
        if pair not in keys:
            if name not in first_description:
                first_description[name] = description
                keys[pair] = name
            else:
                keys[pair] = f"{name}#{description_hash(description)}"
        out.append(keys[pair])
    return out


def parse_definition(value: Any) -> FunctionDef:
    """One definition of any accepted shape; raises ValueError saying what is wrong."""
    if not isinstance(value, Mapping):
        raise ValueError("a tool definition must be a JSON object")
    fmt = "plain"
    body: Mapping[str, Any] = value
    if value.get("type") == "function" and isinstance(value.get("function"), Mapping):
        fmt, body = "openai", value["function"]
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a tool definition needs a non-empty string 'name'")
    description = body.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"tool {name!r}: 'description' must be a string")
    if "inputSchema" in body and fmt == "plain":
        fmt, params_key = "mcp", "inputSchema"
    else:
        params_key = "parameters"
    parameters = body.get(params_key, _EMPTY_PARAMETERS)
    if not isinstance(parameters, Mapping):
        raise ValueError(f"tool {name!r}: {params_key!r} must be a JSON Schema object")
    if fmt == "plain" and parameters.get("type") in BFCL_TYPES:
        fmt = "bfcl"
    extra = {k: v for k, v in body.items() if k not in ("name", "description", "parameters", "inputSchema")}
    return FunctionDef(name.strip(), description, parameters, fmt, extra)


def _definitions_in(value: Any) -> Iterator[Any]:
    """The definitions inside one parsed JSON value (a definition, a list, an MCP result)."""
    if isinstance(value, list):
        for item in value:
            yield from _definitions_in(item)
    elif isinstance(value, Mapping) and isinstance(value.get("result"), Mapping) and "tools" in value["result"]:
        yield from _definitions_in(value["result"]["tools"])
    elif isinstance(value, Mapping) and isinstance(value.get("tools"), list):
        yield from _definitions_in(value["tools"])
    else:
        yield value


def looks_like_definitions(value: Any) -> bool:
    """Whether a parsed JSON value (a document or a JSONL line) holds tool definitions."""
    first = next(_definitions_in(value), None)
    if not isinstance(first, Mapping):
        return False
    if first.get("type") == "function" and isinstance(first.get("function"), Mapping):
        return True
    return isinstance(first.get("name"), str) and ("parameters" in first or "inputSchema" in first)


def parameter_names(parameters: Mapping[str, Any]) -> list[str]:
    props = parameters.get("properties")
    return [str(name) for name in props] if isinstance(props, Mapping) else []


def required_of(parameters: Mapping[str, Any]) -> list[str]:
    required = parameters.get("required")
    return [str(r) for r in required] if isinstance(required, list) else []


def _parameter_lines(parameters: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """One ``words of name: description`` line per top-level parameter, and their enum values."""
    props = parameters.get("properties")
    lines: list[str] = []
    values: list[str] = []
    for name, schema in list(props.items())[:INDEX_PARAM_NAMES] if isinstance(props, Mapping) else []:
        if not isinstance(schema, Mapping):
            continue
        described = " ".join(str(schema.get("description", "")).split())
        lines.append(
            f"{identifier_words(str(name))}: {trim(described, MAX_PARAM_DESCRIPTION)}"
            if described
            else identifier_words(str(name))
        )
        enum = schema.get("enum")
        if isinstance(enum, list):
            values.extend(str(v) for v in enum if isinstance(v, (str, int, float)))
    return lines, values[:INDEX_ENUM_VALUES]


def index_text(definition: FunctionDef) -> str:
    """What search sees: the name's words (abbreviations spelled out), the description, the
    parameter names, each with its description, and the parameters' enum values.

    Measured on the BFCL train and validation splits (bench/retrieval/README.md): parameter
    descriptions and enum values lifted hybrid top-1 from 0.711 to 0.754 (live_multiple) and
    0.775 to 0.850 (multiple) on validation over names alone: user requests name the values
    ("in Celsius", "a large latte") that only the parameters describe.
    """
    names = parameter_names(definition.parameters)[:INDEX_PARAM_NAMES]
    lines, values = _parameter_lines(definition.parameters)
    return join_nonempty(
        [
            expanded_words(identifier_words(definition.name)),
            first_paragraphs(definition.description, MAX_DESCRIPTION_INDEX) if definition.description.strip() else None,
            ("parameters: " + identifier_words(*names)) if names else None,
            *lines,
            ("values: " + ", ".join(values)) if values else None,
        ]
    )


def views(definition: FunctionDef) -> tuple[str, ...]:
    """The definition's views (``ApiDoc.views``): its name with its description, and its name with
    its parameters (names, descriptions, values), each embedded on its own."""
    name = expanded_words(identifier_words(definition.name))
    names = parameter_names(definition.parameters)[:INDEX_PARAM_NAMES]
    lines, values = _parameter_lines(definition.parameters)
    described = (
        first_paragraphs(definition.description, MAX_DESCRIPTION_INDEX) if definition.description.strip() else ""
    )
    params = join_nonempty(
        [
            ("parameters: " + identifier_words(*names)) if names else None,
            *lines,
            ("values: " + ", ".join(values)) if values else None,
        ]
    )
    return tuple(join_nonempty([name, part]) for part in (described, params) if part)


def _first_sentence(text: str) -> str:
    paragraph = first_paragraphs(text, 400) if text.strip() else ""
    end = next(
        (i for i, c in enumerate(paragraph) if c in ".!?" and (i + 1 == len(paragraph) or paragraph[i + 1] == " ")), -1
    )
    return trim(paragraph[: end + 1] if end >= 0 else paragraph, 200)


@dataclass
class _Entry:
    definition: FunctionDef
    schemas: set[str]
    duplicates: int = 0


def _read_values(path: Path, problems: list[LoadProblem], limits: IngestLimits) -> Iterator[tuple[str, Any]]:
    """``(where, parsed JSON value)`` of a JSON document or of each JSON line."""
    if not path.name.lower().endswith((".jsonl", ".ndjson")):
        try:
            raw = decode_text(read_bytes(path, limits))
        except Exception as exc:  # OSError, not a regular file, too big, not UTF-8
            problems.append(LoadProblem(str(path), problem_message(exc)))
            return
        try:
            value = parse_json(raw, limits)
        except json.JSONDecodeError:
            pass  # maybe JSON lines under a .json name
        except Exception as exc:  # too deep, a huge integer
            problems.append(LoadProblem(str(path), problem_message(exc)))
            return
        else:
            yield str(path), value
            return
    for _, where, record in json_lines(path, problems, limits):
        yield where, record


@contained
def load_function_schemas(path: Path, limits: IngestLimits = DEFAULT_LIMITS) -> LoadResult:
    """Load one function-schema corpus file; never raises (problems are returned)."""
    problems: list[LoadProblem] = []
    entries: dict[tuple[str, str], _Entry] = {}
    for where, value in _read_values(path, problems, limits):
        for raw in _definitions_in(value):
            try:
                definition = parse_definition(raw)
                schema = json.dumps(definition.function(), sort_keys=True, ensure_ascii=False)
            except Exception as exc:  # ValueError says what is wrong; anything else is hostile input
                problems.append(LoadProblem(where, str(exc) if type(exc) is ValueError else problem_message(exc)))
                continue
            pair = (definition.name, definition.description)
            entry = entries.get(pair)
            if entry is None:
                entries[pair] = _Entry(definition, {schema})
            elif schema in entry.schemas:
                entry.duplicates += 1
            else:
                entry.schemas.add(schema)
    keys = assign_keys(list(entries))
    docs: list[ApiDoc] = []
    for key, entry in zip(keys, entries.values(), strict=True):
        try:
            docs.append(_doc(key, entry))
        except Exception as exc:  # a hostile definition is its own problem
            problems.append(LoadProblem(f"{path}#{key}", problem_message(exc)))
    return LoadResult(docs, problems)


def _doc(key: str, entry: _Entry) -> ApiDoc:
    definition = entry.definition
    function = definition.function()
    summary = _first_sentence(definition.description)
    metadata = FunctionSchemaMetadata(
        kind=DocKind.FUNCTION_SCHEMA.value,
        name=definition.name,
        schema_format=definition.schema_format,
        summary=summary,
        required=required_of(definition.parameters),
        function=function,  # type: ignore[typeddict-item]  # the definition as written, extra keys kept
        variants=len(entry.schemas),
        duplicates=entry.duplicates,
    )
    return ApiDoc(
        key=key,
        title=f"{definition.name}: {summary}" if summary else definition.name,
        text=trim(json.dumps(function, ensure_ascii=False), MAX_TEXT),
        index_text=index_text(definition),
        metadata=metadata,
        views=views(definition),
    )


__all__ = [
    "FunctionDef",
    "assign_keys",
    "description_hash",
    "index_text",
    "load_function_schemas",
    "looks_like_definitions",
    "parse_definition",
    "views",
]
