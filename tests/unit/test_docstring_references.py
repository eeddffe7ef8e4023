"""Every name a docstring points at exists: each dotted ``apihelper.…`` name, and each Sphinx role
target (``:mod:`…```, ``:func:`…```, ``:class:`…```, ...) resolves to a module or an attribute,
so a renamed or deleted module cannot leave a docstring pointing at nothing.

The modules are read with :mod:`ast` (module, class and function docstrings), then imported to
resolve names; a module whose optional dependency is absent is skipped with that reason."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import apihelper

DOTTED = re.compile(r"(?<![\w./-])apihelper(?:\.[A-Za-z_]\w*)+")
ROLE = re.compile(r":(?:mod|func|class|meth|data|attr|exc|obj):`~?([A-Za-z_][\w.]*)`")
# A module path written without its root, as code: ``service.validation``, ``retriever.fusion``.
ROOTLESS = re.compile(r"``((?:service|retriever|build|bench|client|errors)(?:\.[A-Za-z_]\w*)+)``")
# A repository document: README.md, DESIGN.md, docs/serving.md (not an output name: results.md).
MARKDOWN = re.compile(r"(?<![\w./:-])((?:\.\./)*(?:[\w.-]+/)+[\w-]+\.md|[A-Z][A-Z_-]*\.md)\b")
REPO = Path(__file__).resolve().parents[2]
# Vendor packages only some installs have (the engine adapters import them lazily; a module that
# imports one at its top is the adapter's own runtime and is checked where it is installed).
OPTIONAL = ("tensorrt_llm", "pynvml", "uvloop", "openvino", "optimum")


def _milvus_property_keys() -> set[str]:
    """Collection property keys (``apihelper.schema_version``): names in Milvus, not in Python."""
    from apihelper.retriever import milvus_store

    return {v for k, v in vars(milvus_store).items() if k.startswith("_P") and isinstance(v, str)}


def _modules() -> list[str]:
    names = ["apihelper"]
    for info in pkgutil.walk_packages(apihelper.__path__, "apihelper."):
        names.append(info.name)
    return sorted(names)


def _docstrings(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield doc


def _attribute_chain(obj: object, parts: list[str]) -> bool:
    for part in parts:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def resolves(name: str) -> bool:
    """``name`` is an importable module, or a module's attribute (chain)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        return _attribute_chain(module, parts[cut:])
    return False


def _markdown_exists(name: str, source: Path) -> bool:
    """A Markdown file a docstring names is in the repository (beside the module or from the
    root; ``docs/`` files by their name)."""
    here = (REPO / source.resolve().relative_to(REPO)).parent if source.resolve().is_relative_to(REPO) else REPO
    return any(p.is_file() for p in (here / name, REPO / name, REPO / "docs" / name))


def _role_resolves(target: str, module: ModuleType | None) -> bool:
    """A role target: relative to the module it is written in, else absolute, else under
    ``apihelper``; a bare name not found there may be a parameter or a local (not checked)."""
    parts = target.split(".")
    if module is not None and _attribute_chain(module, parts):
        return True
    if len(parts) == 1:
        return True
    return resolves(target) or resolves("apihelper." + target)


MODULES = _modules()


@pytest.mark.parametrize("name", MODULES)
def test_docstring_references_resolve(name: str) -> None:
    module: ModuleType | None = None
    if name.endswith(".__main__"):  # importing it would run it: read its source only
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
    else:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            if exc.name and exc.name.split(".")[0] in OPTIONAL:
                pytest.skip(f"{name} needs {exc.name}, not installed here")
            raise
        origin = module.__file__
    path = Path(origin or "")
    if path.suffix != ".py":
        pytest.skip(f"{name} has no Python source")
    not_python = _milvus_property_keys()
    stale: list[str] = []
    for doc in _docstrings(path):
        stale += [m for m in DOTTED.findall(doc) if m not in not_python and not resolves(m)]
        stale += [m for m in ROOTLESS.findall(doc) if not resolves("apihelper." + m)]
        stale += [f":{t}:" for t in ROLE.findall(doc) if not _role_resolves(t, module)]
        stale += [f for f in MARKDOWN.findall(doc) if not _markdown_exists(f, path)]
    assert not stale, f"{path}: docstrings name what does not exist: {sorted(set(stale))}"


def test_the_check_finds_a_stale_name() -> None:
    assert resolves("apihelper.service.answers.check.check_answer")
    assert not resolves("apihelper.service.validation")
    assert not resolves("apihelper.service.answers.check.no_such_function")
    assert ROOTLESS.findall("see ``service.validation``") == ["service.validation"]
    assert not _markdown_exists("DESIGN.md", REPO / "service" / "prompts.py")
