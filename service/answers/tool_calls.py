"""The ``<tool_call>`` answers of chat models with tools, read back as calls. Pure, never raises.

Layouts read: ``<tool_call>[{"name": ..., "arguments": {...}}, ...]</tool_call>`` (SmolLM2, as its
function-calling data writes it), one object per block ``<tool_call>{...}</tool_call>`` (Hermes,
Qwen), and a bare JSON list or object (xLAM), also inside a Markdown fence; OpenAI's
``{"function": {...}}`` nesting, ``parameters`` for ``arguments`` and arguments sent as a JSON
string are accepted. Values are read with ``json`` (or ``ast.literal_eval`` for Python-style
quotes): nothing is ever evaluated, every input is cut to a fixed size first, and the number of
blocks, decode attempts and calls is capped.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from apihelper.service.answers.formats import TOOL_CALL_CLOSE, TOOL_CALL_OPEN


@dataclass(frozen=True)
class ToolCall:
    """One call as the model wrote it: a function name and its arguments."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": dict(self.arguments)}


MAX_ANSWER_CHARS = 32 * 1024  # an answer is cut to this before any parsing
MAX_BLOCK_CHARS = 8 * 1024  # one <tool_call> block's text handed to a JSON decoder
MAX_LITERAL_CHARS = 4 * 1024  # text handed to ast.literal_eval (Python-style quotes)
MAX_BLOCKS = 16  # <tool_call> blocks read per answer
MAX_DECODE_ATTEMPTS = 8  # start positions tried per block ("[" or "{" after prose)
MAX_CALLS = 16  # calls kept per answer
MAX_NAME_CHARS = 256
TRUNCATED_CALL = "truncated call"  # how a problem starts when the answer ended inside a call

_OPEN, _CLOSE = TOOL_CALL_OPEN, TOOL_CALL_CLOSE
_FENCE_RE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_START_RE = re.compile(r"[\[{]")


class Layout:
    """Which answer layout was recognised (``ToolCallParse.layout``)."""

    TAGGED = "tool_call"  # <tool_call>...</tool_call> blocks (list or one object each)
    BARE = "json"  # no tags: a JSON list or object (xLAM), perhaps in a fence
    NONE = ""  # nothing recognised


@dataclass(frozen=True)
class ToolCallParse:
    """The calls in an answer. ``problem`` says why something was dropped or nothing found;
    ``truncated``: a ``<tool_call>`` block was never closed (the answer was cut off)."""

    calls: tuple[ToolCall, ...]
    layout: str = Layout.NONE
    problem: str = ""
    truncated: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.calls)


def parse_tool_calls(text: str) -> ToolCallParse:
    """The tool calls in a model's answer; see the module docstring. Never raises."""
    try:
        return _parse(text if isinstance(text, str) else "")
    except Exception as exc:  # a parser bug must not fail the request
        return ToolCallParse((), Layout.NONE, f"parser error: {type(exc).__name__}")


def _parse(text: str) -> ToolCallParse:
    text = text[:MAX_ANSWER_CHARS]
    blocks, truncated = _tagged_blocks(text)
    if blocks:
        calls: list[ToolCall] = []
        problems: list[str] = []
        for i, block in enumerate(blocks):
            cut = truncated and i == len(blocks) - 1
            got, problem = _cut_calls_in(block) if cut else _calls_in(block)
            calls.extend(got)
            if problem:
                problems.append(problem)
        return ToolCallParse(tuple(calls[:MAX_CALLS]), Layout.TAGGED, "; ".join(dict.fromkeys(problems)), truncated)
    body = _unfenced(text)
    if not _START_RE.search(body[:MAX_BLOCK_CHARS]):
        return ToolCallParse((), Layout.NONE, "no tool call in the answer" if body.strip() else "empty answer")
    got, problem = _calls_in(body)
    return ToolCallParse(tuple(got[:MAX_CALLS]), Layout.BARE if got else Layout.NONE, problem)


def _tagged_blocks(text: str) -> tuple[list[str], bool]:
    """The text inside each ``<tool_call>`` block; an unclosed last block runs to the end."""
    blocks: list[str] = []
    pos = 0
    while len(blocks) < MAX_BLOCKS:
        start = text.find(_OPEN, pos)
        if start < 0:
            return blocks, False
        start += len(_OPEN)
        end = text.find(_CLOSE, start)
        if end < 0:
            blocks.append(text[start : start + MAX_BLOCK_CHARS])
            return blocks, True
        blocks.append(text[start:end][:MAX_BLOCK_CHARS])
        pos = end + len(_CLOSE)
    return blocks, False


def _unfenced(text: str) -> str:
    if "```" in text:
        m = _FENCE_RE.search(text)
        if m and m.group(1).strip():
            return m.group(1)
    return text


def _calls_in(block: str) -> tuple[list[ToolCall], str]:
    """The calls in one block of text: a list of call objects or one object."""
    value = _first_value(_unfenced(block)[:MAX_BLOCK_CHARS])
    if value is None:
        return [], "no JSON call found"
    return _calls_of(value)


def _calls_of(value: Any) -> tuple[list[ToolCall], str]:
    items = value if isinstance(value, list) else [value]
    calls: list[ToolCall] = []
    problems: list[str] = []
    for item in items[:MAX_CALLS]:
        call, problem = _as_call(item)
        if call is not None:
            calls.append(call)
        if problem:
            problems.append(problem)
    return calls, "; ".join(dict.fromkeys(problems))


def _cut_calls_in(block: str) -> tuple[list[ToolCall], str]:
    """The calls of a block the answer ended in (cut by max_tokens): the whole value when it
    still closes, else the complete call objects of a list that never closed. An object inside a
    cut call (its arguments) is never read as a call of its own."""
    body = _unfenced(block)[:MAX_BLOCK_CHARS]
    start = _START_RE.search(body)
    if start is None:
        return [], f"{TRUNCATED_CALL}: the answer ended before the call"
    decoder = json.JSONDecoder()
    try:
        value, _ = decoder.raw_decode(body, start.start())
    except (ValueError, RecursionError):
        value = _python_literal(body[start.start() :])
    if isinstance(value, (list, dict)):
        return _calls_of(value)
    calls: list[ToolCall] = []
    problems: list[str] = []
    if body[start.start()] == "[":
        pos = start.start() + 1
        while len(calls) < MAX_CALLS:
            while pos < len(body) and body[pos] in " \t\r\n,":
                pos += 1
            try:
                item, pos = decoder.raw_decode(body, pos)
            except (ValueError, RecursionError):
                break
            call, problem = _as_call(item)
            if call is not None:
                calls.append(call)
            if problem:
                problems.append(problem)
    problems.append(f"{TRUNCATED_CALL}: the answer ended inside a call (max_tokens reached?)")
    return calls, "; ".join(dict.fromkeys(problems))


def _could_start(text: str, index: int) -> bool:
    """Whether the bracket at ``index`` can open a JSON or Python literal: followed (after
    spaces) by a quote, a bracket or its own closing bracket. Prose brackets ("[now]",
    "{session_id}") are skipped without a decode attempt."""
    j = index + 1
    while j < len(text) and text[j] in " \t\r\n":
        j += 1
    if j >= len(text):
        return False
    follow = text[j]
    if text[index] == "{":
        return follow in "\"'}"
    return follow in "{[]\"'" or follow.isdigit() or follow == "-"


def _first_value(text: str) -> Any:
    """The first JSON (or Python-literal) list or object in ``text`` that holds a call (one
    with a name), else the first one at all; prose before and after ignored."""
    decoder = json.JSONDecoder()
    first: Any = None
    attempts = 0
    for match in _START_RE.finditer(text):
        if attempts >= MAX_DECODE_ATTEMPTS:
            break
        if not _could_start(text, match.start()):
            continue
        attempts += 1
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except (ValueError, RecursionError):
            value = _python_literal(text[match.start() :])
        if isinstance(value, (list, dict)):
            if _names_a_call(value):
                return value
            if first is None:
                first = value
    return first


def _names_a_call(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return any(isinstance(i, dict) and ("name" in i or isinstance(i.get("function"), dict)) for i in items[:MAX_CALLS])


def _python_literal(text: str) -> Any:
    """``text``'s leading bracketed literal read with ``ast.literal_eval`` (single quotes,
    True/None), or None. Only the balanced prefix is read, and only up to a fixed size."""
    end = _balanced_end(text[:MAX_LITERAL_CHARS])
    if end is None:
        return None
    try:
        return ast.literal_eval(text[:end])
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _balanced_end(text: str) -> int | None:
    """Index just past the bracket that closes ``text[0]``, skipping quoted strings; None if it
    never closes. Linear in ``len(text)``."""
    for i, c, depth in outside_strings(text):
        if depth == 0 and c and c in "]})":
            return i + 1
    return None


def outside_strings(text: str) -> Iterator[tuple[int, str, int]]:
    """Each character of ``text`` outside quoted strings (``'`` or ``"``, backslash escapes), as
    (index, character, bracket depth after it); then ``(len(text), "", depth)`` when no string is
    left open. Linear in ``len(text)``."""
    depth = 0
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        else:
            if c in "[{(":
                depth += 1
            elif c in "]})":
                depth -= 1
            yield i, c, depth
        i += 1
    if not quote:
        yield len(text), "", depth


def _as_call(item: Any) -> tuple[ToolCall | None, str]:
    """One decoded call object as a ``ToolCall``; tolerates OpenAI's ``{"function": {...}}``
    nesting, ``parameters`` for ``arguments``, and arguments sent as a JSON string."""
    if not isinstance(item, dict):
        return None, "a call that is not an object"
    inner = item.get("function")
    if isinstance(inner, dict) and "name" in inner:
        item = inner
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, "a call without a name"
    if len(name) > MAX_NAME_CHARS:
        return None, "a call name too long"
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        arguments = _first_value(arguments[:MAX_BLOCK_CHARS]) if arguments.strip() else {}
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return ToolCall(name.strip(), {}), f"arguments of {name.strip()!r} are not an object"
    return ToolCall(name.strip(), {str(k): v for k, v in arguments.items()}), ""


class CallTextFilter:
    """Streamed answer text without its ``<tool_call>`` blocks: what a chat client shows as the
    message's content when the calls travel as structured ``tool_calls``. Text outside blocks
    passes as it arrives, except a tail that may be the start of a marker (held until known);
    an unclosed block drops the rest of the answer. Linear in the text; one filter per answer."""

    def __init__(self) -> None:
        self._pending = ""  # text not yet released: a possible marker start, or inside a block
        self._inside = False
        self._dropped: list[str] = []

    @property
    def dropped(self) -> str:
        """The blocks' text left out so far, markers included."""
        return "".join(self._dropped)

    def feed(self, delta: str) -> str:
        self._pending += delta
        out: list[str] = []
        while True:
            marker = _CLOSE if self._inside else _OPEN
            at = self._pending.find(marker)
            if at >= 0:
                (self._dropped if self._inside else out).append(self._pending[:at])
                self._dropped.append(marker)
                self._pending = self._pending[at + len(marker) :]
                self._inside = not self._inside
                continue
            cut = len(self._pending) - _partial_marker(self._pending, marker)
            (self._dropped if self._inside else out).append(self._pending[:cut])
            self._pending = self._pending[cut:]
            return "".join(out)

    def flush(self) -> str:
        """The held-back tail at the end of the answer (never the inside of an unclosed block)."""
        rest, self._pending = self._pending, ""
        if self._inside:
            self._dropped.append(rest)
            return ""
        return rest


def _partial_marker(text: str, marker: str) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def without_calls(text: str) -> str:
    """``text`` without its ``<tool_call>`` blocks (see :class:`CallTextFilter`), stripped."""
    text_filter = CallTextFilter()
    return (text_filter.feed(text) + text_filter.flush()).strip()
