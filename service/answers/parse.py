"""Turn a finished answer into structured API calls: pure functions, no I/O, never ``eval``.

This module owns the *syntax* of Gorilla's answers (what the model wrote); whether the calls
exist and bind is :mod:`apihelper.service.answers.check`'s job. The markers, section names and
HTTP methods read here are those of :mod:`apihelper.service.answers.formats`, which the call
grammar is written from too.

- gorilla_v0 answers are ``<<<field>>>: value`` sections (domain, api_call, api_provider,
  explanation, code), tolerated missing, reordered, repeated or cut off; some TorchHub-trained
  answers use a dict layout instead (``{'domain': ..., 'api_call': ..., ...}``). The api_call
  section holds the call.
- openfunctions_v2 answers are one or more ``<<function>>name(arg=value, ...)`` calls.

A call is either Python call syntax (parsed with :mod:`ast` into a dotted name and arguments:
each value's source text, plus its value when :func:`ast.literal_eval` accepts it) or a REST
call (``POST /sessions``, ``requests.post("https://host/sessions", json={...})`` or ``curl``),
parsed into method, path and query/body arguments.

Safety and cost: nothing is ever evaluated (``ast.parse`` and ``ast.literal_eval`` only read
syntax), every input is cut to a fixed size before parsing, the number of re-parse attempts and
of calls per answer is capped, and every public function returns a value instead of raising.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import json
import re
import shlex
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from apihelper.service.answers.formats import (
    FUNCTION_MARK,
    GORILLA_CALL_FIELD,
    GORILLA_FIELDS,
    REQUESTS_BODY_KEYWORD,
    REQUESTS_QUERY_KEYWORD,
    REST_METHODS,
    REST_TEXT_PATH_END,
)
from apihelper.service.answers.tool_calls import outside_strings, parse_tool_calls
from apihelper.service.prompts import PromptFormat

# Bounds on the work done for one answer: a model (or a prompt injection in a retrieved doc) can
# make the output arbitrarily long or nested, and parsing must stay cheap for any of it.
MAX_ANSWER_CHARS = 64 * 1024  # an answer is cut to this before any parsing
MAX_CALL_CHARS = 4096  # one call's source text handed to ast.parse
MAX_LITERAL_CHARS = 2048  # a value's source text handed to ast.literal_eval / json.loads
MAX_DICT_ANSWER_CHARS = 16 * 1024  # a dict-layout answer handed to ast.literal_eval
MAX_CALLS = 16  # calls kept per answer
MAX_SUBCALLS = 64  # calls collected inside one fragment (Gorilla's sub-tree match looks at all)
MAX_PARSE_ATTEMPTS = 24  # re-parses of one fragment while trimming trailing prose
MAX_ARGS = 64  # arguments kept per call
MAX_RECEIVERS = 8  # calls kept from a chain such as A(x).b(y).c(z)

# ``<<<api_call>>>:``, also with odd spacing/case or a space for the underscore; the colon is optional.
_FIELD_RE = re.compile(r"<<<\s*([A-Za-z][A-Za-z_ ]{0,30}?)\s*>>>[ \t]*:?")
# A marker cut off at the end of a truncated answer ("... <<<expla").
_PARTIAL_MARKER_RE = re.compile(r"(?:<<<?[A-Za-z_ ]{0,30}>{0,2}|<)\s*$")
_DICT_KEY_RE = re.compile(r"""(['"])(""" + "|".join(GORILLA_FIELDS) + r""")\1\s*:\s*""")
# Where a value opened by an escaped quote ends: the same escaped quote, then the next key or "}".
_ESCAPED_VALUE_END = {
    q: re.compile(re.escape("\\" + q) + r"""\s*(?:,\s*\\?['"][A-Za-z_]\w*\\?['"]\s*:|\})""") for q in "'\""
}
_ESCAPED_QUOTES_RE = re.compile(r"\\+(['\"])")
# Every method in REST_METHODS: a method the grammar can write is one the parser reads back.
_REST_TEXT_RE = re.compile(
    r"\b(" + "|".join(REST_METHODS) + r")\s+((?:https?://[^\s'\"`]+)|/[^" + REST_TEXT_PATH_END + r"]*)"
)
_CURL_RE = re.compile(r"(?:^|[\s`$])curl\s", re.MULTILINE)
_FENCE_RE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")


class CallStyle(str, enum.Enum):
    PYTHON = "python"  # name(args) in Python call syntax
    REST = "rest"  # an HTTP method and a path (text, requests-style or curl)
    NONE = "none"  # nothing could be parsed as a call


class ArgWhere(str, enum.Enum):
    """Where an argument was written."""

    POSITIONAL = "positional"
    KEYWORD = "keyword"
    STAR = "star"  # *args: the values are unknown
    STAR_STAR = "star_star"  # **kwargs: the names are unknown
    PATH = "path"  # a REST path parameter (filled in by validation, which knows the template)
    QUERY = "query"  # a REST query parameter (URL query string, params=, curl -G)
    BODY = "body"  # a REST body field (json=, data=, curl -d, a JSON object after the path)


@dataclass(frozen=True)
class Argument:
    """One argument as written. ``name`` is empty for positional, ``*``/``**`` arguments and
    for a REST body or query given as a whole opaque value (``json=payload``)."""

    name: str
    source: str  # the value's source text, as the model wrote it
    where: ArgWhere
    position: int = -1  # index among positional arguments
    literal: bool = False  # ``value`` holds the literal's value (ast.literal_eval / json accepted it)
    value: Any = None

    @property
    def key(self) -> str:
        """Its name in :attr:`ParsedCall.arguments`: the name, else ``arg<position>`` for a
        positional one, ``*``/``**``, or ``body``/``query`` for an opaque REST body or query."""
        if self.name:
            return self.name
        if self.where is ArgWhere.POSITIONAL:
            return f"arg{self.position}"
        if self.where is ArgWhere.STAR:
            return "*"
        if self.where is ArgWhere.STAR_STAR:
            return "**"
        return str(self.where.value)


@dataclass(frozen=True)
class ParsedCall:
    """One call in an answer. ``name`` is the dotted function name (``Client.sessions.create``),
    or ``"METHOD /path"`` for a REST call; empty when nothing parsed (``problem`` says why)."""

    raw: str
    name: str = ""
    args: tuple[Argument, ...] = ()
    matched_key: str = ""  # the doc key it matches (validation fills it), empty when none
    style: CallStyle = CallStyle.NONE
    method: str = ""  # REST only: upper-case HTTP method
    path: str = ""  # REST only: the path as written (concrete, or the template itself)
    host: str = ""  # REST only: the URL's host[:port], lower case ("" for a path or {BASE_URL}/...)
    receivers: tuple[ParsedCall, ...] = ()  # calls it is chained on: ``VFolder('x').mkdir(...)``
    subcalls: tuple[ParsedCall, ...] = ()  # every call in the fragment (Gorilla's sub-tree rule)
    truncated: bool = False  # parsed only after closing brackets/strings the answer left open
    problem: str = ""

    @property
    def arguments(self) -> dict[str, str]:
        """Argument source texts by name: positional ones as ``arg0``..., ``*``/``**`` as such,
        an opaque REST body/query as ``body``/``query``."""
        out: dict[str, str] = {}
        for arg in self.args:
            out.setdefault(arg.key, arg.source)
        return out


@dataclass(frozen=True)
class ParsedAnswer:
    fields: dict[str, str]  # gorilla_v0 sections (empty for openfunctions_v2)
    calls: list[ParsedCall]
    layout: str = ""  # "fields" | "dict" | "bare" | "functions" | "" (nothing recognised)


# ----------------------------------------------------------------------------------------------
# Answers


def parse_answer(fmt: PromptFormat, text: str) -> ParsedAnswer:
    """The fields and calls of an answer in ``fmt``. Never raises. Which doc a call means (its
    ``matched_key``) is for :func:`apihelper.service.answers.check.check_answer` to say."""
    try:
        answer = _parse_answer(fmt, text if isinstance(text, str) else "")
    except Exception as exc:  # a parser bug must not fail the request: report, don't raise
        answer = ParsedAnswer(
            {}, [ParsedCall(raw=text[:MAX_CALL_CHARS], problem=f"parser error: {type(exc).__name__}")]
        )
    return answer


def _parse_answer(fmt: PromptFormat, text: str) -> ParsedAnswer:
    text = text[:MAX_ANSWER_CHARS]
    if fmt is PromptFormat.OPENFUNCTIONS_V2:
        return ParsedAnswer({}, parse_function_calls(text), "functions")
    if fmt is PromptFormat.CHAT_TOOLS:
        return _tool_call_answer(text)
    fields, layout = gorilla_fields_layout(text)
    raw = fields.get(GORILLA_CALL_FIELD, "").strip()
    if raw:
        return ParsedAnswer(fields, [parse_call(raw)], layout)
    if layout:
        # Fields but no api_call (cut off before it, or left out): the code section may still
        # hold the call; otherwise the answer has none.
        code = fields.get("code", "").strip()
        if code:
            call = parse_call(code)
            if call.name:
                return ParsedAnswer(fields, [call], layout)
        return ParsedAnswer(fields, [ParsedCall(raw="", problem="the answer has no <<<api_call>>> field")], layout)
    # No Gorilla markers at all: the model may have answered with the bare call.
    stripped = text.strip()
    if not stripped:
        return ParsedAnswer({}, [ParsedCall(raw="", problem="empty answer")], "")
    call = parse_call(stripped)
    return ParsedAnswer({}, [call], "bare" if call.name else "")


def _tool_call_answer(text: str) -> ParsedAnswer:
    """A chat_tools answer: its ``<tool_call>`` JSON calls as keyword calls (the values are JSON
    literals already), for the same checks as a Python-style call."""
    parsed = parse_tool_calls(text)
    if not parsed.calls:
        return ParsedAnswer({}, [ParsedCall(raw=text.strip()[:MAX_CALL_CHARS], problem=parsed.problem)], parsed.layout)
    calls = [
        # A tool named by a whole call is an APIBench record (its api_call is its name).
        parse_call(call.name)
        if "(" in call.name
        else ParsedCall(
            raw=json.dumps(call.as_json(), ensure_ascii=False)[:MAX_CALL_CHARS],
            name=call.name,
            args=tuple(
                # Sources in Python syntax, as every other call's: 'x', True, None.
                Argument(name, repr(value)[:MAX_CALL_CHARS], ArgWhere.KEYWORD, literal=True, value=value)
                for name, value in list(call.arguments.items())[:MAX_ARGS]
            ),
            style=CallStyle.PYTHON,
            truncated=parsed.truncated,
            problem=parsed.problem,
        )
        for call in parsed.calls[:MAX_CALLS]
    ]
    return ParsedAnswer({}, calls, parsed.layout)


def gorilla_fields_layout(text: str) -> tuple[dict[str, str], str]:
    """The ``<<<name>>>: value`` sections, or the dict layout's keys; and which layout it was.

    A repeated field keeps its first non-empty value (degenerate answers repeat whole sections);
    a marker cut off at the end of a truncated answer is dropped from the value before it.
    """
    text = text[:MAX_ANSWER_CHARS]
    fields: dict[str, str] = {}
    matches = list(_FIELD_RE.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        value = text[m.end() : end]
        if i + 1 == len(matches):
            value = _PARTIAL_MARKER_RE.sub("", value)
        name = "_".join(m.group(1).lower().split())
        value = value.strip()
        if value and not fields.get(name):
            fields[name] = value
        else:
            fields.setdefault(name, value)
    if fields.get(GORILLA_CALL_FIELD) or ("{" not in text):
        return fields, "fields" if fields else ""
    # The dict layout, alone or (seen in TorchHub training data) nested under 'Output'.
    from_dict = _dict_layout_fields(text)
    if from_dict.get(GORILLA_CALL_FIELD):
        merged = {**fields, **{k: v for k, v in from_dict.items() if v}}
        return merged, "dict"
    return fields, "fields" if fields else ""


def _dict_layout_fields(text: str) -> dict[str, str]:
    first = _DICT_KEY_RE.search(text)
    if first is None:
        return {}
    brace = text.rfind("{", 0, first.start())
    if brace >= 0:
        literal = _balanced(text, brace, "{", "}")
        if literal is not None and len(literal) <= MAX_DICT_ANSWER_CHARS:
            value = _literal_or_json(literal)
            if isinstance(value, dict):
                output = value.get("Output")
                inner: dict[Any, Any] = output if isinstance(output, dict) else value
                got = {str(k).lower(): _as_field_text(v) for k, v in inner.items() if str(k).lower() in GORILLA_FIELDS}
                if got.get(GORILLA_CALL_FIELD):
                    return got
    # Not a valid literal (cut off, or an unquoted 'Instruction' before it): read each
    # 'key': <string literal> pair on its own.
    fields: dict[str, str] = {}
    for m in _DICT_KEY_RE.finditer(text):
        name = m.group(2)
        if name in fields:
            continue
        value = _string_token_at(text, m.end())
        if value is not None:
            fields[name] = value
    return fields


def _as_field_text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value).strip()
    return str(value).strip()


def _string_token_at(text: str, start: int) -> str | None:
    """The Python/JSON string literal starting at ``start`` (unterminated: the rest of the text)."""
    if text.startswith(('\\"', "\\'"), start):
        return _escaped_quote_value(text, start)
    if start >= len(text) or text[start] not in "'\"":
        return None
    quote = text[start]
    triple = text[start : start + 3] == quote * 3
    delim = quote * 3 if triple else quote
    i = start + len(delim)
    limit = min(len(text), start + MAX_DICT_ANSWER_CHARS)
    while i < limit:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if text.startswith(delim, i):
            token = text[start : i + len(delim)]
            value = _literal_or_json(token)
            return value.strip() if isinstance(value, str) else token[len(delim) : -len(delim)].strip()
        i += 1
    # Cut off inside the string: keep what there is, unescaped the cheap way.
    return text[start + len(delim) : limit].replace("\\n", "\n").replace("\\'", "'").replace('\\"', '"').strip()


def _escaped_quote_value(text: str, start: int) -> str:
    """A value opened by an escaped quote: Gorilla-7B's TorchHub answers write ``'api_call': \\"...\\"``
    (the dict was rendered inside a string), with the call's own quotes escaped the same way or not.
    It runs to the escaped quote that is followed by the next key or the closing brace; cut off, to
    the end of the text. Quotes inside are unescaped, however deep (``\\\\'`` too: seen in them)."""
    quote = text[start + 1]
    limit = min(len(text), start + MAX_DICT_ANSWER_CHARS)
    close = _ESCAPED_VALUE_END[quote].search(text, start + 2, limit)
    value = text[start + 2 : close.start() if close else limit]
    return _ESCAPED_QUOTES_RE.sub(r"\1", value).replace("\\n", "\n").strip()


# ----------------------------------------------------------------------------------------------
# openfunctions_v2


def parse_function_calls(text: str) -> list[ParsedCall]:
    """``<<function>>name(args)`` calls, in order; a chunk may also hold a list of calls."""
    text = text[:MAX_ANSWER_CHARS]
    if FUNCTION_MARK not in text:
        stripped = text.strip()
        if not stripped:
            return [ParsedCall(raw="", problem="empty answer")]
        # Without the marker a call may still be there ("get_weather(city='x')"); prose is not.
        call = parse_call(stripped)
        return [
            call
            if call.name
            else ParsedCall(raw=stripped[:MAX_CALL_CHARS], problem="no <<function>> call in the answer")
        ]
    calls: list[ParsedCall] = []
    for chunk in text.split(FUNCTION_MARK)[1:]:
        chunk = chunk.strip()
        if not chunk:
            continue
        # A list of calls in one chunk: "<<function>>[f(a=1), g(b=2)]".
        source = _fragment_source(chunk)[:MAX_CALL_CHARS]
        tree = _try_parse(source) if source.startswith(("[", "(")) else None
        node = _statement_value(tree.body[0]) if tree is not None and len(tree.body) == 1 else None
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
            elements = [e for e in node.elts[:MAX_CALLS] if isinstance(e, ast.Call)]
            if len(elements) == len(node.elts[:MAX_CALLS]):
                lines = _Source(source)
                calls.extend(_python_call(e, lines, False) for e in elements)
                continue
        calls.append(parse_call(chunk))
        if len(calls) >= MAX_CALLS:
            break
    return calls[:MAX_CALLS] or [ParsedCall(raw="", problem="empty <<function>> call")]


# ----------------------------------------------------------------------------------------------
# One call


def parse_call(raw: str) -> ParsedCall:
    """The call in ``raw``: a REST call (text, curl, requests-style) or a Python call. Never raises."""
    try:
        return _parse_call(raw if isinstance(raw, str) else "")
    except Exception as exc:  # see parse_answer: a bug here must not fail the request
        return ParsedCall(raw=str(raw)[:MAX_CALL_CHARS], problem=f"parser error: {type(exc).__name__}")


def _parse_call(raw: str) -> ParsedCall:
    raw = raw.strip()[:MAX_ANSWER_CHARS]
    if not raw:
        return ParsedCall(raw="", problem="empty call")
    body = _fragment_source(raw)
    rest = _REST_TEXT_RE.match(body)
    if rest:
        return _rest_text_call(raw, body, rest)
    if _CURL_RE.search(" " + body[:200]):
        curl = _curl_call(raw, body)
        if curl is not None:
            return curl
    tree, source, truncated, problem = _parse_fragment(raw)
    if tree is not None:
        node = _main_call(tree)
        if node is not None:
            text = _Source(source)
            call = _python_call(node, text, truncated)
            if call.style is CallStyle.PYTHON:
                subcalls = tuple(_python_call(n, text, truncated, chained=False) for n in _all_calls(tree))
                return _replace(call, raw=raw[:MAX_CALL_CHARS], subcalls=subcalls)
            return _replace(call, raw=raw[:MAX_CALL_CHARS])
        problem = "no call in the api_call text"
    rest = _REST_TEXT_RE.search(body)
    if rest:  # a REST call inside prose: "Use POST /sessions to create one"
        return _rest_text_call(raw, body, rest)
    if _CURL_RE.search(body):
        curl = _curl_call(raw, body)
        if curl is not None:
            return curl
    return ParsedCall(raw=raw[:MAX_CALL_CHARS], problem=problem or "not a call")


def _replace(call: ParsedCall, **changes: Any) -> ParsedCall:
    return dataclasses.replace(call, **changes)


def _fragment_source(raw: str) -> str:
    """The code inside a fenced block or backticks, when the model wrapped the call in one."""
    s = raw.strip()
    if "```" in s:
        m = _FENCE_RE.search(s)
        if m and m.group(1).strip():
            return m.group(1).strip()
    if s.startswith("`") and not s.startswith("```"):
        end = s.find("`", 1)
        return s[1:end].strip() if end > 0 else s[1:].strip()
    return s


_CALL_HEAD_RE = re.compile(r"(\s*[A-Za-z_][\w.]*\s*\()(.*)\)\s*", re.DOTALL)
_KEYWORD_ARG_RE = re.compile(r"\s*[A-Za-z_]\w*\s*=(?!=)")


def _top_level_args(text: str) -> list[str] | None:
    """``text`` split at the commas outside brackets and strings; None when a bracket or a
    string is left open."""
    parts: list[str] = []
    start, closed = 0, False
    for i, c, depth in outside_strings(text):
        if c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        closed = c == "" and depth == 0
    if not closed:
        return None
    parts.append(text[start:])
    return parts


def _positional_first(source: str) -> str | None:
    """A one-call ``source`` with its positional arguments moved before its keyword ones, when
    one follows a keyword argument (which Python refuses): APIBench writes
    ``torch.hub.load(repo_or_dir='szq0214/MEAL-V2', 'meal_v2', model=..., pretrained=True)``."""
    m = _CALL_HEAD_RE.fullmatch(source)
    parts = _top_level_args(m.group(2)) if m is not None and len(source) <= MAX_CALL_CHARS else None
    if m is None or parts is None:
        return None
    keyword = [p.strip() for p in parts if _KEYWORD_ARG_RE.match(p)]
    positional = [p.strip() for p in parts if not _KEYWORD_ARG_RE.match(p) and p.strip()]
    if not keyword or not positional:
        return None
    return m.group(1) + ", ".join(positional + keyword) + ")"


def _parse_fragment(raw: str) -> tuple[ast.Module | None, str, bool, str]:
    """``raw`` parsed as Python: as is, then with trailing prose trimmed at a ``)``, then with the
    brackets and strings a truncated answer left open closed. (tree, source, truncated, problem)."""
    source = _fragment_source(raw)[:MAX_CALL_CHARS]
    attempts = 0
    problem = "not valid Python"
    candidates: list[tuple[str, bool]] = [(source, False)]
    first_line = source.split("\n", 1)[0]
    if first_line != source:
        candidates.append((first_line, False))
    reordered = _positional_first(source)
    if reordered is not None:
        candidates.append((reordered, False))
    seen: set[str] = set()
    for text, truncated in candidates:
        if text in seen:
            continue
        seen.add(text)
        attempts += 1
        tree = _try_parse(text)
        if tree is not None and _main_call(tree) is not None:
            return tree, text, truncated, ""
    # Trailing prose after the call: cut after each ')' from the end (Gorilla's eval cuts at the
    # last ')'), a bounded number of times.
    end = len(source)
    while attempts < MAX_PARSE_ATTEMPTS:
        end = source.rfind(")", 0, end)
        if end < 0:
            break
        attempts += 1
        text = source[: end + 1]
        tree = _try_parse(text)
        if tree is not None and _main_call(tree) is not None:
            return tree, text, False, ""
    # Truncated: close what is open (after dropping a dangling partial argument).
    for text in _repairs(source):
        if attempts >= MAX_PARSE_ATTEMPTS + 4:
            break
        attempts += 1
        tree = _try_parse(text)
        if tree is not None and _main_call(tree) is not None:
            return tree, text, True, ""
    return None, source, False, problem


def _try_parse(text: str) -> ast.Module | None:
    if not text.strip():
        return None
    try:
        with warnings.catch_warnings():
            # Model output is full of odd escapes ("\d" in a regex string): not our warning to print.
            warnings.simplefilter("ignore")
            return ast.parse(text.strip().rstrip(";"), mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return None


def _scan_open(text: str) -> tuple[list[str], str]:
    """The closers for brackets left open in ``text`` and the quote of a string left open."""
    closers: list[str] = []
    pairs = {"(": ")", "[": "]", "{": "}"}
    i, n = 0, len(text)
    quote = ""
    while i < n:
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if text.startswith(quote, i):
                i += len(quote)
                quote = ""
                continue
        elif c in "'\"":
            quote = c * 3 if text.startswith(c * 3, i) else c
            i += len(quote)
            continue
        elif c == "#":
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
            continue
        elif c in pairs:
            closers.append(pairs[c])
        elif c in ")]}" and closers and closers[-1] == c:
            closers.pop()
        i += 1
    return closers, quote


def _repairs(source: str) -> Iterator[str]:
    text = source.rstrip()
    closers, quote = _scan_open(text)
    if not closers and not quote:
        return
    yield text + quote + "".join(reversed(closers))
    # A dangling partial argument ("f(a=1, b=" or "f(a=1, b='x"): drop it back to the last comma.
    comma = text.rfind(",")
    if comma > 0:
        cut = text[:comma]
        closers, quote = _scan_open(cut)
        if not quote:
            yield cut + "".join(reversed(closers))


def _statement_value(stmt: ast.stmt) -> ast.expr | None:
    if isinstance(stmt, ast.Expr):
        value: ast.expr | None = stmt.value
    elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Return)):
        value = stmt.value
    else:
        return None
    while isinstance(value, ast.Await):
        value = value.value
    return value


def _main_call(tree: ast.Module) -> ast.Call | None:
    """The call the fragment is about: the first statement-level call (``x = f()``, ``await f()``),
    looking inside ``with``/``async with`` bodies before their context managers."""
    for stmt in tree.body[:64]:
        value = _statement_value(stmt)
        if isinstance(value, ast.Call):
            return value
        if isinstance(stmt, (ast.With, ast.AsyncWith)):
            inner = _main_call(ast.Module(body=stmt.body, type_ignores=[]))
            if inner is not None:
                return inner
            for item in stmt.items:
                ctx = item.context_expr
                while isinstance(ctx, ast.Await):
                    ctx = ctx.value
                if isinstance(ctx, ast.Call):
                    return ctx
    return None


def _all_calls(tree: ast.Module) -> list[ast.Call]:
    out: list[ast.Call] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            out.append(node)
            if len(out) >= MAX_SUBCALLS:
                break
    return out


def dotted_name(node: ast.expr) -> str:
    """``a.b.c`` for a name/attribute chain; calls in the chain are skipped (``A(x).b`` -> ``A.b``)."""
    parts: list[str] = []
    current: ast.expr = node
    for _ in range(64):
        if isinstance(current, ast.Name):
            parts.append(current.id)
            break
        if isinstance(current, ast.Attribute):
            parts.append(current.attr)
            current = current.value
        elif isinstance(current, ast.Call):
            current = current.func
        elif isinstance(current, ast.Await):
            current = current.value
        else:
            break
    return ".".join(reversed(parts))


def _receivers(node: ast.Call) -> list[ast.Call]:
    """Calls the function expression is chained on, innermost first: ``A(x).b(y).c`` -> [A(x), .b(y)]."""
    found: list[ast.Call] = []
    current: ast.expr = node.func
    for _ in range(64):
        if isinstance(current, ast.Attribute):
            current = current.value
        elif isinstance(current, ast.Call):
            found.append(current)
            current = current.func
        elif isinstance(current, ast.Await):
            current = current.value
        else:
            break
    return list(reversed(found))


class _Source:
    """A parsed fragment's text, split into lines once: ``ast.get_source_segment`` re-splits the
    whole source on every call, which made a call with many arguments quadratic."""

    def __init__(self, text: str) -> None:
        self.text = text
        # Only the line breaks Python's tokenizer counts (str.splitlines also splits at \f,
        # \u2028, ..., which would shift every line number after one).
        self.lines: list[str] = []
        start = 0
        for m in _LINE_BREAK_RE.finditer(text):
            self.lines.append(text[start : m.end()])
            start = m.end()
        if start < len(text) or not self.lines:
            self.lines.append(text[start:])

    def segment(self, node: ast.expr) -> str:
        """The source text of ``node`` as written (offsets are UTF-8 byte columns, as in ast)."""
        try:
            lineno, end_lineno = node.lineno, node.end_lineno
            col, end_col = node.col_offset, node.end_col_offset
            first, last = lineno - 1, (end_lineno or lineno) - 1
            if end_col is None or not 0 <= first <= last < len(self.lines):
                raise ValueError("no position")
            if first == last:
                return self.lines[first].encode()[col:end_col].decode()
            head = self.lines[first].encode()[col:].decode()
            tail = self.lines[last].encode()[:end_col].decode()
            return "".join([head, *self.lines[first + 1 : last], tail])
        except (AttributeError, ValueError, TypeError, UnicodeDecodeError):
            try:
                return ast.unparse(node)
            except (ValueError, RecursionError, AttributeError):
                return ""


def literal_value(node: ast.expr, source: str) -> tuple[bool, Any]:
    """(True, value) when ``node`` is a plain literal of bounded size; never evaluates code."""
    if len(source) > MAX_LITERAL_CHARS:
        return False, None
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError, OverflowError):
        return False, None


def _python_call(node: ast.Call, source: _Source, truncated: bool, *, chained: bool = True) -> ParsedCall:
    """One call node as a ParsedCall; ``chained``: also the calls it is chained on (one level:
    receivers and sub-calls do not get their own receivers, which keeps the work linear)."""
    name = dotted_name(node.func)
    args: list[Argument] = []
    for i, a in enumerate(node.args[:MAX_ARGS]):
        if isinstance(a, ast.Starred):
            args.append(Argument("", source.segment(a.value), ArgWhere.STAR, i))
            continue
        text = source.segment(a)
        ok, value = literal_value(a, text)
        args.append(Argument("", text, ArgWhere.POSITIONAL, i, ok, value))
    for kw in node.keywords[:MAX_ARGS]:
        text = source.segment(kw.value)
        if kw.arg is None:
            args.append(Argument("", text, ArgWhere.STAR_STAR))
            continue
        ok, value = literal_value(kw.value, text)
        args.append(Argument(kw.arg, text, ArgWhere.KEYWORD, -1, ok, value))
    raw = source.segment(node)[:MAX_CALL_CHARS]
    if not name:
        return ParsedCall(raw=raw, args=tuple(args), truncated=truncated, problem="the called expression has no name")
    rest = _http_client_call(name, args, raw, truncated)
    if rest is not None:
        return rest
    receivers = (
        tuple(_python_call(r, source, truncated, chained=False) for r in _receivers(node)[:MAX_RECEIVERS])
        if chained
        else ()
    )
    return ParsedCall(
        raw=raw, name=name, args=tuple(args), style=CallStyle.PYTHON, receivers=receivers, truncated=truncated
    )


# ----------------------------------------------------------------------------------------------
# REST calls


def _http_client_call(name: str, args: list[Argument], raw: str, truncated: bool) -> ParsedCall | None:
    """``requests.post(url, json=...)``, ``httpx.get(...)``, ``session.request("POST", url)``...:
    a call named after an HTTP method whose URL argument is a string."""
    last = name.rsplit(".", 1)[-1].upper()
    positional = [a for a in args if a.where is ArgWhere.POSITIONAL]
    keywords = {a.name: a for a in args if a.where is ArgWhere.KEYWORD}
    if last == "REQUEST":
        method_arg = keywords.get("method") or (positional[0] if positional else None)
        url_arg = keywords.get("url") or (positional[1] if len(positional) > 1 else None)
        if method_arg is None or not isinstance(method_arg.value, str):
            return None
        method = method_arg.value.upper()
    elif last in REST_METHODS:
        method = last
        url_arg = keywords.get("url") or (positional[0] if positional else None)
    else:
        return None
    if method not in REST_METHODS or url_arg is None:
        return None
    url = url_arg.value if isinstance(url_arg.value, str) else _template_from_source(url_arg.source)
    if url is None or not (url.startswith(("/", "http://", "https://", "{")) or "://" in url):
        return None
    path, query = path_and_query(url)
    if not path:
        return None
    host = url_host(url)
    rest_args: list[Argument] = [Argument(k, v, ArgWhere.QUERY, -1, True, v) for k, v in query]
    for kw_name, where in (
        (REQUESTS_QUERY_KEYWORD, ArgWhere.QUERY),
        (REQUESTS_BODY_KEYWORD, ArgWhere.BODY),
        ("data", ArgWhere.BODY),
    ):
        arg = keywords.get(kw_name)
        if arg is None:
            continue
        if arg.literal and isinstance(arg.value, dict):
            rest_args.extend(_fields_of(arg.value, where, arg.source))
        else:
            rest_args.append(Argument("", arg.source, where, -1, arg.literal, arg.value))
    return ParsedCall(
        raw=raw,
        name=f"{method} {path}",
        args=tuple(rest_args),
        style=CallStyle.REST,
        method=method,
        path=path,
        host=host,
        truncated=truncated,
    )


def _template_from_source(source: str) -> str | None:
    """A URL written as an f-string or ``BASE + "/x"``: its literal text, ``{name}`` for the rest."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            node = ast.parse(source[:MAX_LITERAL_CHARS], mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    parts: list[str] = []

    def walk(n: ast.expr, depth: int = 0) -> bool:
        if depth > 16:
            return False
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            parts.append(n.value)
        elif isinstance(n, ast.JoinedStr):
            for v in n.values:
                if isinstance(v, ast.Constant) and isinstance(v.value, str):
                    parts.append(v.value)
                elif isinstance(v, ast.FormattedValue):
                    parts.append("{" + (dotted_name(v.value) or "value") + "}")
        elif isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add):
            return walk(n.left, depth + 1) and walk(n.right, depth + 1)
        elif isinstance(n, (ast.Name, ast.Attribute)):
            parts.append("{" + dotted_name(n) + "}")
        else:
            return False
        return True

    return "".join(parts) if walk(node) else None


def path_and_query(url: str) -> tuple[str, list[tuple[str, str]]]:
    """The path and query pairs of a URL or path. A leading ``{base_url}`` placeholder or a
    scheme and host are dropped; the path keeps ``{placeholders}`` as written."""
    url = url.strip()
    if url.startswith("{"):
        # f"{BASE_URL}/sessions": the placeholder stands for scheme, host and base path.
        close = url.find("}")
        if close > 0 and url[close + 1 : close + 2] in ("/", "?", ""):
            url = url[close + 1 :]
    if "://" in url:
        try:
            parts = urlsplit(url)
        except ValueError:
            return "", []
        path, query = parts.path, parts.query
    else:
        path, _, query = url.partition("?")
        path = path.split("#", 1)[0]
    if not path.startswith("/"):
        path = "/" + path if path else "/"
    pairs = parse_qsl(query, keep_blank_values=True)[:MAX_ARGS] if query else []
    return path, pairs


def url_host(url: str) -> str:
    """The host name an absolute URL names (lower case, no user info or port); "" for a path
    or a ``{BASE_URL}/...`` template; "?" for a URL whose host cannot be read."""
    url = url.strip()
    if "://" not in url:
        return ""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        host = None
    return host or "?"  # a URL, but no host in it that any corpus' server could equal


def _fields_of(obj: dict[Any, Any], where: ArgWhere, source: str) -> list[Argument]:
    out: list[Argument] = []
    for key, value in list(obj.items())[:MAX_ARGS]:
        try:
            text = json.dumps(value, ensure_ascii=False, default=repr)
        except (TypeError, ValueError, RecursionError):
            text = repr(value)[:MAX_LITERAL_CHARS]
        out.append(Argument(str(key), text, where, -1, True, value))
    return out


def _rest_text_call(raw: str, body: str, m: re.Match[str]) -> ParsedCall:
    method = m.group(1).upper()
    path, query = path_and_query(m.group(2))
    host = url_host(m.group(2))
    args: list[Argument] = [Argument(k, v, ArgWhere.QUERY, -1, True, v) for k, v in query]
    rest = body[m.end() : m.end() + MAX_CALL_CHARS]
    brace = rest.find("{")
    if brace >= 0:
        obj_text = _balanced(rest, brace, "{", "}")
        if obj_text is not None:
            obj = _literal_or_json(obj_text)
            if isinstance(obj, dict):
                args.extend(_fields_of(obj, ArgWhere.BODY, obj_text))
    return ParsedCall(
        raw=raw[:MAX_CALL_CHARS],
        name=f"{method} {path}",
        args=tuple(args),
        style=CallStyle.REST,
        method=method,
        path=path,
        host=host,
    )


def _curl_call(raw: str, body: str) -> ParsedCall | None:
    start = _CURL_RE.search(" " + body)
    if start is None:
        return None
    # One command: backslash-continued lines joined, anything after its last line dropped.
    command = (
        body[body.find("curl", max(0, start.start() - 1)) :][:MAX_CALL_CHARS].replace("\\\n", " ").split("\n", 1)[0]
    )
    try:
        tokens = shlex.split(command)
    except ValueError:  # unbalanced quotes in a cut-off answer
        return None
    if "curl" not in tokens:
        return None
    tokens = tokens[tokens.index("curl") + 1 :][:256]
    method = ""
    url = ""
    data: list[str] = []
    get_query = False
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok in ("-X", "--request"):
            method, i = nxt.upper(), i + 2
            continue
        if tok.startswith("-X") and len(tok) > 2:
            method = tok[2:].upper()
        elif tok in ("-d", "--data", "--data-raw", "--data-binary", "--json", "--data-urlencode"):
            data.append(nxt)
            i += 2
            continue
        elif tok in ("-H", "--header", "-u", "--user", "-o", "--output", "-b", "--cookie", "-F", "--form"):
            i += 2
            continue
        elif tok in ("-G", "--get"):
            get_query = True
        elif tok == "-I" or tok == "--head":
            method = "HEAD"
        elif not tok.startswith("-") and not url:
            url = tok
        i += 1
    if not url:
        return None
    method = method or ("POST" if data and not get_query else "GET")
    if method not in REST_METHODS:
        return None
    if url[:1].isalnum() and "://" not in url:
        url = "http://" + url  # curl reads "evil.example/x" as a host and a path
    path, query = path_and_query(url)
    host = url_host(url)
    args: list[Argument] = [Argument(k, v, ArgWhere.QUERY, -1, True, v) for k, v in query]
    for chunk in data:
        obj = _literal_or_json(chunk) if chunk.lstrip().startswith("{") else None
        where = ArgWhere.QUERY if get_query else ArgWhere.BODY
        if isinstance(obj, dict):
            args.extend(_fields_of(obj, where, chunk))
        elif "=" in chunk and not chunk.lstrip().startswith("@"):
            args.extend(
                Argument(k, v, where, -1, True, v) for k, v in parse_qsl(chunk, keep_blank_values=True)[:MAX_ARGS]
            )
        else:
            args.append(Argument("", chunk[:MAX_LITERAL_CHARS], where))
    return ParsedCall(
        raw=raw[:MAX_CALL_CHARS],
        name=f"{method} {path}",
        args=tuple(args),
        style=CallStyle.REST,
        method=method,
        path=path,
        host=host,
    )


def _balanced(text: str, start: int, open_ch: str, close_ch: str) -> str | None:
    """The bracketed text starting at ``start`` (strings skipped), or None when it never closes."""
    depth = 0
    quote = ""
    i = start
    limit = min(len(text), start + MAX_DICT_ANSWER_CHARS)
    while i < limit:
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c == open_ch:
            depth += 1
        elif c == close_ch:
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
        i += 1
    return None


def _literal_or_json(text: str) -> Any:
    """A JSON or Python literal of bounded size, or None. Never evaluates code."""
    if len(text) > MAX_DICT_ANSWER_CHARS:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError, OverflowError):
        return None


__all__ = [
    "ArgWhere",
    "Argument",
    "CallStyle",
    "ParsedAnswer",
    "ParsedCall",
    "dotted_name",
    "gorilla_fields_layout",
    "literal_value",
    "parse_answer",
    "parse_call",
    "parse_function_calls",
    "path_and_query",
    "url_host",
]
