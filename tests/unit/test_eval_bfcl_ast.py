"""Tests of the BFCL AST checker: a table of hand-made answers against a hand-made schema, and a
self-consistency run of BFCL's own ground truth (skips without the shared corpora)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from apihelper.build.evaluation.bfcl_ast import BfclResult, Call, Category, category_of, check_bfcl, standardize_string
from tests.support import shared_corpus

BFCL_FILES = ("BFCL_v4_multiple.json", "BFCL_v4_live_multiple.json")

WEATHER = {
    "name": "weather.forecast",
    "description": "Forecast for a city.",
    "parameters": {
        "type": "dict",
        "properties": {
            "city": {"type": "string", "description": "City name."},
            "days": {"type": "integer", "description": "How many days."},
            "threshold": {"type": "float", "description": "Rain threshold."},
            "metric": {"type": "boolean", "description": "Metric units."},
            "hours": {"type": "array", "items": {"type": "integer"}, "description": "Hours of the day."},
            "point": {"type": "tuple", "items": {"type": "float"}, "description": "Latitude, longitude."},
            "filters": {
                "type": "dict",
                "properties": {"kind": {"type": "string"}, "limit": {"type": "integer"}},
                "description": "Filters.",
            },
            "stops": {"type": "array", "items": {"type": "dict"}, "description": "Stops on the way."},
        },
        "required": ["city", "days"],
    },
}
ALERTS = {
    "name": "alerts",
    "description": "Weather alerts.",
    "parameters": {"type": "dict", "properties": {"region": {"type": "string"}}, "required": ["region"]},
}
FUNCTIONS = [WEATHER, ALERTS]
TRUTH: dict[str, list[Any]] = {
    "city": ["New York, NY", "NYC"],
    "days": [3],
    "threshold": [0.5, ""],
    "metric": [True, ""],
    "hours": [[9, 12], ""],
    "point": [[40.7, -74.0], ""],
    "filters": [{"kind": ["rain"], "limit": [5, ""]}, ""],
    "stops": [[{"kind": ["bus"]}, {"kind": ["train"]}], ""],
}
GROUND_TRUTH = [{"weather.forecast": TRUTH}]
RIGHT: dict[str, Any] = {"city": "New York, NY", "days": 3}


def call(**changes: Any) -> list[Call]:
    arguments = {**RIGHT, **changes}
    return [("weather.forecast", {key: value for key, value in arguments.items() if value is not ABSENT})]


ABSENT = object()

TABLE: list[tuple[str, list[Call], str | None]] = [
    ("right call", call(), None),
    ("string normalised: case, spaces and punctuation", call(city="new york ny"), None),
    ("another accepted string", call(city="nyc"), None),
    ("wrong string value", call(city="Boston"), "value_error:string"),
    ("wrong integer value", call(days=4), "value_error:others"),
    ("missing required", call(days=ABSENT), "simple_function_checker:missing_required"),
    ("unknown parameter", call(country="US"), "simple_function_checker:unexpected_param"),
    ("string for integer", call(days="3"), "type_error:simple"),
    ("bool is not an integer", call(metric=1), "type_error:simple"),
    ("float for integer", call(days=3.0), "type_error:simple"),
    ("int passes the type check for float", call(threshold=0), "value_error:others"),
    ("float for float", call(threshold=0.5), None),
    ("optional present and right", call(metric=True, hours=[9, 12]), None),
    ("list value wrong", call(hours=[9, 13]), "value_error:list/tuple"),
    # BFCL quirk: an accepted "" passes the item-type check vacuously, so the list compare decides.
    ("list item type wrong, optional", call(hours=["9", "12"]), "value_error:list/tuple"),
    ("tuple given for a tuple parameter", call(point=(40.7, -74.0)), None),
    ("dict value right, optional key absent", call(filters={"kind": "Rain"}), None),
    ("dict value wrong", call(filters={"kind": "snow"}), "value_error:dict_value"),
    ("dict key unknown", call(filters={"kind": "rain", "color": "red"}), "value_error:dict_key"),
    ("dict key missing", call(filters={"limit": 5}), "value_error:dict_key"),
    ("list of dicts right", call(stops=[{"kind": "bus"}, {"kind": "train"}]), None),
    ("list of dicts, wrong count", call(stops=[{"kind": "bus"}]), "value_error:list_dict_count"),
    # BFCL reports the error of the last accepted value tried: here "", whose length (0) differs.
    ("list of dicts, wrong order", call(stops=[{"kind": "train"}, {"kind": "bus"}]), "value_error:list_dict_count"),
    ("wrong function name", [("alerts", RIGHT)], "simple_function_checker:wrong_func_name"),
    ("extra call", [*call(), ("alerts", {"region": "NY"})], "multiple_function_checker:wrong_count"),
    ("no call", [], "multiple_function_checker:wrong_count"),
]


@pytest.mark.parametrize(("case", "calls", "error_type"), TABLE, ids=[row[0] for row in TABLE])
def test_multiple_category_table(case: str, calls: list[Call], error_type: str | None) -> None:
    result = check_bfcl(calls, FUNCTIONS, GROUND_TRUTH, Category.MULTIPLE)
    assert (result.valid, result.error_type) == (error_type is None, error_type), result.message


def test_item_types_and_dict_lists_without_an_optional_marker() -> None:
    strict = [{"weather.forecast": {**TRUTH, "hours": [[9, 12]], "stops": [[{"kind": ["bus"]}, {"kind": ["train"]}]]}}]
    assert check_bfcl(call(hours=["9", "12"]), FUNCTIONS, strict).error_type == "type_error:nested"
    swapped = call(stops=[{"kind": "train"}, {"kind": "bus"}])
    assert check_bfcl(swapped, FUNCTIONS, strict).error_type == "value_error:dict_value"


def test_int_for_float_is_converted_before_the_value_check() -> None:
    truth = [{"weather.forecast": {**TRUTH, "threshold": [2.0]}}]
    assert check_bfcl(call(threshold=2), FUNCTIONS, truth).valid
    assert not check_bfcl(call(threshold=True), FUNCTIONS, truth).valid


def test_optional_parameter_may_be_absent_only_when_empty_string_is_accepted() -> None:
    assert check_bfcl(call(), FUNCTIONS, GROUND_TRUTH).valid
    strict = [{"weather.forecast": {**TRUTH, "metric": [True]}}]
    result = check_bfcl(call(), FUNCTIONS, strict)
    assert result.error_type == "simple_function_checker:missing_optional"


def test_a_value_of_the_answers_type_is_a_variable_compared_by_equality() -> None:
    truth = [{"weather.forecast": {**TRUTH, "days": ["n_days"]}}]
    assert check_bfcl(call(days="n_days"), FUNCTIONS, truth).valid
    assert check_bfcl(call(days="N_DAYS"), FUNCTIONS, truth).error_type == "value_error:others"


def test_parallel_calls_match_in_any_order_all_or_nothing() -> None:
    truth = [{"alerts": {"region": ["NY"]}}, {"weather.forecast": TRUTH}]
    both = [*call(), ("alerts", {"region": "ny"})]
    assert check_bfcl(list(reversed(both)), FUNCTIONS, truth, Category.PARALLEL).valid
    assert check_bfcl(both, FUNCTIONS, truth, Category.PARALLEL).valid
    one_wrong = [*call(), ("alerts", {"region": "LA"})]
    failed = check_bfcl(one_wrong, FUNCTIONS, truth, Category.PARALLEL)
    assert failed.error_type == "parallel_function_checker_no_order:cannot_find_match"
    assert check_bfcl(call(), FUNCTIONS, truth, Category.PARALLEL).error_type == (
        "parallel_function_checker_no_order:wrong_count"
    )


def test_simple_category_uses_the_first_schema_and_needs_one_call() -> None:
    assert check_bfcl(call(), [WEATHER], GROUND_TRUTH, Category.SIMPLE).valid
    assert check_bfcl(call() * 2, [WEATHER], GROUND_TRUTH, Category.SIMPLE).error_type == (
        "simple_function_checker:wrong_count"
    )


def test_underscore_to_dot_models_are_checked_against_underscored_names() -> None:
    renamed = [("weather_forecast", RIGHT)]
    assert not check_bfcl(renamed, FUNCTIONS, GROUND_TRUTH).valid
    assert check_bfcl(renamed, FUNCTIONS, GROUND_TRUTH, underscore_to_dot=True).valid


def test_category_dispatch_and_standardisation() -> None:
    assert [category_of(name) for name in ("simple", "live_multiple", "parallel_multiple", "live_parallel")] == [
        Category.SIMPLE,
        Category.MULTIPLE,
        Category.PARALLEL,
        Category.PARALLEL,
    ]
    assert standardize_string("April 1, 2024") == standardize_string("april 1 2024") == "april12024"
    assert standardize_string("it's") == 'it"s'


def test_ground_truth_naming_an_unknown_function_is_a_data_error() -> None:
    with pytest.raises(ValueError):
        check_bfcl(call(), [ALERTS], GROUND_TRUTH)


# Self-consistency: BFCL's ground truth, turned into calls, must pass BFCL's checker.


def first_accepted(accepted: Sequence[Any], schema: Mapping[str, Any], with_optional: bool) -> Any:
    """The call value BFCL's ground truth lists first; dicts (and lists of dicts) hold accepted lists per key."""
    value = accepted[0]
    item_type = schema.get("items", {}).get("type")
    if schema["type"] == "dict" and isinstance(value, dict):
        return reference_arguments(value, None, with_optional)
    if schema["type"] == "array" and item_type == "dict" and isinstance(value, list):
        return [reference_arguments(item, None, with_optional) for item in value]
    return value


def reference_arguments(
    accepted_by_key: Mapping[str, Sequence[Any]], schema: Mapping[str, Any] | None, with_optional: bool
) -> dict[str, Any]:
    """A call's arguments from ground truth: each key takes its first accepted value other than "" (a key
    accepting only "" takes ""); without ``with_optional``, a key not required that accepts "" is left out."""
    properties: Mapping[str, Any] = (schema or {}).get("properties", {})
    required = set((schema or {}).get("required", []))
    arguments: dict[str, Any] = {}
    for key, accepted in accepted_by_key.items():
        values = [value for value in accepted if value != ""]
        if "" in accepted and key not in required and not (with_optional and values):
            continue
        arguments[key] = first_accepted(values or [""], properties.get(key, {"type": "any"}), with_optional)
    return arguments


def schema_admits_truth(truth: Mapping[str, Mapping[str, Any]], functions: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a ground-truth call names only parameters of its schema and gives every required one."""
    ((name, params),) = truth.items()
    schema = next(function["parameters"] for function in functions if function["name"] == name)
    return set(params) <= set(schema["properties"]) and set(schema.get("required", [])) <= set(params)


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


@pytest.mark.parametrize("with_optional", [False, True], ids=["optional-left-out", "optional-given"])
@pytest.mark.parametrize("file_name", BFCL_FILES)
def test_ground_truth_passes_its_own_checker(file_name: str, with_optional: bool) -> None:
    questions = load_jsonl(shared_corpus("bfcl", file_name))
    answers = {e["id"]: e["ground_truth"] for e in load_jsonl(shared_corpus("bfcl", "possible_answer", file_name))}
    checked = inconsistent = 0
    for question in questions:
        truth = answers[question["id"]]
        schemas = {function["name"]: function["parameters"] for function in question["function"]}
        calls: list[Call] = [
            (name, reference_arguments(params, schemas[name], with_optional))
            for name, params in (next(iter(t.items())) for t in truth)
        ]
        result: BfclResult = check_bfcl(calls, question["function"], truth, category_of(question["id"]))
        consistent = all(schema_admits_truth(item, question["function"]) for item in truth)
        inconsistent += not consistent
        assert result.valid == consistent, (question["id"], result.error_type, result.message)
        checked += 1
    assert checked == len(questions) == len(answers)
    assert inconsistent < checked / 100  # a few ground-truth entries disagree with their own schema


def test_json_schema_type_names_are_refused_unless_asked_for() -> None:
    """BFCL's mapping has no "number" or "object"; reading them is an opt-in extension."""
    json_schema = {
        "name": "area",
        "parameters": {
            "type": "dict",
            "properties": {"width": {"type": "number"}, "shape": {"type": "object"}},
            "required": ["width"],
        },
    }
    truth: list[dict[str, dict[str, list[Any]]]] = [{"area": {"width": [2.0], "shape": [{"kind": ["square"]}, ""]}}]
    calls: list[Call] = [("area", {"width": 2, "shape": {"kind": "Square"}})]
    with pytest.raises(ValueError, match="json_schema_types"):
        check_bfcl(calls, [json_schema], truth)
    assert check_bfcl(calls, [json_schema], truth, json_schema_types=True).valid
    wrong: list[Call] = [("area", {"width": "2"})]
    assert check_bfcl(wrong, [json_schema], truth, json_schema_types=True).error_type == "type_error:simple"
