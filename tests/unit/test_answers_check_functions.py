"""Verdicts on calls of tool definitions (function-schema corpora), BFCL-style."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from apihelper.retriever.loaders.function_schema import description_hash, load_function_schemas
from apihelper.retriever.types import RetrievedDoc
from apihelper.service.answers.check import ApiCatalog, Verdict, check_answer
from apihelper.service.prompts import PromptFormat

O = PromptFormat.OPENFUNCTIONS_V2
HYPOT: dict[str, Any] = {
    "name": "math.hypot",
    "description": "Euclidean norm.",
    "parameters": {
        "type": "dict",
        "properties": {"x": {"type": "float"}, "y": {"type": "float"}, "unit": {"type": "string", "enum": ["m", "km"]}},
        "required": ["x", "y"],
    },
}
# Same name, another description and schema: a twin keyed name#<hash>.
HYPOT_3D: dict[str, Any] = {
    "name": "math.hypot",
    "description": "Norm in three dimensions.",
    "parameters": {
        "type": "dict",
        "properties": {"x": {}, "y": {}, "z": {"type": "float"}},
        "required": ["x", "y", "z"],
    },
}


def _catalog(tmp_path: Path) -> ApiCatalog:
    path = tmp_path / "tools.jsonl"
    path.write_text("\n".join(json.dumps(f) for f in (HYPOT, HYPOT_3D)) + "\n", encoding="utf-8")
    return ApiCatalog(load_function_schemas(path).docs)


def test_a_call_that_fits_the_schema_is_valid(tmp_path: Path) -> None:
    answer = check_answer(O, "<<function>>math.hypot(x=3, y=4.0, unit='km')", [], _catalog(tmp_path))
    assert (answer.verdict, answer.doc_key) == (Verdict.VALID, "math.hypot")  # int fits "float" (number)


def test_missing_unknown_and_mistyped_arguments_are_named(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    answer = check_answer(O, "<<function>>math.hypot(x='three', w=1)", [], catalog)
    assert answer.verdict is Verdict.WRONG_ARGUMENTS
    text = " | ".join(answer.reasons)
    assert "unknown parameter 'w'" in text and "'x' should be number" in text and "missing required" in text
    bad_enum = check_answer(O, "<<function>>math.hypot(x=1, y=2, unit='mi')", [], catalog)
    assert bad_enum.verdict is Verdict.WRONG_ARGUMENTS and "one of" in " ".join(bad_enum.reasons)


def test_a_call_binds_to_the_twin_whose_schema_it_fits(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    answer = check_answer(O, "<<function>>math.hypot(x=1, y=2, z=3)", [], catalog)
    assert (answer.verdict, answer.doc_key) == (
        Verdict.VALID,
        f"math.hypot#{description_hash(HYPOT_3D['description'])}",
    )


def test_retrieved_twin_is_preferred_and_unknown_names_are_hallucinations(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    twin = catalog.get(f"math.hypot#{description_hash(HYPOT_3D['description'])}")
    assert twin is not None
    answer = check_answer(O, "<<function>>math.hypot(x=1)", [RetrievedDoc(twin, "tools", 1.0)], catalog)
    assert answer.doc_key == twin.key and answer.verdict is Verdict.WRONG_ARGUMENTS
    assert check_answer(O, "<<function>>math.hypotenuse(x=1, y=2)", [], catalog).verdict is Verdict.UNKNOWN_API
