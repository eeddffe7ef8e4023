"""The load generator: concurrent Generate streams from one or more client processes, recorded per stream.

Over gRPC (a Generate call per stream, on ``cfg.channels`` channels) or over HTTP (``POST
/v1/generate`` read as Server-Sent Events, on one httpx client's keep-alive connections); both
record the same :class:`StreamRecord`, so the reports compare."""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import multiprocessing.connection
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import grpc

from apihelper.bench.load.config import _MODES, LoadConfig, RunOptions, check_loopback
from apihelper.bench.load.meters import LagProbe
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    import httpx


@dataclass(slots=True)
class StreamRecord:
    """One Generate stream as the client saw it (perf_counter seconds)."""

    request_id: str
    started: float
    ended: float = 0.0
    first_message: float | None = None
    first_delta: float | None = None
    outcome: str = "completed"  # completed | cancelled (by us) | cut (time up) | error
    code: str = "OK"
    deltas: int = 0  # deltas received inside the measurement window
    completion_tokens: int | None = None  # from the completion message
    completion_in_window: bool = False
    retrieval_ms: float | None = None  # the server's timings, from the completion
    server_first_token_ms: float | None = None
    detail: str = ""


@dataclass
class ClientResult:
    records: list[StreamRecord]
    cpu_s: float  # CPU time of the client process over the run
    calls_started: int
    window_start: float
    lag_samples: list[tuple[float, float]] = field(default_factory=list)  # the client loop's own lag


@dataclass(frozen=True)
class Window:
    start: float  # load starts (workers ramp up from here)
    measure_from: float  # start + warmup
    end: float  # measure_from + duration: no stream starts later, open ones are cut


def _request(cfg: LoadConfig, request_id: str) -> pb.GenerateRequest:
    retrieval = pb.RetrievalOptions(corpora=list(cfg.corpora), mode=_MODES[cfg.retrieval_mode])
    if cfg.top_k is not None:
        retrieval.top_k = cfg.top_k
    sampling = pb.SamplingParams(temperature=0.0)
    if cfg.max_tokens is not None:
        sampling.max_tokens = cfg.max_tokens
    return pb.GenerateRequest(
        instruction=cfg.instruction, retrieval=retrieval, sampling=sampling, request_id=request_id
    )


async def _one_stream(
    stub: pb_grpc.ApiHelperStub, cfg: LoadConfig, window: Window, request_id: str, cancel_at: int | None
) -> StreamRecord:
    rec = StreamRecord(request_id, time.perf_counter())
    call = cast(
        "grpc.aio.UnaryStreamCall[pb.GenerateRequest, pb.GenerateResponse]",
        stub.Generate(_request(cfg, request_id), timeout=cfg.deadline_s),
    )
    received = 0
    try:
        if cancel_at == 0:
            call.cancel()
            rec.outcome, rec.code = "cancelled", "CANCELLED"
            return rec
        async with asyncio.timeout(max(0.0, window.end - time.perf_counter())):
            while True:
                msg = await call.read()
                if not isinstance(msg, pb.GenerateResponse):  # grpc.aio.EOF
                    break
                now = time.perf_counter()
                received += 1
                if rec.first_message is None:
                    rec.first_message = now
                kind = msg.WhichOneof("event")
                if kind == "delta":
                    if rec.first_delta is None:
                        rec.first_delta = now
                    if now >= window.measure_from:
                        rec.deltas += 1
                elif kind == "completion":
                    c = msg.completion
                    rec.completion_tokens = c.usage.completion_tokens
                    rec.completion_in_window = now >= window.measure_from
                    rec.retrieval_ms = c.timings.retrieval_ms
                    rec.server_first_token_ms = c.timings.first_token_ms
                    continue
                if cancel_at is not None and received >= cancel_at:
                    call.cancel()
                    rec.outcome, rec.code = "cancelled", "CANCELLED"
                    return rec
            code = await call.code()
            rec.code = code.name
            if code is not grpc.StatusCode.OK:
                rec.outcome = "error"
    except TimeoutError:
        call.cancel()
        rec.outcome, rec.code = "cut", "CANCELLED"
    except grpc.aio.AioRpcError as exc:
        rec.outcome, rec.code, rec.detail = "error", exc.code().name, (exc.details() or "")[:200]
    finally:
        rec.ended = time.perf_counter()
    return rec


def _http_request(cfg: LoadConfig, request_id: str) -> dict[str, Any]:
    """The same request as :func:`_request`, as /v1/generate's JSON (the proto's JSON mapping)."""
    retrieval: dict[str, Any] = {
        "corpora": list(cfg.corpora),
        "mode": pb.RetrievalMode.Name(_MODES[cfg.retrieval_mode]),
    }
    if cfg.top_k is not None:
        retrieval["top_k"] = cfg.top_k
    sampling: dict[str, Any] = {"temperature": 0.0}
    if cfg.max_tokens is not None:
        sampling["max_tokens"] = cfg.max_tokens
    return {"instruction": cfg.instruction, "retrieval": retrieval, "sampling": sampling, "request_id": request_id}


async def _one_http_stream(
    client: httpx.AsyncClient, cfg: LoadConfig, window: Window, request_id: str, cancel_at: int | None
) -> StreamRecord:
    """One /v1/generate stream: an event is an ``event:`` line, a ``data:`` line and a blank
    line (only the completion's data is decoded); closing the response early hangs up."""
    import httpx

    rec = StreamRecord(request_id, time.perf_counter())
    headers = {"X-Request-Timeout": f"{cfg.deadline_s:g}"} if cfg.deadline_s is not None else {}
    received = 0
    event = ""
    try:
        if cancel_at == 0:
            rec.outcome, rec.code = "cancelled", "CANCELLED"
            return rec
        async with asyncio.timeout(max(0.0, window.end - time.perf_counter())):
            async with client.stream("POST", "/v1/generate", json=_http_request(cfg, request_id), headers=headers) as r:
                if r.status_code != 200:
                    body = json.loads(await r.aread())
                    rec.outcome, rec.code, rec.detail = "error", body["error"]["type"], body["error"]["message"][:200]
                    return rec
                async for line in r.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                        continue
                    if not line.startswith("data: "):
                        continue
                    now = time.perf_counter()
                    received += 1
                    if rec.first_message is None:
                        rec.first_message = now
                    if event == "delta":
                        if rec.first_delta is None:
                            rec.first_delta = now
                        if now >= window.measure_from:
                            rec.deltas += 1
                    elif event == "completion":
                        c = json.loads(line[6:])["completion"]
                        rec.completion_tokens = c["usage"]["completion_tokens"]
                        rec.completion_in_window = now >= window.measure_from
                        rec.retrieval_ms = c["timings"]["retrieval_ms"]
                        rec.server_first_token_ms = c["timings"]["first_token_ms"]
                        continue
                    elif event == "error":
                        error = json.loads(line[6:])["error"]
                        rec.outcome, rec.code, rec.detail = "error", error["type"], error["message"][:200]
                        return rec
                    if cancel_at is not None and received >= cancel_at:
                        rec.outcome, rec.code = "cancelled", "CANCELLED"
                        return rec  # leaving the block closes the connection: the server sees a disconnect
    except TimeoutError:
        rec.outcome, rec.code = "cut", "CANCELLED"
    except httpx.HTTPError as exc:
        rec.outcome, rec.code, rec.detail = "error", type(exc).__name__, str(exc)[:200]
    finally:
        rec.ended = time.perf_counter()
    return rec


async def run_load(
    cfg: LoadConfig,
    target: str,
    *,
    client_index: int = 0,
    clients: int = 1,
    start_at: float | None = None,
    ready: Callable[[], Any] | None = None,
    probe_loop: bool = True,
) -> ClientResult:
    """Run this client's share of the workers against ``target``; ``start_at`` (perf_counter)
    fixes the window for every client process, ``ready`` (awaitable factory) is awaited once the
    channels are connected and returns the start time when ``start_at`` is None. ``probe_loop``:
    record this loop's own lag (the client's, unless it shares the server's loop)."""
    check_loopback(target)
    workers = [i for i in range(cfg.concurrency) if i % clients == client_index]
    cap = math.ceil(cfg.max_calls / clients)
    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    http = cfg.transport == "http"
    channels = [] if http else [grpc.aio.insecure_channel(target, options=options) for _ in range(cfg.channels)]
    # One client (one keep-alive connection) per worker: httpcore's pool assigns requests to
    # connections in O(requests x connections), which at 64 streams in one pool stalled this
    # process for hundreds of milliseconds (profiled).
    http_clients = {i: _http_client(target) for i in workers} if http else {}
    records: list[StreamRecord] = []
    started = [0]
    cpu0 = time.process_time()
    window = Window(0.0, 0.0, 0.0)
    probe = LagProbe()
    try:
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), timeout=30)
        for c in http_clients.values():
            (await c.get("/healthz")).raise_for_status()  # connected, as channel_ready says for gRPC
        if ready is not None:
            got = await ready()
            if start_at is None:
                start_at = float(got)
        if start_at is None:
            start_at = time.perf_counter()
        window = Window(start_at, start_at + cfg.warmup_s, start_at + cfg.warmup_s + cfg.duration_s)
        stubs = [pb_grpc.ApiHelperStub(ch) for ch in channels]
        if probe_loop:
            probe.start()

        async def worker(index: int) -> None:
            rng = random.Random(cfg.seed * 1_000_003 + index)
            stub = stubs[index % len(stubs)] if stubs else None
            delay = window.start - time.perf_counter() + rng.uniform(0.0, cfg.ramp_s)
            if delay > 0:
                await asyncio.sleep(delay)
            n = 0
            while time.perf_counter() < window.end and started[0] < cap:
                started[0] += 1
                cancel_at = rng.randint(0, cfg.cancel_max_messages) if rng.random() < cfg.cancel_prob else None
                request_id = f"load-{index}-{n}"
                if http_clients:
                    records.append(await _one_http_stream(http_clients[index], cfg, window, request_id, cancel_at))
                else:
                    assert stub is not None
                    records.append(await _one_stream(stub, cfg, window, request_id, cancel_at))
                n += 1

        await asyncio.gather(*(worker(i) for i in workers))
    finally:
        await probe.stop()
        for ch in channels:
            await ch.close(grace=None)
        for c in http_clients.values():
            await c.aclose()
    return ClientResult(records, time.process_time() - cpu0, started[0], window.start, probe.samples)


def _http_client(target: str) -> httpx.AsyncClient:
    """A client holding one keep-alive connection (plain HTTP: no certificates to load)."""
    import httpx

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(base_url=f"http://{target}", limits=limits, timeout=httpx.Timeout(60.0), verify=False)


def _client_process(
    cfg: LoadConfig, target: str, client_index: int, clients: int, conn: multiprocessing.connection.Connection
) -> None:
    """Entry point of a spawned client process: connect, say ready, wait for the start time."""

    async def ready() -> float:
        conn.send("ready")
        return float(await asyncio.to_thread(conn.recv))

    try:
        result = asyncio.run(run_load(cfg, target, client_index=client_index, clients=clients, ready=ready))
        conn.send(result)
    except BaseException as exc:
        conn.send(f"client {client_index} failed: {exc!r}")
        raise
    finally:
        conn.close()


async def _spawn_clients(
    opts: RunOptions, target: str
) -> tuple[list[multiprocessing.process.BaseProcess], list[multiprocessing.connection.Connection]]:
    ctx = multiprocessing.get_context("spawn")
    procs: list[multiprocessing.process.BaseProcess] = []
    conns: list[multiprocessing.connection.Connection] = []
    for i in range(opts.client_procs):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_client_process, args=(opts.cfg, target, i, opts.client_procs, child), daemon=True)
        p.start()
        child.close()
        procs.append(p)
        conns.append(parent)
    for conn in conns:
        msg = await asyncio.to_thread(_recv, conn, 120.0)
        if msg != "ready":
            raise RuntimeError(f"a client process did not start: {msg}")
    return procs, conns


def _recv(conn: multiprocessing.connection.Connection, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError(f"no answer from a client process in {timeout:g} s")
    return conn.recv()
