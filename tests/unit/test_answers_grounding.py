"""Arguments grounded in the question, built into the call grammar (issue 21): string values are
spans of the question, what the schema offers, or a placeholder; optional parameters only where
the question mentions them; bounded numbers as the question or the schema names them. Random
walks through the grammar of the demo corpus never write a value from nowhere."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from apihelper.retriever.loaders import load_corpus
from apihelper.retriever.types import ApiDoc, CorpusFormat
from apihelper.service.answers.allowed_calls import allowed_calls
from apihelper.service.answers.check import ApiCatalog, Verdict, check_answer, ungrounded_values
from apihelper.service.answers.grammar import GrammarOptions, build_call_grammar
from apihelper.service.answers.grounding import (
    FORM_DATE,
    FORM_TIME,
    mentions,
    named_values,
    names_value,
    question_dates,
    question_numbers,
    question_spans,
    question_times,
    stated_form,
)
from apihelper.service.prompts import PromptFormat
from tests.unit.grammar_walk import char_compiler, walk

SAMPLE = Path(__file__).resolve().parents[2] / "retriever" / "samples" / "demo_cloud_openapi.yaml"
TERMINATE = "Terminate session sess-42 right away, without waiting for a graceful shutdown"
CREATE = "Create a new session"


@pytest.fixture(scope="module")
def demo_docs() -> list[ApiDoc]:
    _, result = load_corpus(SAMPLE)
    return result.docs


def test_spans_numbers_and_mentions() -> None:
    spans = question_spans('Rename session "my run" to sess-42, please.')
    assert "my run" in spans and "sess-42" in spans and "Rename session" in spans
    assert all(not s.endswith((",", ".")) for s in spans)
    assert question_numbers("use 2 GPUs and 16.5 GiB, not v100") == (2.0, 16.5)
    assert mentions(TERMINATE, "force", "Kill the containers without waiting for a graceful shutdown.")
    assert not mentions(CREATE, "max_lifetime_minutes", "The session is terminated after this many minutes.")
    assert mentions("keep it for 90 minutes", "max_lifetime_minutes")


def _grammar(docs: list[ApiDoc], keys: set[str], question: str) -> str:
    chosen = [d for d in docs if d.key in keys]
    options = GrammarOptions(max_prose_chars=0, max_calls=1, grounded=question_spans(question))
    built = build_call_grammar(
        PromptFormat.CHAT_TOOLS, allowed_calls(PromptFormat.CHAT_TOOLS, chosen, question), options
    )
    return built.ebnf


@pytest.mark.parametrize(
    ("question", "keys"),
    [
        (TERMINATE, {"DELETE /sessions/{session_id}", "GET /sessions/{session_id}"}),
        (CREATE, {"POST /sessions", "POST /sessions/{session_id}/restart"}),
    ],
)
def test_every_grounded_walk_is_a_valid_call(demo_docs: list[ApiDoc], question: str, keys: set[str]) -> None:
    ebnf = _grammar(demo_docs, keys, question)
    compiled = char_compiler().compile_grammar(ebnf)
    corpus = ApiCatalog(demo_docs)
    rng = random.Random(question)
    for _ in range(30):
        answer = walk(compiled, rng)
        checked = check_answer(PromptFormat.CHAT_TOOLS, answer, [], corpus, question=question)
        assert checked.verdict is Verdict.VALID, (answer, checked.reasons)


def test_the_terminate_grammar_can_copy_sess_42_and_cannot_write_brackets(demo_docs: list[ApiDoc]) -> None:
    ebnf = _grammar(demo_docs, {"DELETE /sessions/{session_id}"}, TERMINATE)
    compiled = char_compiler().compile_grammar(ebnf)
    import xgrammar as xgr

    good = (
        '<tool_call>[{"name": "terminateSession", "arguments": {"session_id": "sess-42", "force": true}}]</tool_call>'
    )
    bad = '<tool_call>[{"name": "terminateSession", "arguments": {"session_id": "][", "force": false}}]</tool_call>'
    assert xgr.GrammarMatcher(compiled).accept_string(good)
    assert not xgr.GrammarMatcher(compiled).accept_string(bad)


def test_create_session_offers_no_schema_text_and_required_nested_fields(demo_docs: list[ApiDoc]) -> None:
    (call,) = allowed_calls(PromptFormat.CHAT_TOOLS, [d for d in demo_docs if d.key == "POST /sessions"], CREATE)
    assert [p.name for p in call.params] == ["image", "resources"]  # optional ones not mentioned
    resources = call.params[1]
    assert [(f.name, f.required, f.enum) for f in resources.fields] == [
        ("cpu", True, (1,)),
        ("memory_gb", True, (0.5,)),
    ]
    ebnf = _grammar(demo_docs, {"POST /sessions"}, CREATE)
    assert "Resources reserved" not in ebnf and "pytorch" not in ebnf
    answer = '<tool_call>[{"name": "createSession", "arguments": {"image": "<image>", "resources": {"cpu": 1, "memory_gb": 0.5}}}]</tool_call>'
    import xgrammar as xgr

    assert xgr.GrammarMatcher(char_compiler().compile_grammar(ebnf)).accept_string(answer)
    checked = check_answer(PromptFormat.CHAT_TOOLS, answer, [], ApiCatalog(demo_docs), question=CREATE)
    assert checked.verdict is Verdict.VALID, checked.reasons
    assert json.loads(checked.calls[0].raw)["arguments"]["resources"] == {"cpu": 1, "memory_gb": 0.5}


EVENTS: dict[str, object] = {
    "name": "find_events",
    "description": "Find cultural events in a city.",
    "parameters": {
        "type": "dict",
        "required": ["event_type", "city"],
        "properties": {
            "event_type": {"type": "string", "enum": ["Music", "Theater"], "description": "The kind of event."},
            "city": {"type": "string", "description": "The city of the event."},
            "show_type": {
                "type": "string",
                "enum": ["regular", "imax", "dontcare"],
                "default": "dontcare",
                "description": "The format of the showing.",
            },
        },
    },
}


def _function_docs(tmp_path: Path, *functions: dict[str, object]) -> list[ApiDoc]:
    path = tmp_path / "functions.jsonl"
    path.write_text("".join(json.dumps(f) + "\n" for f in functions), encoding="utf-8")
    _, result = load_corpus(path, CorpusFormat.FUNCTIONS)
    return result.docs


def test_named_enum_values_ask_for_a_parameter_and_narrow_its_choice(tmp_path: Path) -> None:
    assert named_values("Find a Theater event at IMAX", ["Music", "Theater", "imax", "3d"]) == ("Theater", "imax")
    assert named_values("some music, theatrically", ["Music", "Theater"]) == ("Music",)  # whole words only
    assert not names_value("any imax or regular", ["regular"], default="regular")  # the default asks nothing
    docs = _function_docs(tmp_path, EVENTS)
    (call,) = allowed_calls(PromptFormat.CHAT_TOOLS, docs, "Is there a Theater event showing at imax in Oslo?")
    by_name = {p.name: p for p in call.params}
    assert by_name["event_type"].enum == ("Theater",)
    assert by_name["show_type"].enum == ("imax",) and not by_name["show_type"].required
    (plain,) = allowed_calls(PromptFormat.CHAT_TOOLS, docs, "Anything on in Oslo?")
    assert [p.name for p in plain.params] == ["event_type", "city"]  # show_type neither mentioned nor named
    assert plain.params[0].enum == ("Music", "Theater")  # nothing named: every value stays


def test_dates_written_with_their_year_are_offered_in_iso_form() -> None:
    question = "Book it for March 14th, 2023, back on 2nd of apr 2023 (or 2023.4.15); not 2023-02-30 nor 10.0.0.1"
    assert question_dates(question) == ("2023-04-15", "2023-03-14", "2023-04-02")
    assert question_spans(question)[:3] == ("2023-04-15", "2023-03-14", "2023-04-02")
    assert question_dates("sometime in March") == ()
    values = [("date", "2023-03-14"), ("until", "2023-03-15")]
    assert ungrounded_values(values, frozenset(), question) == [("until", "2023-03-15")]


def test_times_in_24_hour_form_and_a_stated_form_narrows_the_spans(tmp_path: Path) -> None:
    assert question_times("at 11PM, 3:30 pm, 9:00 or 10:00 AM; not 2023.10.1 nor 13:61") == (
        "23:00",
        "15:30",
        "09:00",
        "10:00",
    )
    assert stated_form(None, "The date, in the format 'YYYY-MM-DD'.") == FORM_DATE
    assert stated_form(None, "When, as 'YYYY-MM-DD HH:MM:SS'.") == ""  # a date-time is neither
    assert stated_form("time", "") == FORM_TIME
    pickup: dict[str, object] = {
        "name": "rent_car",
        "description": "Rent a car.",
        "parameters": {
            "type": "dict",
            "required": ["pickup_time"],
            "properties": {"pickup_time": {"type": "string", "description": "When, as 'HH:MM' (24-hour)."}},
        },
    }
    question = "Pick it up on 2023.10.1 at 10:00 AM"
    (call,) = allowed_calls(PromptFormat.CHAT_TOOLS, _function_docs(tmp_path, pickup), question)
    assert call.params[0].form == FORM_TIME
    options = GrammarOptions(max_prose_chars=0, max_calls=1, grounded=question_spans(question))
    ebnf = build_call_grammar(PromptFormat.CHAT_TOOLS, [call], options).ebnf
    import xgrammar as xgr

    def accepts(value: str) -> bool:
        answer = f'<tool_call>[{{"name": "rent_car", "arguments": {{"pickup_time": "{value}"}}}}]</tool_call>'
        return bool(xgr.GrammarMatcher(char_compiler().compile_grammar(ebnf)).accept_string(answer))

    assert accepts("10:00") and accepts("<pickup_time>")
    assert not accepts("2023-10-01") and not accepts("Pick")
    assert ungrounded_values([("pickup_time", "10:00"), ("t", "11:00")], frozenset(), question) == [("t", "11:00")]
