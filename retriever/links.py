"""REST operations and the SDK functions that call them: found statically, and used both ways.

An SDK that wraps a REST API calls it from its functions with a method and a path:
``Request("POST", f"/{prefix}/_/create-from-template")``, ``self._session.get("/folders")``,
``http.request(method="DELETE", url="/items/" + item_id)``. :func:`http_calls` reads a function's
``ast`` for such calls, without importing anything:

- a call whose first two arguments (or ``method=``/``path=``/``url=`` keywords) are an HTTP method
  literal and a path, or a call of a method named after an HTTP verb (``.get``, ``.post``, ...)
  whose first argument is a path;
- a path is a string literal, an f-string, ``"...".format(...)``, a ``+`` of those, or a local
  name assigned such values in the function (each value a candidate); what is computed at run
  time (``{prefix}``, ``{self.name}``) becomes a wildcard segment ``{}``. A path that is not
  static (a parameter, a call's result) is *unresolved* and counted, not guessed; so is one that
  does not start with ``/``.

:func:`match_operation` finds the spec operation a call hits: same method, same number of
segments, every literal segment equal to the spec's (a spec parameter ``{name}`` takes any
segment, a wildcard any spec segment); the candidate with the most equal literal segments wins,
and a tie between several is *ambiguous* (counted, not linked).

:func:`link_corpora` applies this to two loaded corpora (REST operations with
``metadata["method"]``/``["path"]``; SDK functions with ``metadata["http_calls"]``): each linked
doc's metadata gets ``links`` (``[{"corpus", "key", "title"}]``, so a result shows its other
side) and its index text one line of the other side's words (``see also: ...``: the SDK's
docstring words find the operation, the operation's summary and path find the function).
Nothing here knows a particular API.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from apihelper.retriever.types import ApiDoc

HTTP_VERBS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
WILDCARD = "{}"
MAX_LINKS = 8  # links kept per doc
MAX_SEE_ALSO = 400  # characters of the other side's words added to a doc's index text
_FORMAT_FIELD = re.compile(r"\{[^{}]*\}")
_NAMED = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_PATH_KEYWORDS = ("path", "url", "endpoint", "route")


@dataclass(frozen=True)
class HttpCall:
    method: str  # upper case
    path: str  # "/a/{}/b": literal segments and wildcards; "" when unresolved


def _string_of(node: ast.expr, names: Mapping[str, list[ast.expr]], depth: int = 0) -> list[str] | None:
    """The possible values of a string expression, computed parts as ``{}``; None: not static."""
    if depth > 4:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        parts: list[str] = []
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                parts.append(value.value)
            elif isinstance(value, ast.FormattedValue):
                parts.append(_wildcard(value.value))
            else:
                parts.append(WILDCARD)
        return ["".join(parts)]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and isinstance(node.func.value, ast.Constant)
        and isinstance(node.func.value.value, str)
    ):
        return [_FORMAT_FIELD.sub(WILDCARD, node.func.value.value)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left = _string_of(node.left, names, depth + 1)
        right = _string_of(node.right, names, depth + 1)
        if left is None and right is None:
            return None
        return [a + b for a in (left or [WILDCARD]) for b in (right or [WILDCARD])][:8]
    if isinstance(node, ast.Name) and node.id in names:
        values: list[str] = []
        for assigned in names[node.id]:
            got = _string_of(assigned, {}, depth + 1)  # no chains of names: keep it static
            if got is None:
                return None
            values += got
        return list(dict.fromkeys(values)) or None
    return None


def _wildcard(node: ast.expr) -> str:
    """A computed part of a path: ``{expr}`` for a plain name or attribute chain (so that a value
    learned for it elsewhere can fill it in, see :func:`find_links`), else ``{}``."""
    text = ast.unparse(node)
    return "{" + text + "}" if _NAMED.fullmatch(text) else WILDCARD


def _local_strings(function: ast.AST) -> dict[str, list[ast.expr]]:
    """Each local name's assigned values (plain ``name = value`` statements) in ``function``."""
    names: dict[str, list[ast.expr]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            names.setdefault(node.targets[0].id, []).append(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            names.setdefault(node.target.id, []).append(node.value)
    return names


def _method_and_path(call: ast.Call) -> tuple[str, ast.expr | None] | None:
    """(method, path expression) when ``call`` looks like an HTTP request; else None."""
    keywords = {k.arg: k.value for k in call.keywords if k.arg}
    method_node = call.args[0] if call.args else keywords.get("method")
    if isinstance(method_node, ast.Constant) and isinstance(method_node.value, str):
        method = method_node.value.upper()
        if method in HTTP_VERBS:
            path = (
                call.args[1]
                if len(call.args) > 1
                else next((keywords[k] for k in _PATH_KEYWORDS if k in keywords), None)
            )
            return method, path
    if isinstance(call.func, ast.Attribute) and call.func.attr.upper() in HTTP_VERBS:
        path = call.args[0] if call.args else next((keywords[k] for k in _PATH_KEYWORDS if k in keywords), None)
        if path is not None:
            return call.func.attr.upper(), path
    return None


def _is_path_like(node: ast.expr) -> bool:
    """Whether a verb-named method's argument looks like a path at all (``dict.get("key")`` is
    not one): a string starting with ``/``, or an f-string / concatenation / format call."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value.startswith("/")
    return isinstance(node, (ast.JoinedStr, ast.BinOp, ast.Call, ast.Name))


def http_calls(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[HttpCall]:
    """The HTTP requests ``function`` makes, in source order (see the module docstring); an
    unresolved one has ``path == ""``. Nested functions are included (their calls are made on
    the outer one's behalf)."""
    names = _local_strings(function)
    out: list[HttpCall] = []
    for node in ast.walk(function):
        if not isinstance(node, ast.Call):
            continue
        found = _method_and_path(node)
        if found is None:
            continue
        method, path_node = found
        by_verb_name = not (node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == method)
        if path_node is None or (by_verb_name and not _is_path_like(path_node)):
            continue
        values = _string_of(path_node, names)
        if values is None:
            if by_verb_name and not isinstance(path_node, ast.Constant):
                continue  # "x.get(name)" is far more often a dict than a request: not counted
            out.append(HttpCall(method, ""))
            continue
        for value in values:
            path = value.split("?", 1)[0]
            out.append(HttpCall(method, path if path.startswith("/") else ""))
    return list(dict.fromkeys(out))


def _segments(path: str) -> list[str]:
    return path.strip("/").split("/")


def _is_parameter(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


def _match_score(template: list[str], spec: list[str]) -> int | None:
    """How well a call's path fits a spec path (None: it cannot): 2 per equal literal segment,
    1 per computed part where the spec has a parameter, 0 where either side takes the other's
    literal."""
    if len(template) != len(spec):
        return None
    score = 0
    for mine, theirs in zip(template, spec, strict=True):
        if _FORMAT_FIELD.search(mine):
            if _is_parameter(theirs):
                score += 1
            elif not re.fullmatch(".*".join(re.escape(p) for p in _FORMAT_FIELD.split(mine)), theirs):
                return None
        elif _is_parameter(theirs):
            continue  # a spec parameter takes the literal
        elif mine == theirs:
            score += 2
        else:
            return None
    return score


def match_operation(call: HttpCall, operations: Sequence[tuple[str, str, str]]) -> list[str]:
    """Keys of the operations (``(key, method, path)``) ``call`` hits: one, or none when nothing
    matches or several match equally well (ambiguous)."""
    if not call.path:
        return []
    template = _segments(call.path)
    scored = []
    for key, method, path in operations:
        if method != call.method:
            continue
        score = _match_score(template, _segments(path))
        if score is not None:
            scored.append((score, key))
    if not scored:
        return []
    best = max(score for score, _ in scored)
    winners = [key for score, key in scored if score == best]
    return winners if len(winners) == 1 else []


@dataclass
class LinkReport:
    """What linking two corpora found: SDK functions with HTTP calls, how many calls resolved to
    one operation, were unresolved (path not static), ambiguous or matched nothing."""

    functions_with_calls: int = 0
    functions_linked: int = 0
    calls: int = 0
    linked: int = 0
    unresolved: int = 0
    ambiguous: int = 0
    unmatched: int = 0
    operations_linked: int = 0
    pairs: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (function key, operation key)


def _operations(docs: Sequence[ApiDoc]) -> list[tuple[str, str, str]]:
    out = []
    for doc in docs:
        method, path = doc.metadata.get("method"), doc.metadata.get("path")
        if isinstance(method, str) and isinstance(path, str):
            out.append((doc.key, method.upper(), path))
    return out


def _calls_of(doc: ApiDoc) -> list[HttpCall]:
    raw = doc.metadata.get("http_calls")
    if not isinstance(raw, list):
        return []
    return [HttpCall(str(c.get("method", "")).upper(), str(c.get("path", ""))) for c in raw if isinstance(c, Mapping)]


def _scope(doc: ApiDoc) -> str:
    """Where a computed path part means the same thing: the module and class of a function."""
    qualname = str(doc.metadata.get("qualname", ""))
    return f"{doc.metadata.get('module', '')}:{qualname.rpartition('.')[0]}"


def _learn(
    calls: Sequence[tuple[ApiDoc, HttpCall]], operations: Sequence[tuple[str, str, str]]
) -> dict[tuple[str, str], str]:
    """Values of named computed parts (``{prefix}``) that unambiguous matches show: where such a
    part, alone in its segment, met a literal spec segment. A part seen with two values is dropped."""
    paths = {key: path for key, _, path in operations}
    learned: dict[tuple[str, str], set[str]] = {}
    for doc, call in calls:
        keys = match_operation(call, operations)
        if not keys:
            continue
        for mine, theirs in zip(_segments(call.path), _segments(paths[keys[0]]), strict=True):
            if mine != WILDCARD and _FORMAT_FIELD.fullmatch(mine) and not _is_parameter(theirs):
                learned.setdefault((_scope(doc), mine), set()).add(theirs)
    return {where: next(iter(values)) for where, values in learned.items() if len(values) == 1}


def _filled(doc: ApiDoc, call: HttpCall, learned: Mapping[tuple[str, str], str]) -> HttpCall:
    segments = [learned.get((_scope(doc), s), s) for s in _segments(call.path)]
    return HttpCall(call.method, "/" + "/".join(segments))


def find_links(sdk: Sequence[ApiDoc], rest: Sequence[ApiDoc]) -> LinkReport:
    """Which SDK functions call which REST operations (see the module docstring). Two passes:
    the values that unambiguous matches show for named computed parts (``{prefix}`` met
    ``session`` in ``/{prefix}/_/create-from-template``) fill those parts in the same class's
    other calls before they are matched again."""
    operations = _operations(rest)
    learned = _learn([(d, c) for d in sdk for c in _calls_of(d) if c.path], operations)
    report = LinkReport()
    for doc in sdk:
        calls = _calls_of(doc)
        if not calls:
            continue
        report.functions_with_calls += 1
        linked_here = False
        for call in calls:
            report.calls += 1
            if not call.path:
                report.unresolved += 1
                continue
            keys = match_operation(call, operations) or match_operation(_filled(doc, call, learned), operations)
            if keys:
                report.linked += 1
                report.pairs.append((doc.key, keys[0]))
                linked_here = True
            elif any(
                _match_score(_segments(call.path), _segments(p)) is not None and m == call.method
                for _, m, p in operations
            ):
                report.ambiguous += 1
            else:
                report.unmatched += 1
        report.functions_linked += linked_here
    report.pairs = list(dict.fromkeys(report.pairs))
    report.operations_linked = len({op for _, op in report.pairs})
    return report


def _see_also(doc: ApiDoc) -> str:
    """The words of ``doc`` another doc borrows: its title and the first line of its index text."""
    first = doc.index_text.split("\n", 1)[0]
    return " ".join(dict.fromkeys(f"{doc.title} {first}".split()))


def _with_links(doc: ApiDoc, corpus: str, others: Sequence[ApiDoc]) -> ApiDoc:
    others = list(others)[:MAX_LINKS]
    metadata: dict[str, Any] = dict(doc.metadata)
    metadata["links"] = [{"corpus": corpus, "key": o.key, "title": o.title} for o in others]
    words = " ".join(_see_also(o) for o in others)[:MAX_SEE_ALSO]
    return dataclasses.replace(doc, metadata=metadata, index_text=f"{doc.index_text}\nsee also: {words}")


def link_corpora(docs: Sequence[ApiDoc], other: Sequence[ApiDoc], other_corpus: str) -> tuple[list[ApiDoc], LinkReport]:
    """``docs`` with links to the docs of ``other`` (corpus ``other_corpus``) that explain them:
    SDK functions get the operations they call, operations the functions that call them,
    whichever side ``docs`` is. Docs without a link are returned as they were."""
    sdk_side = any(_calls_of(d) for d in docs)
    report = find_links(docs, other) if sdk_side else find_links(other, docs)
    by_key = {d.key: d for d in other}
    targets: dict[str, list[str]] = {}
    for function, operation in report.pairs:
        mine, theirs = (function, operation) if sdk_side else (operation, function)
        targets.setdefault(mine, []).append(theirs)
    out = [
        _with_links(d, other_corpus, [by_key[k] for k in targets[d.key] if k in by_key]) if d.key in targets else d
        for d in docs
    ]
    return out, report


def call_metadata(calls: Sequence[HttpCall]) -> list[dict[str, str]]:
    """``metadata["http_calls"]`` of an SDK function: its calls as JSON."""
    return [{"method": c.method, "path": c.path} for c in calls]


__all__ = [
    "HTTP_VERBS",
    "HttpCall",
    "LinkReport",
    "call_metadata",
    "find_links",
    "http_calls",
    "link_corpora",
    "match_operation",
]
