"""Parsing Gorilla answers (service/postprocess.py): both formats, malformed, truncated and hostile.

No docs and no ../shared here: this is syntax only. Every parse must return, never raise, never
evaluate anything, and stay cheap on adversarial input.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from apihelper.service.answers.parse import (
    ArgWhere,
    CallStyle,
    ParsedCall,
    gorilla_fields_layout,
    parse_answer,
    parse_call,
)
from apihelper.service.prompts import PromptFormat
from tests.support import HOSTILE_ANSWERS, budget

G = PromptFormat.GORILLA_V0
O = PromptFormat.OPENFUNCTIONS_V2


def _kw(call: ParsedCall) -> dict[str, Any]:
    """Keyword (and REST query/body) arguments' literal values."""
    return {a.name: a.value for a in call.args if a.name and a.literal}


def _pos(call: ParsedCall) -> list[Any]:
    return [a.value for a in call.args if a.where is ArgWhere.POSITIONAL]


@dataclass(frozen=True)
class Case:
    id: str
    fmt: PromptFormat
    text: str
    names: list[str]  # expected call names; [""] for one unparseable call
    fields: dict[str, str] | None = None  # expected fields (subset)
    kwargs: dict[str, Any] | None = None  # expected literal keyword values of the first call (subset)
    positional: list[Any] | None = None
    truncated: bool = False


HF_FULL = (
    "<<<domain>>>: Natural Language Processing Text Classification\n"
    "<<<api_call>>>: pipeline('sentiment-analysis', model='distilbert-base-uncased-finetuned-sst-2-english')\n"
    "<<<api_provider>>>: Hugging Face Transformers\n"
    "<<<explanation>>>: 1. Import the pipeline function from transformers.\n2. Create a classifier.\n"
    "<<<code>>>: from transformers import pipeline\n"
    "classifier = pipeline('sentiment-analysis', model='distilbert-base-uncased-finetuned-sst-2-english')\n"
    "result = classifier('I love this movie!')"
)

CASES = [
    Case(
        "v0-full-hf",
        G,
        HF_FULL,
        ["pipeline"],
        {"domain": "Natural Language Processing Text Classification", "api_provider": "Hugging Face Transformers"},
        {"model": "distilbert-base-uncased-finetuned-sst-2-english"},
        ["sentiment-analysis"],
    ),
    Case(
        "v0-reordered",
        G,
        "<<<api_provider>>>: TensorFlow Hub <<<explanation>>>: Loads MobileNet. "
        "<<<api_call>>>: hub.KerasLayer('https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/4') "
        "<<<domain>>>: Image feature vector",
        ["hub.KerasLayer"],
        {"api_provider": "TensorFlow Hub", "domain": "Image feature vector"},
        positional=["https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/4"],
    ),
    Case(
        "v0-missing-fields",
        G,
        "<<<api_call>>>: AutoModel.from_pretrained('bert-base-uncased')",
        ["AutoModel.from_pretrained"],
        positional=["bert-base-uncased"],
    ),
    Case(
        "v0-repeated-field-first-wins",
        G,
        "<<<domain>>>: Classification <<<api_call>>>: torch.hub.load('pytorch/vision', 'resnet18', pretrained=True) "
        "<<<api_provider>>>: PyTorch <<<api_call>>>: torch.hub.load('pytorch/vision', 'resnet50', pretrained=True)",
        ["torch.hub.load"],
        {"domain": "Classification"},
        {"pretrained": True},
        ["pytorch/vision", "resnet18"],
    ),
    Case(
        "v0-empty-first-repeat-nonempty",
        G,
        "<<<api_call>>>: <<<domain>>>: Classification <<<api_call>>>: torch.hub.load('pytorch/vision', 'vgg19')",
        ["torch.hub.load"],
        positional=["pytorch/vision", "vgg19"],
    ),
    Case(
        "v0-truncated-mid-call",
        G,
        "<<<domain>>>: Natural Language Processing Fill-Mask <<<api_call>>>: AutoModel.from_pretrained('bert-base-unc",
        ["AutoModel.from_pretrained"],
        positional=["bert-base-unc"],
        truncated=True,
    ),
    Case(
        "v0-truncated-dangling-argument",
        G,
        "<<<api_call>>>: pipeline('translation_en_to_fr', model='t5-small', tokenizer=",
        ["pipeline"],
        kwargs={"model": "t5-small"},
        truncated=True,
    ),
    Case(
        "v0-truncated-marker",
        G,
        "<<<domain>>>: Text embedding <<<api_call>>>: hub.load('https://tfhub.dev/google/universal-sentence-encoder/4') <<<api_prov",
        ["hub.load"],
        {"api_call": "hub.load('https://tfhub.dev/google/universal-sentence-encoder/4')"},
    ),
    Case(
        "v0-odd-marker-spacing",
        G,
        "<<< Domain >>> Classification\n<<<api call>>>:   torch.hub.load(repo_or_dir='pytorch/vision', model='alexnet', pretrained=True)",
        ["torch.hub.load"],
        {"domain": "Classification"},
        {"repo_or_dir": "pytorch/vision", "model": "alexnet"},
    ),
    Case(
        "v0-trailing-prose",
        G,
        "<<<api_call>>>: hub.KerasLayer('https://tfhub.dev/google/imagenet/inception_v3/classification/5') is used to "
        "load the model. <<<api_provider>>>: TensorFlow Hub",
        ["hub.KerasLayer"],
    ),
    Case(
        "v0-backticks",
        G,
        "<<<api_call>>>: `ComputeSession.get_or_create('python:3.9-ubuntu20.04', name='my-session')`",
        ["ComputeSession.get_or_create"],
        kwargs={"name": "my-session"},
        positional=["python:3.9-ubuntu20.04"],
    ),
    Case(
        "v0-fenced-with-assignment-and-await",
        G,
        "<<<api_call>>>: ```python\nsess = await api_session.ComputeSession.get_or_create(image='python:3.9')\n```",
        ["api_session.ComputeSession.get_or_create"],
        kwargs={"image": "python:3.9"},
    ),
    Case(
        "v0-with-block",
        G,
        "<<<api_call>>>: with Session() as api_session:\n    api_session.VFolder.create(name='data')",
        ["api_session.VFolder.create"],
        kwargs={"name": "data"},
    ),
    Case(
        "v0-dict-layout",
        G,
        "{'domain': 'Classification', 'api_call': \"model = torch.hub.load('intel-isl/MiDaS', 'DPT_Hybrid', pretrained=True)\", "
        "'api_provider': 'PyTorch', 'explanation': \"Load the pretrained MiDaS model.\", 'code': 'import torch'}",
        ["torch.hub.load"],
        {"domain": "Classification", "api_provider": "PyTorch", "code": "import torch"},
        positional=["intel-isl/MiDaS", "DPT_Hybrid"],
    ),
    Case(
        # Gorilla-7B's released TorchHub answers: the dict rendered inside a string, so the api_call
        # value opens and closes with an escaped quote.
        "v0-dict-layout-escaped-quotes",
        G,
        "{'domain': 'Classification', 'api_call': \\\"model = torch.hub.load('intel-isl/MiDaS', 'DPT_Hybrid')\\\", "
        "'api_provider': 'PyTorch', 'explanation': 'Load the pretrained MiDaS model.'}\\n\"",
        ["torch.hub.load"],
        {"domain": "Classification", "api_provider": "PyTorch"},
        positional=["intel-isl/MiDaS", "DPT_Hybrid"],
    ),
    Case(
        "v0-dict-layout-escaped-quotes-inside",
        G,
        "{'domain': 'Classification', 'api_call': \\\"model = torch.hub.load(\\\"owner/repo\\\", \\\\'net\\\\', "
        "pretrained=True)\\\", 'api_provider': 'PyTorch'}",
        ["torch.hub.load"],
        {"api_provider": "PyTorch"},
        kwargs={"pretrained": True},
        positional=["owner/repo", "net"],
    ),
    Case(
        "v0-dict-layout-escaped-quote-cut-off",
        G,
        "{'domain': 'Classification', 'api_call': \\'model = torch.hub.load(\"intel-isl/MiDaS\", \"DPT_Large\")",
        ["torch.hub.load"],
        positional=["intel-isl/MiDaS", "DPT_Large"],
    ),
    Case(
        "v0-dict-layout-nested-output",
        G,
        "{'Instruction': I need an API to estimate depth., 'Output': {'domain': 'Classification', 'api_call': "
        "\"model = torch.hub.load('intel-isl/MiDaS', 'DPT_Large', pretrained=True)\", 'api_provider': 'PyTorch'}}",
        ["torch.hub.load"],
        {"domain": "Classification"},
        positional=["intel-isl/MiDaS", "DPT_Large"],
    ),
    Case(
        "v0-dict-layout-truncated",
        G,
        "###Output: {'domain': 'Semantic Segmentation', 'api_call': \"model = torch.hub.load('pytorch/vision', "
        "'fcn_resnet101', pretrained=True)\", 'api_provider': 'PyTorch', 'explanation': 'Load the pretrained FCN-Res",
        ["torch.hub.load"],
        {"domain": "Semantic Segmentation", "explanation": "Load the pretrained FCN-Res"},
        positional=["pytorch/vision", "fcn_resnet101"],
    ),
    Case(
        "v0-json-dict-layout",
        G,
        '{"domain": "Cloud", "api_call": "POST /session", "api_provider": "Backend.AI"}',
        ["POST /session"],
        {"api_provider": "Backend.AI"},
    ),
    Case(
        "v0-bare-call",
        G,
        "VFolder('data').mkdir('models/v1', parents=True)",
        ["VFolder.mkdir"],
        kwargs={"parents": True},
    ),
    Case("v0-rest-text", G, "<<<api_call>>>: POST /session <<<api_provider>>>: Backend.AI", ["POST /session"]),
    Case(
        "v0-rest-text-with-body",
        G,
        '<<<api_call>>>: POST /folders/{name}/mkdir with body {"path": "a/b", "parents": true}',
        ["POST /folders/{name}/mkdir"],
        kwargs={"path": "a/b", "parents": True},
    ),
    Case(
        "v0-rest-in-prose",
        G,
        "<<<api_call>>>: Send DELETE /session/my-sess to destroy it.",
        ["DELETE /session/my-sess"],
    ),
    Case(
        "v0-requests",
        G,
        "<<<api_call>>>: requests.post('https://api.backend.ai/folders/myvf/mkdir?dry=1', json={'path': 'x', 'exist_ok': True})",
        ["POST /folders/myvf/mkdir"],
        kwargs={"path": "x", "exist_ok": True, "dry": "1"},
    ),
    Case(
        "v0-requests-fstring",
        G,
        "<<<api_call>>>: response = requests.get(f'{BASE_URL}/session/{session_id}', params={'owner_access_key': 'AK'})",
        ["GET /session/{session_id}"],
        kwargs={"owner_access_key": "AK"},
    ),
    Case(
        "v0-requests-request",
        G,
        "<<<api_call>>>: httpx.request('PATCH', 'http://localhost:8090/auth/ssh-keypair')",
        ["PATCH /auth/ssh-keypair"],
    ),
    Case(
        "v0-curl",
        G,
        "<<<api_call>>>: curl -X POST https://api.backend.ai/folders/myvf/rename -H 'Content-Type: application/json' "
        '-d \'{"new_name": "other"}\'',
        ["POST /folders/myvf/rename"],
        kwargs={"new_name": "other"},
    ),
    Case(
        "v0-curl-get",
        G,
        "<<<api_call>>>: curl https://api.backend.ai/folders?all=true",
        ["GET /folders"],
        kwargs={"all": "true"},
    ),
    Case("v0-prose-only", G, "I am sorry, I cannot help with that request.", [""]),
    Case("v0-empty", G, "", [""]),
    Case("v0-fields-no-call", G, "<<<domain>>>: Classification <<<explanation>>>: It classifies.", [""]),
    Case("v0-lambda", G, "<<<api_call>>>: lambda x: x", [""]),
    Case(
        "of-single",
        O,
        "<<function>>get_current_weather(location='Boston, MA', unit='fahrenheit')",
        ["get_current_weather"],
        kwargs={"location": "Boston, MA", "unit": "fahrenheit"},
    ),
    Case(
        "of-two-calls",
        O,
        "<<function>>VFolder.create(name='data', host='local:volume1')<<function>>VFolder.list()",
        ["VFolder.create", "VFolder.list"],
        kwargs={"name": "data", "host": "local:volume1"},
    ),
    Case(
        "of-calls-on-lines",
        O,
        " <<function>>session_create_from_params(name='s', image='python:3.9')\n<<function>>session_get_info(session_name='s')\n",
        ["session_create_from_params", "session_get_info"],
    ),
    Case("of-list", O, "<<function>>[f(a=1), g(b=[1, 2])]", ["f", "g"], kwargs={"a": 1}),
    Case(
        "of-truncated",
        O,
        "<<function>>folders_mkdir(name='vf', path='a/b', parents=Tr",
        ["folders_mkdir"],
        kwargs={"name": "vf", "path": "a/b"},
        truncated=True,
    ),
    Case(
        "of-nested-literals",
        O,
        "<<function>>f([1, 2], {'a': (1, 2)}, x=None, y=-3.5, z=b'raw')",
        ["f"],
        kwargs={"x": None, "y": -3.5, "z": b"raw"},
        positional=[[1, 2], {"a": (1, 2)}],
    ),
    Case("of-no-marker-but-call", O, "get_weather(city='Paris')", ["get_weather"], kwargs={"city": "Paris"}),
    Case("of-prose", O, "The weather API needs a city name.", [""]),
    Case("of-empty-marker", O, "<<function>>", [""]),
    Case("of-garbage-after-marker", O, "<<function>>)))(((", [""]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_answer_table(case: Case) -> None:
    answer = parse_answer(case.fmt, case.text)
    assert [c.name for c in answer.calls] == case.names, answer
    if case.names == [""]:
        assert answer.calls[0].style is CallStyle.NONE
        assert answer.calls[0].problem
        return
    first = answer.calls[0]
    if case.fields is not None:
        for name, value in case.fields.items():
            assert answer.fields.get(name) == value, (name, answer.fields)
    if case.kwargs is not None:
        got = _kw(first)
        for name, value in case.kwargs.items():
            assert got.get(name, "<missing>") == value, (name, got)
    if case.positional is not None:
        assert _pos(first)[: len(case.positional)] == case.positional
    assert first.truncated is case.truncated


def test_argument_source_text_is_kept_as_written() -> None:
    call = parse_call("client.sessions.create(image='python', name=\"x\", size=2 * 3, env=os.environ['HOME'])")
    assert call.name == "client.sessions.create"
    assert call.arguments == {"image": "'python'", "name": '"x"', "size": "2 * 3", "env": "os.environ['HOME']"}
    by_name = {a.name: a for a in call.args}
    assert by_name["image"].literal and by_name["image"].value == "python"
    assert not by_name["size"].literal  # 2 * 3 is an expression, not a literal: never computed
    assert not by_name["env"].literal


def test_source_text_survives_unusual_line_breaks() -> None:
    call = parse_call("f(a='x\u2028y',\n b=2, c='\x0c',\n d=[1,\n 2], e='é')")
    assert call.arguments == {"a": "'x\u2028y'", "b": "2", "c": "'\x0c'", "d": "[1,\n 2]", "e": "'é'"}


def test_star_arguments_and_positionals() -> None:
    call = parse_call("f(1, *rest, key=2, **opts)")
    assert call.arguments == {"arg0": "1", "*": "rest", "key": "2", "**": "opts"}
    assert [a.where for a in call.args] == [ArgWhere.POSITIONAL, ArgWhere.STAR, ArgWhere.KEYWORD, ArgWhere.STAR_STAR]


def test_chained_call_keeps_receivers_and_subcalls() -> None:
    call = parse_call("VFolder('data').mkdir('a/b', parents=True)")
    assert call.name == "VFolder.mkdir"
    assert [r.name for r in call.receivers] == ["VFolder"]
    assert _pos(call.receivers[0]) == ["data"]
    nested = parse_call("pipeline('fill-mask', model=AutoModel.from_pretrained('bert-base-uncased'))")
    assert {c.name for c in nested.subcalls} == {"pipeline", "AutoModel.from_pretrained"}


def test_rest_calls_have_method_and_path() -> None:
    call = parse_call("requests.delete('http://h:8090/api/folders/vf?force=1')")
    assert (call.style, call.method, call.path) == (CallStyle.REST, "DELETE", "/api/folders/vf")
    assert [(a.name, a.where) for a in call.args] == [("force", ArgWhere.QUERY)]
    opaque = parse_call("requests.post(url + '/session', json=payload)")
    assert opaque.name == "POST /session"
    assert [(a.name, a.where, a.source) for a in opaque.args] == [("", ArgWhere.BODY, "payload")]
    # A Python method that merely shares an HTTP verb's name is not REST.
    assert parse_call("config.get('timeout')").style is CallStyle.PYTHON


# ---------------------------------------------------------------------------------------------
# Hostile input


def test_code_in_an_answer_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    answers = [
        (G, f"<<<api_call>>>: {payload}"),
        (G, f"<<<api_call>>>: pipeline('fill-mask', model={payload})"),
        (G, f"{{'domain': 'x', 'api_call': \"{payload}\", 'code': {payload}}}"),
        (G, f'<<<api_call>>>: POST /session {{"name": {payload}}}'),
        (G, f"<<<api_call>>>: requests.post('http://h/session', json={{'name': {payload}}})"),
        (O, f"<<function>>f(x={payload}, y=[{payload}], z={{'k': {payload}}})"),
        (O, f"<<function>>f(x=(lambda: {payload})())"),
        (O, f"<<function>>f(x=[i for i in {payload}])"),
        (O, f"<<function>>{payload}"),
    ]
    for fmt, text in answers:
        answer = parse_answer(fmt, text)
        for call in answer.calls:
            for arg in call.args:
                assert "__import__" not in repr(arg.value)  # never a computed value
    assert not marker.exists()
    call = parse_answer(O, f"<<function>>f(x={payload})").calls[0]
    assert call.name == "f"
    assert call.arguments["x"] == payload
    assert not call.args[0].literal


@pytest.mark.parametrize("text", HOSTILE_ANSWERS, ids=[f"adv{i}" for i in range(len(HOSTILE_ANSWERS))])
def test_adversarial_input_is_bounded_and_never_raises(text: str) -> None:
    for fmt in (G, O):
        start = time.perf_counter()
        answer = parse_answer(fmt, text)
        elapsed = time.perf_counter() - start
        assert elapsed < budget(1.0), f"{elapsed:.2f}s"
        assert answer.calls
        for call in answer.calls:
            assert len(call.raw) <= 64 * 1024


def test_fuzz_random_strings_never_raise() -> None:
    """Random mixes of Gorilla markers, Python and REST syntax (seeded: reproducible)."""
    rng = random.Random(20261125)
    atoms = [
        "<<<domain>>>:",
        "<<<api_call>>>:",
        "<<<api_provider>>>:",
        "<<<code>>>:",
        "<<function>>",
        "<<<",
        ">>>",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        "'",
        '"',
        "'''",
        ",",
        "=",
        ":",
        ".",
        "*",
        "**",
        "\\",
        "\n",
        " ",
        "f",
        "pipeline",
        "torch.hub.load",
        "requests.post",
        "curl",
        "-X",
        "-d",
        "POST",
        "GET",
        "/session",
        "http://h/x?a=1",
        "'pytorch/vision'",
        "model=",
        "json=",
        "{'a': 1}",
        "True",
        "None",
        "1e9",
        "lambda",
        "await",
        "with",
        "as",
        "`",
        "```",
        "#",
        "{'domain': ",
        "'api_call': ",
        "\x00",
        "é",
        "🙂",
    ]
    start = time.perf_counter()
    for _ in range(1500):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 40)))
        for fmt in (G, O):
            answer = parse_answer(fmt, text)
            assert isinstance(answer.calls, list)
        parse_call(text)
        gorilla_fields_layout(text)[0]
    for _ in range(300):
        text = "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(0, 200)))
        parse_answer(G, text)
        parse_answer(O, text)
    assert time.perf_counter() - start < budget(15)


def test_gorilla_fields_and_call() -> None:
    text = (
        "<<<domain>>>: Cloud <<<api_call>>>: client.sessions.create(image='python', name=\"x\") "
        "<<<api_provider>>>: Demo <<<explanation>>>: makes a session"
    )
    fields = gorilla_fields_layout(text)[0]
    assert fields["domain"] == "Cloud"
    assert fields["api_provider"] == "Demo"
    answer = parse_answer(G, text)
    assert [c.name for c in answer.calls] == ["client.sessions.create"]
    assert answer.calls[0].arguments == {"image": "'python'", "name": '"x"'}


def test_openfunctions_calls_in_order() -> None:
    text = "<<function>>create_session(image='py')<<function>>delete_session(session_id='a')"
    answer = parse_answer(O, text)
    assert [c.name for c in answer.calls] == ["create_session", "delete_session"]
    assert [c.matched_key for c in answer.calls] == ["", ""]  # which doc it is: check_answer says


def test_rest_call_and_garbage_never_raise() -> None:
    assert parse_call("POST /sessions with body {...}").name == "POST /sessions"
    for garbage in ["", "((((", "__import__('os').system('x')", "lambda: 1", "a" * 10000, "\x00(1)"]:
        call = parse_call(garbage)
        assert call.raw == garbage.strip()[:4096]
    # Parsed as syntax only: the name is recorded, nothing is evaluated.
    assert parse_call("__import__('os').system('x')").name == "__import__.system"


@pytest.mark.parametrize(
    ("answer", "host"),
    [
        ("requests.get('https://API.Example.com:8443/v1/x')", "api.example.com"),
        ("requests.get('https://good.example@evil.example/x')", "evil.example"),
        ("httpx.post('http://10.0.0.1/x', json={})", "10.0.0.1"),
        ("curl -X DELETE https://evil.example/admin", "evil.example"),
        ("curl evil.example/admin", "evil.example"),  # curl reads a bare host as a host
        ("curl $BASE/admin", ""),  # a shell variable stands for the server
        ("GET https://evil.example/admin", "evil.example"),
        ("requests.get('/v1/x')", ""),
        ("requests.get('{BASE_URL}/x')", ""),
        ("requests.get(f'{BASE_URL}/x')", ""),
        ("requests.get('https:///x')", "?"),  # a URL with no host in it: equals no server
    ],
)
def test_rest_calls_carry_the_host_they_name(answer: str, host: str) -> None:
    call = parse_call(answer)
    assert call.style is CallStyle.REST, call
    assert call.host == host


def test_a_positional_argument_after_a_keyword_one_is_read() -> None:
    # APIBench's MEAL-V2 records: Python refuses the call as written, Gorilla's reading does not.
    call = parse_call(
        "torch.hub.load(repo_or_dir='szq0214/MEAL-V2', 'meal_v2', model='mealv2_resnest50_cutmix', pretrained=True)"
    )
    assert call.style is CallStyle.PYTHON and call.name == "torch.hub.load"
    assert [a.value for a in call.args] == ["meal_v2", "szq0214/MEAL-V2", "mealv2_resnest50_cutmix", True]
    tricky = parse_call("f(a=1, 2, b='x,)', [3, 4])")  # commas and brackets inside strings and lists
    assert [(a.name, a.value) for a in tricky.args] == [("", 2), ("", [3, 4]), ("a", 1), ("b", "x,)")]
