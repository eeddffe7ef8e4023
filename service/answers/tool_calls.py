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
from collections.abc import Mapping
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
        for block in blocks:
            got, problem = _calls_in(block)
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


def _first_value(text: str) -> Any:
    """The first JSON (or Python-literal) list or object in ``text``, trailing prose ignored."""
    decoder = json.JSONDecoder()
    for attempt, match in enumerate(_START_RE.finditer(text)):
        if attempt >= MAX_DECODE_ATTEMPTS:
            break
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except (ValueError, RecursionError):
            value = _python_literal(text[match.start() :])
        if isinstance(value, (list, dict)):
            return value
    return None


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
        elif c in "[{(":
            depth += 1
        elif c in "]})":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


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
