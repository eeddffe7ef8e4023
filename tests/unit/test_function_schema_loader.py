"""Function-schema corpora: the three definition shapes, keys for name collisions, detection,
JSON Schema mapping, and the BFCL builder (synthetic BFCL-shaped data; no third-party files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from apihelper.bench.retrieval.bfcl_corpus import build
from apihelper.build.evaluation.questions import user_text
from apihelper.errors import CorpusLoadError
from apihelper.retriever.doc_kinds import json_schema
from apihelper.retriever.loaders import detect_format, load_corpus
from apihelper.retriever.loaders.function_schema import (
    assign_keys,
    description_hash,
    load_function_schemas,
    parse_definition,
)
from apihelper.retriever.types import CorpusFormat

WEATHER_PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name, e.g. Seoul"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
}
OPENAI_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather.",
        "parameters": WEATHER_PARAMS,
        "strict": True,
    },
}
MCP_TOOL: dict[str, Any] = {
    "name": "read_file",
    "title": "Read",
    "description": "Read a text file.",
    "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}},
}
BFCL_FUNCTION: dict[str, Any] = {
    "name": "math.hypot",
    "description": "Euclidean norm.",
    "parameters": {
        "type": "dict",
        "properties": {"x": {"type": "float"}, "y": {"type": "float"}},
        "required": ["x", "y"],
    },
}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_each_shape_is_read_and_stored_as_written() -> None:
    openai = parse_definition(OPENAI_TOOL)
    assert (openai.name, openai.schema_format) == ("get_weather", "openai")
    assert openai.function() == {**OPENAI_TOOL["function"]}  # "strict" kept
    mcp = parse_definition(MCP_TOOL)
    assert mcp.schema_format == "mcp"
    assert mcp.function() == {
        "name": "read_file",
        "description": "Read a text file.",
        "parameters": MCP_TOOL["inputSchema"],
        "title": "Read",
    }
    bfcl = parse_definition(BFCL_FUNCTION)
    assert bfcl.schema_format == "bfcl"
    assert bfcl.function()["parameters"]["type"] == "dict"  # not rewritten


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"description": "x"}, "non-empty string 'name'"),
        ({"name": "f", "description": 3}, "'description'"),
        ({"name": "f", "parameters": []}, "JSON Schema object"),
        ([1], "JSON object"),
    ],
)
def test_bad_definitions_are_refused_with_a_reason(bad: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_definition(bad[0] if isinstance(bad, list) else bad)


def test_json_schema_maps_bfcl_type_names_recursively() -> None:
    schema = {"type": "dict", "properties": {"p": {"type": "tuple", "items": {"type": "float"}}, "q": {"type": "any"}}}
    assert json_schema(schema) == {
        "type": "object",
        "properties": {"p": {"type": "array", "items": {"type": "number"}}, "q": {"type": "string"}},
    }
    assert schema["type"] == "dict"  # a copy


def test_collisions_key_later_descriptions_by_hash() -> None:
    pairs = [("f", "one"), ("g", "x"), ("f", "two"), ("f", "one")]
    assert assign_keys(pairs) == ["f", "g", f"f#{description_hash('two')}", "f"]


def test_loader_keeps_collisions_apart_and_folds_repeats(tmp_path: Path) -> None:
    variant = {**BFCL_FUNCTION, "parameters": {**BFCL_FUNCTION["parameters"], "required": ["x"]}}
    other = {**BFCL_FUNCTION, "description": "Length of the hypotenuse."}
    path = write_jsonl(tmp_path / "tools.jsonl", [BFCL_FUNCTION, BFCL_FUNCTION, variant, other, {"oops": 1}])
    result = load_function_schemas(path)
    by_key = {d.key: d for d in result.docs}
    assert list(by_key) == ["math.hypot", f"math.hypot#{description_hash(other['description'])}"]
    first = by_key["math.hypot"]
    assert (first.metadata["variants"], first.metadata["duplicates"]) == (2, 1)
    assert first.metadata["function"] == BFCL_FUNCTION  # the first definition, untouched
    assert all(d.metadata["name"] == "math.hypot" for d in result.docs)
    assert [p.path for p in result.problems] == [f"{path}:5"]


def test_index_text_has_name_words_description_parameters_and_values(tmp_path: Path) -> None:
    doc = load_function_schemas(write_jsonl(tmp_path / "t.jsonl", [OPENAI_TOOL])).docs[0]
    assert doc.index_text.splitlines() == [
        "get show weather",
        "Current weather.",
        "parameters: city unit",
        "city: City name, e.g. Seoul",
        "unit",
        "values: celsius, fahrenheit",
    ]
    assert json.loads(doc.text) == OPENAI_TOOL["function"]
    assert doc.title == "get_weather: Current weather."


@pytest.mark.parametrize(
    "document",
    [[OPENAI_TOOL, MCP_TOOL], {"tools": [MCP_TOOL]}, {"jsonrpc": "2.0", "id": 1, "result": {"tools": [MCP_TOOL]}}],
)
def test_json_documents_are_detected_and_loaded(tmp_path: Path, document: Any) -> None:
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    assert detect_format(path) is CorpusFormat.FUNCTIONS
    fmt, result = load_corpus(path)
    assert fmt is CorpusFormat.FUNCTIONS
    assert "read_file" in {d.key for d in result.docs}
    assert result.problems == []


def test_jsonl_is_detected_and_bfcl_question_files_are_refused(tmp_path: Path) -> None:
    assert detect_format(write_jsonl(tmp_path / "f.jsonl", [BFCL_FUNCTION])) is CorpusFormat.FUNCTIONS
    questions = write_jsonl(tmp_path / "q.json", [{"id": "q1", "question": [[]], "function": [BFCL_FUNCTION]}])
    with pytest.raises(CorpusLoadError, match="question"):
        detect_format(questions)


# ------------------------------------------------------------------------------ BFCL builder


def test_bfcl_builder_pools_functions_and_keys_answers_like_the_loader(tmp_path: Path) -> None:
    other = {**BFCL_FUNCTION, "description": "Length of the hypotenuse."}
    area = {"name": "circle.area", "description": "Area.", "parameters": {"type": "dict", "properties": {}}}
    lines = [
        {
            "id": "a",
            "question": [[{"role": "system", "content": "be brief"}, {"role": "user", "content": "norm of 3, 4"}]],
            "function": [BFCL_FUNCTION, area],
        },
        {"id": "b", "question": [[{"role": "user", "content": "hypotenuse 5 12"}]], "function": [other, area]},
    ]
    answers: dict[str, dict[str, Any]] = {
        "a": {"ground_truth": [{"math.hypot": {"x": [3.0]}}]},
        "b": {"ground_truth": [{"math.hypot": {}}]},
    }
    built = build(lines, answers)
    assert [f["description"] for f in built.functions] == ["Euclidean norm.", "Area.", "Length of the hypotenuse."]
    twin = f"math.hypot#{description_hash(other['description'])}"
    assert built.questions == [
        {"id": "a", "question": "norm of 3, 4", "answer": "math.hypot", "alt_answers": [twin]},
        {"id": "b", "question": "hypotenuse 5 12", "answer": twin, "alt_answers": ["math.hypot"]},
    ]
    corpus = write_jsonl(tmp_path / "pool.jsonl", built.functions)
    assert {d.key for d in load_function_schemas(corpus).docs} == {"math.hypot", twin, "circle.area"}


def test_bfcl_builder_refuses_a_ground_truth_it_cannot_find() -> None:
    lines = [{"id": "a", "question": [[{"role": "user", "content": "x"}]], "function": [BFCL_FUNCTION]}]
    with pytest.raises(ValueError, match="not among its functions"):
        build(lines, {"a": {"ground_truth": [{"nope": {}}]}})
    assert user_text([[{"role": "user", "content": " a "}], [{"role": "assistant", "content": "b"}]]) == "a"


def test_function_schemas_become_allowed_calls_in_both_prompt_families(tmp_path: Path) -> None:
    """The call grammar's view of a tool definition: its name with its properties as keyword
    arguments (BFCL's type names read as JSON Schema's), for gorilla_v0 and the JSON formats."""
    from apihelper.service.answers.allowed_calls import allowed_calls
    from apihelper.service.answers.grammar import CallKind, ParamWhere, ValueType
    from apihelper.service.prompts import PromptFormat

    tool = {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "dict",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"type": "float"}},
            "required": ["city"],
        },
    }
    path = tmp_path / "tools.json"
    path.write_text(json.dumps([tool]), encoding="utf-8")
    _, loaded = load_corpus(path, CorpusFormat.FUNCTIONS)
    for fmt, kind in ((PromptFormat.GORILLA_V0, CallKind.PYTHON), (PromptFormat.CHAT_TOOLS, CallKind.FUNCTION)):
        (call,) = allowed_calls(fmt, loaded.docs)
        assert (call.name, call.kind) == ("get_weather", kind)
        params = {p.name: p for p in call.params}
        assert set(params) == {"city", "days", "unit"}
        assert params["city"].required and not params["days"].required
        assert all(p.where is ParamWhere.KEYWORD for p in call.params)
        assert params["unit"].types == (ValueType.NUMBER,)  # BFCL's "float"
