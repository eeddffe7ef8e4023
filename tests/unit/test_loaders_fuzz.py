"""Every loader meets random input (issue 14, acceptance 3): random bytes and random structured
documents (OpenAPI-shaped specs with ``$ref``s, JSON lines, tool definitions, Python-ish token
soup, archives) only ever give per-file problems and clean docs, never an exception out of a
loader. Detection may refuse a file, but only with CorpusLoadError."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apihelper.errors import CorpusLoadError
from apihelper.retriever.limits import DEFAULT_LIMITS, IngestLimits
from apihelper.retriever.loaders import detect_format, load_corpus
from apihelper.retriever.loaders.apibench import load_apibench
from apihelper.retriever.loaders.function_schema import load_function_schemas
from apihelper.retriever.loaders.jsonl import load_jsonl
from apihelper.retriever.loaders.openapi import load_openapi
from apihelper.retriever.loaders.python_pkg import load_python_package
from apihelper.retriever.types import ApiDoc, CorpusFormat, LoadProblem, LoadResult

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Small limits make the limits themselves part of what is fuzzed.
TIGHT = IngestLimits(
    max_file_bytes=64 * 1024,
    max_member_bytes=4096,
    max_total_bytes=16 * 1024,
    max_members=20,
    max_depth=6,
    max_ref_expansions=20,
    max_schema_nodes=60,
    max_yaml_alias_nodes=20,
    max_docs=5,
)
LIMITS = st.sampled_from([DEFAULT_LIMITS, TIGHT])

# Text with everything hostile in it: lone surrogates, controls, bidi overrides, NUL.
HOSTILE_CHARS = st.characters(codec=None, exclude_categories=())
TEXT = st.text(HOSTILE_CHARS, max_size=20) | st.sampled_from(
    ["", "get", "#/components/schemas/a", "#/components/schemas/b", "#/nope", "http://x/y", "\ud800", "\x00\u202e"]
)
KEYS = st.sampled_from(
    [
        "$ref", "type", "properties", "items", "allOf", "anyOf", "oneOf", "required", "enum", "default",
        "description", "summary", "operationId", "tags", "parameters", "requestBody", "content", "schema",
        "name", "in", "id", "text", "title", "metadata", "index_text", "api_call", "api_name", "function",
        "inputSchema", "tools", "result", "application/json", "a", "b",
    ]
) | TEXT  # fmt: skip
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT | st.integers(min_value=10**40)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5), max_leaves=40
)
METHODS = st.sampled_from(["get", "post", "put", "delete", "patch", "head", "options", "trace", "x"])


REFS = st.sampled_from(["#/components/schemas/a", "#/components/schemas/b", "#/components/schemas/c", "#/x", "y"])
SCHEMAS = st.recursive(
    JSON | st.builds(lambda ref: {"$ref": ref}, REFS),
    lambda inner: st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["object", "array", "string", "null"]) | JSON,
            "properties": st.dictionaries(TEXT, inner, max_size=4) | JSON,
            "items": inner,
            "allOf": st.lists(inner, max_size=3),
            "anyOf": st.lists(inner, max_size=3),
            "required": st.lists(TEXT, max_size=3) | JSON,
            "default": JSON,
            "enum": st.lists(JSON, max_size=3),
            "description": TEXT | JSON,
        },
    ),
    max_leaves=30,
)
OPERATIONS = st.fixed_dictionaries(
    {},
    optional={
        "summary": TEXT | JSON,
        "description": TEXT | JSON,
        "operationId": TEXT | JSON,
        "tags": st.lists(TEXT, max_size=3) | JSON,
        "parameters": st.lists(
            st.fixed_dictionaries(
                {"name": TEXT | JSON},
                optional={"in": st.sampled_from(["path", "query", "cookie"]) | JSON, "schema": SCHEMAS},
            )
            | JSON,
            max_size=3,
        ),
        "requestBody": st.fixed_dictionaries(
            {"content": st.fixed_dictionaries({"application/json": st.fixed_dictionaries({"schema": SCHEMAS})}) | JSON}
        )
        | st.builds(lambda ref: {"$ref": ref}, REFS),
    },
)


@st.composite
def openapi_documents(draw: st.DrawFn) -> dict[str, Any]:
    paths = draw(st.dictionaries(TEXT, st.dictionaries(METHODS, OPERATIONS | JSON, max_size=3) | JSON, max_size=4))
    schemas = draw(st.dictionaries(st.sampled_from(["a", "b", "c"]), SCHEMAS, max_size=3))
    return {"openapi": draw(st.sampled_from(["3.0.0", "3.1.0", 3])), "paths": paths, "components": {"schemas": schemas}}


JSONL_RECORDS = st.fixed_dictionaries(
    {"id": SCALARS, "text": TEXT | JSON}, optional={"title": JSON, "metadata": JSON, "index_text": JSON}
)
APIBENCH_RECORDS = st.fixed_dictionaries(
    {"api_call": TEXT | JSON},
    optional=dict.fromkeys(
        ("domain", "framework", "functionality", "api_name", "api_arguments", "example_code", "description"), JSON
    ),
)
_FUNCTION_BODY = st.fixed_dictionaries(
    {"name": TEXT | JSON},
    optional={"description": TEXT | JSON, "parameters": SCHEMAS, "inputSchema": SCHEMAS, "title": JSON},
)
TOOL_DEFINITIONS = _FUNCTION_BODY | st.builds(lambda body: {"type": "function", "function": body}, _FUNCTION_BODY)
RECORDS = JSONL_RECORDS | APIBENCH_RECORDS | TOOL_DEFINITIONS | JSON


PY_TOKENS = st.sampled_from(
    [
        "def", "class", "type", "async", "a", "f", "T", "[", "]", "(", ")", ":", "\n", " ", "    ", "=",
        "1", "+", "@", '"""', "'", "x", ",", "*", "**", "->", "None", "\\", "#", "\x00", "\ud800", "é",
        "pass", "return", "lambda", "9" * 50,
    ]
)  # fmt: skip
PY_SOURCES = st.lists(PY_TOKENS, max_size=60).map("".join) | st.just("def ok(x: int = 1) -> None:\n    'Doc.'\n")


def _check(result: LoadResult, path: Path) -> None:
    assert isinstance(result, LoadResult)
    for problem in result.problems:
        assert isinstance(problem, LoadProblem)
        assert str(path) in problem.path or problem.path.startswith(str(path)), problem
        assert isinstance(problem.message, str) and problem.message
    for doc in result.docs:
        assert isinstance(doc, ApiDoc) and isinstance(doc.key, str)


def _check_cleaned(result: LoadResult, path: Path) -> None:
    _check(result, path)
    for doc in result.docs:
        for text in (doc.key, doc.title, doc.text, doc.index_text, json.dumps(doc.metadata, ensure_ascii=False)):
            text.encode("utf-8")  # no lone surrogates survive cleaning
            assert "\x00" not in text and "\u202e" not in text
        assert doc.key and "\n" not in doc.key


@contextmanager
def _folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


LOADERS: list[tuple[str, Callable[[Path, IngestLimits], LoadResult], CorpusFormat]] = [
    ("spec.json", load_openapi, CorpusFormat.OPENAPI),
    ("spec.yaml", load_openapi, CorpusFormat.OPENAPI),
    ("docs.jsonl", load_jsonl, CorpusFormat.JSONL),
    ("api.jsonl", load_apibench, CorpusFormat.APIBENCH),
    ("tools.json", load_function_schemas, CorpusFormat.FUNCTIONS),
    ("tools.jsonl", load_function_schemas, CorpusFormat.FUNCTIONS),
]


def _all_loaders(path: Path, limits: IngestLimits) -> None:
    for name, loader, fmt in LOADERS:
        target = path.with_name(name)
        target.write_bytes(path.read_bytes())
        _check(loader(target, limits), target)
        _, cleaned = load_corpus(target, fmt, limits=limits)
        _check_cleaned(cleaned, target)
        with suppress(CorpusLoadError):
            detect_format(target, limits)


@FUZZ
@given(data=st.binary(max_size=2048), limits=LIMITS)
def test_random_bytes_in_every_file_format(data: bytes, limits: IngestLimits) -> None:
    with _folder() as folder:
        source = folder / "input"
        source.write_bytes(data)
        _all_loaders(source, limits)


@FUZZ
@given(document=openapi_documents(), as_yaml=st.booleans(), limits=LIMITS)
def test_random_openapi_documents(document: dict[str, Any], as_yaml: bool, limits: IngestLimits) -> None:
    with _folder() as folder:
        path = folder / ("spec.yaml" if as_yaml else "spec.json")
        path.write_text(yaml.safe_dump(document) if as_yaml else json.dumps(document))
        _check(load_openapi(path, limits), path)
        _check_cleaned(load_corpus(path, CorpusFormat.OPENAPI, limits=limits)[1], path)


@FUZZ
@given(lines=st.lists(RECORDS, max_size=6), limits=LIMITS)
def test_random_json_lines_and_documents(lines: list[Any], limits: IngestLimits) -> None:
    with _folder() as folder:
        source = folder / "input"
        source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
        _all_loaders(source, limits)
        source.write_text(json.dumps(lines))
        _all_loaders(source, limits)


@FUZZ
@given(sources=st.lists(PY_SOURCES, min_size=1, max_size=4), limits=LIMITS, raw=st.binary(max_size=512))
def test_random_python_packages(sources: list[str], limits: IngestLimits, raw: bytes) -> None:
    with _folder() as folder:
        package = folder / "pkg"
        package.mkdir()
        zipped = io.BytesIO()
        tarred = io.BytesIO()
        with zipfile.ZipFile(zipped, "w") as archive, tarfile.open(fileobj=tarred, mode="w:gz") as tar:
            for i, text in enumerate(sources):
                data = text.encode("utf-8", "surrogatepass")
                (package / f"m{i}.py").write_bytes(data)
                archive.writestr(f"pkg/m{i}.py", data)
                info = tarfile.TarInfo(f"pkg-1.0/pkg/m{i}.py")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        (package / "raw.py").write_bytes(raw)
        wheel = folder / "pkg-1.0-py3-none-any.whl"
        wheel.write_bytes(zipped.getvalue())
        sdist = folder / "pkg-1.0.tar.gz"
        sdist.write_bytes(tarred.getvalue())
        garbage = folder / "garbage.tar.gz"
        garbage.write_bytes(raw)
        broken = folder / "broken.whl"
        broken.write_bytes(zipped.getvalue()[: len(zipped.getvalue()) // 2] + raw)
        for path in (package, wheel, sdist, garbage, broken):
            _check(load_python_package(path, limits=limits), path)
            _check_cleaned(load_corpus(path, CorpusFormat.PYTHON, limits=limits)[1], path)
