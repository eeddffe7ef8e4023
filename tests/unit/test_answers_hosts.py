"""The verdict checks where a call goes: an absolute URL must name the API's own server (the
spec's OpenAPI ``servers`` or a configured base URL); any other host is not ``valid``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from apihelper.retriever.loaders.openapi import load_openapi
from apihelper.retriever.samples import sample_corpus_path
from apihelper.retriever.types import RetrievedDoc
from apihelper.service.answers.check import ApiCatalog, CheckedAnswer, Verdict, check_answer
from apihelper.service.prompts import PromptFormat

G = PromptFormat.GORILLA_V0
LOGS = "GET /sessions/{session_id}/logs"


@pytest.fixture(scope="module")
def sample() -> ApiCatalog:
    return ApiCatalog(load_openapi(sample_corpus_path()).docs)


def _spec(tmp_path: Path, servers: str, op_servers: str = "") -> ApiCatalog:
    path = tmp_path / "spec.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            openapi: 3.0.3
            info: {title: admin, version: "1"}
            %s
            paths:
              /admin/everything:
                delete:
                  operationId: deleteEverything
                  %s
                  parameters:
                    - {name: confirm, in: query, schema: {type: boolean}}
                  responses: {"204": {description: gone}}
            """
        )
        % (servers, op_servers)
    )
    return ApiCatalog(load_openapi(path).docs)


def _check(catalog: ApiCatalog, answer: str, base_urls: tuple[str, ...] = ()) -> CheckedAnswer:
    docs = [RetrievedDoc(d, "c", 1.0) for d in catalog.docs()[:3]]
    return check_answer(G, f"<<<api_call>>>: {answer}", docs, catalog, base_urls=base_urls)


def test_the_loader_records_the_specs_servers(sample: ApiCatalog) -> None:
    doc = sample.get(LOGS)
    assert doc is not None and doc.metadata["servers"] == ["https://api.nimbus.example/v1"]


@pytest.mark.parametrize(
    "answer",
    [
        "requests.get('https://attacker.example/v1/sessions/s-1/logs', params={'tail': 10})",
        "requests.get('https://attacker.example/sessions/s-1/logs')",
        "httpx.get('http://attacker.example:8080/v1/sessions/s-1/logs')",
        "curl https://attacker.example/v1/sessions/s-1/logs?tail=10",
        "curl attacker.example/v1/sessions/s-1/logs",  # curl reads a bare host as one
        "GET https://attacker.example/v1/sessions/s-1/logs",
        # The corpus' host as user info, or in the query, is still a request to attacker.example.
        "requests.get('https://api.nimbus.example@attacker.example/v1/sessions/s-1/logs')",
        "requests.get('https://attacker.example/v1/sessions/s-1/logs?h=api.nimbus.example')",
        "requests.get('https://api.nimbus.example.attacker.example/v1/sessions/s-1/logs')",
    ],
)
def test_a_real_operation_sent_to_another_host_is_not_valid(sample: ApiCatalog, answer: str) -> None:
    checked = _check(sample, answer)
    assert checked.verdict is Verdict.UNKNOWN_API, checked
    assert "wrong host" in checked.reasons[0] and "attacker.example" in checked.reasons[0]
    assert checked.checks[0].suggestion == LOGS  # what the call would be on the right server


@pytest.mark.parametrize(
    "answer",
    [
        "requests.get('https://api.nimbus.example/v1/sessions/s-1/logs', params={'tail': 10})",
        "requests.get('https://API.Nimbus.example:443/v1/sessions/s-1/logs')",
        "curl https://api.nimbus.example/v1/sessions/s-1/logs?tail=10",
        "GET https://api.nimbus.example/v1/sessions/s-1/logs",
        "requests.get('/v1/sessions/s-1/logs')",  # a path names no host
        "requests.get(f'{BASE_URL}/sessions/{session_id}/logs')",  # nor does a template
        "GET /sessions/{session_id}/logs",
    ],
)
def test_the_same_calls_to_the_corpus_own_server_are_valid(sample: ApiCatalog, answer: str) -> None:
    checked = _check(sample, answer)
    assert checked.verdict is Verdict.VALID, checked
    assert checked.doc_key == LOGS


def test_an_injected_admin_call_to_evil_example_is_not_valid(tmp_path: Path) -> None:
    catalog = _spec(tmp_path, "servers: [{url: 'https://api.corp.example'}]")
    evil = _check(catalog, "requests.delete('https://evil.example/admin/everything', params={'confirm': True})")
    assert evil.verdict is Verdict.UNKNOWN_API and "wrong host" in evil.reasons[0]
    own = _check(catalog, "requests.delete('https://api.corp.example/admin/everything', params={'confirm': True})")
    assert own.verdict is Verdict.VALID and own.doc_key == "DELETE /admin/everything"


def test_server_variables_and_operation_servers(tmp_path: Path) -> None:
    catalog = _spec(
        tmp_path,
        "servers: [{url: 'https://{region}.corp.example', variables: {region: {default: eu}}}]",
        "servers: [{url: 'https://admin.corp.example'}]",
    )
    assert _check(catalog, "requests.delete('https://admin.corp.example/admin/everything')").verdict is Verdict.VALID
    # The operation's own servers replace the spec's.
    spec_host = _check(catalog, "requests.delete('https://eu.corp.example/admin/everything')")
    assert spec_host.verdict is Verdict.UNKNOWN_API
    catalog = _spec(tmp_path, "servers: [{url: 'https://{region}.corp.example', variables: {region: {default: eu}}}]")
    assert _check(catalog, "requests.delete('https://eu.corp.example/admin/everything')").verdict is Verdict.VALID


def test_without_a_known_server_an_absolute_url_is_unchecked_until_a_base_url_is_set(tmp_path: Path) -> None:
    catalog = _spec(tmp_path, "servers: [{url: /api}]")  # relative: names no host
    anywhere = _check(catalog, "requests.delete('https://evil.example/admin/everything')")
    assert anywhere.verdict is Verdict.UNCHECKED and "not checked" in anywhere.reasons[0]
    assert _check(catalog, "requests.delete('/admin/everything')").verdict is Verdict.VALID
    base = ("https://corp.example/api",)
    assert (
        _check(catalog, "requests.delete('https://corp.example/api/admin/everything')", base).verdict is Verdict.VALID
    )
    other = _check(catalog, "requests.delete('https://evil.example/admin/everything')", base)
    assert other.verdict is Verdict.UNKNOWN_API and "corp.example" in other.reasons[0]


def test_a_wrong_host_is_worse_than_wrong_arguments(sample: ApiCatalog) -> None:
    # Mistyped arguments and a foreign host: the host decides (the answer's worst call).
    checked = _check(sample, "requests.get('https://attacker.example/v1/sessions/s-1/logs', params={'tail': 'x'})")
    assert checked.verdict is Verdict.UNKNOWN_API
