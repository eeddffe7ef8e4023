from __future__ import annotations

import json

from retriever.types import ApiDoc, RetrievedDoc
from service.postprocess import gorilla_fields, parse_answer, parse_call
from service.prompts import PromptFormat, build_prompt


def _doc(key: str, text: str = "doc text", function: dict[str, object] | None = None) -> RetrievedDoc:
    metadata = {"function": function} if function else {}
    return RetrievedDoc(ApiDoc(key=key, title=key, text=text, index_text=text, metadata=metadata), "c", 1.0)


def test_gorilla_v0_prompt_is_the_trained_format() -> None:
    prompt = build_prompt(PromptFormat.GORILLA_V0, "Create a new session", [_doc("POST /sessions", "REC")])
    assert prompt == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions.\nUSER: Create a new session"
        "\n Use this API documentation for reference: REC\nASSISTANT:"
    )
    bare = build_prompt(PromptFormat.GORILLA_V0, "q", [])
    assert bare.endswith("USER: q\nASSISTANT:")


def test_openfunctions_v2_prompt_embeds_function_schemas() -> None:
    fn = {"name": "create_session", "description": "Create", "parameters": {"type": "object", "properties": {}}}
    prompt = build_prompt(PromptFormat.OPENFUNCTIONS_V2, "make one", [_doc("POST /sessions", function=fn)])
    assert prompt.startswith("You are an AI programming assistant, utilizing the Gorilla LLM model")
    assert f"\n### Instruction: <<function>>{json.dumps([fn])}\n<<question>>make one\n### Response: " in prompt
    assert build_prompt(PromptFormat.OPENFUNCTIONS_V2, "q", []) == "### Instruction: <<question>> q\n### Response: "


def test_gorilla_fields_and_call() -> None:
    text = (
        "<<<domain>>>: Cloud <<<api_call>>>: client.sessions.create(image='python', name=\"x\") "
        "<<<api_provider>>>: Demo <<<explanation>>>: makes a session"
    )
    fields = gorilla_fields(text)
    assert fields["domain"] == "Cloud"
    assert fields["api_provider"] == "Demo"
    answer = parse_answer(PromptFormat.GORILLA_V0, text, [_doc("demo.sessions.create")])
    assert [c.name for c in answer.calls] == ["client.sessions.create"]
    assert answer.calls[0].arguments == {"image": "'python'", "name": "'x'"}


def test_openfunctions_calls_match_retrieved_keys() -> None:
    text = "<<function>>create_session(image='py')<<function>>delete_session(session_id='a')"
    answer = parse_answer(PromptFormat.OPENFUNCTIONS_V2, text, [_doc("pkg.api.create_session")])
    assert [c.name for c in answer.calls] == ["create_session", "delete_session"]
    assert answer.calls[0].matched_key == "pkg.api.create_session"
    assert answer.calls[1].matched_key == ""


def test_rest_call_and_garbage_never_raise() -> None:
    assert parse_call("POST /sessions with body {...}").name == "POST /sessions"
    for garbage in ["", "((((", "__import__('os').system('x')", "lambda: 1", "a" * 10000, "\x00(1)"]:
        call = parse_call(garbage)
        assert call.raw == garbage.strip()
    # Parsed as syntax only: the name is recorded, nothing is evaluated.
    assert parse_call("__import__('os').system('x')").name == "__import__.system"
