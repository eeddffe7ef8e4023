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


def _spec(name: str, schema: Any, required: bool, where: ParamWhere) -> ParamSpec:
    return ParamSpec(name, value_types(schema), required, where, enum_values(schema))


def gorilla_call(doc: ApiDoc) -> AllowedCall | None:
    """The call a gorilla_v0 answer writes for ``doc``'s API, or None."""
    kind = doc_kind(doc)
    if kind is DocKind.REST_OPERATION:
        op = rest_operation(doc)
        if op is None:
            return None
        params = tuple(_spec(p.name, p.schema, p.required, _WHERE.get(p.where, ParamWhere.BODY)) for p in op.params)
        servers = tuple(u for u in rest_servers(doc) if url_host(u) not in ("", "?"))
        return AllowedCall(f"{op.method} {op.path}", CallKind.REST, params, base_urls=servers)
    if kind is DocKind.APIBENCH_RECORD:
        return apibench_call(doc)
    if kind is DocKind.FUNCTION_SCHEMA:
        return _schema_call(doc, CallKind.PYTHON)
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
            )
            for p in signature.parameters.values()
            if p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)
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


def function_call(doc: ApiDoc) -> AllowedCall | None:
    """The call an openfunctions_v2 / chat_tools answer writes for ``doc``'s API, or None."""
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
                _spec(p.arg_name, p.schema, p.required, ParamWhere.KEYWORD) for p in op.params if p.where != "header"
            )
            return AllowedCall(name, CallKind.FUNCTION, params)
    return _schema_call(doc, CallKind.FUNCTION)


def _schema_call(doc: ApiDoc, kind: CallKind) -> AllowedCall | None:
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
        _spec(n, json_schema(s), n in required_names, ParamWhere.KEYWORD) for n, s in _properties(doc).items()
    )
    return AllowedCall(name, kind, params)


def allowed_calls(fmt: PromptFormat, docs: Iterable[ApiDoc]) -> list[AllowedCall]:
    """The calls of ``docs`` (in order) for answers in ``fmt``."""
    mapper = gorilla_call if fmt is PromptFormat.GORILLA_V0 else function_call
    return [c for c in (mapper(d) for d in docs) if c is not None]
