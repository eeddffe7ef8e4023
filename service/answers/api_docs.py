"""What an API doc says a call to it looks like, derived from the doc's metadata alone (the API's
code is never imported): a REST operation's method, path and located parameters
(:func:`rest_operation`), a Python callable's signature (:func:`python_signature`) and an
APIBench record's reference call (:func:`apibench_reference`).

Both the call grammar (:mod:`apihelper.service.answers.allowed_calls`: which calls a model may
write) and the verdict (:mod:`apihelper.service.answers.check`: whether a written call fits)
read docs through these, so the two agree on what each doc allows. Pure, no I/O.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from apihelper.retriever.doc_kinds import doc_kind, function_schema, python_metadata, rest_metadata
from apihelper.retriever.types import ApiDoc
from apihelper.service.answers.parse import Argument, CallStyle, ParsedCall, parse_call


class _Default:
    """A parameter default, kept as source text: the value is never evaluated."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __repr__(self) -> str:
        return self.source


def schema_properties(doc: ApiDoc) -> tuple[Mapping[str, Any], list[str]]:
    params = (function_schema(doc) or {}).get("parameters")
    if not isinstance(params, Mapping):
        return {}, []
    props = params.get("properties")
    required = params.get("required")
    return (
        props if isinstance(props, Mapping) else {},
        [str(r) for r in required] if isinstance(required, list) else [],
    )


@dataclass(frozen=True)
class RestParam:
    name: str  # as the API names it (a body field clashing with a parameter is still "name")
    where: str  # path | query | header | body
    required: bool  # required by the spec and without a default
    schema: Mapping[str, Any]
    arg_name: str  # its name in the function schema (body fields may be "body_<name>")


@dataclass(frozen=True)
class RestOperation:
    key: str
    method: str
    path: str
    segments: tuple[str, ...]
    params: tuple[RestParam, ...]
    body_opaque: bool  # a body without named fields: anything goes


def rest_operation(doc: ApiDoc) -> RestOperation | None:
    """The operation a REST doc describes, with each parameter's location (None for a doc that
    is not a REST operation).

    Path, query and header parameters are the metadata's ``parameters``; the function schema's
    other properties are body fields. A field the spec marks required but that has a default is
    not treated as required (Backend.AI's generator marks defaulted keys required).
    """
    meta = rest_metadata(doc)
    if meta is None:
        return None
    method = str(meta.get("method") or "").upper()
    path = str(meta.get("path") or "")
    if not method or not path:
        return None
    props, required = schema_properties(doc)
    located: dict[str, tuple[str, bool]] = {}
    for p in meta.get("parameters") or ():
        if isinstance(p, Mapping) and isinstance(p.get("name"), str):
            where = str(p.get("in") or "query")
            located[p["name"]] = (where, bool(p.get("required")) or where == "path")
    for name in template_params(path):
        located.setdefault(name, ("path", True))
    params: list[RestParam] = []
    seen: set[str] = set()
    body_opaque = False
    for arg_name, schema in props.items():
        schema = schema if isinstance(schema, Mapping) else {}
        has_default = "default" in schema
        if arg_name in located:
            where, req = located[arg_name]
            params.append(RestParam(arg_name, where, req and (where == "path" or not has_default), schema, arg_name))
            seen.add(arg_name)
            continue
        name = arg_name[5:] if arg_name.startswith("body_") and arg_name[5:] in located else arg_name
        if arg_name == "body" and "properties" not in schema:
            body_opaque = True  # the loader's name for a body that is not an object with fields
        params.append(RestParam(name, "body", arg_name in required and not has_default, schema, arg_name))
    for name, (where, req) in located.items():  # parameters the function schema lacks
        if name not in seen:
            params.append(RestParam(name, where, req, {}, name))
    if not function_schema(doc):
        # No function schema (a store trimmed it away): body fields cannot be known, so none
        # is called unknown.
        body_opaque = True
    return RestOperation(doc.key, method, path, split_path(path), tuple(params), body_opaque)


def template_params(path: str) -> list[str]:
    return re.findall(r"\{([^{}/]+)\}", path)


def split_path(path: str) -> tuple[str, ...]:
    return tuple(unquote(s) for s in path.split("/") if s)


@functools.lru_cache(maxsize=4096)
def _signature_from_text(signature: str, kind: str) -> inspect.Signature | None:
    text = signature.strip()
    if text.startswith("async "):
        text = text[len("async ") :]
    if text.startswith("class "):
        text = "def " + text[len("class ") :]
    if not text.startswith("def "):
        return None
    try:
        tree = ast.parse(text + ":\n    pass", mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.FunctionDef):
        return None
    a = node.args
    P = inspect.Parameter
    params: list[inspect.Parameter] = []
    positional = [*a.posonlyargs, *a.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for index, (arg, default) in enumerate(zip(positional, defaults, strict=False)):
        kind_ = P.POSITIONAL_ONLY if index < len(a.posonlyargs) else P.POSITIONAL_OR_KEYWORD
        params.append(_param(arg, kind_, default))
    if a.vararg is not None:
        params.append(_param(a.vararg, P.VAR_POSITIONAL, None))
    for arg, kw_default in zip(a.kwonlyargs, a.kw_defaults, strict=False):
        params.append(_param(arg, P.KEYWORD_ONLY, kw_default))
    if a.kwarg is not None:
        params.append(_param(a.kwarg, P.VAR_KEYWORD, None))
    # Bound methods and classmethods are called without self/cls.
    if kind in ("method", "classmethod") and params and params[0].kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD):
        params = params[1:]
    try:
        return inspect.Signature(params)
    except (ValueError, TypeError):
        return None


def _param(arg: ast.arg, kind: Any, default: ast.expr | None) -> inspect.Parameter:
    annotation: Any = inspect.Parameter.empty
    if arg.annotation is not None:
        annotation = ast.unparse(arg.annotation)
    value: Any = inspect.Parameter.empty if default is None else _Default(ast.unparse(default))
    return inspect.Parameter(arg.arg, kind, default=value, annotation=annotation)


def python_signature(doc: ApiDoc) -> inspect.Signature | None:
    """The callable's signature as the caller sees it (no self/cls), rebuilt from source text.

    From ``metadata["signature"]`` (``async def f(self, a: int = 1, *, b)`` or
    ``class C(a, b=2)``) parsed with :mod:`ast`; when that is missing or does not parse, from
    the function schema (every property positional-or-keyword, required ones without default).
    """
    meta = python_metadata(doc)
    signature = meta.get("signature") if meta is not None else None
    kind = doc_kind(doc)
    if isinstance(signature, str) and signature:
        built = _signature_from_text(signature, kind)
        if built is not None:
            return built
    props, required = schema_properties(doc)
    if not props:
        return None
    P = inspect.Parameter
    ordered = [n for n in props if n in required] + [n for n in props if n not in required]
    try:
        return inspect.Signature(
            [
                P(n, P.POSITIONAL_OR_KEYWORD, default=P.empty if n in required else _Default("..."))
                for n in ordered
                if n.isidentifier()
            ]
        )
    except (ValueError, TypeError):
        return None


@dataclass(frozen=True)
class ApibenchReference:
    """What Gorilla's evaluator compares for one record: the function name and key values."""

    name: str
    values: tuple[str, ...]


def apibench_reference(api_call: str) -> ApibenchReference | None:
    """The record's function name and its key argument values.

    Gorilla's eval (ast_eval_hf/tf/th.py) takes the reference call's function text and its
    argument values (keyword arguments by value; for TorchHub only ``repo_or_dir`` and
    ``model``) and requires each to occur in the candidate call. Here the key values are the
    string literals passed to the call (model ids, hub URLs, repos: what identifies the API),
    which leaves out flags such as ``pretrained=True`` as Gorilla's TorchHub rule does; a
    record without string literals (``pipeline(sentiment-analysis, model=...)`` is written
    unquoted in APIBench) falls back to Gorilla's HF rule: the source text of every argument
    that is not a plain constant.
    """
    call = parse_call(api_call)
    if call.style is not CallStyle.PYTHON or not call.name:
        return None
    values = string_values(call)
    if not values:
        values = [normalized_source(a.source) for a in call.args if a.source and not _is_plain_constant(a)]
    return ApibenchReference(call.name, tuple(values))


def _is_plain_constant(arg: Argument) -> bool:
    return arg.literal and (arg.value is None or isinstance(arg.value, (bool, int, float)))


def normalized_source(source: str) -> str:
    return " ".join(source.split()).strip("'\"")


def string_values(call: ParsedCall) -> list[str]:
    out: list[str] = []
    for arg in call.args:
        if not arg.literal:
            continue
        values = arg.value if isinstance(arg.value, (list, tuple)) else [arg.value]
        out.extend(v for v in values if isinstance(v, str) and v)
    return out


def candidate_values(call: ParsedCall) -> set[str]:
    """What a reference value may equal in a candidate call: its string literals, and each
    argument's source text (quotes stripped, whitespace collapsed)."""
    return {*string_values(call), *(normalized_source(a.source) for a in call.args if a.source)}


__all__ = [
    "ApibenchReference",
    "RestOperation",
    "RestParam",
    "apibench_reference",
    "candidate_values",
    "normalized_source",
    "python_signature",
    "rest_operation",
    "schema_properties",
    "split_path",
    "string_values",
    "template_params",
]
