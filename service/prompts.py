"""The prompt formats, as pure functions of the instruction and the retrieved docs.

Gorilla's two, exactly as the models were trained on them (see DESIGN.md), and one for chat
models with tools:

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

Corpus text is data, never instructions: it is inserted verbatim where the model expects docs.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass

from apihelper.retriever.doc_kinds import FunctionSchema
from apihelper.retriever.doc_kinds import function_schema as doc_function_schema
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
    tools = json.dumps([function_schema(d) for d in docs], ensure_ascii=False)
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
        user += GORILLA_V0_DOCS_LEAD + "\n".join(d.doc.text for d in docs)
    return f"{GORILLA_V0_SYSTEM}\nUSER: {user}\nASSISTANT:"


def openfunctions_v2_prompt(instruction: str, docs: Sequence[RetrievedDoc]) -> str:
    if not docs:
        return f"### Instruction: <<question>> {instruction}\n### Response: "
    functions = [function_schema(d) for d in docs]
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
