"""ApiDoc -> AllowedCall: how docs become the calls a call grammar allows.

``grammar`` takes plain typed inputs; this module reads the docs through the same derivations
the verdict uses (``check.rest_operation``, ``check.python_signature``, ``check.apibench_reference``
and the doc-kind contract), so a call the grammar allows is a call the verdict resolves to the
same doc:

- gorilla_v0: REST operations as ``METHOD /path`` with each parameter's location; Python callables
  as their dotted key (methods also as ``Class.method``) with the signature's parameters in order;
  APIBench records as their api_call.
- both: function-schema docs (tool definitions) as their name with the schema's properties as
  keyword arguments.
- openfunctions_v2 / chat_tools: the function schema's name and properties (REST body fields under
  their schema names, e.g. ``body_name``); APIBench records as their api_call.

Docs without a usable model (no method/path, no signature or schema) are left out.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from apihelper.retriever.doc_kinds import DocKind, doc_kind, function_schema, json_schema, rest_servers
from apihelper.retriever.types import ApiDoc
from apihelper.service.answers.api_docs import apibench_reference, python_signature, rest_operation
from apihelper.service.answers.grammar import (
    AllowedCall,
    CallKind,
    JsonScalar,
    ParamSpec,
    ParamWhere,
    ValueType,
)
from apihelper.service.answers.grounding import (
    grounded_numbers,
    mentions,
    named_values,
    names_value,
    question_numbers,
    stated_form,
)
from apihelper.service.answers.parse import url_host
from apihelper.service.prompts import PromptFormat

_WHERE = {"path": ParamWhere.PATH, "query": ParamWhere.QUERY, "header": ParamWhere.HEADER, "body": ParamWhere.BODY}
_TYPES = {t.value: t for t in ValueType}


def value_types(schema: Mapping[str, Any] | None) -> tuple[ValueType, ...]:
    """The JSON types a schema's value may have (``type``, ``type: [...]`` or ``anyOf``; null
    left out: the grammar allows None for optional parameters), or ``(ANY,)``."""
    if not isinstance(schema, Mapping):
        return (ValueType.ANY,)
    declared = schema.get("type")
    names: list[Any]
    if isinstance(declared, str):
        names = [declared]
    elif isinstance(declared, list):
        names = list(declared)
    elif isinstance(schema.get("anyOf"), list):
        names = []
        for variant in schema["anyOf"]:
            inner = value_types(variant) if isinstance(variant, Mapping) and variant.get("type") != "null" else ()
            if ValueType.ANY in inner:
                return (ValueType.ANY,)
            names.extend(t.value for t in inner)
    else:
        return (ValueType.ANY,)
    types = tuple(dict.fromkeys(_TYPES[n] for n in names if isinstance(n, str) and n in _TYPES and n != "any"))
    return types or (ValueType.ANY,)


def enum_values(schema: Mapping[str, Any] | None) -> tuple[JsonScalar, ...]:
    values = schema.get("enum") if isinstance(schema, Mapping) else None
    if not isinstance(values, list):
        return ()
    return tuple(v for v in values if isinstance(v, (str, int, float, bool)))


def _properties(doc: ApiDoc) -> Mapping[str, Any]:
    params = (function_schema(doc) or {}).get("parameters")
    props = params.get("properties") if isinstance(params, Mapping) else None
    return props if isinstance(props, Mapping) else {}


MAX_SPEC_DEPTH = 3  # nested object/array levels described by their own schema


def _asked(name: str, schema: Any, required: bool, question: str) -> bool:
    """Whether an answer to ``question`` may write the parameter: a required one always; an
    optional one only when the question mentions it or names one of its enum values other than
    the default (no question: always)."""
    if required or not question:
        return True
    description = schema.get("description") if isinstance(schema, Mapping) else None
    if mentions(question, name, description if isinstance(description, str) else ""):
        return True
    shape = _one_variant(schema)
    return isinstance(shape, Mapping) and names_value(question, enum_values(shape), shape.get("default"))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _grounded_enum(schema: Any, types: tuple[ValueType, ...], question: str) -> tuple[JsonScalar, ...]:
    """For a bounded number: the values it may take (the question's numbers and the schema's
    default/example within the bounds, else its minimum); () when not bounded. The grammar has no
    numeric ranges, and a number outside its bounds is wrong_arguments."""
    if not isinstance(schema, Mapping) or not set(types) <= {ValueType.INTEGER, ValueType.NUMBER}:
        return ()
    minimum, maximum = _number(schema.get("minimum")), _number(schema.get("maximum"))
    if minimum is None and maximum is None:
        return ()
    offered_numbers = [n for n in (_number(schema.get("default")), _number(schema.get("example"))) if n is not None]
    integer = ValueType.NUMBER not in types
    found = grounded_numbers(question_numbers(question), offered_numbers, minimum, maximum, integer=integer)
    return tuple(int(v) if v == int(v) and (integer or abs(v) < 1e15) else v for v in found)


def _spec(name: str, schema: Any, required: bool, where: ParamWhere, depth: int = 0, question: str = "") -> ParamSpec:
    """A parameter's spec from its JSON Schema: type, enum, the strings it offers (examples,
    default) and, for objects and arrays, their properties (required ones marked) and item.
    ``question``: the request's; optional fields it does not mention are left out, and a
    bounded number takes the values it names (see :func:`_grounded_enum`)."""
    fields: tuple[ParamSpec, ...] = ()
    items: ParamSpec | None = None
    extra: ParamSpec | None = None
    shape = _one_variant(schema)
    if isinstance(shape, Mapping) and depth < MAX_SPEC_DEPTH:
        schema_types = value_types(shape)
        props = shape.get("properties")
        if isinstance(props, Mapping) and props:
            needed = shape.get("required")
            needed_names = {str(r) for r in needed} if isinstance(needed, list) else set()
            fields = tuple(
                _spec(str(k), v, str(k) in needed_names, ParamWhere.KEYWORD, depth + 1, question)
                for k, v in props.items()
                if _asked(str(k), v, str(k) in needed_names, question)
            )
        item = shape.get("items")
        if isinstance(item, Mapping) and item and ValueType.ARRAY in schema_types:
            items = _spec("item", item, True, ParamWhere.KEYWORD, depth + 1, question)
        more = shape.get("additionalProperties")
        if isinstance(more, Mapping) and more and not fields and ValueType.OBJECT in schema_types:
            extra = _spec("value", more, True, ParamWhere.KEYWORD, depth + 1, question)
    types = value_types(schema)
    enum = _named_enum(enum_values(schema), question) or _grounded_enum(_one_variant(schema), types, question)
    form = stated_form(shape.get("format"), shape.get("description")) if isinstance(shape, Mapping) else ""
    return ParamSpec(name, types, required, where, enum, fields, items, offered(schema), extra, form)


def _named_enum(values: tuple[JsonScalar, ...], question: str) -> tuple[JsonScalar, ...]:
    """An enum's values, or only those the question names when it names some: a small model
    asked "Find a Theater event" otherwise writes the enum's first value ("Music")."""
    named = set(named_values(question, values)) if question else set()
    return tuple(v for v in values if v in named) if named else values


def _one_variant(schema: Any) -> Any:
    """The schema itself, or its one non-null ``anyOf`` variant (``Optional[list[str]]``)."""
    if isinstance(schema, Mapping) and isinstance(schema.get("anyOf"), list):
        kept = [v for v in schema["anyOf"] if isinstance(v, Mapping) and v.get("type") != "null"]
        if len(kept) == 1:
            return kept[0]
    return schema


def offered(schema: Any) -> tuple[str, ...]:
    """The strings a schema offers as values: its examples and its default (never its text)."""
    if not isinstance(schema, Mapping):
        return ()
    found: list[Any] = [schema.get("default"), schema.get("example"), schema.get("const")]
    examples = schema.get("examples")
    if isinstance(examples, list):
        found.extend(examples)
    return tuple(v for v in found if isinstance(v, str) and v)


def gorilla_call(doc: ApiDoc, question: str = "") -> AllowedCall | None:
    """The call a gorilla_v0 answer writes for ``doc``'s API, or None (``question``: see
    :func:`allowed_calls`)."""
    kind = doc_kind(doc)
    if kind is DocKind.REST_OPERATION:
        op = rest_operation(doc)
        if op is None:
            return None
        params = tuple(
            _spec(p.name, p.schema, p.required, _WHERE.get(p.where, ParamWhere.BODY), question=question)
            for p in op.params
            if _asked(p.name, p.schema, p.required, question)
        )
        servers = tuple(u for u in rest_servers(doc) if url_host(u) not in ("", "?"))
        return AllowedCall(f"{op.method} {op.path}", CallKind.REST, params, base_urls=servers)
    if kind is DocKind.APIBENCH_RECORD:
        return apibench_call(doc)
    if kind is DocKind.FUNCTION_SCHEMA:
        return _schema_call(doc, CallKind.PYTHON, question)
    if kind.is_python:
        signature = python_signature(doc)
        if signature is None:
            return None
        props = _properties(doc)
        P = inspect.Parameter
        params = tuple(
            _spec(
                p.name,
                props.get(p.name),
                p.default is P.empty,
                ParamWhere.POSITIONAL if p.kind is P.POSITIONAL_ONLY else ParamWhere.KEYWORD,
                question=question,
            )
            for p in signature.parameters.values()
            if p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)
            and _asked(p.name, props.get(p.name), p.default is P.empty, question)
        )
        parts = doc.key.split(".")
        bound = kind in (DocKind.METHOD, DocKind.CLASSMETHOD, DocKind.STATICMETHOD)
        aliases = (".".join(parts[-2:]),) if bound and len(parts) > 2 else ()
        return AllowedCall(doc.key, CallKind.PYTHON, params, aliases)
    return None


def apibench_call(doc: ApiDoc) -> AllowedCall | None:
    """An APIBench record's api_call (its key: whitespace collapsed), if the validator can match
    it at all: some records' api_call is a shell command or prose, which no answer can match."""
    if apibench_reference(doc.key) is None:
        return None
    return AllowedCall(doc.key, CallKind.APIBENCH)


def function_call(doc: ApiDoc, question: str = "") -> AllowedCall | None:
    """The call an openfunctions_v2 / chat_tools answer writes for ``doc``'s API, or None
    (``question``: see :func:`allowed_calls`)."""
    if doc_kind(doc) is DocKind.APIBENCH_RECORD:
        return apibench_call(doc)
    schema = function_schema(doc) or {}
    name = schema.get("name")
    if not isinstance(name, str) or not name:
        return None
    if doc_kind(doc) is DocKind.REST_OPERATION:
        op = rest_operation(doc)
        if op is not None:
            params = tuple(
                _spec(p.arg_name, p.schema, p.required, ParamWhere.KEYWORD, question=question)
                for p in op.params
                if p.where != "header" and _asked(p.arg_name, p.schema, p.required, question)
            )
            return AllowedCall(name, CallKind.FUNCTION, params)
    return _schema_call(doc, CallKind.FUNCTION, question)


def _schema_call(doc: ApiDoc, kind: CallKind, question: str = "") -> AllowedCall | None:
    """A call by the function schema's name with its properties as keyword arguments (BFCL's type
    names read as JSON Schema's)."""
    schema = function_schema(doc) or {}
    name = schema.get("name")
    if not isinstance(name, str) or not name:
        return None
    parameters = schema.get("parameters")
    required = parameters.get("required") if isinstance(parameters, Mapping) else None
    required_names = {str(r) for r in required} if isinstance(required, list) else set()
    params = tuple(
        _spec(n, json_schema(s), n in required_names, ParamWhere.KEYWORD, question=question)
        for n, s in _properties(doc).items()
        if _asked(n, s, n in required_names, question)
    )
    return AllowedCall(name, kind, params)


def allowed_calls(fmt: PromptFormat, docs: Iterable[ApiDoc], question: str = "") -> list[AllowedCall]:
    """The calls of ``docs`` (in order) for answers in ``fmt``. ``question``: the request's, for
    grounded arguments: optional parameters (and optional fields of nested objects) only where
    the question mentions them, bounded numbers only as the values it names or the schema
    offers (``grounding``); "" allows every parameter."""
    mapper = gorilla_call if fmt is PromptFormat.GORILLA_V0 else function_call
    return [c for c in (mapper(d, question) for d in docs) if c is not None]
