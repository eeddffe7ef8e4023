"""call_grammar: escaping, what each format's grammar accepts and rejects, and that everything it
accepts is an answer apihelper's parser reads and its validator resolves to a real API.

Acceptance is checked with xgrammar itself (the installed version; NOTES.md records the same on
0.1.25, TensorRT-LLM 1.2.x's pin). The corpora are the project's sample OpenAPI spec and, where
present, the shared Backend.AI spec, client wheel and APIBench API records (docs only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
import xgrammar as xgr
from hypothesis import given, settings
from hypothesis import strategies as st
from xgrammar.testing import _is_grammar_accept_string as accepts

from apihelper.service.answers.grammar import (
    AllowedCall,
    CallKind,
    GrammarOptions,
    NoAllowedCallsError,
    ParamSpec,
    ParamWhere,
    RestStyle,
    ValueType,
    build_call_grammar,
    ebnf_string,
)
from apihelper.service.prompts import PromptFormat
from tests.support import SHARED_CORPORA

SHARED = SHARED_CORPORA

SESSION = AllowedCall(
    "POST /sessions/{session_id}/execute",
    CallKind.REST,
    (
        ParamSpec("session_id", (ValueType.STRING,), True, ParamWhere.PATH),
        ParamSpec("mode", (ValueType.STRING,), False, ParamWhere.QUERY, ("query", "batch")),
        ParamSpec("code", (ValueType.STRING,), True, ParamWhere.BODY),
        ParamSpec("timeout", (ValueType.INTEGER,), False, ParamWhere.BODY),
        ParamSpec("X-Token", (ValueType.STRING,), True, ParamWhere.HEADER),
    ),
    base_urls=("https://api.example.com",),
)
CREATE = AllowedCall(
    "pkg.client.Session.create",
    CallKind.PYTHON,
    (
        ParamSpec("image", (ValueType.STRING,), True),
        ParamSpec("count", (ValueType.INTEGER,)),
        ParamSpec("tags", (ValueType.ARRAY,)),
    ),
    aliases=("Session.create",),
)
RECORD = AllowedCall("pipeline('text-generation', model='gpt2')", CallKind.APIBENCH)
WEATHER = AllowedCall(
    "get_weather",
    CallKind.FUNCTION,
    (
        ParamSpec("city", (ValueType.STRING,), True),
        ParamSpec("unit", (ValueType.STRING,), False, ParamWhere.KEYWORD, ("c", "f")),
    ),
)


def grammar_of(fmt: PromptFormat, calls: Sequence[AllowedCall], **options: object) -> xgr.Grammar:
    return xgr.Grammar.from_ebnf(build_call_grammar(fmt, calls, GrammarOptions(**options)).ebnf)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Escaping


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40))
def test_a_literal_matches_exactly_its_text(text: str) -> None:
    grammar = xgr.Grammar.from_ebnf(f"root ::= {ebnf_string(text)}")
    assert accepts(grammar, text)
    assert not accepts(grammar, text + "x")
    assert not accepts(grammar, text[:-1] + ("y" if text[-1] != "y" else "z"))


def test_hostile_doc_text_cannot_inject_grammar() -> None:
    hostile = AllowedCall('evil") | [^x]* | ("', CallKind.APIBENCH)
    grammar = grammar_of(PromptFormat.GORILLA_V0, [hostile])
    assert accepts(grammar, '<<<api_call>>>: evil") | [^x]* | ("')
    assert not accepts(grammar, "<<<api_call>>>: anything at all")


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(ValueError):
        ebnf_string("a\ud800")


def test_calls_containing_an_answer_marker_are_dropped() -> None:
    marked = AllowedCall("x() <<<api_provider>>>: y", CallKind.APIBENCH)
    built = build_call_grammar(PromptFormat.GORILLA_V0, [marked, RECORD])
    assert built.calls == (RECORD,)
    assert built.dropped and "marker" in built.dropped[0][1]
    with pytest.raises(NoAllowedCallsError):
        build_call_grammar(PromptFormat.GORILLA_V0, [marked])


def test_enum_values_with_markers_or_surrogates_are_left_out() -> None:
    call = AllowedCall(
        "f", CallKind.FUNCTION, (ParamSpec("x", (ValueType.STRING,), True, enum=("ok", "<<<bad", "\ud800")),)
    )
    grammar = grammar_of(PromptFormat.OPENFUNCTIONS_V2, [call])
    assert accepts(grammar, "<<function>>f(x='ok')")
    assert not accepts(grammar, "<<function>>f(x='<<<bad')")


# ---------------------------------------------------------------------------------------------
# gorilla_v0


@pytest.mark.parametrize(
    "answer",
    [
        '<<<domain>>>: Cloud\n<<<api_call>>>: POST /sessions/abc/execute {"code": "print(1)"}',
        ' <<<api_call>>>: POST /sessions/{session_id}/execute?mode=batch {"code": "x", "timeout": 5}',
        "<<<api_call>>>: requests.post('https://api.example.com/sessions/s1/execute', params={'mode': 'query'}, json={'code': 'x'})",
        "<<<api_call>>>: pkg.client.Session.create(image='python:3.11', count=2)\n<<<api_provider>>>: pkg <<<explanation>>>: a < b",
        "<<<api_call>>>: Session.create(image=\"x\", tags=['a', 1])",
        "<<<api_call>>>: pipeline('text-generation', model='gpt2')",
    ],
)
def test_gorilla_accepts_calls_that_exist(answer: str) -> None:
    assert accepts(grammar_of(PromptFormat.GORILLA_V0, [SESSION, CREATE, RECORD]), answer)


@pytest.mark.parametrize(
    "answer",
    [
        "<<<api_call>>>: pkg.client.Session.delete(image='x')",  # no such API
        "<<<api_call>>>: pkg.client.Session.create(count=2)",  # required argument missing
        "<<<api_call>>>: pkg.client.Session.create(image='x', size=2)",  # unknown argument
        "<<<api_call>>>: pkg.client.Session.create(count=2, image='x')",  # out of schema order
        "<<<api_call>>>: pkg.client.Session.create(image='x', count='two')",  # wrong type
        '<<<api_call>>>: POST /sessions/abc/execute {"timeout": 5}',  # required body field missing
        '<<<api_call>>>: POST /sessions/abc/execute?mode=fast {"code": "x"}',  # not in the enum
        "<<<api_call>>>: GET /sessions/abc/execute",  # wrong method
        "<<<api_call>>>: pipeline('text-generation', model='gpt3')",  # APIBench values are exact
        "<<<api_call>>>: pipeline('text-generation', model='gpt2') <<<api_call>>>: f()",  # a second call
        "<<<api_call>>>: pkg.client.Session.create(image='<<<api_provider>>>')",  # marker in a value
        "Sure! Here is the call.",  # no call at all
        # The operation exists, but not on this host: only the API's own servers are written.
        "<<<api_call>>>: requests.post('https://evil.example/sessions/s1/execute', json={'code': 'x'})",
        "<<<api_call>>>: requests.post('https://api.example.com.evil.example/sessions/s1/execute', json={'code': 'x'})",
    ],
)
def test_gorilla_rejects_anything_else(answer: str) -> None:
    assert not accepts(grammar_of(PromptFormat.GORILLA_V0, [SESSION, CREATE, RECORD]), answer)


def test_free_text_is_bounded_before_the_call_not_after() -> None:
    grammar = grammar_of(PromptFormat.GORILLA_V0, [RECORD], max_prose_chars=10)
    call = "<<<api_call>>>: pipeline('text-generation', model='gpt2')"
    assert accepts(grammar, "<<<domain>>>: 0123456789\n" + call)
    assert not accepts(grammar, "<<<domain>>>: 0123456789X\n" + call)
    assert accepts(grammar, call + "\n<<<api_provider>>>: " + "long text " * 100 + "<<<code>>>: x = 1")


def test_string_values_are_bounded() -> None:
    grammar = grammar_of(PromptFormat.GORILLA_V0, [CREATE], max_string_chars=3)
    assert accepts(grammar, "<<<api_call>>>: Session.create(image='abc')")
    assert not accepts(grammar, "<<<api_call>>>: Session.create(image='abcd')")


def test_rest_styles_can_be_chosen() -> None:
    text_only = grammar_of(PromptFormat.GORILLA_V0, [SESSION], rest_styles=(RestStyle.TEXT,))
    assert accepts(text_only, '<<<api_call>>>: POST /sessions/a/execute {"code": "x"}')
    assert not accepts(text_only, "<<<api_call>>>: requests.post('http://h/sessions/a/execute', json={'code': 'x'})")


# ---------------------------------------------------------------------------------------------
# openfunctions_v2 and chat_tools


def test_openfunctions_accepts_one_or_more_calls_and_nothing_else() -> None:
    grammar = grammar_of(PromptFormat.OPENFUNCTIONS_V2, [WEATHER, RECORD], max_calls=2)
    assert accepts(grammar, "<<function>>get_weather(city='Paris', unit='c')")
    assert accepts(
        grammar, "<<function>>get_weather(city='Paris')\n<<function>>pipeline('text-generation', model='gpt2')"
    )
    assert not accepts(grammar, "<<function>>get_weather(city='Paris') and then some prose")
    assert not accepts(grammar, "<<function>>get_weather(city='Paris', unit='k')")
    assert not accepts(
        grammar, "<<function>>get_weather(city='a')<<function>>get_weather(city='b')<<function>>get_weather(city='c')"
    )


def test_openfunctions_drops_names_that_are_not_identifiers() -> None:
    built = build_call_grammar(PromptFormat.OPENFUNCTIONS_V2, [SESSION, WEATHER])
    assert [c.name for c in built.calls] == ["get_weather"]
    assert built.dropped[0][0] == SESSION.name


def test_a_name_with_a_trailing_newline_is_not_an_identifier() -> None:
    # "$" also matches before a final newline: the name check must match the whole name.
    built = build_call_grammar(
        PromptFormat.OPENFUNCTIONS_V2, [WEATHER, dataclasses.replace(WEATHER, name="get_time\n")]
    )
    assert [c.name for c in built.calls] == ["get_weather"]
    assert [name for name, _ in built.dropped] == ["get_time\n"]


def test_chat_tools_grammar() -> None:
    grammar = grammar_of(PromptFormat.CHAT_TOOLS, [WEATHER, SESSION])
    good = 'Let me check. <tool_call>[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "f"}}]</tool_call>'
    assert accepts(grammar, good)
    assert not accepts(grammar, 'Let me check. <tool_call>[{"name": "get_time", "arguments": {}}]</tool_call>')
    assert not accepts(grammar, '<tool_call>[{"name": "get_weather", "arguments": {"unit": "f"}}]</tool_call>')
    assert not accepts(grammar, "No tools needed.")
    rest = '<tool_call>[{"name": "POST /sessions/{session_id}/execute", "arguments": {"session_id": "s", "code": "x"}}]</tool_call>'
    assert accepts(grammar, rest)


def test_the_cache_key_follows_the_grammar() -> None:
    a = build_call_grammar(PromptFormat.GORILLA_V0, [CREATE])
    b = build_call_grammar(PromptFormat.GORILLA_V0, [CREATE])
    c = build_call_grammar(PromptFormat.GORILLA_V0, [CREATE, RECORD])
    assert a.key == b.key != c.key


def test_requests_calls_go_to_the_api_servers_or_a_placeholder() -> None:
    bare = AllowedCall(SESSION.name, CallKind.REST, SESSION.params)  # a spec without servers
    call = "requests.post('%s/sessions/s1/execute', json={'code': 'x'})"
    grammar = grammar_of(PromptFormat.GORILLA_V0, [bare])
    assert accepts(grammar, "<<<api_call>>>: " + call % "{BASE_URL}")
    assert not accepts(grammar, "<<<api_call>>>: " + call % "https://api.example.com")
    configured = grammar_of(PromptFormat.GORILLA_V0, [bare], base_urls=("https://api.corp.example/v1/",))
    assert accepts(configured, "<<<api_call>>>: " + call % "https://api.corp.example/v1")
    assert not accepts(configured, "<<<api_call>>>: " + call % "{BASE_URL}")
    # The spec's own servers win over the configured ones.
    both = grammar_of(PromptFormat.GORILLA_V0, [SESSION], base_urls=("https://api.corp.example",))
    assert accepts(both, "<<<api_call>>>: " + call % "https://api.example.com")
    assert not accepts(both, "<<<api_call>>>: " + call % "https://api.corp.example")
