"""Ranking rules of hybrid results: the command-line prior, variants behind other results, and
the Python loader's audience/kind for command-line code."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from apihelper.retriever.fusion import fuse_hits
from apihelper.retriever.loaders.python_pkg import audience, is_cli_command, load_python_package
from apihelper.retriever.ranking import CLI_PENALTY, asks_for_cli, diversify, doc_prior, variant_group
from apihelper.retriever.types import ApiDoc, RetrievedDoc


def _doc(key: str, **metadata: Any) -> ApiDoc:
    return ApiDoc(key, key, key, key, metadata)


def _hit(doc: ApiDoc, score: float, corpus: str = "sdk") -> RetrievedDoc:
    return RetrievedDoc(doc, corpus, score)


def test_asks_for_cli_only_on_explicit_command_line_words() -> None:
    assert asks_for_cli("How do I list folders with the CLI?")
    assert asks_for_cli("from the command line, upload a file")
    assert asks_for_cli("commandline flags for login")
    assert not asks_for_cli("run a command in my compute session")
    assert not asks_for_cli("open a terminal in the container from Python")


def test_doc_prior_penalises_cli_docs_unless_asked() -> None:
    cli, api = _doc("pkg.cli.mkdir", audience="cli"), _doc("pkg.func.Folder.mkdir", audience="api")
    assert doc_prior(cli, cli_query=False) == -CLI_PENALTY
    assert doc_prior(cli, cli_query=True) == 0.0
    assert doc_prior(api, cli_query=False) == 0.0


def test_hybrid_puts_the_sdk_function_above_its_cli_wrapper() -> None:
    cli = _doc("pkg.cli.vfolder.mkdir", audience="cli", kind="cli_command")
    sdk = _doc("pkg.func.vfolder.VFolder.mkdir", audience="api", kind="method")
    others = [_doc(f"pkg.func.x{i}", audience="api") for i in range(4)]
    dense = [_hit(cli, 0.70), _hit(sdk, 0.66), *(_hit(d, 0.4 - 0.05 * i) for i, d in enumerate(others))]
    keyword = [_hit(cli, 8.0), _hit(sdk, 7.5)]
    assert fuse_hits(dense, keyword, 3, query="make a directory in a folder")[0].doc is sdk
    assert fuse_hits(dense, keyword, 3, query="make a directory with the CLI")[0].doc is cli


def test_variants_of_one_function_move_behind_other_results_with_monotone_scores() -> None:
    a1, a2 = _doc("play", kind="function_schema", name="play"), _doc("play#1a2b", kind="function_schema", name="play")
    b = _doc("pause", kind="function_schema", name="pause")
    fused = fuse_hits([_hit(a1, 0.9), _hit(a2, 0.89), _hit(b, 0.5), _hit(_doc("stop"), 0.1)], [], 4, query="play")
    assert [h.doc.key for h in fused] == ["play", "pause", "stop", "play#1a2b"]
    scores = [h.score for h in fused]
    assert scores == sorted(scores, reverse=True)
    assert variant_group(_doc("pkg.f", kind="method", name="f")) == "pkg.f"  # only function schemas
    assert diversify(["a1", "b", "a2", "c"], lambda s: s[0]) == ["a1", "b", "c", "a2"]


CLI_SOURCE = '''
import click

@click.group()
def main():
    """The tool."""

@main.command()
@click.argument("name")
def mkdir(name):
    """Make a directory."""

def helper(x):
    """Not a command."""
'''


def test_python_loader_marks_cli_commands_and_cli_packages(tmp_path: Path) -> None:
    tree = ast.parse(CLI_SOURCE)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert is_cli_command(functions["main"]) and is_cli_command(functions["mkdir"])
    assert not is_cli_command(functions["helper"])
    package = tmp_path / "tool"
    (package / "cli").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cli" / "__init__.py").write_text("")
    (package / "cli" / "folders.py").write_text(CLI_SOURCE)
    (package / "api.py").write_text(CLI_SOURCE.replace("import click", "import click  # same code, not a cli package"))
    docs = {d.key: d.metadata for d in load_python_package(package).docs}
    assert docs["tool.cli.folders.mkdir"]["kind"] == "cli_command"
    assert docs["tool.cli.folders.helper"]["audience"] == "cli"  # in a cli package
    assert (docs["tool.api.helper"]["kind"], docs["tool.api.helper"]["audience"]) == ("function", "api")
    assert docs["tool.api.mkdir"]["audience"] == "cli"  # a click command wherever it lives
    assert audience("tool.commands.run", "function") == "cli"
