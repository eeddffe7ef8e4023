"""Turn a finished answer into structured API calls: pure functions, no I/O, never ``eval``.

- gorilla_v0 answers are ``<<<field>>>: value`` sections (domain, api_call, api_provider,
  explanation, code); the api_call section holds the call.
- openfunctions_v2 answers are one or more ``<<function>>name(arg=value, ...)`` calls.

Calls are parsed with :mod:`ast` (syntax only) into a name and argument source texts, and matched
to the retrieved docs' keys. Anything that does not parse is kept as ``raw`` with no name.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from retriever.types import RetrievedDoc
from service.prompts import PromptFormat

_FIELD_RE = re.compile(r"<<<\s*([A-Za-z_]+)\s*>>>\s*:?")
_REST_RE = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS)\s+(/[^\s'\"`,)]*)", re.IGNORECASE)
_MAX_CALL_CHARS = 4096  # bound the parser's work on adversarial output


@dataclass(frozen=True)
class ParsedCall:
    raw: str
    name: str = ""
    arguments: dict[str, str] = field(default_factory=dict)
    matched_key: str = ""


@dataclass(frozen=True)
class ParsedAnswer:
    fields: dict[str, str]
    calls: list[ParsedCall]


def parse_answer(fmt: PromptFormat, text: str, docs: Sequence[RetrievedDoc]) -> ParsedAnswer:
    if fmt is PromptFormat.OPENFUNCTIONS_V2:
        raws = [part.strip() for part in text.split("<<function>>")[1:] if part.strip()]
        return ParsedAnswer({}, [_match(parse_call(raw), docs) for raw in raws])
    fields = gorilla_fields(text)
    raw = fields.get("api_call", "").strip()
    calls = [_match(parse_call(raw), docs)] if raw else []
    return ParsedAnswer(fields, calls)


def gorilla_fields(text: str) -> dict[str, str]:
    """``<<<name>>>: value`` sections; the first occurrence of a repeated field wins."""
    fields: dict[str, str] = {}
    matches = list(_FIELD_RE.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        fields.setdefault(m.group(1).lower(), text[m.end() : end].strip())
    return fields


def parse_call(raw: str) -> ParsedCall:
    """Name and arguments of a call written as Python (or a REST ``METHOD /path``)."""
    raw = raw.strip()
    rest = _REST_RE.search(raw)
    if rest:
        return ParsedCall(raw=raw, name=f"{rest.group(1).upper()} {rest.group(2)}")
    try:
        tree = ast.parse(raw[:_MAX_CALL_CHARS].strip().rstrip(";"), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ParsedCall(raw=raw)
    node = tree.body
    if not isinstance(node, ast.Call):
        return ParsedCall(raw=raw)
    name = _dotted_name(node.func)
    arguments = {f"arg{i}": ast.unparse(a) for i, a in enumerate(node.args)}
    arguments.update({kw.arg or "**": ast.unparse(kw.value) for kw in node.keywords})
    return ParsedCall(raw=raw, name=name, arguments=arguments)


def _dotted_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return f"{base}.{node.attr}" if base else node.attr
    if isinstance(node, ast.Call):  # a chained call such as Client().sessions.create(...)
        return _dotted_name(node.func)
    return ""


def _match(call: ParsedCall, docs: Sequence[RetrievedDoc]) -> ParsedCall:
    """The retrieved doc whose key the call names: exact, or the key's dotted suffix."""
    if not call.name:
        return call
    for d in docs:
        key = d.doc.key
        if key == call.name or key.endswith("." + call.name) or call.name.endswith("." + key):
            return ParsedCall(call.raw, call.name, call.arguments, key)
        # APIBench keys are whole calls: compare their function names.
        if "(" in key and parse_call(key).name == call.name:
            return ParsedCall(call.raw, call.name, call.arguments, key)
    return call
