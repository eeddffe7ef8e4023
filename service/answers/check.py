"""Check parsed calls against API docs: does the API exist, and do the arguments fit it?

This module owns the verdict on an answer: ``valid`` (the right shape and every value grounded),
``ungrounded`` (the right shape, but a value from nowhere), ``wrong_arguments``, ``unknown_api``
(the call matches no API in the docs: Gorilla's "hallucination"), ``unparseable`` (no call could
be read; a call cut off by max_tokens says "truncated call"), or ``unchecked`` (a call was read
but there were no docs able to confirm or refute it), with human-readable reasons and the key of
the doc that matched.

Values are checked against their whole JSON Schema by the ``jsonschema`` library
(:func:`schema_problems`: nested required fields, patterns, formats, bounds, enums,
additionalProperties). Grounding (:func:`ungrounded_values`, when the question is given): every
string value of a call must appear in the question, be offered by the schema (enum, const,
default, example) or be a placeholder (``"<session_id>"``); a schema's description never grounds
a value. Numbers and booleans are grounded by their type.

Docs are looked up in two :class:`ApiCatalog`\\ s: the docs retrieved for this request (searched
first, so an ambiguous name resolves to what the model was shown) and, optionally, the whole
corpus (so a real API that retrieval missed is not called a hallucination). Everything is
derived from what the loaders stored on each doc; the API's code is never imported:

what kind a doc is and what its metadata holds is the retriever's contract
(``apihelper.retriever.doc_kinds``):

- REST operations: method and path template, parameter locations (``parameters``) and the
  JSON-schema ``function`` (body fields).
- Python callables (function, method, classmethod, staticmethod, class): an
  :class:`inspect.Signature` rebuilt by parsing ``signature`` with :mod:`ast` (falling back to
  the ``function`` schema), never by importing.
- APIBench records: Gorilla's AST sub-tree rule, see :func:`apibench_reference`.
- Function schemas (tool definitions): called by their bare name; the arguments are checked
  against the schema as BFCL's checker does (every required parameter given, none outside the
  schema, literal values of the right JSON type and in the enum), BFCL's type names read as
  JSON Schema's (``doc_kinds.json_schema``).
- Text docs are not APIs: a call that names one is unchecked.

Hosts: a REST call written with an absolute URL (``requests.delete("https://evil.example/...")``,
``curl https://...``, ``httpx``, ``GET https://...``) must go to the API's own server: a host
among the matched operation's OpenAPI ``servers`` or the configured base URLs (``base_urls``,
the ``api_base_urls`` setting). Another host is ``unknown_api`` ("wrong host": that API is not
documented there, and the call would send its data elsewhere); where neither the spec nor the
settings name a server, an absolute URL's host cannot be confirmed and the call is
``unchecked``. Paths and ``{BASE_URL}/...`` templates name no host and are not affected.

Pure and synchronous: no I/O; the work is bounded by the parser's limits and the catalog size.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import inspect
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from apihelper.retriever.doc_kinds import (
    DocKind,
    apibench_metadata,
    doc_kind,
    function_schema,
    json_schema,
    rest_servers,
)
from apihelper.retriever.types import ApiDoc, RetrievedDoc
from apihelper.service.answers.api_docs import (
    ApibenchReference,
    RestOperation,
    apibench_reference,
    candidate_values,
    python_signature,
    rest_operation,
    schema_properties,
    split_path,
    string_values,
    template_params,
)
from apihelper.service.answers.grounding import question_dates, question_times
from apihelper.service.answers.parse import (
    Argument,
    ArgWhere,
    CallStyle,
    ParsedAnswer,
    ParsedCall,
    parse_answer,
    url_host,
)
from apihelper.service.prompts import PromptFormat

MAX_REASONS = 12  # per call: a call with 40 unknown fields needs no 40 lines
MAX_BASE_SEGMENTS = 2  # leading path segments tried as a base path (/api/v1/...) before giving up

_PLACEHOLDER_RE = re.compile(r"\{[^{}/]+\}|<[^<>/]+>|:[A-Za-z_]\w*")


class Verdict(str, enum.Enum):
    VALID = "valid"  # the right shape, and every value grounded (or a placeholder)
    UNCHECKED = "unchecked"  # read fine, but no doc could confirm or refute it
    UNGROUNDED = "ungrounded"  # the right shape, but some value comes from nowhere
    WRONG_ARGUMENTS = "wrong_arguments"
    UNKNOWN_API = "unknown_api"  # Gorilla's hallucination: no API in the docs matches
    UNPARSEABLE = "unparseable"


# How bad each verdict is: an answer's verdict is its worst call's.
_SEVERITY = {
    Verdict.VALID: 0,
    Verdict.UNCHECKED: 1,
    Verdict.UNGROUNDED: 2,
    Verdict.WRONG_ARGUMENTS: 3,
    Verdict.UNKNOWN_API: 4,
    Verdict.UNPARSEABLE: 5,
}


@dataclass(frozen=True)
class CallCheck:
    call: ParsedCall  # matched_key filled in
    verdict: Verdict
    reasons: tuple[str, ...] = ()  # what is wrong; for a valid call, notes (never errors)
    doc_key: str = ""  # the doc the call matched ("" for unknown_api/unparseable)
    retrieved: bool = False  # doc_key is one of the docs retrieved for this request
    suggestion: str = ""  # unknown_api: the closest real key, when one is close
    ungrounded: tuple[str, ...] = ()  # 'name=value' of each value from nowhere (see grounding)


@dataclass(frozen=True)
class CheckedAnswer:
    fields: dict[str, str]
    calls: list[ParsedCall]
    checks: list[CallCheck]
    verdict: Verdict  # the worst of the calls' verdicts
    reasons: tuple[str, ...]  # the reasons of the calls that set the verdict
    doc_key: str  # the first call's matched key
    layout: str = ""


# ----------------------------------------------------------------------------------------------
# Catalog


class ApiCatalog:
    """An index of API docs for validation: by key, by function-schema name, by dotted-name
    suffix (Python), by path template (REST) and by function name (APIBench).

    Build one per request from the retrieved docs (cheap: a handful of docs) and one for the
    whole corpus (all of a corpus' ApiDocs: the service reads them from the vector store once
    per corpus version, see ``apihelper.service.answers.corpus_cache``); :func:`check_answer` takes both.
    """

    def __init__(self, docs: Iterable[ApiDoc], *, parsed: ApiCatalog | None = None) -> None:
        """Index ``docs`` (the first doc of a key wins). ``parsed``: a catalog whose REST models
        are reused for the very same doc objects (a request's catalog takes them from the
        corpus', instead of parsing each retrieved operation again on every request)."""
        self._docs: dict[str, ApiDoc] = {}
        self._by_function: dict[str, list[ApiDoc]] = {}
        self._by_suffix: dict[str, list[ApiDoc]] = {}
        self._rest: list[RestOperation] = []
        self._rest_by_key: dict[str, RestOperation] = {}
        self._apibench_docs: list[ApiDoc] = []
        self._apibench: dict[str, list[tuple[ApiDoc, ApibenchReference]]] | None = None
        for doc in docs:
            if doc.key in self._docs:
                continue
            self._docs[doc.key] = doc
            kind = doc_kind(doc)
            fname = (function_schema(doc) or {}).get("name")
            if isinstance(fname, str) and fname:
                self._by_function.setdefault(fname, []).append(doc)
            if kind is DocKind.REST_OPERATION:
                op = parsed._parsed_rest(doc) if parsed is not None else None
                op = op or rest_operation(doc)
                if op is not None:
                    self._rest.append(op)
                    self._rest_by_key[doc.key] = op
            elif kind is DocKind.APIBENCH_RECORD:
                self._apibench_docs.append(doc)
            elif kind.is_python:
                parts = doc.key.split(".")
                for i in range(len(parts)):
                    self._by_suffix.setdefault(".".join(parts[i:]), []).append(doc)

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, key: object) -> bool:
        return key in self._docs

    def get(self, key: str) -> ApiDoc | None:
        return self._docs.get(key)

    def docs(self) -> list[ApiDoc]:
        """Every doc, in the order they came (the first of a key)."""
        return list(self._docs.values())

    def kind_of(self, key: str) -> DocKind:
        doc = self._docs.get(key)
        return doc_kind(doc) if doc is not None else DocKind.TEXT

    def __iter__(self) -> Iterator[str]:
        """The keys, in the order the docs came."""
        return iter(self._docs)

    def by_function_name(self, name: str) -> list[ApiDoc]:
        return list(self._by_function.get(name, ()))

    def python_candidates(self, name: str) -> tuple[list[ApiDoc], str]:
        """Docs whose key ends with the longest dotted suffix of ``name`` that any key ends with,
        and that suffix: ``api.ComputeSession.get_or_create`` finds ``...ComputeSession.get_or_create``."""
        parts = name.split(".")
        for i in range(len(parts)):
            suffix = ".".join(parts[i:])
            found = self._by_suffix.get(suffix)
            if found:
                return list(found), suffix
        return [], ""

    def rest_operations(self) -> list[RestOperation]:
        return list(self._rest)

    def rest_operation(self, key: str) -> RestOperation | None:
        return self._rest_by_key.get(key)

    def _parsed_rest(self, doc: ApiDoc) -> RestOperation | None:
        # Identity, not equality: only this catalog's own doc object is known to match the model.
        return self._rest_by_key.get(doc.key) if self._docs.get(doc.key) is doc else None

    def prepare(self) -> ApiCatalog:
        """Build the lazily built indexes now (APIBench references: ~0.1 s for all of APIBench),
        so the first request does not pay for them; call it at start-up, off the event loop."""
        self.apibench_by_name("")
        return self

    def apibench_by_name(self, name: str) -> list[tuple[ApiDoc, ApibenchReference]]:
        """Records whose reference call is ``name`` or a dotted suffix of it."""
        if self._apibench is None:
            index: dict[str, list[tuple[ApiDoc, ApibenchReference]]] = {}
            for doc in self._apibench_docs:
                api_call = (apibench_metadata(doc) or {}).get("api_call")
                ref = apibench_reference(api_call if isinstance(api_call, str) else doc.key)
                if ref is not None:
                    index.setdefault(ref.name, []).append((doc, ref))
            self._apibench = index
        parts = name.split(".")
        out: list[tuple[ApiDoc, ApibenchReference]] = []
        for i in range(len(parts)):
            out.extend(self._apibench.get(".".join(parts[i:]), ()))
        return out

    @property
    def has_checkable_docs(self) -> bool:
        return bool(self._rest or self._apibench_docs or self._by_suffix or self._by_function)


# ----------------------------------------------------------------------------------------------
# Entry points


def check_answer(
    fmt: PromptFormat,
    text: str,
    docs: Sequence[RetrievedDoc],
    corpus: ApiCatalog | None = None,
    *,
    base_urls: Sequence[str] = (),
    question: str = "",
) -> CheckedAnswer:
    """Parse ``text`` (an answer in ``fmt``) and check every call. Never raises.

    ``base_urls``: where the APIs are served besides their specs' ``servers`` (see Hosts above).
    ``question``: the instruction the answer is for; when given, every value of a call of the
    right shape must be grounded in it, in the schema or be a placeholder (see Grounding).
    """
    return check_parsed(parse_answer(fmt, text), docs, corpus, base_urls=base_urls, question=question)


def check_parsed(
    answer: ParsedAnswer,
    docs: Sequence[RetrievedDoc],
    corpus: ApiCatalog | None = None,
    *,
    base_urls: Sequence[str] = (),
    question: str = "",
) -> CheckedAnswer:
    # The corpus copy of a retrieved doc wins: the vector store may have trimmed its metadata.
    retrieved = ApiCatalog(
        ((corpus.get(d.doc.key) if corpus is not None else None) or d.doc for d in docs), parsed=corpus
    )
    checks: list[CallCheck] = []
    for call in answer.calls:
        try:
            checks.append(check_call(call, retrieved, corpus, base_urls=base_urls, question=question))
        except Exception as exc:  # a checker bug must not fail the request: say so instead
            checks.append(CallCheck(call, Verdict.UNCHECKED, (f"validation error: {type(exc).__name__}",)))
    if not checks:
        checks = [CallCheck(ParsedCall(raw=""), Verdict.UNPARSEABLE, ("no call in the answer",))]
    worst = max(checks, key=lambda c: _SEVERITY[c.verdict])
    reasons = tuple(r for c in checks if c.verdict is worst.verdict for r in c.reasons)
    return CheckedAnswer(
        fields=answer.fields,
        calls=[c.call for c in checks],  # aligned with checks: calls[i] is checks[i].call
        checks=checks,
        verdict=worst.verdict,
        reasons=reasons[:MAX_REASONS],
        doc_key=checks[0].doc_key,
        layout=answer.layout,
    )


def check_call(
    call: ParsedCall,
    retrieved: ApiCatalog,
    corpus: ApiCatalog | None = None,
    *,
    base_urls: Sequence[str] = (),
    question: str = "",
) -> CallCheck:
    """The verdict on one call, looked up in the retrieved docs first, then the corpus."""
    if call.style is CallStyle.NONE or not call.name:
        return CallCheck(call, Verdict.UNPARSEABLE, (call.problem or "no call could be read",))
    catalogs = [c for c in (retrieved, corpus) if c is not None]
    if call.style is CallStyle.REST:
        result = _check_host(call, _check_rest_call(call, catalogs, retrieved), catalogs, base_urls)
    else:
        result = _check_python_call(call, catalogs, retrieved)
    if result.verdict is Verdict.UNKNOWN_API:
        if not any(c.has_checkable_docs for c in catalogs):
            return dataclasses.replace(
                result, verdict=Verdict.UNCHECKED, reasons=("no API docs to check the call against",)
            )
        if corpus is None:
            result = dataclasses.replace(
                result, reasons=(*result.reasons, "only the retrieved docs were checked (no corpus index)")
            )
    if question and result.doc_key and result.verdict in (Verdict.VALID, Verdict.WRONG_ARGUMENTS):
        result = _grounded(result, catalogs, question)
    if call.truncated:
        result = dataclasses.replace(
            result, reasons=(*result.reasons, "the answer was cut off; the call was completed to parse it")
        )
    return result


# ----------------------------------------------------------------------------------------------
# Grounding


def _grounded(result: CallCheck, catalogs: Sequence[ApiCatalog], question: str) -> CallCheck:
    """``result`` with the call's ungrounded values listed; a valid call with any becomes
    ``ungrounded``. APIBench records are not grounded: their values are the record itself."""
    doc = next((d for c in catalogs if (d := c.get(result.doc_key)) is not None), None)
    if doc is None or doc_kind(doc) is DocKind.APIBENCH_RECORD:
        return result
    op = next((o for c in catalogs if (o := c.rest_operation(result.doc_key)) is not None), None)
    values = list(_named_values(result.call, op))
    missing = ungrounded_values(values, schema_values(doc, op), question)
    if not missing:
        return result
    shown = tuple(f"{name}={_short(value)}" for name, value in missing)
    if result.verdict is not Verdict.VALID:
        return dataclasses.replace(result, ungrounded=shown)
    reasons = (
        f"ungrounded: {', '.join(shown[:MAX_REASONS])}",
        "each value must come from the question, from the schema (enum, default, example, const), "
        "or be a placeholder such as '<name>'",
    )
    return dataclasses.replace(result, verdict=Verdict.UNGROUNDED, reasons=reasons, ungrounded=shown)


def _named_values(call: ParsedCall, op: RestOperation | None) -> Iterator[tuple[str, Any]]:
    """The call's literal values with a name each: keyword and body arguments by name,
    positional ones by position, REST path segments by their template parameter."""
    by_location = {(p.name, p.where): p for p in op.params} if op is not None else {}
    for arg in call.args:
        if not arg.literal:
            continue
        name = arg.name or (f"argument {arg.position + 1}" if arg.where is ArgWhere.POSITIONAL else arg.where.value)
        param = by_location.get((arg.name, arg.where.value))
        if param is not None and arg.where is not ArgWhere.BODY and isinstance(arg.value, str):
            # A URL's "true" or "10" is the boolean or number its schema says: grounded by type.
            yield name, _coerce(arg.value, param.schema.get("type"))
            continue
        yield name, arg.value
    if op is not None and call.style is CallStyle.REST:
        segments = split_path(call.path)
        for drop in range(min(MAX_BASE_SEGMENTS, len(segments)) + 1):
            matched = _match_template(op, segments[drop:])
            if matched is not None:
                yield from matched[1].items()
                break


# Keywords whose values a schema offers as values to use.
_VALUE_KEYWORDS = ("enum", "const", "default", "example", "examples")
MAX_SCHEMA_WALK = 20_000  # nodes of a doc's metadata walked for its offered values


def schema_values(doc: ApiDoc, op: RestOperation | None = None) -> frozenset[str]:
    """Every string a doc's schemas offer as a value (enum, const, default, example(s)), in
    its metadata and, for a REST operation, its parameters' schemas. Never descriptions."""
    found: set[str] = set()
    stack: list[Any] = [doc.metadata, *((p.schema for p in op.params) if op is not None else ())]
    seen = 0
    while stack and seen < MAX_SCHEMA_WALK:
        node = stack.pop()
        seen += 1
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key in _VALUE_KEYWORDS:
                    found.update(_strings_in(value))
                elif isinstance(value, (Mapping, list)):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (Mapping, list)))
    return frozenset(found)


def _strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value[:MAX_SCHEMA_WALK]:
            yield from _strings_in(item)
    elif isinstance(value, Mapping):
        for item in list(value.values())[:MAX_SCHEMA_WALK]:
            yield from _strings_in(item)


_VALUE_PLACEHOLDER_RE = re.compile(r"<[A-Za-z_][\w .:/-]{0,80}>|\{[A-Za-z_][\w .:/-]{0,80}\}")


def is_placeholder(value: str) -> bool:
    """An explicit placeholder for a value the question does not give: ``<session_id>``, ``{name}``."""
    return bool(_VALUE_PLACEHOLDER_RE.fullmatch(value.strip()))


def _normalized(text: str) -> str:
    return " ".join(text.casefold().split())


def ungrounded_values(
    values: Iterable[tuple[str, Any]], offered: frozenset[str], question: str
) -> list[tuple[str, Any]]:
    """The (name, value) string leaves (nested objects and arrays walked) that are neither in
    ``question`` (case and spacing aside) nor one of its dates or times in the form a schema takes
    (``grounding.question_dates``, ``question_times``) nor among ``offered``
    nor a placeholder nor empty.
    Numbers and booleans are grounded by their type: the schema says what they may be."""
    said = _normalized(question)
    derived = {*question_dates(question), *question_times(question)}
    missing: list[tuple[str, Any]] = []
    for name, value in values:
        for path, leaf in _string_leaves(name, value):
            text = leaf.strip()
            if not text or is_placeholder(text) or leaf in offered or _normalized(text) in said or text in derived:
                continue
            missing.append((path, leaf))
    return missing


def _string_leaves(path: str, value: Any, depth: int = 0) -> Iterator[tuple[str, str]]:
    if depth > 32:
        return
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _string_leaves(f"{path}.{key}", item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _string_leaves(f"{path}[{i}]", item, depth + 1)


@functools.lru_cache(maxsize=256)
def _hosts_of(urls: tuple[str, ...]) -> frozenset[str]:
    """The host names of the absolute ones among ``urls`` (a relative server URL names none)."""
    return frozenset(h for h in (url_host(u) for u in urls) if h and h != "?")


def _check_host(
    call: ParsedCall, result: CallCheck, catalogs: Sequence[ApiCatalog], base_urls: Sequence[str]
) -> CallCheck:
    """``result`` unless the call's absolute URL goes to a host that is not the API's own."""
    host = call.host
    if not host or "{" in host or result.verdict in (Verdict.UNKNOWN_API, Verdict.UNPARSEABLE):
        return result  # a path or {BASE_URL}/... template; or already not an API of the docs
    doc = next((d for c in catalogs if (d := c.get(result.doc_key)) is not None), None)
    own = _hosts_of(tuple(rest_servers(doc)) if doc is not None else ()) | _hosts_of(tuple(base_urls))
    if host in own:
        return result
    shown = host if len(host) <= 80 else host[:77] + "..."
    if not own:
        if result.verdict is not Verdict.VALID:
            return dataclasses.replace(result, reasons=(*result.reasons, f"host {shown!r} not checked")[:MAX_REASONS])
        reason = f"host {shown!r} not checked: the spec names no server and no base URL is configured (api_base_urls)"
        return dataclasses.replace(result, verdict=Verdict.UNCHECKED, reasons=(reason,))
    servers = ", ".join(sorted(own)[:3])
    reason = f"wrong host: {shown!r} is not where {result.doc_key} is served ({servers})"
    return CallCheck(call, Verdict.UNKNOWN_API, (reason,), "", False, result.doc_key)


def _finish(
    call: ParsedCall,
    doc_key: str,
    reasons: list[str],
    notes: list[str],
    retrieved: ApiCatalog,
) -> CallCheck:
    in_retrieved = doc_key in retrieved
    if not in_retrieved and len(retrieved):
        notes.append(f"{doc_key} exists in the corpus but was not among the retrieved docs")
    verdict = Verdict.WRONG_ARGUMENTS if reasons else Verdict.VALID
    shown = reasons if reasons else notes
    return CallCheck(
        dataclasses.replace(call, matched_key=doc_key),
        verdict,
        tuple(shown[:MAX_REASONS]),
        doc_key,
        in_retrieved,
    )


def _unknown(call: ParsedCall, reason: str, suggestion: str = "") -> CallCheck:
    reasons = [reason]
    if suggestion:
        reasons.append(f"closest real API: {suggestion}")
    return CallCheck(call, Verdict.UNKNOWN_API, tuple(reasons), "", False, suggestion)


# ----------------------------------------------------------------------------------------------
# REST


@dataclass(frozen=True)
class _PathMatch:
    op: RestOperation
    score: int  # literal segments matched (more: a more specific template)
    values: dict[str, str]  # template parameter -> concrete segment (placeholders left out)
    dropped: str  # base path dropped to match ("" when none)


def _match_template(op: RestOperation, segments: Sequence[str]) -> tuple[int, dict[str, str]] | None:
    if len(op.segments) != len(segments):
        return None
    score = 0
    values: dict[str, str] = {}
    for tmpl, seg in zip(op.segments, segments, strict=False):
        params = template_params(tmpl)
        if not params:
            if tmpl != seg:
                return None
            score += 2
            continue
        if _PLACEHOLDER_RE.fullmatch(seg):
            # The model wrote a placeholder ("{session_id}", "<id>", ":id"): fine for a template.
            score += 1 if seg.strip("{}<>:") in params else 0
            continue
        compiled, names = _segment_pattern(tmpl)
        m = compiled.fullmatch(seg)
        if m is None:
            return None
        for i, name in enumerate(names):
            values[name] = m.group(f"p{i}")
    return score, values


@functools.lru_cache(maxsize=8192)
def _segment_pattern(template_segment: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """A regex for one templated path segment ("{name}" or "{name}.json") and its parameter names."""
    parts = [p for p in re.split(r"(\{[^{}/]+\})", template_segment) if p]
    names: list[str] = []
    pattern = ""
    for part in parts:
        if part.startswith("{") and part.endswith("}"):
            pattern += f"(?P<p{len(names)}>[^/]+?)"
            names.append(part[1:-1])
        else:
            pattern += re.escape(part)
    return re.compile(pattern), tuple(names)


def _rest_matches(catalog: ApiCatalog, path: str) -> list[_PathMatch]:
    segments = list(split_path(path))
    found: list[_PathMatch] = []
    for drop in range(MAX_BASE_SEGMENTS + 1):
        if drop > len(segments):
            break
        rest = segments[drop:]
        for op in catalog.rest_operations():
            matched = _match_template(op, rest)
            if matched is not None:
                found.append(_PathMatch(op, matched[0], matched[1], "/" + "/".join(segments[:drop]) if drop else ""))
        if found:
            break
    found.sort(key=lambda m: -m.score)
    return found


def _check_rest_call(call: ParsedCall, catalogs: Sequence[ApiCatalog], retrieved: ApiCatalog) -> CallCheck:
    other: list[_PathMatch] = []
    for catalog in catalogs:
        matches = _rest_matches(catalog, call.path)
        same = [m for m in matches if m.op.method == call.method]
        if same:
            return _check_rest_args(call, same[0], retrieved)  # sorted: most literal segments first
        other = other or matches
    if other:
        other_methods = sorted({m.op.method for m in other})
        path = other[0].op.path
        return _unknown(
            call,
            f"no {call.method} operation on {path}; it has {', '.join(other_methods)}",
            f"{other_methods[0]} {path}",
        )
    if not any(c.rest_operations() for c in catalogs):
        return _unknown(call, f"{call.name} matches no REST operation (no REST docs to compare with)")
    ops = [op for c in catalogs for op in c.rest_operations()]
    return _unknown(call, f"no operation matches {call.method} {call.path}", _closest_rest(call, ops))


# How alike (difflib's ratio) a real API must be to be offered as "the closest" to an unknown one,
# and how much of an unknown REST call is compared.
CLOSEST_CUTOFF = 0.75
CLOSEST_MAX_CHARS = 512


def _closest_rest(call: ParsedCall, ops: Sequence[RestOperation]) -> str:
    """The operation most like the call, comparing paths with the template's parameters filled
    from the call's own segments (so /folder/x/mkdir is close to /folders/{name}/mkdir)."""
    segments = split_path(call.path)
    # No documented path is this long: a longer one (a hostile answer) is compared by its head,
    # which keeps difflib's work bounded and rules such paths out on length alone.
    wanted = f"{call.method} /{'/'.join(segments)}"[:CLOSEST_MAX_CHARS]
    best, best_ratio = "", 0.0
    for op in ops:
        if len(op.segments) == len(segments):
            filled = [seg if template_params(t) else t for t, seg in zip(op.segments, segments, strict=True)]
        else:
            filled = list(op.segments)
        matcher = difflib.SequenceMatcher(None, wanted, f"{op.method} /{'/'.join(filled)}")
        # The cheap upper bounds first: most operations are ruled out without the full ratio.
        floor = max(best_ratio, CLOSEST_CUTOFF)
        if matcher.real_quick_ratio() < floor or matcher.quick_ratio() < floor:
            continue
        ratio = matcher.ratio()
        if ratio > best_ratio and ratio >= CLOSEST_CUTOFF:
            best, best_ratio = op.key, ratio
    return best


def _check_rest_args(call: ParsedCall, match: _PathMatch, retrieved: ApiCatalog) -> CallCheck:
    op = match.op
    reasons: list[str] = []
    notes: list[str] = []
    if match.dropped:
        notes.append(f"matched {op.key} after dropping the base path {match.dropped}")
    by_name = {p.name: p for p in op.params}
    by_location = {(p.name, p.where): p for p in op.params}
    given: dict[str, Argument] = {}
    opaque = False
    for arg in call.args:
        if not arg.name:
            opaque = True
            notes.append(f"the {arg.where.value} is given as {arg.source[:60]!r}; its fields are not checked")
            continue
        # A body field may share its name with a path parameter ("name"): match the location first.
        param = by_location.get((arg.name, arg.where.value)) or by_name.get(arg.name)
        if param is None:
            if arg.where is ArgWhere.BODY and op.body_opaque:
                continue
            what = "body field" if arg.where is ArgWhere.BODY else f"{arg.where.value} parameter"
            reasons.append(_unknown_name_reason(what, arg.name, [p.name for p in op.params]))
            continue
        if param.where != arg.where.value and not (param.where == "body" and op.body_opaque):
            reasons.append(
                f"'{arg.name}' is a {param.where} parameter of {op.key}, but was sent in the {arg.where.value}"
            )
        given[f"{param.where}:{param.name}"] = arg
        problem = type_problem(arg.value, param.schema, coerce=arg.where is not ArgWhere.BODY) if arg.literal else None
        if problem:
            reasons.append(f"'{arg.name}' {problem}")
    for name, value in match.values.items():
        param = by_location.get((name, "path"))
        if param is not None:
            problem = type_problem(value, param.schema, coerce=True)
            if problem:
                reasons.append(f"path parameter '{name}' {problem}")
    missing = [
        p.name for p in op.params if p.required and p.where in ("query", "body") and f"{p.where}:{p.name}" not in given
    ]
    if missing:
        if not call.args or opaque:
            # "POST /session" alone names the operation; judging its body would need one.
            notes.append(f"required parameters not checked: {', '.join(missing)}")
        else:
            reasons.append(f"missing required parameter{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    return _finish(call, op.key, reasons, notes, retrieved)


def _unknown_name_reason(what: str, name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.7)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {what} '{name}'{hint}"


def _named_args(
    call: ParsedCall, order: Sequence[str], given: set[str], reasons: list[str], notes: list[str]
) -> Iterator[tuple[Argument, str]]:
    """The call's arguments with the parameter name each one binds to, positional ones taking
    ``order``. ``*args``/``**kwargs`` mark every parameter given (with a note) and a positional
    argument past the end is a reason; neither is yielded."""
    for arg in call.args:
        if arg.where in (ArgWhere.STAR, ArgWhere.STAR_STAR):
            notes.append("*args/**kwargs in the call: arguments not fully checked")
            given.update(order)
        elif arg.where is ArgWhere.POSITIONAL:
            if arg.position >= len(order):
                reasons.append(f"too many positional arguments for {call.name}")
            else:
                yield arg, order[arg.position]
        else:
            yield arg, arg.name


def _check_rest_function_call(call: ParsedCall, doc: ApiDoc, op: RestOperation, retrieved: ApiCatalog) -> CallCheck:
    """An openfunctions call of a REST operation's function (``session_create_from_params(...)``):
    keyword arguments are the function schema's properties, whatever their location."""
    reasons: list[str] = []
    notes: list[str] = [f"{call.name} is {op.key}"]
    by_arg = {p.arg_name: p for p in op.params}
    by_arg.update({p.name: p for p in op.params if p.name not in by_arg})
    order = [p.arg_name for p in op.params]
    given: set[str] = set()
    for arg, name in _named_args(call, order, given, reasons, notes):
        param = by_arg.get(name)
        if param is None:
            if not op.body_opaque:
                reasons.append(_unknown_name_reason("parameter", name, order))
            continue
        if param.arg_name in given:
            reasons.append(f"'{name}' given more than once")
        given.add(param.arg_name)
        problem = type_problem(arg.value, param.schema) if arg.literal else None
        if problem:
            reasons.append(f"'{name}' {problem}")
    missing = [p.arg_name for p in op.params if p.required and p.where != "header" and p.arg_name not in given]
    if missing:
        reasons.append(f"missing required parameter{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    return _finish(call, doc.key, reasons, notes, retrieved)


def _check_schema_call(call: ParsedCall, doc: ApiDoc, retrieved: ApiCatalog) -> CallCheck:
    """A call of a tool definition: its arguments against the definition's JSON Schema
    (positional arguments take the properties in order, as openfunctions answers rarely use)."""
    schema = function_schema(doc) or {}
    parameters = json_schema(schema.get("parameters") or {})
    props: Mapping[str, Any] = parameters.get("properties") or {} if isinstance(parameters, Mapping) else {}
    required = [str(r) for r in parameters.get("required") or []] if isinstance(parameters, Mapping) else []
    order = list(props)
    reasons: list[str] = []
    notes: list[str] = [f"{call.name} is {doc.key}"] if doc.key != call.name else []
    given: set[str] = set()
    for arg, name in _named_args(call, order, given, reasons, notes):
        if name not in props:
            reasons.append(_unknown_name_reason("parameter", name, order))
            continue
        if name in given:
            reasons.append(f"'{name}' given more than once")
        given.add(name)
        sub = props[name]
        problem = type_problem(arg.value, sub) if arg.literal and isinstance(sub, Mapping) else None
        if problem:
            reasons.append(f"'{name}' {problem}")
    missing = [name for name in required if name not in given]
    if missing:
        reasons.append(f"missing required parameter{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    return _finish(call, doc.key, reasons, notes, retrieved)


# ----------------------------------------------------------------------------------------------
# Python (and openfunctions names, and APIBench records)


def _check_python_call(call: ParsedCall, catalogs: Sequence[ApiCatalog], retrieved: ApiCatalog) -> CallCheck:
    # The call itself, then (for chains like pipeline(...).to("cuda")) the calls it is chained on.
    for candidate in (call, *reversed(call.receivers)):
        result = _resolve_python(candidate, catalogs, retrieved)
        if result is not None:
            if candidate is not call:
                result = dataclasses.replace(result, call=dataclasses.replace(call, matched_key=result.doc_key))
            return result
    apibench = _check_apibench(call, catalogs, retrieved)
    if apibench is not None:
        return apibench
    return _unknown(call, f"{call.name} matches no API in the docs", _closest_python(call.name, catalogs))


def _resolve_python(call: ParsedCall, catalogs: Sequence[ApiCatalog], retrieved: ApiCatalog) -> CallCheck | None:
    for catalog in catalogs:
        by_fn = catalog.by_function_name(call.name)
        if by_fn:
            doc = _prefer_binding(call, by_fn)
            op = rest_operation(doc)
            if op is not None:
                return _check_rest_function_call(call, doc, op, retrieved)
            if doc_kind(doc) is DocKind.FUNCTION_SCHEMA:
                return _check_schema_call(call, doc, retrieved)
            if doc_kind(doc).is_python:
                return _check_python_binding(call, doc, catalogs, retrieved)
            return _finish_unchecked(call, doc, retrieved)
        docs, suffix = catalog.python_candidates(call.name)
        if not docs:
            continue
        # A single name ("create") only counts when it is unambiguous or was retrieved.
        if "." not in suffix and len(docs) > 1 and catalog is not retrieved:
            continue
        doc = _prefer_binding(call, docs)
        wrong_path = _wrong_module_path(call.name, doc.key)
        if wrong_path:
            return _unknown(call, wrong_path, doc.key)
        if doc_kind(doc).is_python:
            return _check_python_binding(call, doc, catalogs, retrieved)
        return _finish_unchecked(call, doc, retrieved)
    return None


def _finish_unchecked(call: ParsedCall, doc: ApiDoc, retrieved: ApiCatalog) -> CallCheck:
    return CallCheck(
        dataclasses.replace(call, matched_key=doc.key),
        Verdict.UNCHECKED,
        (f"{doc.key} has no signature to check the arguments against",),
        doc.key,
        doc.key in retrieved,
    )


def _wrong_module_path(name: str, key: str) -> str:
    """A fully qualified name (same top-level package as the key) that is not the key: the
    function exists, but not where the call says (``pkg.wrong_module.Class.method``)."""
    parts, key_parts = name.split("."), key.split(".")
    if len(parts) >= 3 and parts[0] == key_parts[0] and name != key:
        return f"{name} does not exist: {'.'.join(key_parts[-2:])} is defined in {'.'.join(key_parts[:-2])}"
    return ""


def _prefer_binding(call: ParsedCall, docs: Sequence[ApiDoc]) -> ApiDoc:
    """Among same-named docs (retrieved order), the first whose signature the call binds to."""
    if len(docs) == 1:
        return docs[0]
    for doc in docs:
        signature = python_signature(doc)
        if signature is not None and not _binding_problems(call, signature, doc.key)[0]:
            return doc
    return docs[0]


def _check_python_binding(
    call: ParsedCall, doc: ApiDoc, catalogs: Sequence[ApiCatalog], retrieved: ApiCatalog
) -> CallCheck:
    reasons: list[str] = []
    notes: list[str] = []
    signature = python_signature(doc)
    if signature is None:
        notes.append(f"{doc.key} has no signature on record; arguments not checked")
    else:
        problems, call_notes = _binding_problems(call, signature, doc.key)
        reasons.extend(problems)
        notes.extend(call_notes)
        props, _ = schema_properties(doc)
        for arg, param_name in _bound_names(call, signature):
            schema = props.get(param_name)
            if arg.literal and isinstance(schema, Mapping):
                problem = type_problem(arg.value, schema)
                if problem:
                    reasons.append(f"argument '{param_name}' {problem}")
    # A chained constructor: VFolder("name").mkdir(...) also binds VFolder's arguments.
    for receiver in call.receivers:
        for catalog in catalogs:
            found, _ = catalog.python_candidates(receiver.name)
            classes = [d for d in found if doc_kind(d) is DocKind.CLASS]
            if classes and "." in doc.key and doc.key.rsplit(".", 1)[0] == classes[0].key:
                sig = python_signature(classes[0])
                if sig is not None:
                    problems, _ = _binding_problems(receiver, sig, classes[0].key)
                    reasons.extend(f"{receiver.name}(...): {p}" for p in problems)
                break
    return _finish(call, doc.key, reasons, notes, retrieved)


def _bound_names(call: ParsedCall, signature: inspect.Signature) -> list[tuple[Argument, str]]:
    P = inspect.Parameter
    positional = [
        p.name for p in signature.parameters.values() if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
    ]
    out: list[tuple[Argument, str]] = []
    for arg in call.args:
        if arg.where is ArgWhere.POSITIONAL and arg.position < len(positional):
            out.append((arg, positional[arg.position]))
        elif arg.where is ArgWhere.KEYWORD and arg.name in signature.parameters:
            out.append((arg, arg.name))
    return out


def _binding_problems(call: ParsedCall, signature: inspect.Signature, key: str) -> tuple[list[str], list[str]]:
    """Whether the call's arguments bind to ``signature``: (problems, notes)."""
    P = inspect.Parameter
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    var_positional = any(p.kind is P.VAR_POSITIONAL for p in params)
    var_keyword = any(p.kind is P.VAR_KEYWORD for p in params)
    short = ".".join(key.split(".")[-2:])
    problems: list[str] = []
    notes: list[str] = []
    filled: set[str] = set()
    starred = False
    n_positional = 0
    for arg in call.args:
        if arg.where in (ArgWhere.STAR, ArgWhere.STAR_STAR):
            starred = True
        elif arg.where is ArgWhere.POSITIONAL:
            n_positional += 1
            if arg.position < len(positional):
                filled.add(positional[arg.position].name)
    if n_positional > len(positional) and not var_positional:
        problems.append(f"too many positional arguments: {short} takes {len(positional)}, {n_positional} given")
    named = [p.name for p in params if p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)]
    for arg in call.args:
        if arg.where is not ArgWhere.KEYWORD:
            continue
        param = signature.parameters.get(arg.name)
        if param is None or param.kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD):
            if not var_keyword:
                problems.append(_unknown_name_reason(f"keyword argument of {short}:", arg.name, named))
            continue
        if param.kind is P.POSITIONAL_ONLY:
            if not var_keyword:
                problems.append(f"'{arg.name}' is positional-only in {short}")
            continue
        if param.name in filled:
            problems.append(f"multiple values for argument '{arg.name}'")
        filled.add(param.name)
    if starred:
        notes.append("*args/**kwargs in the call: required arguments not checked")
    else:
        missing = [
            p.name
            for p in params
            if p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD) and p.default is P.empty and p.name not in filled
        ]
        if missing:
            problems.append(
                f"missing required argument{'s' if len(missing) > 1 else ''} of {short}: {', '.join(missing)}"
            )
    if not problems and not starred:
        # The same check by the standard library, on placeholders: catches any case missed above.
        args = [object() for a in call.args if a.where is ArgWhere.POSITIONAL]
        kwargs = {a.name: object() for a in call.args if a.where is ArgWhere.KEYWORD}
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            problems.append(f"{short}: {exc}")
    return problems, notes


def _closest_python(name: str, catalogs: Sequence[ApiCatalog]) -> str:
    keys = [k for c in catalogs for k in c if c.kind_of(k).is_python]
    if not keys:
        return ""
    tail = ".".join(name.split(".")[-2:])
    short = {".".join(k.split(".")[-2:]): k for k in keys}
    close = difflib.get_close_matches(tail[:CLOSEST_MAX_CHARS], list(short), n=1, cutoff=CLOSEST_CUTOFF)
    return short[close[0]] if close else ""


def _check_apibench(call: ParsedCall, catalogs: Sequence[ApiCatalog], retrieved: ApiCatalog) -> CallCheck | None:
    """Gorilla's rule: some call in the answer has a record's function name and every one of
    that record's key values among its string arguments. The retrieved records are tried first."""
    candidates = [call, *call.receivers, *call.subcalls]
    named: list[tuple[ApiDoc, ApibenchReference, ParsedCall]] = []
    for catalog in catalogs:
        for cand in candidates:
            if not cand.name or cand.style is not CallStyle.PYTHON:
                continue
            values = candidate_values(cand)
            for doc, ref in catalog.apibench_by_name(cand.name):
                named.append((doc, ref, cand))
                if all(v in values for v in ref.values):
                    notes: list[str] = []
                    if cand is not call:
                        notes.append(f"matched the call {cand.name}(...) inside the answer")
                    return _finish(call, doc.key, [], notes, retrieved)
    if not named:
        return None

    # The function exists but no record has these values: Gorilla counts that as a hallucination.
    def likeness(entry: tuple[ApiDoc, ApibenchReference, ParsedCall]) -> tuple[int, float]:
        _, reference, candidate = entry
        values = candidate_values(candidate)
        shared = sum(v in values for v in reference.values)
        text = " ".join(sorted(values))
        return shared, difflib.SequenceMatcher(None, text, " ".join(sorted(reference.values))).ratio()

    doc, ref, cand = max(named[:2000], key=likeness)
    given = ", ".join(repr(v) for v in string_values(cand)) or "no string arguments"
    return _unknown(call, f"no API record has {cand.name} with {given}", doc.key)


# ----------------------------------------------------------------------------------------------
# Types


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple, set, frozenset),
    "object": (dict,),
}


def type_problem(value: Any, schema: Mapping[str, Any], *, coerce: bool = False) -> str | None:
    """Why a literal ``value`` does not fit a JSON ``schema``, or None: the first of
    :func:`schema_problems`."""
    problems = schema_problems(value, schema, coerce=coerce)
    return problems[0] if problems else None


MAX_SCHEMA_PROBLEMS = 4  # per value: the first few errors say enough


def schema_problems(value: Any, schema: Mapping[str, Any], *, coerce: bool = False) -> list[str]:
    """Why a literal ``value`` does not fit a JSON ``schema``: every JSON Schema rule (types,
    nested required fields, patterns, formats, minimum/maximum, lengths, enums, const,
    additionalProperties, anyOf/oneOf/allOf) checked by the ``jsonschema`` library.

    ``None`` always fits, at any depth (an optional parameter's schema drops the null, and
    OpenAPI 3.0 says ``nullable`` instead). A placeholder (``"<name>"``) stands for a string the
    user fills in: its pattern, format and length are not held against it. ``coerce``: the value
    came from a URL, where everything is a string; "10" then fits an integer. A schema that is
    not valid JSON Schema (a bad regular expression, an unknown type) is not held against the
    value either.
    """
    if value is None or not isinstance(schema, Mapping):
        return []
    if coerce and isinstance(value, str):
        value = _coerce(value, schema.get("type"))
    try:
        errors = list(_validator(schema).iter_errors(value))
    except Exception:  # a schema jsonschema cannot use: no verdict on the value from it
        return []
    problems: list[str] = []
    for error in sorted(errors, key=_error_order):
        problem = _describe(error)
        if problem and problem not in problems:
            problems.append(problem)
        if len(problems) >= MAX_SCHEMA_PROBLEMS:
            break
    return problems


def _error_order(error: Any) -> tuple[int, int]:
    # Shallow errors first; among them type errors (they explain the rest).
    return len(error.absolute_path), 0 if error.validator == "type" else 1


_STRING_RULES = frozenset({"pattern", "format", "minLength", "maxLength"})


def _describe(error: Any) -> str:
    """One error in the words the checker uses elsewhere; '' for one that does not count."""
    instance = error.instance
    if instance is None:
        return ""
    if isinstance(instance, str) and error.validator in _STRING_RULES and is_placeholder(instance):
        return ""
    if error.validator in ("anyOf", "oneOf"):
        # The variant that fits best explains the failure best.
        inner = [e for e in error.context or () if e.instance is not None]
        if inner:
            best = min(inner, key=lambda e: (len(e.relative_schema_path), _error_order(e)))
            text = _describe(best)
            if text:
                return text
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    where = f"field '{path}' " if path else ""
    if error.validator == "type":
        expected = error.validator_value
        shown = " or ".join(expected) if isinstance(expected, list) else str(expected)
        return f"{where}should be {shown}, got {_json_type(instance)} {_short(instance)}"
    if error.validator == "enum":
        options = error.validator_value if isinstance(error.validator_value, list) else []
        return f"{where}should be one of {', '.join(_short(v) for v in options[:8])}, got {_short(instance)}"
    if error.validator == "required":
        missing = [
            str(name) for name in error.validator_value if isinstance(instance, Mapping) and name not in instance
        ]
        return f"{where}lacks required field{'s' if len(missing) > 1 else ''}: {', '.join(missing)}"
    if error.validator == "additionalProperties":
        return f"{where}{_trim_message(error.message)}"
    if error.validator == "pattern":
        return f"{where}{_short(instance)} does not match the pattern {_short(error.validator_value)}"
    return f"{where}{_trim_message(error.message)}"


def _trim_message(message: str) -> str:
    return message if len(message) <= 160 else message[:157] + "..."


@functools.cache
def _validator_class() -> Any:
    """Draft 2020-12 with Python's sequences as arrays (a literal tuple is a list to a caller);
    jsonschema is imported here, on first use."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine("array", lambda _checker, instance: isinstance(instance, (list, tuple)))
    return jsonschema.validators.extend(base, type_checker=checker)  # type: ignore[no-untyped-call]


@functools.cache
def _format_checker() -> Any:
    import jsonschema

    return jsonschema.FormatChecker()


def _validator(schema: Mapping[str, Any]) -> Any:
    return _validator_class()(schema, format_checker=_format_checker())


def _coerce(value: str, expected: Any) -> Any:
    if expected == "integer" and re.fullmatch(r"[+-]?\d{1,18}", value.strip()):
        return int(value)
    if expected == "number":
        try:
            return float(value)
        except ValueError:
            return value
    if expected == "boolean" and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    return value


def _json_type(value: Any) -> str:
    for name, types in _JSON_TYPES.items():
        if isinstance(value, bool):
            return "boolean"
        if isinstance(value, types):
            return name
    return type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = [
    "ApiCatalog",
    "CallCheck",
    "CheckedAnswer",
    "Verdict",
    "check_answer",
    "check_call",
    "check_parsed",
    "is_placeholder",
    "schema_problems",
    "schema_values",
    "type_problem",
    "ungrounded_values",
]
