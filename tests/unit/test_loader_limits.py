"""Each IngestLimits bound at the loader level, fast: the file is refused or the operation
skipped with a problem naming the limit's flag, and the rest of the file still loads."""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import pytest

from apihelper.errors import CorpusLoadError
from apihelper.retriever.limits import IngestLimits, LimitExceeded
from apihelper.retriever.loaders import detect_format, load_corpus
from apihelper.retriever.loaders._files import FileRefused, parse_json, parse_yaml, read_bytes
from apihelper.retriever.loaders._text import clean_text
from apihelper.retriever.loaders.openapi import load_openapi
from apihelper.retriever.loaders.python_pkg import load_python_package, strip_pep695
from apihelper.retriever.types import CorpusFormat


def test_yaml_aliases_are_budgeted_and_recursive_ones_refused() -> None:
    laughs = 'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n'
    for level in range(1, 6):
        laughs += f"l{level}: &l{level} [" + ",".join([f"*{'a' if level == 1 else f'l{level - 1}'}"] * 10) + "]\n"
    with pytest.raises(LimitExceeded, match="--max-yaml-alias-nodes=10000"):
        parse_yaml(laughs)
    assert parse_yaml("a: &a [1, 2]\nb: *a\n") == {"a": [1, 2], "b": [1, 2]}  # honest aliases still load
    with pytest.raises(ValueError, match="recursive"):
        parse_yaml("a: &a [*a]\n")


def test_nesting_depth_is_bounded_in_json_and_yaml() -> None:
    limits = IngestLimits(max_depth=10)
    assert parse_json("[" * 10 + "]" * 10, limits)
    with pytest.raises(LimitExceeded, match="--max-depth=10"):
        parse_json("[" * 11 + "]" * 11, limits)
    with pytest.raises(LimitExceeded, match="--max-depth"):
        parse_json("[" * 100_000 + "]" * 100_000)  # deeper than the C parser goes
    with pytest.raises(LimitExceeded, match="--max-depth=10"):
        parse_yaml("a: " + "[" * 11 + "]" * 11, limits)


def test_lone_surrogates_are_replaced_while_parsing() -> None:
    assert parse_json('{"a\\udc80": ["\\ud800"]}') == {"a\ufffd": ["\ufffd"]}


def test_ref_fan_out_skips_only_that_operation(tmp_path: Path) -> None:
    schemas = {
        f"L{i}": {
            "type": "object",
            "properties": {f"p{j}": {"$ref": f"#/components/schemas/L{i + 1}"} for j in range(10)},
        }
        for i in range(5)
    }
    schemas["L5"] = {"type": "string"}
    spec = {
        "openapi": "3.0.0",
        "paths": {
            "/fan": {
                "post": {
                    "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/L0"}}}}
                }
            },
            "/ok": {"get": {"summary": "fine"}},
        },
        "components": {"schemas": schemas},
    }
    path = tmp_path / "fan.json"
    path.write_text(json.dumps(spec))
    result = load_openapi(path, IngestLimits(max_ref_expansions=50))
    assert [d.key for d in result.docs] == ["GET /ok"]
    assert [(p.path.rsplit("#", 1)[-1], "--max-ref-expansions=50" in p.message) for p in result.problems] == [
        ("POST /fan", True)
    ]
    nodes = load_openapi(path, IngestLimits(max_schema_nodes=30))
    assert any("--max-schema-nodes=30" in p.message for p in nodes.problems)
    assert len(load_openapi(path).docs) == 2  # within the defaults: 10 wide, cut at the schema depth kept


def test_read_bytes_takes_regular_files_only_and_at_most_the_limit(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    with pytest.raises(FileRefused, match="a FIFO"):
        read_bytes(fifo)  # does not block
    with pytest.raises(FileRefused, match="a character device"):
        read_bytes(Path("/dev/zero"))
    big = tmp_path / "big.json"
    big.write_bytes(b"x" * 101)
    with pytest.raises(LimitExceeded, match="--max-file-bytes=100"):
        read_bytes(big, IngestLimits(max_file_bytes=100))
    with pytest.raises(CorpusLoadError, match="--max-file-bytes=100"):
        detect_format(big, IngestLimits(max_file_bytes=100))


def test_directory_symlinks_only_inside_the_root(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "inner.py").write_text("def inside_fn():\n    pass\n")
    (tmp_path / "secret.py").write_text("def secret_fn():\n    pass\n")
    os.symlink(pkg / "inner.py", pkg / "sub" / "alias.py")
    os.symlink(tmp_path / "secret.py", pkg / "leak.py")
    result = load_python_package(pkg)
    keys = {d.key for d in result.docs}
    assert "inner.inside_fn" in keys and "sub.alias.inside_fn" in keys
    assert not any("secret" in k for k in keys)
    assert [p.path for p in result.problems] == [str(pkg / "leak.py")]


def test_archive_members_are_read_through_a_bounded_reader(tmp_path: Path) -> None:
    wheel = tmp_path / "w-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("w/__init__.py", "def ok():\n    pass\n")
        archive.writestr("w/big.py", "#" * 100_000)
        for i in range(5):
            archive.writestr(f"w/m{i}.py", "#" * 3000)
    result = load_python_package(wheel, limits=IngestLimits(max_member_bytes=50_000, max_total_bytes=10_000))
    assert [d.key for d in result.docs] == ["w.ok"]
    messages = " | ".join(f"{p.path}: {p.message}" for p in result.problems)
    assert "big.py: skipped: a member of 100000 bytes (limit --max-member-bytes=50000)" in messages
    assert "--max-total-bytes=10000" in messages
    many = load_python_package(wheel, limits=IngestLimits(max_members=3))
    assert not many.docs and "--max-members=3" in many.problems[0].message


def test_the_pep695_fallback_is_linear() -> None:
    def seconds(n: int) -> float:
        source = "def a[" * n + "]" * n
        started = time.perf_counter()
        assert strip_pep695(source) == "def a"
        return time.perf_counter() - started

    small = min(seconds(2000) for _ in range(3))
    large = min(seconds(8000) for _ in range(3))
    assert large < small * 12, (small, large)  # x4 input; quadratic would be x16
    assert strip_pep695("def f[T](x: T) -> T: ...\nclass C[T]: pass\ntype X[T] = list[T]\n") == (
        "def f(x: T) -> T: ...\nclass C: pass\nX = list[T]\n"
    )


def test_docs_are_capped_and_cleaned(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"id": f"k{i}\n\x00", "title": "t\u202e\tx", "text": "cafe\u0301\r\nb\x07"}) for i in range(5)
        )
    )
    _, result = load_corpus(path, CorpusFormat.JSONL, limits=IngestLimits(max_docs=3))
    assert [d.key for d in result.docs] == ["k0", "k1", "k2"]
    assert result.docs[0].title == "t x" and result.docs[0].text == "caf\u00e9\nb"
    assert any("--max-docs=3" in p.message for p in result.problems)
    assert clean_text("a\ud800b", multiline=False) == "a\ufffdb"


def test_a_corpus_metadata_is_budgeted_in_all_whatever_each_file_holds(tmp_path: Path) -> None:
    """Row 4 of issue 25, per corpus: docs each far under every per-file limit, whose metadata
    together passes the corpus's budget: the docs up to it are kept, the rest skipped, the limit
    named."""
    path = tmp_path / "d.jsonl"
    each = {"schema": {"type": "object", "description": "x" * 1000}}
    size = len(json.dumps(each).encode())
    path.write_text("\n".join(json.dumps({"id": f"k{i}", "text": "t", "metadata": each}) for i in range(6)))
    budget = 3 * size + size // 2
    _, result = load_corpus(path, CorpusFormat.JSONL, limits=IngestLimits(max_corpus_metadata_bytes=budget))
    assert [d.key for d in result.docs] == ["k0", "k1", "k2"]
    assert [p.message for p in result.problems if f"--max-corpus-metadata-bytes={budget}" in p.message]
    _, whole = load_corpus(path, CorpusFormat.JSONL)  # the default holds it all
    assert len(whole.docs) == 6 and not whole.problems


def test_the_corpora_and_security_pages_list_every_limit_with_its_default() -> None:
    root = Path(__file__).resolve().parents[2]
    for page in (root / "docs" / "corpora.md", root / "docs" / "security.md"):
        text = page.read_text()
        for flag, default, _ in IngestLimits.describe():
            shown = f"{default // (1024 * 1024)} MiB" if default % (1024 * 1024) == 0 else f"{default:,}"
            assert f"| `{flag}` | {shown} |" in text, (page.name, flag)
