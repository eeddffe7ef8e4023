"""The prompt formats, as pure functions of the instruction and the retrieved docs.

Gorilla's two, exactly as the models were trained on them (as Gorilla's inference code writes
them), and one for chat models with tools:

- ``gorilla_v0`` (gorilla-7b-*-v0): a Vicuna-style chat turn; the retrieval-aware variant appends
  "\\n Use this API documentation for reference: " and the retrieved record to the instruction.
- ``openfunctions_v2``: a system line, then ``### Instruction: <<function>>[json]\\n<<question>>q``
  and ``### Response: ``; the retrieved docs become the JSON ``functions`` list.
- ``chat_tools``: a conversation (:class:`ChatPrompt`) that the engine writes with the model's own
  chat template; the docs' function schemas are the tools, laid out as the function-calling data
  of SmolLM2 (Argilla's Synth-APIGen, ChatML) has them: a system turn with the output format, a
  user turn ``You have access to the following tools:\\n<tools>[json]</tools>\\n\\nPlease answer
  the following query:\\n<query>``; answers are ``<tool_call>[{"name", "arguments"}]</tool_call>``
  (Hermes, Qwen and xLAM models write the same calls). A model whose template renders tools
  itself gets them in ``ChatPrompt.tools`` instead.

Corpus text is data, never instructions (specs and SDKs come from anyone). What a doc brings is
made inert before it reaches a prompt, and only what a doc brings: the user's instruction is
never rewritten. :func:`inert_text` (the gorilla_v0 records, each fenced in a triple-backtick
block) and :func:`inert_schema` (every string and key of a function schema, for the JSON formats):

- a line that opens a turn or a section of any of the formats (``USER:``, ``ASSISTANT:``,
  ``SYSTEM:``, ``### Instruction:``, ``### Response:``) starts ``[USER]``... instead: a quote;
  so do Vicuna's upper-case ``USER:``/``ASSISTANT:`` and ``###`` headings anywhere in a line
  (loaders join lines, and JSON keeps a string on one);
- the formats' markers (``<<<api_call>>>``, ``<<function>>``, ``<<question>>``), ChatML-style
  special tokens (``<|im_start|>``), Llama's (``<s>``, ``[INST]``) and the chat_tools tags
  (``<tools>``, ``<tool_call>``) become ``\u2039api_call\u203a``, ``\u2039|im_start|\u203a``...;
- a run of three backticks (which would close the fence) becomes three single quotes;
- one-line fields (function and parameter names) lose their line breaks.

JSON keeps every string on its line (``json.dumps`` escapes newlines), so a doc cannot start a
turn in any format.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from apihelper.retriever.doc_kinds import FunctionSchema
from apihelper.retriever.doc_kinds import function_schema as doc_function_schema
from apihelper.retriever.invisible import INVISIBLE
from apihelper.retriever.types import RetrievedDoc


class PromptFormat(str, enum.Enum):
    GORILLA_V0 = "gorilla_v0"
    OPENFUNCTIONS_V2 = "openfunctions_v2"
    CHAT_TOOLS = "chat_tools"  # the model's own chat template; docs as tools; <tool_call> JSON answers


GORILLA_V0_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
GORILLA_V0_DOCS_LEAD = "\n Use this API documentation for reference: "

OPENFUNCTIONS_V2_SYSTEM = (
    "You are an AI programming assistant, utilizing the Gorilla LLM model, developed by Gorilla "
    "LLM, and you only answer questions related to computer science. For politically sensitive "
    "questions, security and privacy issues, and other non-computer science questions, you will "
    "refuse to answer."
)


CHAT_TOOLS_SYSTEM = (
    "You are an expert in composing function calls. You are given a query and a set of "
    "functions. Choose the function or functions that answer the query and call them with the "
    "right arguments. If no function fits, or the query lacks a required argument, say so.\n\n"
    "Reply with the calls only, in exactly this format:\n"
    '<tool_call>[{"name": "function_name", "arguments": {"argument": "value"}}]</tool_call>'
)
CHAT_TOOLS_TOOLS_LEAD = "You have access to the following tools:\n"
CHAT_TOOLS_QUERY_LEAD = "Please answer the following query:\n"


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation for a chat template, and the tool schemas the template itself renders
    (empty when the tools are written into the messages)."""

    messages: tuple[ChatMessage, ...]
    tools: tuple[FunctionSchema, ...] = ()

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


Prompt = str | ChatPrompt  # text for the completion formats, a conversation for chat formats


def build_prompt(fmt: PromptFormat, instruction: str, docs: Sequence[RetrievedDoc]) -> Prompt:
    """The prompt for ``fmt``; ``docs`` best first (may be empty)."""
    if fmt is PromptFormat.GORILLA_V0:
        return gorilla_v0_prompt(instruction, docs)
    if fmt is PromptFormat.CHAT_TOOLS:
        return chat_tools_prompt(instruction, docs)
    return openfunctions_v2_prompt(instruction, docs)


def chat_tools_prompt(instruction: str, docs: Sequence[RetrievedDoc]) -> ChatPrompt:
    """The system turn, then the tools and the query in one user turn (no docs: the query alone)."""
    system = ChatMessage("system", CHAT_TOOLS_SYSTEM)
    if not docs:
        return ChatPrompt((system, ChatMessage("user", instruction)))
    tools = json.dumps([inert_schema(function_schema(d)) for d in docs], ensure_ascii=False)
    user = f"{CHAT_TOOLS_TOOLS_LEAD}<tools>{tools}</tools>\n\n{CHAT_TOOLS_QUERY_LEAD}{instruction}"
    return ChatPrompt((system, ChatMessage("user", user)))


# ChatML as a Jinja chat template (what render_chatml writes): the development model carries it.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def render_chatml(prompt: ChatPrompt) -> str:
    """``prompt`` in ChatML (``<|im_start|>role\\n...<|im_end|>``), the assistant's turn opened:
    SmolLM2's and Qwen's template, for engines without a tokenizer of their own (the fake engine)."""
    turns = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in prompt.messages)
    return f"{turns}<|im_start|>assistant\n"


def gorilla_v0_prompt(instruction: str, docs: Sequence[RetrievedDoc]) -> str:
    user = instruction
    if docs:
        # Gorilla v0 was trained with one reference record; more are joined so the model still
        # sees them as one documentation block, best first.
        # Each record fenced and made inert: a doc cannot close its fence or open a turn.
        user += GORILLA_V0_DOCS_LEAD + "\n".join(f"{DOC_FENCE}\n{inert_text(d.doc.text)}\n{DOC_FENCE}" for d in docs)
    return f"{GORILLA_V0_SYSTEM}\nUSER: {user}\nASSISTANT:"


def openfunctions_v2_prompt(instruction: str, docs: Sequence[RetrievedDoc]) -> str:
    if not docs:
        return f"### Instruction: <<question>> {instruction}\n### Response: "
    functions = [inert_schema(function_schema(d)) for d in docs]
    return (
        f"{OPENFUNCTIONS_V2_SYSTEM}\n### Instruction: <<function>>{json.dumps(functions)}\n"
        f"<<question>>{instruction}\n### Response: "
    )


def function_schema(doc: RetrievedDoc) -> FunctionSchema:
    """A JSON function schema for openfunctions_v2: the one the loader stored (OpenAPI operations
    and Python callables have one), else a parameterless function named after the doc's key."""
    stored = doc_function_schema(doc.doc)
    if stored is not None:
        return stored
    return FunctionSchema(name=doc.doc.key, description=doc.doc.text, parameters={"type": "object", "properties": {}})


# ----------------------------------------------------------------------------------------------
# Corpus text made inert (see the module docstring)

DOC_FENCE = "```"
# A line that opens a turn or a section in one of the formats (after optional blanks, quote or
# list marks): a role word and its colon, or a "###" section heading ("### Instruction:").
_ROLE_LINE_RE = re.compile(
    r"^(?P<lead>[ \t>*\-]*)(?:#{1,6}[ \t]*(?P<section>instruction|response|input|system|question|answer)\b[ \t]*:?"
    r"|(?P<role>user|assistant|system|human|gpt|bot)[ \t]*:)",
    re.IGNORECASE | re.MULTILINE,
)
# Gorilla's <<<name>>> and <<name>>, special tokens <|name|>, Llama's <s> </s> [INST] [SYS], and
# the chat_tools tags.
_MARKER_RE = re.compile(
    r"<{2,3}[ \t]*/?[ \t]*(?P<gorilla>[A-Za-z_][\w ]{0,40}?)[ \t]*>{2,3}"
    r"|<\|(?P<special>[^|<>\n]{0,64})\|>"
    r"|</?(?P<tag>tools|tool_call|tool_response|tool|s|function_call|functions)>"
    r"|\[/?(?P<inst>INST|SYS)\]",
    re.IGNORECASE,
)
# Anywhere in a line (loaders join lines, JSON keeps a string on one): Vicuna's upper-case role
# words with their colon, and "###" section headings.
_ROLE_ANYWHERE_RE = re.compile(
    r"(?P<lead>)(?:\b(?P<role>USER|ASSISTANT|SYSTEM)[ \t]*:"
    r"|#{1,6}[ \t]*(?P<section>instruction|response|input|system|question|answer)\b[ \t]*:?)",
    re.MULTILINE | re.IGNORECASE,
)
_FENCE_RE = re.compile(r"`{3,}")
# What some tokenizer or template reads as a line break, beside "\n".
_OTHER_BREAKS_RE = re.compile(r"\r\n?|[\u2028\u2029\x0b\x0c\x85]")
_LINE_BREAK_RE = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")


def _defang_marker(m: re.Match[str]) -> str:
    if m.group("gorilla") is not None:
        return f"\u2039{m.group('gorilla').strip()}\u203a"
    if m.group("special") is not None:
        return f"\u2039|{m.group('special')}|\u203a"
    return f"\u2039{m.group('tag') or m.group('inst')}\u203a"


def _defang_role(m: re.Match[str]) -> str:
    return f"{m.group('lead')}[{m.group('section') or m.group('role')}]"


def _defang_anywhere(m: re.Match[str]) -> str:
    role = m.group("role")
    if role is not None and not role.isupper():
        return m.group(0)  # "user:" in running text is prose; only Vicuna's "USER:" is a turn
    return f"[{role or m.group('section')}]"


def inert_text(text: str) -> str:
    """Doc text that cannot open a turn, close its fence or carry a format's markers."""
    text = _OTHER_BREAKS_RE.sub("\n", text)  # every break a "\n", so each line is seen
    text = INVISIBLE.sub("", text)  # nothing hides a marker or a role word (ASSISTANT\u200b:)
    text = _MARKER_RE.sub(_defang_marker, text)
    text = _ROLE_LINE_RE.sub(_defang_role, text)
    text = _ROLE_ANYWHERE_RE.sub(_defang_anywhere, text)
    return _FENCE_RE.sub("'''", text)


def inert_line(text: str) -> str:
    """A one-line field (a name, a key): its line breaks become spaces, then :func:`inert_text`."""
    return inert_text(_LINE_BREAK_RE.sub(" ", text))


def _inert_json(value: Any, depth: int = 0) -> Any:
    if depth > 64:  # stored schemas are compacted far shallower than this
        return None
    if isinstance(value, str):
        return inert_text(value)
    if isinstance(value, list):
        return [_inert_json(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {inert_line(str(k)): _inert_json(v, depth + 1) for k, v in value.items()}
    return value


def inert_schema(schema: FunctionSchema) -> FunctionSchema:
    """``schema`` (a copy) with every string inert and its name and keys on one line. A name the
    model must call back is unchanged unless it carries line breaks or markers."""
    out = cast(FunctionSchema, _inert_json(dict(schema)))
    name = schema.get("name")
    if isinstance(name, str):
        out["name"] = inert_line(name)
    return out
