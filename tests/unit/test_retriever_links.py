"""REST <-> SDK links (retriever.links): HTTP calls read from an SDK's ast, matched to a spec."""

from __future__ import annotations

import ast
import json
import textwrap
import zipfile
from pathlib import Path

import pytest

from apihelper.retriever.links import HttpCall, find_links, http_calls, link_corpora, match_operation
from apihelper.retriever.loaders import load_corpus
from apihelper.retriever.types import ApiDoc, CorpusFormat

SDK = '''
class Request:
    def __init__(self, method, path, params=None): ...

class Session:
    """Compute sessions."""

    def create_from_template(self, template_id):
        """Create a session from a saved template."""
        prefix = naming()
        rqst = Request("POST", f"/{prefix}/_/create-from-template")
        return rqst

    def rename(self, new_name):
        """Give the session another name."""
        prefix = naming()
        return Request("POST", f"/{prefix}/{self.name}/rename", params={"name": new_name})

    def logs(self):
        """Fetch the container logs."""
        return Request(method="GET", path="/session/{}/logs".format(self.name))

class Folder:
    def upload(self, name):
        """Upload files into a folder."""
        if name:
            endpoint = "/folders/" + name + "/upload"
        else:
            endpoint = "/folders/_/upload"
        return Request("POST", endpoint)

    def info(self, path):
        """Where the path comes from nobody knows until run time."""
        return Request("GET", path)

    def settings(self, options):
        """A dict lookup named like a verb is no request."""
        return options.get("name")

    def ping(self, client):
        """A client method named after the verb."""
        return client.get("/folders/_/ping")

    def purge(self):
        """Calls an operation the spec does not have."""
        return Request("DELETE", "/trash")
'''

SPEC = {
    "openapi": "3.0.0",
    "info": {"title": "t", "version": "1"},
    "paths": {
        "/session/_/create-from-template": {"post": {"summary": "Create a session from a template"}},
        "/session/{session_name}/rename": {"post": {"summary": "Rename a session"}},
        "/folders/{name}/rename": {"post": {"summary": "Rename a folder"}},
        "/session/{session_name}/logs": {"get": {"summary": "Container logs"}},
        "/folders/{name}/upload": {"post": {"summary": "Upload into a folder"}},
        "/folders/_/ping": {"get": {"summary": "Ping the storage"}},
    },
}


def _function(source: str, name: str) -> ast.FunctionDef:
    for node in ast.walk(ast.parse(textwrap.dedent(source))):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(name)


def test_http_calls_resolves_literals_fstrings_format_concatenation_and_locals() -> None:
    assert http_calls(_function(SDK, "create_from_template")) == [HttpCall("POST", "/{prefix}/_/create-from-template")]
    assert http_calls(_function(SDK, "rename")) == [HttpCall("POST", "/{prefix}/{self.name}/rename")]
    assert http_calls(_function(SDK, "logs")) == [HttpCall("GET", "/session/{}/logs")]
    assert http_calls(_function(SDK, "upload")) == [
        HttpCall("POST", "/folders/{}/upload"),
        HttpCall("POST", "/folders/_/upload"),
    ]
    assert http_calls(_function(SDK, "ping")) == [HttpCall("GET", "/folders/_/ping")]


def test_a_path_known_only_at_run_time_is_unresolved_and_a_dict_get_is_no_call() -> None:
    assert http_calls(_function(SDK, "info")) == [HttpCall("GET", "")]
    assert http_calls(_function(SDK, "settings")) == []


def test_match_prefers_literal_segments_and_refuses_ties() -> None:
    ops = [
        ("POST /session/{s}/rename", "POST", "/session/{s}/rename"),
        ("POST /folders/{n}/rename", "POST", "/folders/{n}/rename"),
        ("POST /folders/_/upload", "POST", "/folders/_/upload"),
        ("POST /folders/{n}/upload", "POST", "/folders/{n}/upload"),
    ]
    assert match_operation(HttpCall("POST", "/session/{}/rename"), ops) == ["POST /session/{s}/rename"]
    assert match_operation(HttpCall("POST", "/{p}/{}/rename"), ops) == []  # two fit equally: ambiguous
    assert match_operation(HttpCall("POST", "/folders/_/upload"), ops) == ["POST /folders/_/upload"]
    assert match_operation(HttpCall("POST", "/folders/{}/upload"), ops) == ["POST /folders/{n}/upload"]
    assert match_operation(HttpCall("GET", "/folders/_/upload"), ops) == []  # another method
    assert match_operation(HttpCall("POST", ""), ops) == []


@pytest.fixture
def corpora(tmp_path: Path) -> tuple[list[ApiDoc], list[ApiDoc]]:
    wheel = tmp_path / "sdk-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("sdk/__init__.py", "")
        archive.writestr("sdk/client.py", SDK)
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(SPEC), encoding="utf-8")
    _, sdk = load_corpus(wheel, CorpusFormat.PYTHON)
    _, rest = load_corpus(spec, CorpusFormat.OPENAPI)
    return sdk.docs, rest.docs


def test_links_learn_a_computed_prefix_from_an_unambiguous_match(corpora: tuple[list[ApiDoc], list[ApiDoc]]) -> None:
    sdk, rest = corpora
    report = find_links(sdk, rest)
    pairs = set(report.pairs)
    # "/{prefix}/_/create-from-template" fits one operation only; it shows prefix = "session",
    # which settles "/{prefix}/{self.name}/rename" (else a tie with the folder rename).
    assert ("sdk.client.Session.create_from_template", "POST /session/_/create-from-template") in pairs
    assert ("sdk.client.Session.rename", "POST /session/{session_name}/rename") in pairs
    assert ("sdk.client.Session.logs", "GET /session/{session_name}/logs") in pairs
    assert ("sdk.client.Folder.upload", "POST /folders/{name}/upload") in pairs
    assert ("sdk.client.Folder.ping", "GET /folders/_/ping") in pairs
    # "/folders/_/upload": the spec's parameter takes the literal "_"
    assert report.pairs.count(("sdk.client.Folder.upload", "POST /folders/{name}/upload")) == 1
    assert (report.calls, report.linked, report.unresolved, report.unmatched) == (8, 6, 1, 1)  # info; purge
    assert report.functions_linked == 5


def test_linked_docs_carry_the_link_and_the_other_sides_words(corpora: tuple[list[ApiDoc], list[ApiDoc]]) -> None:
    sdk, rest = corpora
    linked_rest, _ = link_corpora(rest, sdk, "sdk")
    op = next(d for d in linked_rest if d.key == "POST /session/_/create-from-template")
    assert op.metadata["links"] == [
        {
            "corpus": "sdk",
            "key": "sdk.client.Session.create_from_template",
            "title": next(d.title for d in sdk if d.key == "sdk.client.Session.create_from_template"),
        }
    ]
    assert "see also:" in op.index_text and "saved template" in op.index_text
    linked_sdk, _ = link_corpora(sdk, rest, "rest")
    fn = next(d for d in linked_sdk if d.key == "sdk.client.Session.rename")
    assert [link["key"] for link in fn.metadata["links"]] == ["POST /session/{session_name}/rename"]
    assert "Rename a session" in fn.index_text
    untouched = next(d for d in linked_sdk if d.key == "sdk.client.Folder.info")
    assert "links" not in untouched.metadata
    assert untouched == next(d for d in sdk if d.key == "sdk.client.Folder.info")
