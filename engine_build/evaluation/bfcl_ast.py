"""BFCL's AST checker for function-call answers (Python categories simple, multiple, parallel), as pure functions.

Mirrors ``bfcl_eval/eval_checker/ast_eval/ast_checker.py`` of the Berkeley Function Calling Leaderboard
(ShishirPatil/gorilla, Apache-2.0), Python branch, including its quirks; error types are BFCL's strings.
The rules, each with the function of the original it mirrors:

- ``check_bfcl`` (``ast_checker``): a category containing "parallel" matches the calls to the ground
  truth in any order, all or nothing; one containing "multiple" needs exactly one call, checked against
  the schema named by the ground truth; any other ("simple") needs exactly one call, checked against
  the first schema.
- ``_check_call`` (``simple_function_checker``): the name must match; every required parameter must be
  present; every given parameter must be in the schema and in the ground truth; each value must pass
  the type check and the value check; a ground-truth parameter may be absent only when ``""`` is
  among its accepted values.
- ``_check_type`` (``type_checker``): types are exact (``bool`` is not ``int``); an ``int`` passes for a
  ``"float"`` schema (converted first), a tuple becomes a list for a ``"tuple"`` schema; ``array`` and
  ``tuple`` items are checked one level deep; a value whose type is that of the accepted values, when
  these differ from the schema's type, is a "variable" and only compared by equality.
- ``_check_string`` / ``_check_list`` / ``_check_dict`` / ``_check_list_of_dicts`` (``string_checker``,
  ``list_checker``, ``dict_checker``, ``list_dict_checker``): strings are compared after
  ``standardize_string`` (drop `` ,./-_*^``, lower-case, ``'`` to ``"``); any other value by ``==``.
- Schema type names: BFCL's own (``string``, ``integer``, ``float``, ``boolean``, ``array``, ``tuple``,
  ``dict``, ``any``). Any other name is a data error (:class:`ValueError`; BFCL raises ``KeyError``),
  unless ``json_schema_types`` is set: then the JSON-Schema names ``"number"`` (read as ``"float"``) and
  ``"object"`` (as ``"dict"``) are accepted too. That is an extension, off by default, so that figures
  on BFCL's own files are BFCL's.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BfclResult", "Call", "Category", "CheckOptions", "category_of", "check_bfcl", "standardize_string"]

Call = tuple[str, Mapping[str, Any]]
"""A parsed call: the function name and its arguments as Python values."""

_PYTHON_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
}
"""BFCL's ``PYTHON_TYPE_MAPPING``."""
_SCHEMA_ALIASES = {"number": "float", "object": "dict"}
_NESTED_TYPES = ("array", "tuple")
_STANDARDIZE = re.compile(r"[ \,\.\/\-\_\*\^]")


class Category(enum.Enum):
    """How the calls are matched to the ground truth."""

    SIMPLE = "simple"
    MULTIPLE = "multiple"
    PARALLEL = "parallel"


def category_of(test_category: str) -> Category:
    """BFCL's dispatch on a test category name (``parallel_multiple`` counts as parallel)."""
    if "parallel" in test_category:
        return Category.PARALLEL
    if "multiple" in test_category:
        return Category.MULTIPLE
    return Category.SIMPLE


@dataclass(frozen=True)
class BfclResult:
    """The checker's verdict: ``error_type`` is BFCL's string (e.g. ``value_error:string``), None when valid."""

    valid: bool
    error_type: str | None = None
    errors: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        """The error messages on one line."""
        return " ".join(self.errors)


_VALID = BfclResult(True)


@dataclass(frozen=True)
class CheckOptions:
    """How leniently to read names and schemas; both off is BFCL's own behaviour."""

    underscore_to_dot: bool = False
    json_schema_types: bool = False


def _fail(error_type: str, *errors: str) -> BfclResult:
    return BfclResult(False, error_type, errors)


def standardize_string(text: str) -> str:
    """BFCL's ``standardize_string``: drop spaces and ``,./-_*^``, lower-case, single to double quotes."""
    return _STANDARDIZE.sub("", text).lower().replace("'", '"')


def _standardized(values: Sequence[Any]) -> list[Any]:
    return [standardize_string(value) if type(value) is str else value for value in values]


def _answer_type(accepted: Sequence[Any]) -> type | None:
    """``get_possible_answer_type``: the type of the first accepted value that is not ``""``."""
    return next((type(answer) for answer in accepted if answer != ""), None)


def _items(accepted: object) -> Sequence[Any]:
    """An accepted value read as a sequence, the way the original indexes it (non-sequences: empty)."""
    return accepted if isinstance(accepted, (list, str)) else []


@dataclass(frozen=True)
class _TypeCheck:
    result: BfclResult
    is_variable: bool


def _check_type(
    param: str, value: Any, accepted: Sequence[Any], description: str, expected: type, nested: type | None
) -> _TypeCheck:
    """``type_checker``: exact type, one level of item types, and BFCL's "variable" escape."""
    answer_type = _answer_type(accepted)
    is_variable = answer_type is not None and answer_type is not expected
    nested_error: str | None = None
    if type(value) is expected:
        if nested is None:
            return _TypeCheck(_VALID, is_variable)
        elements: list[Any] = value if isinstance(value, list) else []  # nested types are list types
        for accepted_item in accepted:
            items_ok = type(accepted_item) is not list or all(
                _check_type(param, item, accepted_item, str(nested), nested, None).result.valid for item in elements
            )
            if items_ok:
                return _TypeCheck(_VALID, is_variable)
        nested_error = (
            f"Nested type checking failed for parameter {param!r}. Expected outer type {description} with inner "
            f"type {nested}. Parameter value: {value!r}."
        )
    if answer_type is not None and type(value) is answer_type:
        # The original returns its running result here: still valid, or the nested failure.
        result = _fail("type_error:nested", nested_error) if nested_error is not None else _VALID
        return _TypeCheck(result, True)
    simple_error = (
        f"Incorrect type for parameter {param!r}. Expected type {description}, got {type(value).__name__}. "
        f"Parameter value: {value!r}."
    )
    errors = (nested_error, simple_error) if nested_error is not None else (simple_error,)
    return _TypeCheck(_fail("type_error:simple", *errors), False)


def _check_string(param: str, value: str, accepted: Sequence[Any]) -> BfclResult:
    """``string_checker``: the standardized value must be among the standardized accepted strings."""
    if standardize_string(value) in [standardize_string(a) for a in accepted if type(a) is str]:
        return _VALID
    return _fail(
        "value_error:string",
        f"Invalid value for parameter {param!r}: {value!r}. Expected one of {list(accepted)}. Case insensitive.",
    )


def _check_list(param: str, value: Sequence[Any], accepted: Sequence[Any]) -> BfclResult:
    """``list_checker``: element-wise standardized list equality with one accepted list (``""`` reads as ``[]``)."""
    if _standardized(list(value)) in [_standardized(_items(answer)) for answer in accepted]:
        return _VALID
    return _fail(
        "value_error:list/tuple", f"Invalid value for parameter {param!r}: {value!r}. Expected one of {list(accepted)}."
    )


def _check_dict(value: Any, accepted: Sequence[Any]) -> BfclResult:
    """``dict_checker``: one accepted dict must admit every key and value, and miss no key lacking ``""``."""
    if not isinstance(value, Mapping):  # the original raises AttributeError here
        return _fail("value_error:dict_value", f"Expected a dict, got {type(value).__name__}: {value!r}.")
    result = _fail("dict_checker:unclear")
    for answer in accepted:
        if answer == "":
            continue
        error_type: str | None = None
        errors: list[str] = []
        for key, item in value.items():
            if key not in answer:
                error_type = "value_error:dict_key"
                errors.append(f"Unexpected dict key parameter: '{key}'.")
                break
            options = _standardized(answer[key])
            if (standardize_string(item) if type(item) is str else item) not in options:
                error_type = "value_error:dict_value"
                errors.append(f"Invalid value for parameter {key!r}: {item!r}. Expected one of {options}.")
                break
        missing = next((key for key, options in answer.items() if key not in value and "" not in options), None)
        if missing is not None:
            error_type = "value_error:dict_key"
            errors.append(f"Missing dict key parameter: '{missing}'.")
        if error_type is None:
            return _VALID
        result = _fail(error_type, *errors)
    return result


def _check_list_of_dicts(value: Sequence[Any], accepted: Sequence[Any]) -> BfclResult:
    """``list_dict_checker``: one accepted list of the same length whose dicts all pass ``_check_dict``, in order."""
    result = _fail("list_dict_checker:unclear")
    for answer in accepted:
        answer_items = _items(answer)
        if len(value) != len(answer_items):
            result = _fail("value_error:list_dict_count", "Wrong number of dictionaries in the list.")
            continue
        result = _VALID
        for item, item_answer in zip(value, answer_items, strict=True):
            result = _check_dict(item, [item_answer])
            if not result.valid:
                break
        if result.valid:
            return _VALID
    return result


def _schema_type(schema: Mapping[str, Any], json_schema_types: bool) -> str:
    """A schema's BFCL type name; raises ValueError for a name BFCL's mapping lacks (see the module docstring)."""
    name = str(schema["type"])
    if json_schema_types:
        name = _SCHEMA_ALIASES.get(name, name)
    if name not in _PYTHON_TYPES:
        extension = " (JSON-Schema names need json_schema_types)" if name in _SCHEMA_ALIASES else ""
        raise ValueError(f"schema type {name!r} is not one of BFCL's {sorted(_PYTHON_TYPES)}{extension}")
    return name


def _check_value(
    param: str, value: Any, schema: Mapping[str, Any], accepted: Sequence[Any], json_schema_types: bool
) -> BfclResult:
    """The per-parameter body of ``simple_function_checker`` (Python branch)."""
    description = _schema_type(schema, json_schema_types)
    expected = _PYTHON_TYPES[description]
    nested = _PYTHON_TYPES[_schema_type(schema["items"], json_schema_types)] if description in _NESTED_TYPES else None
    if description == "tuple" and type(value) is tuple:
        value = list(value)
    if description == "float" and type(value) is int:
        value = float(value)
    typed = _check_type(param, value, accepted, description, expected, nested)
    if not typed.result.valid:
        return typed.result
    if not typed.is_variable:
        if expected is dict:
            return _check_dict(value, accepted)
        if expected is list and nested is dict:
            return _check_list_of_dicts(value, accepted)
        if expected is str:
            return _check_string(param, value, accepted)
        if expected is list:
            return _check_list(param, value, accepted)
    if value not in accepted:
        return _fail(
            "value_error:others", f"Invalid value for parameter {param!r}: {value!r}. Expected one of {list(accepted)}."
        )
    return _VALID


def _convert_name(name: str, underscore_to_dot: bool) -> str:
    """``convert_func_name``: models that cannot emit "." in names are checked against "_" instead."""
    return name.replace(".", "_") if underscore_to_dot else name


def _check_call(
    call: Call,
    function: Mapping[str, Any],
    answer: Mapping[str, Mapping[str, Sequence[Any]]],
    options: CheckOptions,
) -> BfclResult:
    """``simple_function_checker``: one call against one schema and one ground-truth call."""
    accepted_by_param = next(iter(answer.values()))
    name = _convert_name(str(function["name"]), options.underscore_to_dot)
    parameters: Mapping[str, Any] = function["parameters"]
    properties: Mapping[str, Mapping[str, Any]] = parameters["properties"]
    called_name, arguments = call
    if called_name != name:
        return _fail("simple_function_checker:wrong_func_name", f"Function name {name!r} not found in model output.")
    for required in parameters.get("required", []):
        if required not in arguments:
            return _fail("simple_function_checker:missing_required", f"Missing required parameter: {required!r}.")
    for param, value in arguments.items():
        if param not in properties or param not in accepted_by_param:
            return _fail("simple_function_checker:unexpected_param", f"Unexpected parameter: {param!r}.")
        result = _check_value(param, value, properties[param], accepted_by_param[param], options.json_schema_types)
        if not result.valid:
            return result
    for param, accepted in accepted_by_param.items():
        if param not in arguments and "" not in accepted:
            return _fail(
                "simple_function_checker:missing_optional",
                f"Optional parameter {param!r} not provided and not marked as optional.",
            )
    return _VALID


def _schema_for(functions: Sequence[Mapping[str, Any]], answer: Mapping[str, Any]) -> Mapping[str, Any]:
    """``find_description``: the schema named by the ground-truth call (BFCL fails on a missing one too)."""
    name = next(iter(answer))
    found = next((function for function in functions if function["name"] == name), None)
    if found is None:
        raise ValueError(f"ground truth names {name!r}, which is not among the candidate functions")
    return found


def _check_parallel(
    calls: Sequence[Call],
    functions: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Mapping[str, Sequence[Any]]]],
    options: CheckOptions,
) -> BfclResult:
    """``parallel_function_checker_no_order``: each ground-truth call, in order, takes the first unmatched call."""
    matched: set[int] = set()
    for answer_index, answer in enumerate(ground_truth):
        function = _schema_for(functions, answer)
        errors: list[str] = []
        for index, call in enumerate(calls):
            if index in matched:
                continue
            result = _check_call(call, function, answer, options)
            if result.valid:
                matched.add(index)
                break
            errors.append(f"Model Result Index {index}: {result.error_type}: {result.message}")
        else:
            unmatched = [index for index in range(len(calls)) if index not in matched]
            return _fail(
                "parallel_function_checker_no_order:cannot_find_match",
                f"Could not find a matching function among index {unmatched} of model output for index "
                f"{answer_index} of possible answers.",
                *errors,
            )
    return _VALID


def check_bfcl(
    calls: Sequence[Call],
    functions: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Mapping[str, Sequence[Any]]]],
    category: Category = Category.MULTIPLE,
    *,
    underscore_to_dot: bool = False,
    json_schema_types: bool = False,
) -> BfclResult:
    """Check parsed calls against BFCL candidate ``functions`` and ``ground_truth`` (``ast_checker``, Python).

    ``underscore_to_dot``: BFCL's flag for models that write ``a_b`` for ``a.b``; ``json_schema_types``:
    also read the JSON-Schema type names (see the module docstring). Raises ValueError on data BFCL
    cannot check either (a ground-truth function absent from ``functions``, an unknown type name).
    """
    options = CheckOptions(underscore_to_dot, json_schema_types)
    if category is Category.PARALLEL:
        if len(calls) != len(ground_truth):
            return _fail("parallel_function_checker_no_order:wrong_count", "Wrong number of functions.")
        return _check_parallel(calls, functions, ground_truth, options)
    if category is Category.MULTIPLE:
        if len(calls) != len(ground_truth):
            return _fail("multiple_function_checker:wrong_count", "Wrong number of functions.")
        return _check_call(calls[0], _schema_for(functions, ground_truth[0]), ground_truth[0], options)
    if len(calls) != 1:
        return _fail("simple_function_checker:wrong_count", "Wrong number of functions.")
    return _check_call(calls[0], functions[0], ground_truth[0], options)
