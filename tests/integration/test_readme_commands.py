"""Every command in README.md and docs/*.md works: each shell or Python block is either run here
against what ``make demo`` builds, or marked with what else it needs.

A block is marked by an HTML comment on the line above its fence: ``<!-- commands: demo -->`` (run
here) or ``<!-- commands: not run (WHAT IT NEEDS) -->``. The demo blocks run against a server this
test starts on the demo's build (``deploy/demo.sh args`` names it; the Milvus Lite file is
copied, so a running ``make serve`` is not disturbed), on free ports: the commands are run as
written, with the README's ports replaced by the test's, ``.venv/bin`` by this interpreter's, an
ingest's Milvus Lite file by another copy, and every ``curl`` told to fail on an HTTP error. Two
blocks run at once (the server batches their generations). Without the demo's build the run is
skipped, saying what to run; the check that every block is marked always runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import budget, free_port, stop_process

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>sh|bash|python) *$")
MARK = re.compile(r"^ *<!-- commands: (?:(?P<demo>demo)|not run \((?P<why>.+)\)) --> *$")


@dataclass(frozen=True)
class Block:
    where: str  # file:line of the fence
    lang: str
    text: str
    run: bool  # marked demo
    why: str  # not run: what it needs ("" when unmarked)


def command_blocks() -> list[Block]:
    """The shell and Python blocks of README.md and docs/*.md, with their marks."""
    out: list[Block] = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        lines = path.read_text(encoding="utf-8").split("\n")
        i = 0
        while i < len(lines):
            fence = FENCE.match(lines[i])
            if fence is None:
                i += 1
                continue
            start, indent = i, fence.group("indent")
            i += 1
            while i < len(lines) and lines[i] != f"{indent}```":
                i += 1
            body = "\n".join(line.removeprefix(indent) for line in lines[start + 1 : i])
            mark = MARK.match(lines[start - 1]) if start > 0 else None
            out.append(
                Block(
                    f"{path.relative_to(REPO)}:{start + 1}",
                    fence.group("lang"),
                    body,
                    bool(mark and mark.group("demo")),
                    (mark.group("why") or "") if mark else "",
                )
            )
            i += 1
    return out


def test_every_command_block_says_how_it_is_checked() -> None:
    blocks = command_blocks()
    unmarked = [b.where for b in blocks if not b.run and not b.why]
    assert not unmarked, f"blocks without <!-- commands: demo --> or <!-- commands: not run (why) -->: {unmarked}"
    assert any(b.run for b in blocks)


@dataclass(frozen=True)
class DemoServer:
    grpc_port: int
    http_port: int
    ingest_uri: str  # a second copy of the demo's Milvus Lite file, for the blocks that ingest
    demo_uri: str  # what the docs call the demo's Milvus Lite file


def _demo_args() -> list[str]:
    done = subprocess.run(["bash", "deploy/demo.sh", "args"], cwd=REPO, capture_output=True, text=True, check=True)
    return [a for a in done.stdout.split("\n") if a]


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    args = _demo_args()
    named = dict(zip(args[::2], args[1::2], strict=True))
    missing = [named[k] for k in ("--model", "--milvus-uri") if not (REPO / named[k]).exists()]
    if missing:
        pytest.skip(f"the demo's build is absent ({', '.join(missing)}): run `make demo` once first")
    tmp = tmp_path_factory.mktemp("readme")
    served, ingest = tmp / "served.db", tmp / "ingest.db"
    source = REPO / named["--milvus-uri"]  # Milvus Lite's data: a directory (a file in older versions)
    for copy in (served, ingest):
        if source.is_dir():
            shutil.copytree(source, copy, ignore=shutil.ignore_patterns("LOCK"))
        else:
            shutil.copy2(source, copy)
    named["--milvus-uri"] = str(served)
    grpc_port, http_port = free_port(), free_port()
    log = tmp / "serve.log"
    command = [str(BIN / "apihelper-serve"), "--host", "127.0.0.1", "--port", str(grpc_port)]
    command += ["--http-port", str(http_port), "--metrics-port", "0"]
    # SmolLM2 makes a few tokens/s per stream on 2 cores, fewer on a loaded machine: no deadline
    # of the server's may end a README command that would finish.
    deadline = str(round(budget(1800)))
    command += ["--default-deadline-seconds", deadline, "--max-deadline-seconds", deadline]
    command += [part for item in named.items() for part in item]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        health = [str(BIN / "apihelper-client"), "--address", f"127.0.0.1:{grpc_port}", "health", "--wait"]
        waited = subprocess.run([*health, str(round(budget(300)))], capture_output=True, text=True)
        assert waited.returncode == 0, f"the demo's server did not become healthy: {log.read_text()[-3000:]}"
        yield DemoServer(grpc_port, http_port, str(ingest), args[args.index("--milvus-uri") + 1])
    finally:
        stop_process(process)


def adapted(block: Block, server: DemoServer) -> str:
    """The block as run here: the test's ports, this interpreter's bin, a copy to ingest into."""
    text = block.text.replace("http://127.0.0.1:8000", f"http://127.0.0.1:{server.http_port}")
    text = text.replace(".venv/bin/", f"{BIN}/")
    text = text.replace(server.demo_uri, server.ingest_uri)
    return re.sub(r"(?m)(^|\$\()curl ", r"\1curl --fail-with-body -sS ", text)


def _run(block: Block, server: DemoServer) -> str:
    """ "" when the block ran fine, else what went wrong."""
    code = adapted(block, server)
    command = [sys.executable, "-c", code] if block.lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    env = {
        **os.environ,
        "APIHELPER_ADDRESS": f"127.0.0.1:{server.grpc_port}",
        "APIHELPER_TIMEOUT": str(round(budget(1800))),  # apihelper-client's deadline per call
    }
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=budget(900))
    except subprocess.TimeoutExpired:
        return f"{block.where}: no end in {budget(900):.0f} s"
    if done.returncode != 0:
        return f"{block.where}: exit {done.returncode}\n{(done.stdout + done.stderr)[-2000:]}"
    return ""


@pytest.mark.timeout(3600)
def test_every_demo_block_runs_against_the_demo(demo_server: DemoServer) -> None:
    blocks = [b for b in command_blocks() if b.run]
    # Two at a time: the server batches their generations; more only slows each one down.
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [f for f in pool.map(lambda b: _run(b, demo_server), blocks) if f]
    assert not failures, "\n\n".join(failures)
