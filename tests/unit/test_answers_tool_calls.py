"""chat_tools: the prompt layout, ChatML as SmolLM2's template writes it, the ``<tool_call>``
parser on the layouts models write and on hostile text, and the calls the verdict reads."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apihelper.retriever.types import ApiDoc, RetrievedDoc
from apihelper.service.answers.parse import ArgWhere, CallStyle, parse_answer
from apihelper.service.answers.tool_calls import MAX_CALLS, Layout, ToolCall, parse_tool_calls
from apihelper.service.prompts import (
    CHAT_TOOLS_SYSTEM,
    ChatMessage,
    ChatPrompt,
    PromptFormat,
    build_prompt,
    render_chatml,
)
from tests.support import budget

TOOL: dict[str, object] = {
    "name": "folders_rename",
    "description": "POST /folders/{name}/rename",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
}
OTHER: dict[str, object] = {
    "name": "folders_list",
    "description": "GET /folders",
    "parameters": {"type": "object", "properties": {}},
}
# SmolLM2-135M-Instruct's chat template, as its GGUF carries it (tokenizer.chat_template).
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _retrieved(*schemas: dict[str, object]) -> list[RetrievedDoc]:
    return [
        RetrievedDoc(ApiDoc(str(s["name"]), "t", "text", "t", {"kind": "text", "function": s}), "c", 1.0)
        for s in schemas
    ]


# ------------------------------------------------------------------------------ prompt layout


def test_the_tools_are_json_in_the_user_turn_and_the_query_comes_last() -> None:
    prompt = build_prompt(PromptFormat.CHAT_TOOLS, "rename folder a", _retrieved(TOOL, OTHER))
    assert isinstance(prompt, ChatPrompt)
    system, user = prompt.messages
    assert system == ChatMessage("system", CHAT_TOOLS_SYSTEM) and "<tool_call>" in system.content
    _, tail = user.content.split("<tools>", 1)
    tools_text, query_part = tail.split("</tools>", 1)
    assert json.loads(tools_text) == [TOOL, OTHER]
    assert query_part.endswith("rename folder a")
    assert prompt.tools == ()
    bare = build_prompt(PromptFormat.CHAT_TOOLS, "q", [])
    assert isinstance(bare, ChatPrompt) and bare.messages[-1] == ChatMessage("user", "q")


def test_render_chatml_is_what_smollm2s_template_writes() -> None:
    jinja2 = pytest.importorskip("jinja2")
    prompt = build_prompt(PromptFormat.CHAT_TOOLS, "rename folder a", _retrieved(TOOL))
    assert isinstance(prompt, ChatPrompt)
    expected = jinja2.Template(SMOLLM2_TEMPLATE).render(messages=prompt.message_dicts(), add_generation_prompt=True)
    assert render_chatml(prompt) == expected


def test_tool_calls_become_keyword_calls_for_the_verdict() -> None:
    answer = parse_answer(
        PromptFormat.CHAT_TOOLS, '<tool_call>[{"name": "folders_rename", "arguments": {"name": "a"}}]</tool_call>'
    )
    (call,) = answer.calls
    assert (call.name, call.style) == ("folders_rename", CallStyle.PYTHON)
    assert [(a.name, a.where, a.literal, a.value) for a in call.args] == [("name", ArgWhere.KEYWORD, True, "a")]
    record = parse_answer(
        PromptFormat.CHAT_TOOLS,
        '<tool_call>[{"name": "torch.hub.load(\'pytorch/vision\', \'resnet50\')", "arguments": {}}]</tool_call>',
    )
    assert record.calls[0].name == "torch.hub.load"  # an APIBench record's call is its name
    nothing = parse_answer(PromptFormat.CHAT_TOOLS, "I cannot help with that.")
    assert nothing.calls[0].problem == "no tool call in the answer"


# ------------------------------------------------------------------------------ parser


def test_smollm2_list_in_one_block() -> None:
    text = '<tool_call>[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]</tool_call>'
    parsed = parse_tool_calls(text)
    assert parsed.layout == Layout.TAGGED and not parsed.problem and not parsed.truncated
    assert parsed.calls == (ToolCall("a", {"x": 1}), ToolCall("b", {}))


def test_hermes_one_object_per_block_with_prose_around() -> None:
    text = 'Sure!\n<tool_call>\n{"name": "a", "arguments": {"x": "y"}}\n</tool_call>\n<tool_call>{"name": "b"}</tool_call> done'
    assert parse_tool_calls(text).calls == (ToolCall("a", {"x": "y"}), ToolCall("b", {}))


def test_xlam_bare_list_and_fenced_object() -> None:
    assert parse_tool_calls('[{"name": "a", "arguments": {"k": [1, 2]}}]').calls == (ToolCall("a", {"k": [1, 2]}),)
    fenced = 'Here:\n```json\n{"name": "a", "arguments": {}}\n```'
    parsed = parse_tool_calls(fenced)
    assert parsed.layout == Layout.BARE and parsed.names == ("a",)


def test_openai_nesting_string_arguments_and_parameters_alias() -> None:
    text = '<tool_call>[{"type": "function", "function": {"name": "a", "arguments": "{\\"x\\": 2}"}}, {"name": "b", "parameters": {"y": 3}}]</tool_call>'
    assert parse_tool_calls(text).calls == (ToolCall("a", {"x": 2}), ToolCall("b", {"y": 3}))


def test_python_style_quotes_are_read_as_literals() -> None:
    text = "<tool_call>[{'name': 'a', 'arguments': {'flag': True, 'n': None}}]</tool_call>"
    assert parse_tool_calls(text).calls == (ToolCall("a", {"flag": True, "n": None}),)


def test_truncated_block_is_flagged_and_keeps_what_parses() -> None:
    text = '<tool_call>[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "argu'
    parsed = parse_tool_calls(text)
    assert parsed.truncated
    # The list never closes; its first complete call object is still recovered.
    assert parsed.calls == (ToolCall("a", {"x": 1}),)


def test_empty_list_means_no_call_without_a_problem() -> None:
    parsed = parse_tool_calls("<tool_call>[]</tool_call>")
    assert parsed.calls == () and parsed.layout == Layout.TAGGED and parsed.problem == ""


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty answer"),
        ("I would call the rename endpoint.", "no tool call in the answer"),
        ("<tool_call>not json</tool_call>", "no JSON call found"),
        ('<tool_call>[{"arguments": {}}]</tool_call>', "a call without a name"),
        ('<tool_call>[{"name": "a", "arguments": [1]}]</tool_call>', "arguments of 'a' are not an object"),
        ('<tool_call>["a"]</tool_call>', "a call that is not an object"),
    ],
)
def test_problems_are_reported_not_raised(text: str, problem: str) -> None:
    assert problem in parse_tool_calls(text).problem


def test_calls_are_capped() -> None:
    text = "<tool_call>" + json.dumps([{"name": f"f{i}"} for i in range(100)]) + "</tool_call>"
    assert len(parse_tool_calls(text).calls) == MAX_CALLS


@pytest.mark.parametrize(
    "hostile",
    [
        "[" * 50_000,
        "<tool_call>" + "[" * 50_000,
        "<tool_call>" * 10_000,
        "{" * 3000 + "}" * 3000,
        "<tool_call>[" + "'a', " * 20_000 + "]</tool_call>",
        '<tool_call>[{"name": "' + "x" * 100_000 + '"}]</tool_call>',
    ],
)
def test_hostile_text_is_cheap_and_never_raises(hostile: str) -> None:
    started = time.perf_counter()
    parsed = parse_tool_calls(hostile)
    assert time.perf_counter() - started < budget(1.0)
    assert len(parsed.calls) <= MAX_CALLS


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>tool_call/[]{}\":,' \\nabc123")), max_size=400))
def test_never_raises_on_tag_and_bracket_soup(text: str) -> None:
    parsed = parse_tool_calls(text)
    assert all(isinstance(c.name, str) and c.name for c in parsed.calls)
