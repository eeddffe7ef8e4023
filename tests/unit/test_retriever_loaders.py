"""Corpus loaders: every format, format detection, and broken inputs (no Milvus, no model)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from apihelper.errors import CorpusLoadError
from apihelper.retriever.loaders import detect_format, load_corpus
from apihelper.retriever.loaders._text import identifier_words, split_identifier
from apihelper.retriever.loaders.apibench import load_apibench
from apihelper.retriever.loaders.jsonl import load_jsonl
from apihelper.retriever.loaders.openapi import load_openapi
from apihelper.retriever.loaders.python_pkg import load_python_package, strip_pep695
from apihelper.retriever.samples import sample_corpus_path
from apihelper.retriever.types import CorpusFormat
from tests.support import SHARED_CORPORA as CORPORA

BACKEND_AI = CORPORA / "backend.ai"
APIBENCH = CORPORA / "apibench"
WHEEL_24 = BACKEND_AI / "backend.ai_client-24.3.0-py3-none-any.whl"
WHEEL_26 = BACKEND_AI / "backend_ai_client-26.9.6-py3-none-any.whl"


def shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path.name}: ../shared/corpora absent")
    return path


# ------------------------------------------------------------------------------ text helpers


def test_identifier_splitting() -> None:
    assert identifier_words("/folders/{name}/mkdir") == "folders name mkdir"
    assert split_identifier("createFromParams") == ["create", "from", "params"]
    assert split_identifier("session.create_from_params") == ["session", "create", "from", "params"]
    assert split_identifier("HTTPServerError") == ["http", "server", "error"]


# ------------------------------------------------------------------------------ OpenAPI


def test_openapi_2024_spec_gives_169_operations_with_unique_keys() -> None:
    result = load_openapi(shared(BACKEND_AI / "openapi.json"))
    keys = [d.key for d in result.docs]
    assert len(keys) == 169
    assert len(set(keys)) == 169
    assert result.problems == []
    by_key = {d.key: d for d in result.docs}
    assert "HEAD /session/_/logs" in by_key  # HEAD is kept
    assert "POST /folders/{name}/mkdir" in by_key
    create = by_key["POST /session"]
    assert create.title == "session.create_from_params"  # no summary in this spec
    assert create.text.startswith("POST /session\n")
    assert "- image (required): string" in create.text
    assert create.index_text.startswith("create add new session\n")  # CRUD verb synonyms follow the verb
    function = create.metadata["function"]
    assert function["name"] == "session_create_from_params"
    assert function["parameters"]["type"] == "object"
    assert "image" in function["parameters"]["properties"]
    assert "image" in function["parameters"]["required"]
    assert create.metadata["method"] == "POST" and create.metadata["path"] == "/session"
    mkdir = by_key["POST /folders/{name}/mkdir"]
    assert "folders name mkdir" in mkdir.index_text
    assert mkdir.metadata["required"][0] == "name"  # the path parameter


def test_openapi_2026_spec_loads_with_recursive_schemas() -> None:
    result = load_openapi(shared(BACKEND_AI / "openapi.26.8.0rc1.json"))
    assert len(result.docs) == 730
    assert len({d.key for d in result.docs}) == 730
    assert result.problems == []


def test_openapi_sample_yaml() -> None:
    fmt, result = load_corpus(sample_corpus_path())
    assert fmt is CorpusFormat.OPENAPI
    assert result.problems == []
    by_key = {d.key: d for d in result.docs}
    assert len(by_key) == 20
    create = by_key["POST /sessions"]
    assert create.title == "Create a new session"
    function = create.metadata["function"]
    assert function["name"] == "createSession"
    assert function["parameters"]["required"] == ["image", "resources"]
    # $ref'd schema inlined, nested required kept
    assert function["parameters"]["properties"]["resources"]["required"] == ["cpu", "memory_gb"]
    # path-level parameters apply to every operation of the path
    assert by_key["DELETE /sessions/{session_id}"].metadata["required"] == ["session_id"]


def _write_spec(tmp_path: Path, spec: Mapping[str, object]) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def test_openapi_broken_and_cyclic_refs_are_problems_not_crashes(tmp_path: Path) -> None:
    spec = {
        "openapi": "3.0.0",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/things": {
                "post": {
                    "operationId": "createThing",
                    "requestBody": {
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Missing"}}}
                    },
                },
                "get": {
                    "operationId": "listThings",
                    "parameters": [{"name": "filter", "in": "query", "schema": {"$ref": "#/components/schemas/Node"}}],
                },
            }
        },
        "components": {
            "schemas": {
                "Node": {
                    "type": "object",
                    "properties": {"and": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}},
                }
            }
        },
    }
    result = load_openapi(_write_spec(tmp_path, spec))
    assert {d.key for d in result.docs} == {"POST /things", "GET /things"}
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert problem.path.endswith("#POST /things")
    assert "#/components/schemas/Missing" in problem.message


def test_openapi_bad_files(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    result = load_openapi(bad_json)
    assert result.docs == [] and "not valid JSON" in result.problems[0].message
    not_openapi = _write_spec(tmp_path, {"swagger": "2.0", "paths": {}})
    result = load_openapi(not_openapi)
    assert result.docs == [] and "OpenAPI 3" in result.problems[0].message


# ------------------------------------------------------------------------------ Python packages


def test_wheel_24_3_0() -> None:
    result = load_python_package(shared(WHEEL_24))
    assert result.problems == []
    by_key = {d.key: d for d in result.docs}
    # 24.3.0 has no create_from_params in the SDK: sessions are made with get_or_create.
    create = by_key["ai.backend.client.func.session.ComputeSession.get_or_create"]
    assert create.metadata["kind"] == "classmethod"
    assert create.metadata["decorators"] == ["api_function", "classmethod"]
    assert create.metadata["is_async"] is True
    assert create.metadata["signature"].startswith("async def get_or_create(cls, image: str, *, ")
    function = create.metadata["function"]
    assert function["name"] == "ComputeSession.get_or_create"
    assert "cls" not in function["parameters"]["properties"]
    assert function["parameters"]["required"] == ["image"]
    assert function["parameters"]["properties"]["image"]["type"] == "string"
    assert "ComputeSession.create_from_template" in {d.metadata["qualname"] for d in result.docs}
    mkdir = by_key["ai.backend.client.func.vfolder.VFolder.mkdir"]
    assert mkdir.metadata["kind"] == "method"
    assert "self" not in mkdir.metadata["function"]["parameters"]["properties"]
    assert mkdir.metadata["function"]["parameters"]["required"] == ["path"]
    assert by_key["ai.backend.client.func.session.ComputeSession"].metadata["kind"] == "class"
    # __all__ is respected and private names are skipped
    assert not any(".func.base._" in k or k.endswith("._wrap_method") for k in by_key)
    assert all(not part.startswith("_") for k in by_key for part in k.split("."))


def test_wheel_26_9_6_reports_unparsable_files_and_loads_the_rest() -> None:
    result = load_python_package(shared(WHEEL_26))
    problem_files = {p.path.rsplit("!", 1)[-1] for p in result.problems}
    assert "ai/backend/client/func/vfolder.py" in problem_files
    assert "ai/backend/client/func/base.py" in problem_files
    assert all("cannot parse" in p.message for p in result.problems)
    keys = {d.key for d in result.docs}
    assert len(keys) > 1000
    # The PEP 695 rewrite rescues func/vfolder.py, so the dev questions' keys all exist.
    questions = [json.loads(line) for line in shared(BACKEND_AI / "dev_questions.jsonl").read_text().splitlines()]
    for question in questions:
        if question["corpus"] == "functional":
            assert question["answer"] in keys, question["id"]


def test_include_restricts_modules() -> None:
    result = load_python_package(shared(WHEEL_24), include=["ai.backend.client.func"])
    assert result.docs
    assert all(d.key.startswith("ai.backend.client.func.") for d in result.docs)


def test_strip_pep695() -> None:
    source = "type Alias[T] = list[T]\ndef f[T: (int, str)](x: T) -> T:\n    return x\nclass C[T]:\n    pass\n"
    rewritten = strip_pep695(source)
    assert rewritten == "Alias = list[T]\ndef f(x: T) -> T:\n    return x\nclass C:\n    pass\n"
    assert strip_pep695("x = 1\n") is None


def test_directory_package_with_unparsable_file(tmp_path: Path) -> None:
    pkg = tmp_path / "demo_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""Demo."""\n')
    (pkg / "good.py").write_text(
        "from typing import Literal, Optional, overload\n"
        "__all__ = ['Client', 'helper']\n"
        "def helper(name: str, count: int = 2, *, mode: Literal['a', 'b'] = 'a') -> None:\n"
        "    '''Do a thing.\n\n    :param name: The name to use.\n    '''\n"
        "def hidden() -> None: ...\n"
        "class Client:\n"
        "    '''A client.'''\n"
        "    def __init__(self, url: str) -> None: ...\n"
        "    @property\n"
        "    def size(self) -> int: return 1\n"
        "    @staticmethod\n"
        "    def parse(text: Optional[str]) -> None: ...\n"
        "    async def fetch(self, ids: list[int], timeout: float | None = None) -> dict:\n"
        "        '''Fetch things.\n\n        Args:\n            ids (list): Which things.\n        '''\n"
        "    def _private(self) -> None: ...\n"
    )
    (pkg / "broken.py").write_text("def oops(:\n")
    (pkg / "_internal.py").write_text("def secret() -> None: ...\n")
    (pkg / "tests").mkdir()
    (pkg / "tests" / "test_x.py").write_text("def test_a() -> None: ...\n")
    fmt, result = load_corpus(pkg)
    assert fmt is CorpusFormat.PYTHON
    assert len(result.problems) == 1
    assert result.problems[0].path.endswith("broken.py")
    by_key = {d.key: d for d in result.docs}
    assert set(by_key) == {
        "demo_pkg.good.helper",
        "demo_pkg.good.Client",
        "demo_pkg.good.Client.parse",
        "demo_pkg.good.Client.fetch",
    }
    helper = by_key["demo_pkg.good.helper"].metadata["function"]
    assert helper["parameters"]["required"] == ["name"]
    assert helper["parameters"]["properties"]["name"] == {"type": "string", "description": "The name to use."}
    assert helper["parameters"]["properties"]["count"] == {"type": "integer", "default": 2}
    assert helper["parameters"]["properties"]["mode"]["enum"] == ["a", "b"]
    fetch = by_key["demo_pkg.good.Client.fetch"].metadata
    assert fetch["signature"] == "async def fetch(self, ids: list[int], timeout: float | None = None) -> dict"
    assert fetch["function"]["parameters"]["properties"]["ids"]["items"] == {"type": "integer"}
    assert fetch["function"]["parameters"]["properties"]["ids"]["description"] == "Which things."
    assert by_key["demo_pkg.good.Client.parse"].metadata["kind"] == "staticmethod"
    assert by_key["demo_pkg.good.Client"].metadata["signature"] == "class Client(url: str)"


def test_sdist_strips_root_and_src(tmp_path: Path) -> None:
    sdist = tmp_path / "demo-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for name, text in {
            "demo-1.0/setup.py": "def setup_thing() -> None: ...\n",
            "demo-1.0/src/demo/__init__.py": "def top() -> None: ...\n",
            "demo-1.0/src/demo/api.py": "def call(x: int) -> int: ...\n",
        }.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    fmt, result = load_corpus(sdist)
    assert fmt is CorpusFormat.PYTHON
    assert {d.key for d in result.docs} == {"demo.top", "demo.api.call"}


# ------------------------------------------------------------------------------ APIBench


def test_apibench_files() -> None:
    counts = {}
    for name in ("huggingface_api.jsonl", "tensorflowhub_api.jsonl", "torchhub_api.jsonl"):
        fmt, result = load_corpus(shared(APIBENCH / name))
        assert fmt is CorpusFormat.APIBENCH
        assert result.problems == []
        assert len({d.key for d in result.docs}) == len(result.docs)
        counts[name] = len(result.docs)
    assert counts == {"huggingface_api.jsonl": 895, "tensorflowhub_api.jsonl": 80, "torchhub_api.jsonl": 94}


def test_apibench_dedupe_and_merge(tmp_path: Path) -> None:
    base = {
        "domain": "Text embedding",
        "framework": "TensorFlow Hub",
        "functionality": "Embed text",
        "api_name": "encoder",
        "api_call": "hub.load('https://example/encoder/4')",
        "api_arguments": ["text"],
        "python_environment_requirements": ["tensorflow_hub"],
        "example_code": "embed = hub.load('https://example/encoder/4')",
        "performance": {"dataset": "x"},
        "description": "Encodes text.",
    }
    variant = {
        **base,
        "functionality": "Sentence similarity scoring",
        "api_call": " hub.load('https://example/encoder/4')\n",
    }
    other = {**base, "api_call": "hub.load('https://example/other/1')", "api_name": "other"}
    path = tmp_path / "api.jsonl"
    lines = [
        json.dumps(base),
        json.dumps(base),
        "{broken",
        json.dumps(variant),
        json.dumps({"x": 1}),
        json.dumps(other),
    ]
    path.write_text("\n".join(lines) + "\n")
    result = load_apibench(path)
    by_key = {d.key: d for d in result.docs}
    assert set(by_key) == {"hub.load('https://example/encoder/4')", "hub.load('https://example/other/1')"}
    merged = by_key["hub.load('https://example/encoder/4')"]
    assert merged.metadata["duplicates"] == 1  # the identical second line
    assert merged.metadata["variants"] == 2  # base + the whitespace-different variant
    assert "Embed text" in merged.index_text and "Sentence similarity scoring" in merged.index_text
    assert json.loads(merged.text)["functionality"] == "Embed text"  # first record is what the model sees
    assert "performance" not in json.loads(merged.text)
    assert [p.path.rsplit(":", 1)[-1] for p in result.problems] == ["3", "5"]


def test_question_files_are_not_corpora() -> None:
    with pytest.raises(CorpusLoadError, match="question"):
        detect_format(shared(APIBENCH / "torchhub_train.json"))
    with pytest.raises(CorpusLoadError, match="question"):
        detect_format(shared(BACKEND_AI / "dev_questions.jsonl"))


# ------------------------------------------------------------------------------ generic JSONL and detection


def test_generic_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"id": "a", "title": "Alpha", "text": "first doc", "metadata": {"x": 1}}),
                "not json",
                json.dumps({"id": 7, "text": "number id"}),
                json.dumps({"id": "a", "text": "dup"}),
                json.dumps({"id": "b"}),
            ]
        )
    )
    fmt, result = load_corpus(path)
    assert fmt is CorpusFormat.JSONL
    by_key = {d.key: d for d in result.docs}
    assert set(by_key) == {"a", "7"}
    # The user's metadata as given, but the kind: a JSONL record is text, never an API to check.
    assert by_key["a"].metadata == {"x": 1, "kind": "text"} and by_key["a"].index_text == "Alpha\nfirst doc"
    assert by_key["7"].title == "7"
    assert len(result.problems) == 3
    assert load_jsonl(tmp_path / "missing.jsonl").problems


def test_detect_format(tmp_path: Path) -> None:
    assert detect_format(tmp_path) is CorpusFormat.PYTHON
    assert detect_format(tmp_path / "x.whl") is CorpusFormat.PYTHON
    assert detect_format(sample_corpus_path()) is CorpusFormat.OPENAPI
    odd = tmp_path / "odd.json"
    odd.write_text('{"id": "a", "text": "t"}\n{"id": "b", "text": "u"}\n')
    assert detect_format(odd) is CorpusFormat.JSONL
    plain = tmp_path / "plain.yaml"
    plain.write_text("a: 1\n")
    with pytest.raises(CorpusLoadError):
        detect_format(plain)
    with pytest.raises(CorpusLoadError):
        detect_format(tmp_path / "nothing.json")


def test_every_loader_gives_each_way_of_describing_an_api_a_view(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "openapi": "3.0.0",
                "info": {"title": "t", "version": "1"},
                "paths": {
                    "/pets/{pet_id}": {
                        "get": {
                            "summary": "Fetch one pet",
                            "description": "Returns the animal's record.",
                            "tags": ["animals"],
                            "parameters": [{"name": "pet_id", "in": "path", "required": True}],
                        }
                    }
                },
            }
        ),
        encoding="utf-8",
    )
    (doc,) = load_openapi(spec).docs
    summary, where, tags = doc.views
    assert "Fetch one pet" in summary and "animal's record" in summary and "parameters" not in summary
    assert "pets" in where and "parameters: pet id" in where and "Fetch" not in where
    assert tags.startswith("tags: animals")

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "zoo.py").write_text(
        'def feed(animal: str, grams: int = 5) -> None:\n    """Give an animal its food."""\n'
    )
    (fn,) = [d for d in load_python_package(package).docs if d.key.endswith("zoo.feed")]
    assert [("def feed(" in v, "Give an animal" in v) for v in fn.views] == [(True, False), (False, True)]

    tools = tmp_path / "tools.json"
    tools.write_text(
        json.dumps(
            [
                {
                    "name": "get_weather",
                    "description": "Current weather of a city.",
                    "parameters": {"type": "dict", "properties": {"unit": {"type": "string", "enum": ["celsius"]}}},
                }
            ]
        ),
        encoding="utf-8",
    )
    _, loaded = load_corpus(tools, CorpusFormat.FUNCTIONS)
    (described, parameters) = loaded.docs[0].views
    assert "Current weather" in described and "celsius" not in described
    assert "celsius" in parameters and "Current weather" not in parameters
    assert described.startswith("get show weather") and parameters.startswith("get show weather")  # the name
