"""Load generator for the apihelper gRPC service: N concurrent Generate streams for T seconds.

    .venv/bin/python bench/load/run.py --inprocess fake [--concurrency 256] [--duration 30]
        [--token-rate 50] [--cancel-prob 0.1] [--deadline S] [--compare-bare] [--json-out FILE]
    .venv/bin/python bench/load/run.py --inprocess real [--device cpu] [--max-tokens 32] ...
    .venv/bin/python bench/load/run.py --target 127.0.0.1:50051 [--corpora demo] ...
    .venv/bin/python bench/load/run.py --inprocess fake --http | --compare-transports ...

Transport: gRPC Generate streams, or with ``--http`` the HTTP front end's ``POST /v1/generate``
read as Server-Sent Events (httpx, keep-alive connections); ``--compare-transports`` runs the
same load over both, one after the other, each on a fresh in-process server, and reports the
difference in TTFT (issue 15: within 1 ms at p50).

Each of ``--concurrency`` workers loops for ``--duration`` seconds (after ``--warmup``): open a
Generate stream, read it to its end, or with probability ``--cancel-prob`` cancel it after a
random number of messages (0 = before the first), optionally under a per-call ``--deadline``.
Streams still open when the time is up are cancelled and counted as "cut", not as errors.
Workers start spread over ``--ramp`` seconds (default: one fake stream's length, so that streams
of equal length do not arrive in synchronized waves).

Server placement:
  --target HOST:PORT   an existing server (loopback addresses only); event-loop lag is n/a.
  --inprocess fake     this process starts the real gRPC server (servicer, pipeline, Prometheus
                       recorder) around ``FakeEngine`` emitting a token every 1/--token-rate s per
                       stream and an in-memory retriever holding docs of the sample corpus: what is
                       left is the service's own cost (and gRPC's, and the fake engine's).
  --inprocess bare     no service code: a bare grpc.aio handler streaming the same messages at
                       the same rate (asyncio.sleep per token, no engine).
  --inprocess bare-engine
                       no service code either, but the deltas come from the same ``FakeEngine``
                       the service drives: the floor "retrieval and engine" excluded, as issue 7
                       words it. ``--compare-bare`` runs both floors before ``fake`` under the
                       same load and reports what the service adds over each.
  --inprocess real     the real stack: the development transformers model (built in a temp dir),
                       Milvus Lite in a temp dir with the sample corpus, the MiniLM embedder.

Client placement (in-process modes): by default the load generator runs in ``--client-procs``
separate processes (spawned), so its own CPU cost does not run on the server's event loop;
``--client inline`` runs it in the server's loop instead (cheaper to start, inflates every
number). Timestamps are compared across processes: ``time.perf_counter`` is CLOCK_MONOTONIC
on Linux, one clock for the whole machine.

What it reports (a table, and JSON with ``--json-out``; a window of ``--duration`` s after
``--warmup`` s):
  - streams started / completed / cancelled by the client / cut at the end / failed, and the
    failures by gRPC status code (CANCELLED caused by our own cancel is not an error);
  - throughput: streamed deltas/s and tokens/s (completion tokens of the completion messages,
    plus the deltas of streams that ended without one);
  - TTFT at the client (request sent -> first delta) p50/p90/p99/max;
  - the service's overhead on TTFT: client TTFT minus the retrieval time the server reports and
    minus the engine's own first-token time. For the fake engine that is the nominal token delay
    (so gRPC's round trip, event-loop lag and asyncio's 1 ms timer slack count against the
    service); in-process modes also break it down with timestamps taken at the engine boundary
    and at the retriever: client -> handler, handler -> engine call, engine call -> first token,
    first token -> client; ``--compare-bare`` adds what the service adds over a bare handler;
  - the server's event-loop lag (in-process modes): a probe task in the server's loop sleeps
    10 ms again and again and records by how much each sleep overshoots; also the loop's busy
    fraction (time outside its selector wait) and the garbage collector's pauses;
  - CPU used by the server process, the client processes and other processes over the run
    (other processes on the machine skew every number: check that figure).

Only loopback addresses are ever contacted, and the run is bounded by ``--duration`` (at most
one hour) and ``--max-calls`` streams in all.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import json
import multiprocessing
import multiprocessing.connection
import pstats
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from apihelper.bench.load.config import _MODES, DEFAULT_INSTRUCTION, LoadConfig, RunOptions, check_loopback
from apihelper.bench.load.floors import FAKE_KINDS, drive_engine_directly, fake_stream_seconds, start_inprocess
from apihelper.bench.load.meters import GcMeter, LagProbe, LoopBusyMeter, machine_busy_s
from apihelper.bench.load.report import (
    Report,
    attach_baseline,
    attach_direct,
    attach_transport,
    build_report,
    format_table,
)
from apihelper.bench.load.workers import ClientResult, Window, _recv, _spawn_clients, run_load


async def run(opts: RunOptions) -> Report:
    cfg = opts.cfg
    if (opts.target is None) == (opts.inprocess is None):
        raise ValueError("give exactly one of --target and --inprocess")
    settings: dict[str, Any] = {
        "concurrency": cfg.concurrency,
        "duration_s": cfg.duration_s,
        "warmup_s": cfg.warmup_s,
        "ramp_s": round(cfg.ramp_s, 3),
        "cancel_prob": cfg.cancel_prob,
        "deadline_s": cfg.deadline_s,
    }
    if opts.target is not None:
        target = check_loopback(opts.target)
        settings.update(server=f"--target {target}", client="this process", transport=cfg.transport)
        t0 = time.perf_counter()
        result = await run_load(cfg, target)
        wall = time.perf_counter() - t0
        start = result.window_start  # run_load started right after its channels were ready
        window = Window(start, start + cfg.warmup_s, start + cfg.warmup_s + cfg.duration_s)
        return build_report(
            cfg,
            window,
            [result],
            settings=settings,
            marks=None,
            nominal_first_token_s=None,
            lag_s=None,
            server_cpu_s=None,
            wall_s=wall,
        )

    assert opts.inprocess in ("real", *FAKE_KINDS)
    max_streams = opts.server_max_streams or 2 * cfg.concurrency
    with tempfile.TemporaryDirectory(prefix="apihelper-load-") as tmp:
        server = await start_inprocess(
            opts.inprocess,
            token_rate=opts.token_rate,
            reply_words=opts.reply_words,
            max_streams=max_streams,
            recorder=opts.recorder,
            device=opts.device,
            work_dir=Path(tmp),
            cfg=cfg,
        )
        settings.update(
            server=server.description,
            server_max_concurrent_streams=max_streams,
            recorder=opts.recorder,
            client=(f"{opts.client_procs} separate process(es)" if opts.client == "process" else "inline, server loop"),
        )
        if cfg.transport == "http" and not server.http_port:
            await server.stop()
            raise ValueError(f"--http: the {opts.inprocess} server has no HTTP front end")
        target = f"127.0.0.1:{server.http_port if cfg.transport == 'http' else server.port}"
        settings["transport"] = "HTTP, Server-Sent Events of /v1/generate" if cfg.transport == "http" else "gRPC"
        if opts.gc_freeze:
            gc.collect()
            gc.freeze()  # what start-up allocated is never walked again by the collector
        settings["server_gc_freeze"] = opts.gc_freeze
        settings["server_event_loop"] = type(asyncio.get_running_loop()).__module__.split(".")[0]
        direct = None
        if opts.compare_direct and server.engine is not None:
            # First, while the engine is idle: the same engine, the same prompt, no service.
            direct = await drive_engine_directly(
                server.engine,
                server.prompt,
                concurrency=cfg.concurrency,
                max_tokens=cfg.max_tokens or server.default_max_tokens,
                warmup_s=cfg.warmup_s,
                duration_s=cfg.duration_s,
            )
        probe = LagProbe()
        busy = LoopBusyMeter()
        gc_meter = GcMeter()
        profiler = cProfile.Profile() if opts.profile else None
        procs: list[multiprocessing.process.BaseProcess] = []
        try:
            probe.start()
            busy.start()
            gc_meter.start()
            machine0 = machine_busy_s()
            if opts.client == "inline":
                cpu0, t0 = time.process_time(), time.perf_counter()
                start = t0 + 0.2
                if profiler:
                    profiler.enable()
                results = [await run_load(cfg, target, start_at=start, probe_loop=False)]
                if profiler:
                    profiler.disable()
                wall, server_cpu = time.perf_counter() - t0, time.process_time() - cpu0
                results[0].cpu_s = 0.0  # one process: its whole CPU time is reported as the server's
            else:
                procs, conns = await _spawn_clients(opts, target)
                start = time.perf_counter() + 0.2
                cpu0, t0 = time.process_time(), time.perf_counter()
                for conn in conns:
                    conn.send(start)
                if profiler:
                    profiler.enable()
                limit = cfg.warmup_s + cfg.duration_s + 120.0
                answers = await asyncio.gather(*(asyncio.to_thread(_recv, c, limit) for c in conns))
                if profiler:
                    profiler.disable()
                wall, server_cpu = time.perf_counter() - t0, time.process_time() - cpu0
                for p in procs:
                    p.join(timeout=10)
                bad = [a for a in answers if not isinstance(a, ClientResult)]
                if bad:
                    raise RuntimeError("; ".join(map(str, bad)))
                results = [a for a in answers if isinstance(a, ClientResult)]
            machine1 = machine_busy_s()
            machine = None if machine0 is None or machine1 is None else machine1 - machine0
            window = Window(start, start + cfg.warmup_s, start + cfg.warmup_s + cfg.duration_s)
            lag = probe.between(window.measure_from, window.end)
            loop_busy = busy.busy_fraction(window.measure_from, window.end)
            loop_iterations = busy.iterations(window.measure_from, window.end)
            gc_pauses = gc_meter.summary(window.measure_from, window.end)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            gc_meter.stop()
            busy.stop()
            await probe.stop()
            await server.stop()
            if opts.gc_freeze:
                gc.unfreeze()
        if profiler is not None and opts.profile:
            profiler.dump_stats(opts.profile)
            stats = pstats.Stats(profiler, stream=sys.stderr)
            stats.sort_stats("tottime").print_stats(25)
        settings["client_procs"] = opts.client_procs if opts.client == "process" else 0
        if opts.inprocess in FAKE_KINDS:
            settings["token_rate_per_stream"] = opts.token_rate
        report = build_report(
            cfg,
            window,
            results,
            settings=settings,
            marks=server.marks,
            nominal_first_token_s=server.nominal_first_token_s,
            lag_s=lag,
            server_cpu_s=server_cpu,
            wall_s=wall,
            server_loop_busy=loop_busy,
            server_loop_iterations=loop_iterations,
            machine_busy_s=machine,
            server_gc=gc_pauses,
        )
        if direct is not None:
            attach_direct(report, direct)
        return report


async def run_compared(opts: RunOptions) -> Report:
    """The two bare grpc.aio floors first, then the service, under the same load; one report."""
    bare = await run(dataclasses.replace(opts, inprocess="bare", compare_bare=False, profile=None))
    bare_engine = await run(dataclasses.replace(opts, inprocess="bare-engine", compare_bare=False, profile=None))
    report = await run(dataclasses.replace(opts, compare_bare=False))
    attach_baseline(report, bare)
    attach_baseline(report, bare_engine, with_engine=True)
    return report


async def run_transports(opts: RunOptions) -> Report:
    """The same load over gRPC, then over HTTP (each on a fresh in-process server); the HTTP
    report, with gRPC's figures and the difference in TTFT beside it."""
    grpc_run = await run(dataclasses.replace(opts, cfg=dataclasses.replace(opts.cfg, transport="grpc")))
    http_run = await run(dataclasses.replace(opts, cfg=dataclasses.replace(opts.cfg, transport="http")))
    attach_transport(http_run, grpc_run)
    return http_run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/load/run.py",
        description="Concurrent Generate streams against apihelper; reports throughput, TTFT, errors, loop lag.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="HOST:PORT of a running server (loopback only)")
    where.add_argument(
        "--inprocess",
        choices=("fake", "real", "bare", "bare-engine"),
        help="start a server in this process: the service around the fake or the real engine, or a bare grpc.aio "
        "handler streaming the same messages, on asyncio.sleep (bare) or on the same fake engine (bare-engine): "
        "the floors the service is compared with",
    )
    p.add_argument("--concurrency", type=int, default=256, help="concurrent streams (default 256)")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds (default 30)")
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of load before measuring (default: the ramp + 1 s, at least 2 s)",
    )
    p.add_argument(
        "--ramp",
        type=float,
        default=None,
        help="workers start spread over this many seconds (default: one fake-engine stream's length, "
        "so streams of equal length do not start in waves; 1 s otherwise)",
    )
    p.add_argument("--cancel-prob", type=float, default=0.0, help="chance a stream is cancelled (default 0)")
    p.add_argument("--cancel-max-messages", type=int, default=24, help="cancel after randint(0, N) messages")
    p.add_argument("--deadline", type=float, default=None, help="per-call deadline in seconds")
    p.add_argument("--channels", type=int, default=1, help="gRPC channels per client process (default 1)")
    p.add_argument("--max-calls", type=int, default=2_000_000, help="streams in all, at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--instruction", default=DEFAULT_INSTRUCTION)
    p.add_argument("--max-tokens", type=int, default=None, help="sampling.max_tokens (default: the server's)")
    p.add_argument("--mode", default="hybrid", choices=sorted(_MODES), help="retrieval mode (default hybrid)")
    p.add_argument("--corpora", default="", help="comma-separated corpora (default: all)")
    p.add_argument("--top-k", type=int, default=None, help="retrieval top_k (default: the server's)")
    p.add_argument(
        "--client",
        choices=("process", "inline"),
        default="process",
        help="in-process modes: load generator in separate processes (default) or in the server's loop",
    )
    p.add_argument("--client-procs", type=int, default=1, help="client processes (default 1)")
    p.add_argument("--token-rate", type=float, default=50.0, help="fake engine tokens/s per stream (default 50)")
    p.add_argument("--reply-words", type=int, default=0, help="fake engine reply length in words (default: ~24)")
    p.add_argument("--server-max-streams", type=int, default=0, help="server's max_concurrent_streams (default 2x)")
    p.add_argument(
        "--recorder",
        choices=("prometheus", "null"),
        default="prometheus",
        help="in-process server's metrics recorder (default prometheus, as served)",
    )
    p.add_argument("--device", default="cpu", help="--inprocess real: cpu | cuda | auto")
    p.add_argument("--profile", default=None, help="cProfile the server process over the run into this file")
    p.add_argument(
        "--gc-freeze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="in-process modes: gc.freeze() in the server process after start-up, as "
        "service/__main__.py does (default on)",
    )
    p.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the server process's event loop, as the service's event_loop setting (default auto: "
        "uvloop where installed)",
    )
    p.add_argument(
        "--compare-bare",
        action="store_true",
        help="--inprocess fake: first run the same load against the two bare grpc.aio floors and report "
        "what the service adds to TTFT over each",
    )
    p.add_argument(
        "--compare-direct",
        action="store_true",
        help="--inprocess real: first drive the same engine directly (no gRPC, no pipeline) with the "
        "service's prompt at the same concurrency, and report the service's throughput as a share of it",
    )
    p.add_argument(
        "--http",
        action="store_true",
        help="drive the HTTP front end (POST /v1/generate, Server-Sent Events) instead of gRPC; --target is then "
        "the HTTP HOST:PORT",
    )
    p.add_argument(
        "--compare-transports",
        action="store_true",
        help="in-process modes: run the same load over gRPC, then over HTTP, and report both TTFTs",
    )
    p.add_argument("--json-out", type=Path, default=None, help="write the report as JSON here")
    return p


def options_from_args(argv: Sequence[str] | None = None) -> tuple[RunOptions, Path | None]:
    a = _parser().parse_args(argv)
    if a.token_rate <= 0 or a.client_procs < 1:
        raise ValueError("--token-rate and --client-procs must be positive")
    ramp = a.ramp
    if ramp is None:
        ramp = 1.0
        if a.inprocess in FAKE_KINDS:
            ramp = min(10.0, fake_stream_seconds(a.reply_words, a.token_rate))
    warmup = a.warmup if a.warmup is not None else max(2.0, ramp + 1.0)
    cfg = LoadConfig(
        concurrency=a.concurrency,
        duration_s=a.duration,
        warmup_s=warmup,
        ramp_s=ramp,
        cancel_prob=a.cancel_prob,
        cancel_max_messages=a.cancel_max_messages,
        deadline_s=a.deadline,
        channels=a.channels,
        max_calls=a.max_calls,
        seed=a.seed,
        instruction=a.instruction,
        max_tokens=a.max_tokens,
        retrieval_mode=a.mode,
        corpora=tuple(c for c in a.corpora.split(",") if c),
        top_k=a.top_k,
        transport="http" if a.http else "grpc",
    )
    opts = RunOptions(
        cfg=cfg,
        target=a.target,
        inprocess=a.inprocess,
        client=a.client,
        client_procs=a.client_procs,
        token_rate=a.token_rate,
        reply_words=a.reply_words,
        server_max_streams=a.server_max_streams,
        recorder=a.recorder,
        device=a.device,
        profile=a.profile,
        compare_bare=a.compare_bare,
        gc_freeze=a.gc_freeze,
        event_loop=a.event_loop,
        compare_direct=a.compare_direct,
        compare_transports=a.compare_transports,
    )
    if a.target is not None:
        check_loopback(a.target)
    if a.compare_bare and a.inprocess != "fake":
        raise ValueError("--compare-bare goes with --inprocess fake")
    if a.compare_direct and a.inprocess != "real":
        raise ValueError("--compare-direct goes with --inprocess real")
    if (a.http or a.compare_transports) and a.inprocess in ("bare", "bare-engine"):
        raise ValueError("the bare floors speak gRPC only: --http and --compare-transports go with fake or real")
    if a.compare_transports and (a.target is not None or a.compare_bare or a.compare_direct):
        raise ValueError("--compare-transports runs two in-process loads of its own: not with --target or --compare-*")
    return opts, a.json_out


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts, json_out = options_from_args(argv)
    except ValueError as exc:
        print(f"bench/load: {exc}", file=sys.stderr)
        return 2
    from apihelper.service.grpc.server import event_loop_factory

    with asyncio.Runner(loop_factory=event_loop_factory(opts.event_loop)) as runner:
        if opts.compare_transports:
            report = runner.run(run_transports(opts))
        else:
            report = runner.run(run_compared(opts) if opts.compare_bare else run(opts))
    print(format_table(report))
    if json_out is not None:
        json_out.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
