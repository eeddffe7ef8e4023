"""Hostile corpora (issue 14, the Ingest table): each attack is built here by a small generator
(no committed blobs), the real ``apihelper-build ingest`` runs over all of them at once in a
subprocess, and the test checks that

- it exits 3 (partial), naming each hostile file and the limit it hit;
- its peak RSS stays under a cap: what an ingest of the good corpora alone peaks at on this
  machine, measured in the same session (near 750 MiB, most of it torch and MiniLM), plus 512
  MiB (before the limits, these inputs took 2.2 to more than 8 GiB); and it ends within a
  load-scaled time;
- every good corpus, and every good file beside a hostile one, is searchable afterwards, and
  nothing outside a directory corpus came in through a symlink.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from apihelper.retriever.embedding import DEFAULT_DIM, DEFAULT_MODEL_NAME
from apihelper.retriever.milvus_retriever import MilvusRetriever
from apihelper.retriever.milvus_store import MilvusStore
from apihelper.retriever.types import RetrievalMode
from tests.support import FakeEmbedder, budget

BUILD = Path(sys.executable).parent / "apihelper-build"
MIB = 1024 * 1024
RSS_ALLOWANCE_BYTES = 512 * MIB  # what the hostile inputs may add to a good ingest's peak


# ---------------------------------------------------------------------------------- generators


def billion_laughs(where: str) -> str:
    """An OpenAPI YAML whose ``description`` (or a parameter's ``default``) is nine levels of
    nine aliases: under 1 KB on disk, 9^9 strings once expanded."""
    lines = ["openapi: 3.0.0", "info: {title: laughs, version: '1'}", 'x-l0: &l0 ["lol","lol","lol","lol","lol"]']
    for level in range(1, 10):
        lines.append(f"x-l{level}: &l{level} [" + ",".join([f"*l{level - 1}"] * 9) + "]")
    lines += ["paths:", "  /laughs:", "    get:", "      summary: Laugh a lot"]
    if where == "description":
        lines.append("      description: *l9")
    else:
        lines += ["      parameters:", "        - {name: q, in: query, schema: {type: string, default: *l9}}"]
    lines += ["      responses: {'200': {description: ok}}"]
    return "\n".join(lines) + "\n"


def ref_fanout(width: int, depths: list[int]) -> dict[str, object]:
    """A spec whose schemas fan out: each level has ``width`` properties that all ``$ref`` the
    next level (``width ** depth`` nodes once inlined), plus one honest operation."""
    schemas: dict[str, object] = {}
    paths: dict[str, object] = {
        "/penguins": {
            "get": {"summary": "List the penguins of the colony", "responses": {"200": {"description": "ok"}}}
        }
    }
    for depth in depths:
        for level in range(depth):
            target = {"$ref": f"#/components/schemas/D{depth}L{level + 1}"} if level + 1 < depth else {"type": "string"}
            schemas[f"D{depth}L{level}"] = {"type": "object", "properties": {f"p{i}": target for i in range(width)}}
        paths[f"/fan{depth}"] = {
            "post": {
                "summary": f"Fan out {depth}",
                "requestBody": {
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/D{depth}L0"}}}
                },
                "responses": {"200": {"description": "ok"}},
            }
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "fan", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


GOOD_MODULE = 'def feed_the_walrus(fish: int) -> None:\n    """Feed the walrus some fish."""\n'


def wheel_with_huge_member(path: Path) -> None:
    """A wheel holding a 2 GiB .py member (compressed to a few MB) beside a good module."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("walrus/__init__.py", GOOD_MODULE)
        with archive.open("walrus/huge.py", "w", force_zip64=True) as member:
            chunk = b"#" * MIB
            for _ in range(2048):
                member.write(chunk)


def wheel_with_many_members(path: Path) -> None:
    """A wheel of 1,024 members of 2 MB each (each under the member limit, 2 GB in all)."""
    body = b"#" + b"x" * (2_000_000 - 2) + b"\n"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("otter/__init__.py", 'def hold_hands_otter() -> None:\n    """Otters hold hands."""\n')
        for i in range(1024):
            archive.writestr(f"otter/m{i:04d}.py", body)


def hostile_directory(root: Path) -> Path:
    """A package directory with a symlink to /dev/zero, a FIFO, a symlink to a secret outside
    it, PEP 695 brackets nested 12,000 deep, expressions and integers Python refuses, and one
    good module."""
    pkg = root / "badgers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""Badgers."""\n')
    (pkg / "good.py").write_text('def dig_badger_sett(depth: int) -> None:\n    """Dig a badger sett."""\n')
    os.symlink("/dev/zero", pkg / "zero.py")
    os.mkfifo(pkg / "pipe.py")
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text('def xyzzy_secret_plover() -> str:\n    """Token hunter2plover."""\n')
    os.symlink(outside / "secret.py", pkg / "leak.py")
    (pkg / "nested.py").write_text("def a[" * 12_000 + "]" * 12_000 + "\n")  # 84 KB
    (pkg / "terms.py").write_text("x = " + "+".join(["1"] * 3000) + "\n")
    (pkg / "digits.py").write_text("def f(x=" + "9" * 5000 + "):\n    pass\n")
    return pkg


def jsonl_with_latin1(path: Path) -> None:
    """A JSONL corpus of 300 good lines, Latin-1 on line 250 and a 5,000-digit integer on line
    260 (past the first 8 KB a text-mode reader decodes)."""
    lines = [json.dumps({"id": f"d{i}", "text": f"note {i} about herons"}).encode() for i in range(300)]
    lines[1] = json.dumps({"id": "flamingo", "text": "Flamingos stand on one leg"}).encode()
    lines[249] = '{"id": "latin", "text": "caf\xe9"}'.encode("latin-1")
    lines[259] = b'{"id": "big", "text": "x", "n": ' + b"7" * 5000 + b"}"
    path.write_bytes(b"\n".join(lines) + b"\n")


def surrogate_spec() -> str:
    """An OpenAPI JSON whose strings hold lone surrogates (escaped, as JSON allows)."""
    return (
        '{"openapi": "3.0.0", "info": {"title": "t\\ud800", "version": "1"}, "paths": {"/lemurs": {"get": '
        '{"summary": "Count the lemurs \\udc80", "description": "odd \\ud83d text", '
        '"responses": {"200": {"description": "ok"}}}}}}'
    )


GOOD_SPEC = """openapi: 3.0.0
info: {title: zoo, version: '1'}
paths:
  /giraffes:
    post:
      summary: Register a giraffe
      operationId: registerGiraffe
      responses: {'200': {description: ok}}
"""

GOOD_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "book_pelican_tour",
            "description": "Book a pelican tour \ud800",
            "parameters": {"type": "object", "properties": {"day": {"type": "string"}}},
        },
    }
]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_bytes: int
    seconds: float


# Runs the command and writes its peak RSS to the file named first. Linux keeps a process's RSS
# high-water mark across exec, so a child forked straight from this (large, long-lived) test
# process would report at least this process's size: the measured command is forked from this
# small launcher instead.
_LAUNCHER = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_ingest(args: list[str], timeout_s: float) -> Run:
    """Run ``args`` and wait for it, with its own peak RSS (and its children's) measured."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        rss_file = Path(scratch) / "peak-rss"
        process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(rss_file), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        killer = threading.Timer(timeout_s, os.killpg, args=(process.pid, signal.SIGKILL))
        killer.start()
        try:
            out, err = process.communicate()
        finally:
            killer.cancel()
        peak = int(rss_file.read_text()) if rss_file.exists() else 0
    return Run(process.returncode, out, err, peak, time.monotonic() - started)


@pytest.fixture(scope="module")
def baseline_rss(tmp_path_factory: pytest.TempPathFactory) -> int:
    """The peak RSS of an ingest of the good corpora alone, the same way (the cap's base)."""
    root = tmp_path_factory.mktemp("baseline")
    (root / "zoo.yaml").write_text(GOOD_SPEC)
    (root / "tools.json").write_text(json.dumps(GOOD_TOOLS))
    args = [str(BUILD), "ingest", "--quiet", "--milvus-uri", str(root / "milvus.db")]
    args += ["--corpus", f"zoo={root / 'zoo.yaml'}", "--corpus", f"tools={root / 'tools.json'}"]
    run = run_ingest(args, timeout_s=budget(240))
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    return run.peak_rss_bytes


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("hostile")
    files: dict[str, Path] = {
        "laughs_desc": root / "laughs_desc.yaml",
        "laughs_default": root / "laughs_default.yaml",
        "fanout": root / "fanout.json",
        "huge_member": root / "walrus-1.0-py3-none-any.whl",
        "many_members": root / "otter-1.0-py3-none-any.whl",
        "deep": root / "deep.json",
        "notes": root / "notes.jsonl",
        "surrogates": root / "surrogates.json",
        "zoo": root / "zoo.yaml",
        "tools": root / "tools.json",
    }
    files["laughs_desc"].write_text(billion_laughs("description"))
    files["laughs_default"].write_text(billion_laughs("default"))
    files["fanout"].write_text(json.dumps(ref_fanout(40, [4, 8])))
    wheel_with_huge_member(files["huge_member"])
    wheel_with_many_members(files["many_members"])
    files["deep"].write_text("[" * 100_000 + "]" * 100_000)
    jsonl_with_latin1(files["notes"])
    files["surrogates"].write_text(surrogate_spec())
    files["zoo"].write_text(GOOD_SPEC)
    files["tools"].write_text(json.dumps(GOOD_TOOLS))
    files["badgers"] = hostile_directory(root)
    files["devzero"] = root / "devzero.json"
    os.symlink("/dev/zero", files["devzero"])
    files["fifo"] = root / "fifo.jsonl"
    os.mkfifo(files["fifo"])
    db = root / "milvus.db"
    corpora = [
        "laughs_desc={laughs_desc}",
        "laughs_default={laughs_default}:openapi",
        "fanout={fanout}",
        "walrus={huge_member}",
        "otter={many_members}",
        "deep={deep}",
        "devzero={devzero}",
        "fifo={fifo}:jsonl",
        "badgers={badgers}",
        "notes={notes}",
        "surrogates={surrogates}",
        "zoo={zoo}",
        "tools={tools}",
    ]
    args = [str(BUILD), "ingest", "--quiet", "--milvus-uri", str(db)]
    for corpus in corpora:
        args += ["--corpus", corpus.format(**files)]
    run = run_ingest(args, timeout_s=budget(240))
    return run, db, files


def test_exits_3_within_the_memory_and_time_caps(
    hostile_run: tuple[Run, Path, dict[str, Path]], baseline_rss: int
) -> None:
    run, _, _ = hostile_run
    assert run.returncode == 3, run.stdout + run.stderr[-4000:]
    assert "Traceback" not in run.stderr, run.stderr[-4000:]
    peak, base = run.peak_rss_bytes / MIB, baseline_rss / MIB
    assert run.peak_rss_bytes < baseline_rss + RSS_ALLOWANCE_BYTES, (
        f"peak RSS {peak:.0f} MiB, good corpora {base:.0f} MiB"
    )
    print(f"hostile ingest: peak RSS {peak:.0f} MiB (good corpora alone {base:.0f} MiB), {run.seconds:.1f} s")


def _lines_naming(stderr: str, name: str) -> list[str]:
    return [line for line in stderr.splitlines() if name in line]


@pytest.mark.parametrize(
    ("file_name", "limit"),
    [
        ("laughs_desc.yaml", "--max-yaml-alias-nodes"),
        ("laughs_default.yaml", "--max-yaml-alias-nodes"),
        ("fanout.json#POST /fan4", "--max-ref-expansions"),
        ("fanout.json#POST /fan8", "--max-ref-expansions"),
        ("walrus-1.0-py3-none-any.whl!walrus/huge.py", "--max-member-bytes"),
        ("otter-1.0-py3-none-any.whl", "--max-total-bytes"),
        ("deep.json", "--max-depth"),
        ("badgers/zero.py", "a symlink to '/dev/zero', outside the corpus directory"),
        ("devzero.json", "a character device"),
        ("fifo.jsonl", "a FIFO"),
        ("badgers/pipe.py", "a FIFO"),
        ("badgers/leak.py", "outside the corpus directory"),
        ("badgers/nested.py", "cannot parse"),
        ("badgers/terms.py", "nested too deeply"),
        ("badgers/digits.py", "Exceeds the limit (4300 digits)"),
        ("notes.jsonl:250", "not UTF-8"),
        ("notes.jsonl:260", "Exceeds the limit (4300 digits)"),
    ],
)
def test_each_hostile_file_is_named_with_its_limit(
    hostile_run: tuple[Run, Path, dict[str, Path]], file_name: str, limit: str
) -> None:
    run, _, _ = hostile_run
    lines = _lines_naming(run.stderr, file_name)
    assert lines, f"{file_name} not named on stderr:\n{run.stderr[-4000:]}"
    assert any(limit in line for line in lines), lines


async def _search(db: Path, corpus: str, query: str) -> list[str]:
    store = MilvusStore(str(db))
    try:
        retriever = MilvusRetriever(store, FakeEmbedder(DEFAULT_MODEL_NAME, dim=DEFAULT_DIM))
        result = await retriever.retrieve(query, corpora=[corpus], top_k=5, mode=RetrievalMode.KEYWORD)
        return [found.doc.key for found in result.docs]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("corpus", "query", "key"),
    [
        ("zoo", "register giraffe", "POST /giraffes"),
        ("tools", "pelican tour", "book_pelican_tour"),
        ("fanout", "penguins colony", "GET /penguins"),
        ("walrus", "feed walrus fish", "walrus.feed_the_walrus"),
        ("otter", "otters hold hands", "otter.hold_hands_otter"),
        ("badgers", "dig badger sett", "badgers.good.dig_badger_sett"),
        ("notes", "flamingos one leg", "flamingo"),
        ("surrogates", "count lemurs", "GET /lemurs"),
    ],
)
def test_good_corpora_and_files_are_searchable(
    hostile_run: tuple[Run, Path, dict[str, Path]], corpus: str, query: str, key: str
) -> None:
    run, db, _ = hostile_run
    assert run.returncode in (0, 3), run.stderr[-4000:]
    keys = asyncio.run(_search(db, corpus, query))
    assert key in keys, keys


def test_nothing_came_in_through_the_symlink(hostile_run: tuple[Run, Path, dict[str, Path]]) -> None:
    _, db, _ = hostile_run
    keys = asyncio.run(_search(db, "badgers", "xyzzy secret plover hunter2plover"))
    assert not [k for k in keys if "leak" in k or "xyzzy" in k], keys


def test_hostile_only_corpora_were_not_created(hostile_run: tuple[Run, Path, dict[str, Path]]) -> None:
    run, db, _ = hostile_run
    hostile_only = ("laughs_desc", "laughs_default", "deep", "devzero", "fifo")
    for name in hostile_only:
        assert f"{name}: not ingested" in run.stderr, run.stderr[-4000:]
    store = MilvusStore(str(db))
    try:
        for name in hostile_only:
            assert not store.has_corpus(name)
    finally:
        store.close()
