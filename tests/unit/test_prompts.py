from __future__ import annotations

import json

from apihelper.retriever.types import ApiDoc, RetrievedDoc
from apihelper.service.prompts import PromptFormat, build_prompt, gorilla_v0_prompt, openfunctions_v2_prompt


def _doc(key: str, text: str = "doc text", function: dict[str, object] | None = None) -> RetrievedDoc:
    metadata = {"function": function} if function else {}
    return RetrievedDoc(ApiDoc(key=key, title=key, text=text, index_text=text, metadata=metadata), "c", 1.0)


def test_gorilla_v0_prompt_is_the_trained_format() -> None:
    prompt = build_prompt(PromptFormat.GORILLA_V0, "Create a new session", [_doc("POST /sessions", "REC")])
    assert prompt == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions.\nUSER: Create a new session"
        "\n Use this API documentation for reference: ```\nREC\n```\nASSISTANT:"
    )
    bare = gorilla_v0_prompt("q", [])
    assert bare.endswith("USER: q\nASSISTANT:")


def test_openfunctions_v2_prompt_embeds_function_schemas() -> None:
    fn: dict[str, object] = {
        "name": "create_session",
        "description": "Create",
        "parameters": {"type": "object", "properties": {}},
    }
    prompt = openfunctions_v2_prompt("make one", [_doc("POST /sessions", function=fn)])
    assert prompt.startswith("You are an AI programming assistant, utilizing the Gorilla LLM model")
    assert f"\n### Instruction: <<function>>{json.dumps([fn])}\n<<question>>make one\n### Response: " in prompt
    assert build_prompt(PromptFormat.OPENFUNCTIONS_V2, "q", []) == "### Instruction: <<question>> q\n### Response: "


# Answer parsing tests live in test_postprocess_parse.py (and validation in test_validation.py).
