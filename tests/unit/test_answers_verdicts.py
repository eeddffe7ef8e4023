"""The verdict means what it says (issue 21): hand-made answers against the demo corpora (the
Nimbus OpenAPI sample and the prometheus_client package the project installs), each with the
verdict a user should see.

``valid``: the API exists, the arguments fit its whole JSON Schema and every value comes from the
question, from the schema (enum, default, example, const) or is a placeholder; ``ungrounded``: the
right shape with a value from nowhere; ``wrong_arguments``: the shape is wrong (nested required
field, pattern, minimum, inherited constructor's required parameters); ``unparseable``: no call
could be read (a cut-off call says "truncated call").
"""

from __future__ import annotations

import json
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from apihelper.retriever.loaders import load_corpus
from apihelper.retriever.loaders.python_pkg import load_python_package
from apihelper.retriever.types import ApiDoc
from apihelper.service.answers.check import ApiCatalog, Verdict, check_answer, schema_problems
from apihelper.service.prompts import PromptFormat

SAMPLE = Path(__file__).resolve().parents[2] / "retriever" / "samples" / "demo_cloud_openapi.yaml"

TERMINATE = "Terminate session sess-42 right away, without waiting for a graceful shutdown"
CREATE = "Create a new session"
COUNTER = "a Prometheus counter http_requests_total with help text"


@pytest.fixture(scope="module")
def demo() -> ApiCatalog:
    _, result = load_corpus(SAMPLE)
    return ApiCatalog(result.docs)


@pytest.fixture(scope="module")
def functional() -> ApiCatalog:
    import prometheus_client

    result = load_python_package(Path(os.path.dirname(prometheus_client.__file__)))
    return ApiCatalog(result.docs)


def _tool_call(name: str, arguments: dict[str, Any]) -> str:
    return f"<tool_call>[{json.dumps({'name': name, 'arguments': arguments})}]</tool_call>"


@dataclass(frozen=True)
class Case:
    id: str
    question: str
    answer: str
    verdict: Verdict
    says: str = ""  # a fragment of the reasons
    fmt: PromptFormat = PromptFormat.CHAT_TOOLS


RESOURCES = {"cpu": 1, "memory_gb": 0.5}

REST_CASES = [
    Case(
        "nested-required-field-missing",
        CREATE,
        _tool_call("createSession", {"image": "<image>", "resources": {"gpu": 1}}),
        Verdict.WRONG_ARGUMENTS,
        "'resources' lacks required fields: cpu, memory_gb",
    ),
    Case(
        "schema-copied-into-the-value",
        CREATE,
        _tool_call(
            "createSession",
            {"image": "<image>", "resources": {"type": "object", "description": "Resources reserved for a session."}},
        ),
        Verdict.WRONG_ARGUMENTS,
        "lacks required fields: cpu, memory_gb",
    ),
    Case(
        "pattern-broken",
        CREATE,
        _tool_call("createSession", {"image": "<image>", "resources": RESOURCES, "name": "restartSession"}),
        Verdict.WRONG_ARGUMENTS,
        "does not match the pattern",
    ),
    Case(
        "minimum-broken",
        "Extend session sess-42 to 5 minutes",
        _tool_call("updateSession", {"session_id": "sess-42", "max_lifetime_minutes": 5}),
        Verdict.WRONG_ARGUMENTS,
        "less than the minimum of 10",
    ),
    Case(
        "enum-broken-in-a-nested-object",
        CREATE,
        _tool_call("createSession", {"image": "<image>", "resources": {**RESOURCES, "gpu_type": "v100"}}),
        Verdict.WRONG_ARGUMENTS,
        "field 'gpu_type' should be one of 'a100', 'h100', 'l4'",
    ),
    Case(
        "ungrounded-value",
        TERMINATE,
        _tool_call("terminateSession", {"session_id": "][", "force": False}),
        Verdict.UNGROUNDED,
        "session_id=']['",
    ),
    Case(
        "value-from-the-description-is-not-grounded",
        CREATE,
        _tool_call("createSession", {"image": "pytorch:2.4-cuda12", "resources": RESOURCES}),
        Verdict.UNGROUNDED,
        "image='pytorch:2.4-cuda12'",
    ),
    Case(
        "grounded-in-the-question",
        TERMINATE,
        _tool_call("terminateSession", {"session_id": "sess-42", "force": True}),
        Verdict.VALID,
    ),
    Case(
        "placeholder",
        CREATE,
        _tool_call("createSession", {"image": "<image>", "resources": RESOURCES, "name": "<name>"}),
        Verdict.VALID,
    ),
    Case(
        "enum-value-offered-by-the-schema",
        CREATE,
        _tool_call("createSession", {"image": "<image>", "resources": {**RESOURCES, "gpu": 1, "gpu_type": "h100"}}),
        Verdict.VALID,
    ),
    Case(
        "well-formed-call-after-prose-with-brackets",
        "Show session sess-42",
        "<tool_call>I will call {getSession} [now] [a] [b] [c] [d] [e] [f] [g]: "
        '{"name": "getSession", "arguments": {"session_id": "sess-42"}}</tool_call>',
        Verdict.VALID,
    ),
    Case(
        "truncated-call",
        TERMINATE,
        '<tool_call>[{"name": "terminateSession", "arguments": {"session_id": "sess-4',
        Verdict.UNPARSEABLE,
        "truncated call",
    ),
    Case(
        "rest-path-value-grounded",
        TERMINATE,
        "<<<api_call>>>: DELETE /sessions/sess-42?force=true",
        Verdict.VALID,
        fmt=PromptFormat.GORILLA_V0,
    ),
    Case(
        "rest-path-value-ungrounded",
        TERMINATE,
        "<<<api_call>>>: DELETE /sessions/sess-7?force=true",
        Verdict.UNGROUNDED,
        "session_id='sess-7'",
        fmt=PromptFormat.GORILLA_V0,
    ),
]

PYTHON_CASES = [
    Case(
        "inherited-constructor-required-arguments",
        COUNTER,
        "<<<api_call>>>: prometheus_client.Counter()",
        Verdict.WRONG_ARGUMENTS,
        "missing required arguments of metrics.Counter: name, documentation",
        PromptFormat.GORILLA_V0,
    ),
    Case(
        "inherited-constructor-with-placeholder",
        COUNTER,
        "<<<api_call>>>: prometheus_client.Counter('http_requests_total', '<help text>')",
        Verdict.VALID,
        fmt=PromptFormat.GORILLA_V0,
    ),
    Case(
        "inherited-constructor-invented-help-text",
        COUNTER,
        "<<<api_call>>>: prometheus_client.Counter('http_requests_total', documentation='Total requests')",
        Verdict.UNGROUNDED,
        "documentation='Total requests'",
        PromptFormat.GORILLA_V0,
    ),
    Case(
        "inherited-constructor-unknown-keyword",
        COUNTER,
        "<<<api_call>>>: prometheus_client.Counter('http_requests_total', '<help>', help='x')",
        Verdict.WRONG_ARGUMENTS,
        "unknown keyword argument",
        PromptFormat.GORILLA_V0,
    ),
]


@pytest.mark.parametrize("case", REST_CASES, ids=lambda c: c.id)
def test_demo_rest_answers_get_the_verdict_they_deserve(case: Case, demo: ApiCatalog) -> None:
    checked = check_answer(case.fmt, case.answer, [], demo, question=case.question)
    assert checked.verdict is case.verdict, checked.reasons
    assert case.says in " | ".join(checked.reasons), checked.reasons


@pytest.mark.parametrize("case", PYTHON_CASES, ids=lambda c: c.id)
def test_functional_answers_get_the_verdict_they_deserve(case: Case, functional: ApiCatalog) -> None:
    checked = check_answer(case.fmt, case.answer, [], functional, question=case.question)
    assert checked.verdict is case.verdict, checked.reasons
    assert case.says in " | ".join(checked.reasons), checked.reasons
    assert checked.doc_key == "prometheus_client.metrics.Counter"


def test_counter_shows_its_real_parameters(functional: ApiCatalog) -> None:
    doc = functional.get("prometheus_client.metrics.Counter")
    assert doc is not None
    assert doc.metadata["signature"].startswith("class Counter(name: str, documentation: str, labelnames")
    assert doc.metadata["constructor_from"] == "prometheus_client.metrics.MetricWrapperBase"
    assert "constructor: class Counter(name: str" in doc.text
    assert doc.metadata["required"] == ["name", "documentation"]


def test_without_a_question_values_are_not_grounded(demo: ApiCatalog) -> None:
    answer = _tool_call("terminateSession", {"session_id": "][", "force": False})
    assert check_answer(PromptFormat.CHAT_TOOLS, answer, [], demo).verdict is Verdict.VALID


def test_wrong_arguments_still_list_ungrounded_values(demo: ApiCatalog) -> None:
    answer = _tool_call("createSession", {"image": "made-up", "resources": {}})
    checked = check_answer(PromptFormat.CHAT_TOOLS, answer, [], demo, question=CREATE)
    assert checked.verdict is Verdict.WRONG_ARGUMENTS
    assert checked.checks[0].ungrounded == ("image='made-up'",)


def _load_source(tmp_path: Path, source: str) -> dict[str, ApiDoc]:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "base.py").write_text("class Base:\n    def __init__(self, host: str, port: int = 80):\n        pass\n")
    (package / "mod.py").write_text(textwrap.dedent(source))
    return {d.key: d for d in load_python_package(package).docs}


def test_constructors_from_dataclass_fields_and_imported_bases(tmp_path: Path) -> None:
    docs = _load_source(
        tmp_path,
        """
        import dataclasses
        from typing import ClassVar, NamedTuple
        from .base import Base

        @dataclasses.dataclass
        class Point:
            x: int
            y: int = 0
            kind: ClassVar[str] = "point"
            cache: dict = dataclasses.field(default_factory=dict, init=False)

        class Pair(NamedTuple):
            left: str
            right: str = ""

        class Client(Base):
            pass

        class Deeper(Client):
            pass
        """,
    )
    assert docs["pkg.mod.Point"].metadata["signature"] == "class Point(x: int, y: int = 0)"
    assert docs["pkg.mod.Pair"].metadata["signature"] == "class Pair(left: str, right: str = '')"
    assert docs["pkg.mod.Client"].metadata["signature"] == "class Client(host: str, port: int = 80)"
    assert docs["pkg.mod.Deeper"].metadata["constructor_from"] == "pkg.base.Base"
    assert docs["pkg.mod.Deeper"].metadata["required"] == ["host"]


@pytest.mark.parametrize(
    ("value", "schema", "problem"),
    [
        (
            {"a": {"b": 1}},
            {"type": "object", "properties": {"a": {"required": ["c"]}}},
            "field 'a' lacks required field: c",
        ),
        ("2024-13-45", {"type": "string", "format": "date"}, "is not a 'date'"),
        ({"k": 1}, {"type": "object", "additionalProperties": False}, "Additional properties are not allowed"),
        (("a", 2), {"type": "array", "items": {"type": "string"}}, "field '[1]' should be string, got integer 2"),
        ("<name>", {"type": "string", "pattern": "^[a-z]+$", "minLength": 10}, None),
        (None, {"type": "integer"}, None),
        ("3", {"type": "integer", "maximum": 2}, "3 is greater than the maximum of 2"),
    ],
)
def test_schema_problems_cover_the_whole_schema(value: Any, schema: dict[str, Any], problem: str | None) -> None:
    problems = schema_problems(value, schema, coerce=True)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems
