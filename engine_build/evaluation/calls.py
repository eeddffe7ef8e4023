"""The calls in an answer text, read once and handed to every evaluator in the shape it takes.

Answers come in three styles; each is read into the service's own :class:`ParsedAnswer`, so the
verdict, the evaluators and the report all see the same calls:

- ``gorilla``: ``<<<api_call>>>:`` fields or TorchHub's dict layout (gorilla_v0), read by
  :func:`apihelper.service.answers.parse.parse_answer`;
- ``functions``: ``<<function>>name(arg=value)`` calls (openfunctions_v2), read by the same parser;
- ``tool_calls``: JSON calls as chat models with tools write them (chat_tools: SmolLM2's
  ``<tool_call>[...]</tool_call>``, Hermes' and Qwen's one object per block, xLAM's bare JSON),
  read by the same parser's chat_tools reader (``apihelper.service.answers.tool_calls``).

A text with ``<tool_call>`` or that starts as JSON is read as tool calls, one with ``<<function>>``
as functions, anything else in the style the caller names (the prompt format's).

Conversions: :func:`bfcl_call` gives BFCL's checker a name and keyword values (BFCL's decoder also
drops positional arguments; a value that is not a literal is kept as its source text, as BFCL's
decoder keeps a bare name), and :func:`render_call` writes a parsed call back as call text, for
Gorilla's evaluator where an answer has no ``api_call`` field to cut.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from typing import Any

from apihelper.build.evaluation.bfcl_ast import Call
from apihelper.service.answers.parse import (
    MAX_ANSWER_CHARS,
    Argument,
    ArgWhere,
    CallStyle,
    ParsedAnswer,
    ParsedCall,
    parse_answer,
)
from apihelper.service.prompts import PromptFormat

TOOL_CALL_OPEN = "<tool_call>"
_FENCE_RE = re.compile(r"^```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_JSON_START_RE = re.compile(r'^\s*(?:\[\s*\{|\{\s*"(?:name|function)")')


class AnswerStyle(str, enum.Enum):
    GORILLA = "gorilla"
    FUNCTIONS = "functions"
    TOOL_CALLS = "tool_calls"


STYLE_OF_FORMAT = {
    PromptFormat.GORILLA_V0: AnswerStyle.GORILLA,
    PromptFormat.OPENFUNCTIONS_V2: AnswerStyle.FUNCTIONS,
    PromptFormat.CHAT_TOOLS: AnswerStyle.TOOL_CALLS,
}
FORMAT_OF_STYLE = {style: fmt for fmt, style in STYLE_OF_FORMAT.items()}


def _unfenced(text: str) -> str:
    match = _FENCE_RE.match(text.strip())
    return match.group(1).strip() if match else text.strip()


def detect_style(text: str, default: AnswerStyle) -> AnswerStyle:
    """The style ``text`` is written in; ``default`` when it has none of the markers."""
    head = text[:MAX_ANSWER_CHARS]
    if TOOL_CALL_OPEN in head or _JSON_START_RE.match(_unfenced(head)):
        return AnswerStyle.TOOL_CALLS
    if "<<function>>" in head:
        return AnswerStyle.FUNCTIONS
    return default


def read_answer(text: str, style: AnswerStyle) -> ParsedAnswer:
    """The calls (and gorilla fields) of an answer in ``style``. Never raises."""
    return parse_answer(FORMAT_OF_STYLE[style], text)


# ---------------------------------------------------------------------------------------------- tool calls


def read_tool_calls(text: str) -> list[ParsedCall]:
    """JSON tool calls, in order, read by the service's chat_tools parser (a block that does not
    decode is one unparseable call). Never raises."""
    return parse_answer(PromptFormat.CHAT_TOOLS, text).calls


# ---------------------------------------------------------------------------------------------- conversions


def readable(calls: Sequence[ParsedCall]) -> list[ParsedCall]:
    """The calls that were read (a name), dropping the placeholders for what could not be."""
    return [c for c in calls if c.name and c.style is not CallStyle.NONE]


def bfcl_call(call: ParsedCall) -> Call:
    """A call as BFCL's checker takes it: the name and each keyword argument's value."""
    arguments = {a.name: (a.value if a.literal else a.source) for a in call.args if a.where is ArgWhere.KEYWORD}
    return call.name, arguments


def _argument_text(arg: Argument) -> str:
    if arg.where is ArgWhere.STAR:
        return f"*{arg.source}"
    if arg.where is ArgWhere.STAR_STAR:
        return f"**{arg.source}"
    if arg.where is ArgWhere.POSITIONAL or not arg.name:
        return arg.source
    return f"{arg.name}={arg.source}"


def render_call(call: ParsedCall) -> str:
    """A parsed call as Python call text (``name(a, k=v)``, each value as written; tool calls' JSON
    values as Python literals, ``'x'``, as APIBench's records write them); a REST call as ``METHOD /path``."""
    if call.style is CallStyle.REST:
        return call.name
    if not call.name:
        return ""
    return f"{call.name}({', '.join(_argument_text(a) for a in call.args)})"


def call_json(call: ParsedCall) -> dict[str, Any]:
    """A parsed call for the per-question report: name, arguments as source text, and why not, if not."""
    out: dict[str, Any] = {"name": call.name, "arguments": call.arguments, "raw": call.raw}
    if call.problem:
        out["problem"] = call.problem
    return out


__all__ = [
    "STYLE_OF_FORMAT",
    "AnswerStyle",
    "bfcl_call",
    "call_json",
    "detect_style",
    "read_answer",
    "read_tool_calls",
    "readable",
    "render_call",
]
