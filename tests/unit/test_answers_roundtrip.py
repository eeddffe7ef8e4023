"""Grammar and parser are written from one description of each answer format
(``apihelper.service.answers.formats``): every string a call's grammar accepts parses back to the
call it encodes, for every format, every call kind and every HTTP method.

Hypothesis draws the call (name, path template, parameters and where they go); random walks
through its compiled grammar (``tests.unit.grammar_walk``, no model) draw the answers."""

from __future__ import annotations

import keyword
import random
import re
import string
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apihelper.retriever.doc_kinds import HTTP_METHODS
from apihelper.service.answers.formats import REST_METHODS
from apihelper.service.answers.grammar import (
    AllowedCall,
    CallKind,
    GrammarOptions,
    ParamSpec,
    ParamWhere,
    RestStyle,
    ValueType,
    build_call_grammar,
)
from apihelper.service.answers.parse import ArgWhere, CallStyle, ParsedCall, parse_answer
from apihelper.service.prompts import PromptFormat
from tests.unit.grammar_walk import char_compiler, walk

WALKS = 6  # answers walked per drawn call
OPTIONS = GrammarOptions(max_string_chars=8, max_prose_chars=12, max_items=3, max_calls=2)
PROFILE = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

identifier = st.text(string.ascii_lowercase + "_", min_size=1, max_size=8).filter(
    lambda s: s.isidentifier() and not keyword.iskeyword(s)
)
keyword_names = st.sampled_from(sorted(keyword.kwlist))
types = st.lists(st.sampled_from(list(ValueType)), min_size=1, max_size=2, unique=True).map(tuple)
# A URL (path segment, query value) holds scalars only: a required list has no URL form.
URL_TYPES = [ValueType.STRING, ValueType.INTEGER, ValueType.NUMBER, ValueType.BOOLEAN]
url_types = st.lists(st.sampled_from(URL_TYPES), min_size=1, max_size=2, unique=True).map(tuple)
enum_values = st.lists(st.sampled_from(["a", "b c", 'q"x', 1, 2.5, True]), max_size=3, unique=True).map(tuple)


def _params(
    where: st.SearchStrategy[ParamWhere],
    max_size: int = 4,
    value_types: st.SearchStrategy[tuple[ValueType, ...]] = types,
) -> st.SearchStrategy[tuple[ParamSpec, ...]]:
    spec = st.builds(
        ParamSpec, name=identifier, types=value_types, required=st.booleans(), where=where, enum=enum_values
    )
    return st.lists(spec, max_size=max_size, unique_by=lambda p: p.name).map(tuple)


dotted_name = st.lists(identifier, min_size=1, max_size=3).map(".".join)
python_calls = st.builds(
    AllowedCall,
    name=dotted_name,
    kind=st.just(CallKind.PYTHON),
    params=_params(st.just(ParamWhere.KEYWORD)),
)
function_calls = st.builds(
    AllowedCall, name=identifier, kind=st.just(CallKind.FUNCTION), params=_params(st.just(ParamWhere.KEYWORD))
)
apibench_calls = st.builds(
    lambda fn, repo, model: AllowedCall(f"{fn}('{repo}', {model!r})", CallKind.APIBENCH),
    dotted_name,
    st.text(string.ascii_letters + "/-", min_size=1, max_size=12),
    identifier,
)
segment = st.text(string.ascii_lowercase + string.digits + "-_.", min_size=1, max_size=6).filter(
    lambda s: s not in (".", "..")
)


@st.composite
def rest_calls(draw: st.DrawFn, method: str) -> AllowedCall:
    """``METHOD /a/{p}/b`` with path, query and body parameters, on a server or none."""
    path_params: list[ParamSpec] = []
    segments: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(identifier)
        if draw(st.booleans()) and name not in {p.name for p in path_params}:
            path_params.append(ParamSpec(name, draw(url_types), True, ParamWhere.PATH))
            segments.append("{" + name + "}")
        else:
            segments.append(draw(segment))
    taken = {p.name for p in path_params}
    query = draw(_params(st.just(ParamWhere.QUERY), 3, url_types))
    body = draw(_params(st.just(ParamWhere.BODY), 3))
    others = tuple(p for p in (*query, *body) if p.name not in taken)
    others = tuple({p.name: p for p in others}.values())
    servers = draw(st.sampled_from([(), ("https://api.example.com",), ("http://h.example:8080/v1",)]))
    return AllowedCall(f"{method} /" + "/".join(segments), CallKind.REST, (*path_params, *others), (), servers)


def _walks(fmt: PromptFormat, call: AllowedCall, rng: random.Random, options: GrammarOptions = OPTIONS) -> list[str]:
    built = build_call_grammar(fmt, [call], options)
    assert built.calls == (call,) and not built.dropped, built.dropped
    compiled = char_compiler().compile_grammar(built.ebnf)
    return [walk(compiled, rng) for _ in range(WALKS)]


def _check_keyword_call(parsed: ParsedCall, call: AllowedCall, answer: str) -> None:
    """A Python-syntax call: the name, every required argument, no argument the call lacks, and
    every value a literal (the grammar writes literals only)."""
    assert parsed.style is CallStyle.PYTHON and not parsed.problem, (answer, parsed.problem)
    assert parsed.name in (call.name, *call.aliases), (answer, parsed.name)
    names = {p.name for p in call.params}
    written = [a for a in parsed.args if a.where is ArgWhere.KEYWORD]
    assert {a.name for a in written} <= names, answer
    assert {p.name for p in call.params if p.required} <= {a.name for a in written}, answer
    assert all(a.literal for a in written), answer


def _template_re(template: str, base_urls: tuple[str, ...]) -> re.Pattern[str]:
    """A path written for ``template``: each ``{param}`` a concrete segment or the placeholder,
    after the base path of one of the API's servers (the verdict drops it again)."""
    bases = "|".join(re.escape(urlsplit(u).path.rstrip("/")) for u in base_urls)
    parts = re.split(r"(\{[^{}/]+\})", template)
    body = "".join("[^/?]+" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"(?:{bases})?{body}$")


def _check_rest_call(parsed: ParsedCall, call: AllowedCall, answer: str) -> None:
    method, _, template = call.name.partition(" ")
    assert parsed.style is CallStyle.REST and not parsed.problem, (answer, parsed.problem)
    assert parsed.method == method, (answer, parsed.method)
    assert _template_re(template, call.base_urls).match(parsed.path), (answer, parsed.path, template)
    for where, located in ((ArgWhere.QUERY, ParamWhere.QUERY), (ArgWhere.BODY, ParamWhere.BODY)):
        allowed = {p.name for p in call.params if p.where is located}
        required = {p.name for p in call.params if p.where is located and p.required}
        written = {a.name for a in parsed.args if a.where is where}
        assert written <= allowed and required <= written, (answer, where, written)


@pytest.mark.parametrize("style", list(RestStyle))
@pytest.mark.parametrize("method", HTTP_METHODS)
@PROFILE
@given(data=st.data(), rng=st.randoms(use_true_random=False))
def test_every_rest_answer_parses_to_its_call(
    method: str, style: RestStyle, data: st.DataObject, rng: random.Random
) -> None:
    call = data.draw(rest_calls(method))
    options = GrammarOptions(**{**OPTIONS.__dict__, "rest_styles": (style,)})
    for answer in _walks(PromptFormat.GORILLA_V0, call, rng, options):
        parsed = parse_answer(PromptFormat.GORILLA_V0, answer)
        assert len(parsed.calls) == 1, answer
        _check_rest_call(parsed.calls[0], call, answer)


@pytest.mark.parametrize("fmt", [PromptFormat.GORILLA_V0, PromptFormat.OPENFUNCTIONS_V2])
@PROFILE
@given(data=st.data(), rng=st.randoms(use_true_random=False))
def test_every_python_answer_parses_to_its_call(fmt: PromptFormat, data: st.DataObject, rng: random.Random) -> None:
    call = data.draw(python_calls if fmt is PromptFormat.GORILLA_V0 else function_calls)
    for answer in _walks(fmt, call, rng):
        calls = parse_answer(fmt, answer).calls
        assert calls, answer
        for parsed in calls:  # openfunctions_v2 answers may repeat the call
            _check_keyword_call(parsed, call, answer)


@pytest.mark.parametrize("fmt", [PromptFormat.GORILLA_V0, PromptFormat.OPENFUNCTIONS_V2])
@PROFILE
@given(data=st.data(), rng=st.randoms(use_true_random=False))
def test_every_apibench_answer_parses_to_its_record(fmt: PromptFormat, data: st.DataObject, rng: random.Random) -> None:
    call = data.draw(apibench_calls)
    expected = parse_answer(fmt, call.name if fmt is PromptFormat.OPENFUNCTIONS_V2 else f"<<<api_call>>>: {call.name}")
    for answer in _walks(fmt, call, rng):
        calls = parse_answer(fmt, answer).calls
        assert calls and all(c.name == expected.calls[0].name and not c.problem for c in calls), answer
        assert all(c.arguments == expected.calls[0].arguments for c in calls), answer


@PROFILE
@given(call=function_calls, rng=st.randoms(use_true_random=False))
def test_every_tool_call_answer_parses_to_its_call(call: AllowedCall, rng: random.Random) -> None:
    for answer in _walks(PromptFormat.CHAT_TOOLS, call, rng):
        parsed = parse_answer(PromptFormat.CHAT_TOOLS, answer)
        assert parsed.calls, answer
        for c in parsed.calls:
            assert c.name == call.name and not c.problem, (answer, c.problem)
            written = {a.name for a in c.args}
            assert written <= {p.name for p in call.params}, answer
            assert {p.name for p in call.params if p.required} <= written, answer


def test_the_parser_reads_every_method_the_grammar_writes() -> None:
    """The description's methods are every method a spec can name (TRACE included)."""
    assert set(REST_METHODS) == set(HTTP_METHODS)
    for method in HTTP_METHODS:
        parsed = parse_answer(PromptFormat.GORILLA_V0, f"<<<api_call>>>: {method} /things/1")
        assert (parsed.calls[0].method, parsed.calls[0].path) == (method, "/things/1")


@pytest.mark.parametrize("fmt", [PromptFormat.GORILLA_V0, PromptFormat.OPENFUNCTIONS_V2])
@given(name=keyword_names)
def test_keywords_are_not_written_as_python_names(fmt: PromptFormat, name: str) -> None:
    """``or(...)`` or ``f(class=1)`` would not parse back: such a call (or optional argument) is
    left out of the grammar, not written."""
    kind = CallKind.PYTHON if fmt is PromptFormat.GORILLA_V0 else CallKind.FUNCTION
    built = build_call_grammar(fmt, [AllowedCall(name, kind), AllowedCall("ok", kind)], OPTIONS)
    assert [c.name for c in built.calls] == ["ok"] and built.dropped[0][0] == name
    required = AllowedCall("f", kind, (ParamSpec(name, required=True),))
    assert build_call_grammar(fmt, [required, AllowedCall("ok", kind)], OPTIONS).dropped[0][0] == "f"
