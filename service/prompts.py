"""Gorilla's prompt formats, as pure functions of the instruction and the retrieved docs.

Two formats, exactly as the models were trained on them (see DESIGN.md):

- ``gorilla_v0`` (gorilla-7b-*-v0): a Vicuna-style chat turn; the retrieval-aware variant appends
  "\\n Use this API documentation for reference: " and the retrieved record to the instruction.
- ``openfunctions_v2``: a system line, then ``### Instruction: <<function>>[json]\\n<<question>>q``
  and ``### Response: ``; the retrieved docs become the JSON ``functions`` list.

Corpus text is data, never instructions: it is inserted verbatim where the model expects docs.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence

from apihelper.retriever.doc_kinds import FunctionSchema
from apihelper.retriever.doc_kinds import function_schema as doc_function_schema
from apihelper.retriever.types import RetrievedDoc


class PromptFormat(str, enum.Enum):
    GORILLA_V0 = "gorilla_v0"
    OPENFUNCTIONS_V2 = "openfunctions_v2"


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


def build_prompt(fmt: PromptFormat, instruction: str, docs: Sequence[RetrievedDoc]) -> str:
    """The full prompt string for ``fmt``; ``docs`` best first (may be empty)."""
    if fmt is PromptFormat.GORILLA_V0:
        return gorilla_v0_prompt(instruction, docs)
    return openfunctions_v2_prompt(instruction, docs)


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
