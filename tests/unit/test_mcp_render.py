"""Pure parts of the MCP front end: a checked REST call rewritten as curl or requests (the same
call, read back by the same parser), and apihelper-mcp's --target."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from apihelper.errors import ConfigurationError, InvalidRequestError, UnknownCorpusError
from apihelper.service.answers.parse import CallStyle, parse_call
from apihelper.service.mcp.errors import error_text
from apihelper.service.mcp.render import render
from apihelper.service.mcp.stdio import endpoint

CALLS = [
    'requests.post("https://api.backend.ai/session", json={"image": "python:3.11", "n": 2})',
    'requests.get(f"{BASE}/sessions", params={"status": "RUNNING"})',
    'curl -X DELETE "https://h.io/session/abc?forced=true"',
    "GET /sessions?limit=5",
    'POST /folders {"name": "data", "quota": 10}',
]


@pytest.mark.parametrize("raw", CALLS)
@pytest.mark.parametrize("style", ["curl", "requests"])
def test_a_rest_call_rewritten_reads_back_as_the_same_call(raw: str, style: str) -> None:
    call = parse_call(raw)
    written = render(call, style)
    assert written is not None
    again = parse_call(written)
    assert (again.style, again.method, again.path, again.host) == (CallStyle.REST, call.method, call.path, call.host)
    assert sorted((a.name, a.where, a.value) for a in again.args) == sorted(
        (a.name, a.where, a.value) for a in call.args
    )


def test_curl_is_one_shell_command_that_sends_the_body_as_written() -> None:
    written = render(parse_call('POST /folders {"name": "it\'s $HOME"}'), "curl")
    assert written is not None
    words = shlex.split(written)
    assert words[:4] == ["curl", "-X", "POST", "{BASE_URL}/folders"]
    assert words[-1] == '{"name": "it\'s $HOME"}'  # quoted: the shell expands nothing in the body
    echoed = subprocess.run(
        ["bash", "-c", written.replace("curl", "printf '%s\\n'", 1)], capture_output=True, text=True, check=True
    )
    assert echoed.stdout.splitlines()[-1] == '{"name": "it\'s $HOME"}'


def test_a_python_call_has_no_rest_style() -> None:
    call = parse_call('client.sessions.create(image="x")')
    assert render(call, "curl") is None and render(call, "requests") is None
    assert render(call, "native") == call.raw


@pytest.mark.parametrize(
    ("target", "url"),
    [
        ("127.0.0.1:8000", "http://127.0.0.1:8000/mcp"),
        ("https://apihelper.example", "https://apihelper.example/mcp"),
        ("https://apihelper.example/", "https://apihelper.example/mcp"),
        ("http://h:1/base/mcp", "http://h:1/base/mcp"),
        ("http://h:1/base", "http://h:1/base/mcp"),
    ],
)
def test_target_is_the_services_mcp_endpoint(target: str, url: str) -> None:
    assert endpoint(target) == url


@pytest.mark.parametrize("target", ["ftp://h/x", "http://", ":8000"])
def test_a_bad_target_is_a_configuration_error(target: str) -> None:
    with pytest.raises(ConfigurationError, match="--target"):
        endpoint(target)


def test_tool_errors_name_the_tools_own_argument_and_hide_bugs() -> None:
    assert (
        error_text(UnknownCorpusError("x"), {"retrieval.corpora": "corpus"}) == "NOT_FOUND: corpus: unknown corpus 'x'"
    )
    assert error_text(InvalidRequestError("top_k", "too big")) == "INVALID_ARGUMENT: top_k: too big"
    assert error_text(KeyError("secret")) == "INTERNAL: internal error"
