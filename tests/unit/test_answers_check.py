"""Validating parsed calls (service/validation.py) against real docs from ../shared/corpora:
the Backend.AI REST spec (openapi.json), the Backend.AI 24.3.0 client wheel, and APIBench.

Tests that need ../shared skip, saying so, when it is absent; the rest use small inline docs.
"""

from __future__ import annotations

import inspect
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from apihelper.retriever.loaders import load_corpus
from apihelper.retriever.types import ApiDoc, RetrievedDoc
from apihelper.service.answers.api_docs import ApibenchReference, apibench_reference, python_signature, rest_operation
from apihelper.service.answers.check import ApiCatalog, CheckedAnswer, Verdict, check_answer, type_problem
from apihelper.service.prompts import PromptFormat
from tests.support import HOSTILE_ANSWERS, budget, shared_corpus

G = PromptFormat.GORILLA_V0
O = PromptFormat.OPENFUNCTIONS_V2
FUNC = "ai.backend.client.func"


def _load(*parts: str, include: list[str] | None = None) -> list[ApiDoc]:
    _, result = load_corpus(shared_corpus(*parts), include=include)
    assert result.docs
    return result.docs


@pytest.fixture(scope="module")
def rest_docs() -> list[ApiDoc]:
    return _load("backend.ai", "openapi.json")


@pytest.fixture(scope="module")
def py_docs() -> list[ApiDoc]:
    return _load("backend.ai", "backend.ai_client-24.3.0-py3-none-any.whl", include=[FUNC])


@pytest.fixture(scope="module")
def bench_docs() -> list[ApiDoc]:
    return [
        *_load("apibench", "torchhub_api.jsonl"),
        *_load("apibench", "huggingface_api.jsonl"),
        *_load("apibench", "tensorflowhub_api.jsonl"),
    ]


@pytest.fixture(scope="module")
def rest(rest_docs: list[ApiDoc]) -> ApiCatalog:
    return ApiCatalog(rest_docs)


@pytest.fixture(scope="module")
def py(py_docs: list[ApiDoc]) -> ApiCatalog:
    return ApiCatalog(py_docs)


@pytest.fixture(scope="module")
def bench(bench_docs: list[ApiDoc]) -> ApiCatalog:
    return ApiCatalog(bench_docs)


def _retrieved(catalog: ApiCatalog, keys: Sequence[str]) -> list[RetrievedDoc]:
    out = []
    for key in keys:
        doc = catalog.get(key)
        assert doc is not None, key
        out.append(RetrievedDoc(doc, "c", 1.0))
    return out


# Where these tests' calls say the APIs are served (Backend.AI's spec names no servers): the
# configured base URLs.
BASE_URLS = ("https://h", "https://api.backend.ai")


def check(fmt: PromptFormat, text: str, corpus: ApiCatalog | None, retrieved: Sequence[str] = ()) -> CheckedAnswer:
    docs = _retrieved(corpus, retrieved) if corpus is not None else []
    return check_answer(fmt, text, docs, corpus, base_urls=BASE_URLS)


def _said(answer: CheckedAnswer, *words: str) -> bool:
    text = " | ".join(answer.reasons)
    return all(w in text for w in words)


# ---------------------------------------------------------------------------------------------
# REST: Backend.AI openapi.json

MKDIR = "POST /folders/{name}/mkdir"


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        (
            G,
            "<<<api_call>>>: requests.post('https://api.backend.ai/folders/myvf/mkdir', json={'path': 'a/b', 'exist_ok': True})",
        ),
        (G, '<<<api_call>>>: POST /folders/myvf/mkdir {"path": ["a", "b"], "parents": false, "exist_ok": true}'),
        (
            G,
            '<<<api_call>>>: curl -X POST https://api.backend.ai/folders/myvf/mkdir -d \'{"path": "a", "exist_ok": false}\'',
        ),
        (G, "<<<api_call>>>: POST /folders/{name}/mkdir"),  # the template itself, no arguments: path checked only
        (O, "<<function>>folders_mkdir(name='myvf', path='a/b', parents=True, exist_ok=False)"),
    ],
)
def test_rest_valid_calls(rest: ApiCatalog, fmt: PromptFormat, text: str) -> None:
    answer = check(fmt, text, rest, [MKDIR])
    assert answer.verdict is Verdict.VALID, answer.reasons
    assert answer.doc_key == MKDIR
    assert answer.checks[0].retrieved
    assert answer.calls[0].matched_key == MKDIR


def test_rest_concrete_path_matches_the_most_specific_template(rest: ApiCatalog) -> None:
    # /folders/_/hosts is its own operation, not GET /folders/{name} with name="_".
    assert check(G, "<<<api_call>>>: GET /folders/_/hosts", rest).doc_key == "GET /folders/_/hosts"
    assert check(G, "<<<api_call>>>: GET /folders/my-data", rest).doc_key == "GET /folders/{name}"
    based = check(G, "<<<api_call>>>: requests.get('https://h/api/folders/my-data')", rest)
    assert based.verdict is Verdict.VALID and based.doc_key == "GET /folders/{name}"
    assert _said(based, "base path /api")


def test_rest_made_up_endpoint_is_unknown(rest: ApiCatalog) -> None:
    answer = check(G, "<<<api_call>>>: POST /sessions/teleport", rest, [MKDIR])
    assert answer.verdict is Verdict.UNKNOWN_API
    assert answer.doc_key == ""
    assert _said(answer, "no operation matches POST /sessions/teleport")


def test_rest_missing_required_parameter(rest: ApiCatalog) -> None:
    answer = check(
        G, "<<<api_call>>>: requests.post('https://h/folders/myvf/mkdir', json={'parents': True})", rest, [MKDIR]
    )
    assert answer.verdict is Verdict.WRONG_ARGUMENTS
    assert answer.doc_key == MKDIR
    assert _said(answer, "missing required parameters: path, exist_ok")
    # 'parents' is marked required in the spec but has a default: not reported missing.
    assert "parents" not in " ".join(answer.reasons)
    fn = check(O, "<<function>>folders_mkdir(path='a', exist_ok=True)", rest, [MKDIR])
    assert fn.verdict is Verdict.WRONG_ARGUMENTS and _said(fn, "missing required parameter: name")
    query = check(G, "<<<api_call>>>: requests.get('https://h/events/background-task', params={'since': 1})", rest)
    assert query.verdict is Verdict.WRONG_ARGUMENTS
    assert _said(query, "unknown query parameter 'since'", "missing required parameter: task_id")


def test_rest_unknown_parameter_is_named(rest: ApiCatalog) -> None:
    answer = check(
        G,
        "<<<api_call>>>: requests.post('https://h/folders/myvf/mkdir', json={'path': 'a', 'exist_ok': True, 'colour': 'red'})",
        rest,
        [MKDIR],
    )
    assert answer.verdict is Verdict.WRONG_ARGUMENTS
    assert _said(answer, "unknown body field 'colour'")
    fn = check(O, "<<function>>folders_mkdir(name='v', path='a', exist_ok=True, parent=True)", rest, [MKDIR])
    assert fn.verdict is Verdict.WRONG_ARGUMENTS and _said(fn, "unknown parameter 'parent'", "did you mean 'parents'")


def test_rest_real_call_with_wrong_path(rest: ApiCatalog) -> None:
    # /folder/ instead of /folders/: the operation exists, the path the model wrote does not.
    answer = check(
        G,
        "<<<api_call>>>: requests.post('https://h/folder/myvf/mkdir', json={'path': 'a', 'exist_ok': True})",
        rest,
        [MKDIR],
    )
    assert answer.verdict is Verdict.UNKNOWN_API
    assert answer.checks[0].suggestion == MKDIR
    assert _said(answer, "no operation matches POST /folder/myvf/mkdir", f"closest real API: {MKDIR}")
    # The right path with the wrong method.
    wrong_method = check(G, "<<<api_call>>>: DELETE /folders/myvf/mkdir", rest, [MKDIR])
    assert wrong_method.verdict is Verdict.UNKNOWN_API
    assert _said(wrong_method, "no DELETE operation on /folders/{name}/mkdir; it has POST")


def test_rest_simple_type_checks(rest: ApiCatalog) -> None:
    body = "{'name': 'mysession', 'image': 'python:3.9', 'enqueueOnly': False, 'maxWaitSeconds': 0, 'dependencies': [], %s}"
    ok = check(G, "<<<api_call>>>: requests.post('https://h/session', json=" + body % "'cluster_size': 2" + ")", rest)
    assert ok.verdict is Verdict.VALID, ok.reasons
    bad = check(
        G, "<<<api_call>>>: requests.post('https://h/session', json=" + body % "'cluster_size': 'two'" + ")", rest
    )
    assert bad.verdict is Verdict.WRONG_ARGUMENTS and _said(bad, "'cluster_size' should be integer, got string 'two'")
    enum = check(G, "<<<api_call>>>: requests.post('https://h/session', json=" + body % "'type': 'weird'" + ")", rest)
    assert enum.verdict is Verdict.WRONG_ARGUMENTS and _said(enum, "'type' should be one of 'interactive'")
    # Query strings are text: "true" fits a boolean.
    assert check(G, "<<<api_call>>>: GET /folders?all=true", rest).verdict is Verdict.VALID


def test_rest_operation_derives_parameter_locations(rest: ApiCatalog) -> None:
    doc = rest.get("GET /events/background-task")
    assert doc is not None
    op = rest_operation(doc)
    assert op is not None
    assert [(p.name, p.where, p.required) for p in op.params] == [("task_id", "query", True)]
    mkdir = rest.get(MKDIR)
    assert mkdir is not None
    op = rest_operation(mkdir)
    assert op is not None
    assert {p.name: (p.where, p.required) for p in op.params} == {
        "name": ("path", True),
        "path": ("body", True),
        "parents": ("body", False),  # required in the spec, but defaulted
        "exist_ok": ("body", True),
    }


def test_rest_not_retrieved_but_in_corpus(rest: ApiCatalog) -> None:
    answer = check(G, "<<<api_call>>>: GET /folders/_/hosts", rest, [MKDIR])
    assert answer.verdict is Verdict.VALID
    assert not answer.checks[0].retrieved
    assert _said(answer, "not among the retrieved docs")


# ---------------------------------------------------------------------------------------------
# Python: the Backend.AI 24.3.0 client (ai.backend.client.func)

GET_OR_CREATE = f"{FUNC}.session.ComputeSession.get_or_create"
VF_CREATE = f"{FUNC}.vfolder.VFolder.create"
VF_MKDIR = f"{FUNC}.vfolder.VFolder.mkdir"


def test_signature_is_rebuilt_from_source_without_import(py: ApiCatalog) -> None:
    doc = py.get(GET_OR_CREATE)
    assert doc is not None
    sig = python_signature(doc)
    assert sig is not None
    params = list(sig.parameters.values())
    assert params[0].name == "image"  # cls dropped: it is a classmethod
    assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and params[0].default is inspect.Parameter.empty
    assert sig.parameters["name"].kind is inspect.Parameter.KEYWORD_ONLY
    assert repr(sig.parameters["type_"].default) == "SessionTypes.INTERACTIVE.value"  # source text, never evaluated
    cls = py.get(f"{FUNC}.vfolder.VFolder")
    assert cls is not None
    assert list((python_signature(cls) or inspect.Signature()).parameters) == ["name", "id"]


@pytest.mark.parametrize(
    ("fmt", "text", "key"),
    [
        (
            G,
            "<<<api_call>>>: ComputeSession.get_or_create('python:3.9-ubuntu20.04', name='my-session', type_='batch')",
            GET_OR_CREATE,
        ),
        (G, "<<<api_call>>>: await api_session.ComputeSession.get_or_create(image='python:3.9')", GET_OR_CREATE),
        (G, f"<<<api_call>>>: {GET_OR_CREATE}('python:3.9')", GET_OR_CREATE),
        (O, "<<function>>VFolder.create(name='data', host='local:volume1', permission='rw')", VF_CREATE),
        (G, "<<<api_call>>>: VFolder('data').mkdir('models/v1', parents=True, exist_ok=True)", VF_MKDIR),
        (G, "<<<api_call>>>: with Session() as api_session:\n    api_session.VFolder.create('data')", VF_CREATE),
    ],
)
def test_python_valid_calls(py: ApiCatalog, fmt: PromptFormat, text: str, key: str) -> None:
    answer = check(fmt, text, py, [key])
    assert answer.verdict is Verdict.VALID, answer.reasons
    assert answer.doc_key == key
    assert answer.checks[0].retrieved


def test_python_unknown_keyword_is_named(py: ApiCatalog) -> None:
    answer = check(O, "<<function>>ComputeSession.get_or_create(image='python:3.9', colour='red')", py, [GET_OR_CREATE])
    assert answer.verdict is Verdict.WRONG_ARGUMENTS
    assert answer.doc_key == GET_OR_CREATE
    assert _said(answer, "unknown keyword argument", "'colour'")
    typo = check(G, "<<<api_call>>>: ComputeSession.get_or_create('py', max_waits=10)", py)
    assert _said(typo, "'max_waits'", "did you mean 'max_wait'")


def test_python_missing_required_argument(py: ApiCatalog) -> None:
    answer = check(G, "<<<api_call>>>: VFolder.create(host='local:volume1')", py, [VF_CREATE])
    assert answer.verdict is Verdict.WRONG_ARGUMENTS
    assert _said(answer, "missing required argument of VFolder.create: name")
    receiver = check(G, "<<<api_call>>>: VFolder().mkdir('a')", py, [VF_MKDIR])
    assert receiver.verdict is Verdict.WRONG_ARGUMENTS
    assert _said(receiver, "VFolder(...): missing required argument", "name")


def test_python_other_binding_errors(py: ApiCatalog) -> None:
    many = check(G, "<<<api_call>>>: VFolder('x').rename('a', 'b', 'c')", py)
    assert many.verdict is Verdict.WRONG_ARGUMENTS and _said(many, "too many positional arguments")
    twice = check(G, "<<<api_call>>>: VFolder.create('data', name='data')", py)
    assert twice.verdict is Verdict.WRONG_ARGUMENTS and _said(twice, "multiple values for argument 'name'")
    typed = check(G, "<<<api_call>>>: VFolder.create(name=123)", py)
    assert typed.verdict is Verdict.WRONG_ARGUMENTS and _said(typed, "'name' should be string, got integer 123")
    starred = check(G, "<<<api_call>>>: VFolder.create(**opts)", py)
    assert starred.verdict is Verdict.VALID and _said(starred, "not checked")


def test_python_made_up_function_is_unknown(py: ApiCatalog) -> None:
    answer = check(G, "<<<api_call>>>: ComputeSession.teleport(destination='mars')", py, [GET_OR_CREATE])
    assert answer.verdict is Verdict.UNKNOWN_API
    assert _said(answer, "ComputeSession.teleport matches no API")


def test_python_real_function_with_wrong_module_path(py: ApiCatalog) -> None:
    answer = check(G, f"<<<api_call>>>: {FUNC}.session.VFolder.create('data')", py, [VF_CREATE])
    assert answer.verdict is Verdict.UNKNOWN_API
    assert answer.checks[0].suggestion == VF_CREATE
    assert _said(answer, f"{FUNC}.session.VFolder.create does not exist", f"defined in {FUNC}.vfolder")


# ---------------------------------------------------------------------------------------------
# APIBench records: Gorilla's AST sub-tree rule

RESNET18 = "torch.hub.load(repo_or_dir='pytorch/vision', model='resnet18', pretrained=True)"


def test_apibench_reference_values() -> None:
    assert apibench_reference(RESNET18) == ApibenchReference("torch.hub.load", ("pytorch/vision", "resnet18"))
    unquoted = apibench_reference("pipeline(sentiment-analysis, model=AutoModel.from_pretrained('x'))")
    assert unquoted is not None and unquoted.values == ("sentiment-analysis", "AutoModel.from_pretrained('x')")


def test_apibench_match_by_gorilla_rule(bench: ApiCatalog) -> None:
    # Positional arguments, an assignment around the call: still the resnet18 record.
    answer = check(
        G,
        "<<<domain>>>: Classification <<<api_call>>>: model = torch.hub.load('pytorch/vision', 'resnet18', pretrained=True) <<<api_provider>>>: PyTorch",
        bench,
        [RESNET18],
    )
    assert answer.verdict is Verdict.VALID
    assert answer.doc_key == RESNET18 and answer.checks[0].retrieved
    hf = check(G, "<<<api_call>>>: pipeline('conversational', model='PygmalionAI/pygmalion-350m')", bench)
    assert (
        hf.verdict is Verdict.VALID and hf.doc_key == "pipeline('conversational', model='PygmalionAI/pygmalion-350m')"
    )
    tf = check(
        G,
        "<<<api_call>>>: hub.KerasLayer('https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/4', input_shape=(224, 224, 3))",
        bench,
    )
    assert tf.verdict is Verdict.VALID
    nested = check(
        G, "<<<api_call>>>: model = torch.hub.load('pytorch/vision', 'resnet18', pretrained=True).eval()", bench
    )
    assert nested.verdict is Verdict.VALID and nested.doc_key == RESNET18


def test_apibench_real_but_not_retrieved(bench: ApiCatalog) -> None:
    vgg = "torch.hub.load(repo_or_dir='pytorch/vision', model='vgg19', pretrained=True)"
    answer = check(G, "<<<api_call>>>: torch.hub.load('pytorch/vision', 'vgg19', pretrained=True)", bench, [RESNET18])
    assert answer.verdict is Verdict.VALID
    assert answer.doc_key == vgg and not answer.checks[0].retrieved
    assert _said(answer, "not among the retrieved docs")


def test_apibench_hallucinated_model_is_unknown(bench: ApiCatalog) -> None:
    answer = check(
        G, "<<<api_call>>>: torch.hub.load('pytorch/vision', 'resnet1800', pretrained=True)", bench, [RESNET18]
    )
    assert answer.verdict is Verdict.UNKNOWN_API
    assert _said(answer, "no API record has torch.hub.load with 'pytorch/vision', 'resnet1800'")
    assert answer.checks[0].suggestion == RESNET18
    made_up = check(G, "<<<api_call>>>: torchvision.models.magicnet(pretrained=True)", bench)
    assert made_up.verdict is Verdict.UNKNOWN_API


# ---------------------------------------------------------------------------------------------
# Answers as a whole (inline docs: no ../shared needed)


def _inline_catalog() -> ApiCatalog:
    fn = {
        "name": "make",
        "parameters": {"type": "object", "properties": {"size": {"type": "integer"}}, "required": ["size"]},
    }
    return ApiCatalog(
        [
            ApiDoc(
                "pkg.mod.make",
                "make",
                "t",
                "t",
                {"kind": "function", "signature": "def make(size: int)", "function": fn},
            ),
            ApiDoc("note-1", "a note", "t", "t", {}),
        ]
    )


def test_unparseable_answer() -> None:
    answer = check_answer(G, "Sorry, I can't help with that.", [], _inline_catalog())
    assert answer.verdict is Verdict.UNPARSEABLE and answer.reasons
    empty = check_answer(O, "", [], None)
    assert empty.verdict is Verdict.UNPARSEABLE


def test_no_docs_means_unchecked_not_hallucination() -> None:
    answer = check_answer(G, "<<<api_call>>>: make(3)", [], None)
    assert answer.verdict is Verdict.UNCHECKED
    assert _said(answer, "no API docs")


def test_worst_call_sets_the_verdict() -> None:
    catalog = _inline_catalog()
    answer = check_answer(O, "<<function>>make(size=1)<<function>>make(size='big')<<function>>nothere()", [], catalog)
    assert [c.verdict for c in answer.checks] == [Verdict.VALID, Verdict.WRONG_ARGUMENTS, Verdict.UNKNOWN_API]
    assert answer.verdict is Verdict.UNKNOWN_API
    assert type_problem("big", {"type": "integer"}) == "should be integer, got string 'big'"
    assert type_problem(True, {"type": "integer"}) is not None  # bool is not an integer in JSON
    assert type_problem(None, {"type": "integer"}) is None


def test_check_answer_never_raises_on_fuzz() -> None:
    rng = random.Random(7)
    catalog = _inline_catalog()
    atoms = [
        "<<<api_call>>>:",
        "<<function>>",
        "make",
        "(",
        ")",
        "size=",
        "'",
        "1",
        ",",
        "POST /x",
        "requests.get(",
        "'http://h/a/{b}'",
        "json={",
        "}",
        "**k",
        "*a",
        ".",
        "pkg.mod.",
        "torch.hub.load",
        "\n",
    ]
    start = time.perf_counter()
    for _ in range(800):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 25)))
        for fmt in (G, O):
            answer = check_answer(fmt, text, [], catalog)
            assert answer.verdict in Verdict
    assert time.perf_counter() - start < budget(10)


def test_hostile_answers_are_checked_quickly(
    rest_docs: list[ApiDoc], py_docs: list[ApiDoc], bench_docs: list[ApiDoc]
) -> None:
    corpus = ApiCatalog([*rest_docs, *py_docs, *bench_docs]).prepare()
    for text in HOSTILE_ANSWERS:
        for fmt in (G, O):
            start = time.perf_counter()
            answer = check_answer(fmt, text, [], corpus)
            assert time.perf_counter() - start < budget(1.0), text[:60]
            assert answer.verdict in Verdict


def test_doc_without_function_schema_still_checks_path_and_parameters(rest: ApiCatalog) -> None:
    full = rest.get(MKDIR)
    assert full is not None
    # As a vector store may return it when the metadata was too big: no "function" schema.
    trimmed = ApiDoc(
        full.key,
        full.title,
        full.text,
        full.index_text,
        {"kind": "rest_operation", "method": "POST", "path": "/folders/{name}/mkdir", "truncated": True},
    )
    text = "<<<api_call>>>: requests.post('https://h/folders/vf/mkdir', json={'path': 'a', 'anything': 1})"
    alone = check_answer(G, text, [RetrievedDoc(trimmed, "c", 1.0)], None, base_urls=BASE_URLS)
    assert alone.verdict is Verdict.VALID and alone.doc_key == MKDIR  # body fields unknown: not judged
    # With the corpus at hand, its full copy of the doc is used instead.
    with_corpus = check_answer(G, text, [RetrievedDoc(trimmed, "c", 1.0)], rest)
    assert with_corpus.verdict is Verdict.WRONG_ARGUMENTS and _said(with_corpus, "unknown body field 'anything'")


def test_every_documented_api_validates_as_itself(
    rest: ApiCatalog, rest_docs: list[ApiDoc], py: ApiCatalog, py_docs: list[ApiDoc]
) -> None:
    """No template or name shadows another: each REST operation written as its key, and each
    client function called by its qualified name with its required arguments, is valid and
    resolves to its own doc."""
    for doc in rest_docs:
        answer = check_answer(G, f"<<<api_call>>>: {doc.key}", [], rest)
        assert (answer.verdict, answer.doc_key) == (Verdict.VALID, doc.key)
    P = inspect.Parameter
    for doc in py_docs:
        sig = python_signature(doc)
        assert sig is not None, doc.key
        required = [
            p.name
            for p in sig.parameters.values()
            if p.default is P.empty and p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)
        ]
        call = f"{doc.metadata['qualname']}({', '.join(f'{n}=None' for n in required)})"
        answer = check_answer(O, f"<<function>>{call}", [], py)
        assert (answer.verdict, answer.doc_key) == (Verdict.VALID, doc.key), (call, answer.reasons)


def test_a_placeholder_path_segment_is_the_whole_segment(tmp_path: Path) -> None:
    # "$" also matches before a final newline: "<file_id>\n" (%0A in the URL) is not a placeholder.
    spec = tmp_path / "files.json"
    spec.write_text(
        json.dumps(
            {
                "openapi": "3.0.0",
                "info": {"title": "files", "version": "1"},
                "servers": [{"url": "https://files.example"}],
                "paths": {"/files/{file_id}.json/versions": {"get": {"operationId": "getFile", "responses": {}}}},
            }
        ),
        encoding="utf-8",
    )
    _, loaded = load_corpus(spec)
    catalog = ApiCatalog(loaded.docs)
    call = "<<<api_call>>>: requests.get('https://files.example/files/%s/versions')"
    assert check_answer(G, call % "<file_id>", [], catalog).verdict is Verdict.VALID
    assert check_answer(G, call % "<file_id>%0A", [], catalog).verdict is Verdict.UNKNOWN_API
