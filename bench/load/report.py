"""Statistics over the recorded streams and the report: percentiles, TTFT overhead against the floors, the table."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from apihelper.bench.load.config import LAG_PROBE_INTERVAL_S, LoadConfig
from apihelper.bench.load.floors import Marks
from apihelper.bench.load.workers import ClientResult, Window


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _dist_ms(values_s: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {"n": len(values_s)}
    for q in qs:
        v = percentile(values_s, q)
        out[f"p{q:g}"] = None if v is None else round(v * 1000.0, 3)
    out["max"] = round(max(values_s) * 1000.0, 3) if values_s else None
    return out


@dataclass
class Report:
    settings: dict[str, Any]
    streams: dict[str, int]
    errors_by_status: dict[str, int]
    error_examples: list[str]
    throughput: dict[str, float]
    ttft_ms: dict[str, float | int | None]
    time_to_first_message_ms: dict[str, float | int | None]
    ttft_overhead_ms: dict[str, Any]
    event_loop_lag_ms: dict[str, Any]
    cpu: dict[str, Any]
    acceptance: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None  # --compare-bare: the bare gRPC floor under the same load
    baseline_engine: dict[str, Any] | None = None  # --compare-bare: bare gRPC + the same fake engine
    direct: dict[str, Any] | None = None  # --compare-direct: the real engine driven without the service
    other_transport: dict[str, Any] | None = None  # --compare-transports: the gRPC run beside this HTTP one


def build_report(
    cfg: LoadConfig,
    window: Window,
    results: Sequence[ClientResult],
    *,
    settings: dict[str, Any],
    marks: Marks | None,
    nominal_first_token_s: float | None,
    lag_s: Sequence[float] | None,
    server_cpu_s: float | None,
    wall_s: float,
    server_loop_busy: float | None = None,
    server_loop_iterations: int | None = None,
    machine_busy_s: float | None = None,
    server_gc: dict[str, Any] | None = None,
) -> Report:
    records = [r for res in results for r in res.records]
    measured = [r for r in records if window.measure_from <= r.started < window.end]
    outcomes = Counter(r.outcome for r in measured)
    errors = Counter(r.code for r in measured if r.outcome == "error")
    examples = sorted({f"{r.code}: {r.detail}" for r in measured if r.outcome == "error"})[:5]
    span = window.end - window.measure_from
    deltas = sum(r.deltas for r in records)
    tokens = sum((r.completion_tokens or 0) if r.completion_in_window else 0 for r in records) + sum(
        r.deltas for r in records if r.completion_tokens is None
    )
    completed_in_window = sum(1 for r in records if r.completion_in_window)

    ttft = [r.first_delta - r.started for r in measured if r.first_delta is not None]
    ttfm = [r.first_message - r.started for r in measured if r.first_message is not None]

    overhead: dict[str, Any] = {}
    with_first = [r for r in measured if r.first_delta is not None]
    if nominal_first_token_s is not None:
        # Retrieval time is known from the completion; for streams cancelled before it, the
        # in-memory retriever's ~0 ms is assumed (it does no I/O).
        strict = [
            (r.first_delta - r.started) - nominal_first_token_s - (r.retrieval_ms or 0.0) / 1000.0
            for r in with_first
            if r.first_delta is not None
        ]
        overhead["client_ttft_minus_nominal_engine_and_retrieval"] = _dist_ms(strict)
        overhead["nominal_engine_first_token_ms"] = round(nominal_first_token_s * 1000.0, 3)
    if marks is not None:
        to_handler, handler_to_engine, to_engine, engine_ft, from_engine, beyond = [], [], [], [], [], []
        for r in with_first:
            mark = marks.get(r.request_id)
            if mark is None or r.first_delta is None:
                continue
            handler, called, first = mark
            if not math.isnan(handler):
                to_handler.append(handler - r.started)
                handler_to_engine.append(called - handler)
            to_engine.append(called - r.started)
            engine_ft.append(first - called)
            from_engine.append(r.first_delta - first)
            beyond.append((r.first_delta - r.started) - (first - called) - (r.retrieval_ms or 0.0) / 1000.0)
        overhead["client_ttft_minus_measured_engine_and_retrieval"] = _dist_ms(beyond)
        overhead["client_to_engine_call"] = _dist_ms(to_engine)
        if to_handler:
            overhead["client_to_handler_retrieval"] = _dist_ms(to_handler)
            overhead["handler_retrieval_to_engine_call"] = _dist_ms(handler_to_engine)
        overhead["engine_call_to_first_token"] = _dist_ms(engine_ft)
        overhead["engine_first_token_to_client"] = _dist_ms(from_engine)
    server_side = [
        (r.first_delta - r.started) - r.server_first_token_ms / 1000.0
        for r in with_first
        if r.first_delta is not None and r.server_first_token_ms is not None
    ]
    overhead["client_ttft_minus_server_reported_ttft"] = _dist_ms(server_side)

    lag: dict[str, Any] = {"probe_interval_ms": LAG_PROBE_INTERVAL_S * 1000.0}
    if lag_s is None:
        lag["n/a"] = "the server runs elsewhere (--target)"
    else:
        lag.update(_dist_ms(lag_s))
        if server_gc is not None:
            lag["server_gc_pauses"] = server_gc

    client_lag = [lag for res in results for when, lag in res.lag_samples if window.measure_from <= when <= window.end]
    lag["client_loop"] = _dist_ms(client_lag) if client_lag else "n/a (the client shares the server's loop)"
    client_cpu = sum(r.cpu_s for r in results)
    cpu = {
        "cores": os.cpu_count(),
        "client_processes_cpu_s": round(client_cpu, 2),
        "client_cpu_pct_of_one_core": round(100.0 * client_cpu / wall_s, 1) if wall_s > 0 else None,
        "server_process_cpu_s": None if server_cpu_s is None else round(server_cpu_s, 2),
        "server_cpu_pct_of_one_core": None if server_cpu_s is None else round(100.0 * server_cpu_s / wall_s, 1),
        "server_loop_busy_pct": None if server_loop_busy is None else round(100.0 * server_loop_busy, 1),
        "server_loop_iterations_per_s": (
            None
            if not server_loop_iterations
            else round(server_loop_iterations / (window.end - window.measure_from), 1)
        ),
        "run_wall_s": round(wall_s, 2),
        # Other processes on the machine over the run: anything much above 0 skews the numbers.
        "other_processes_cpu_pct_of_one_core": (
            None
            if machine_busy_s is None or server_cpu_s is None
            else round(max(0.0, 100.0 * (machine_busy_s - server_cpu_s - client_cpu) / wall_s), 1)
        ),
    }
    report = Report(
        settings=settings,
        streams={
            "started_in_window": len(measured),
            "completed": outcomes["completed"],
            "cancelled_by_client": outcomes["cancelled"],
            "cut_at_end": outcomes["cut"],
            "errors": outcomes["error"],
            "started_in_warmup": sum(1 for r in records if r.started < window.measure_from),
            "calls_started_total": sum(res.calls_started for res in results),
        },
        errors_by_status=dict(sorted(errors.items())),
        error_examples=examples,
        throughput={
            "window_s": round(span, 3),
            "deltas_per_s": round(deltas / span, 1),
            "tokens_per_s": round(tokens / span, 1),
            "completions_per_s": round(completed_in_window / span, 1),
        },
        ttft_ms=_dist_ms(ttft),
        time_to_first_message_ms=_dist_ms(ttfm),
        ttft_overhead_ms=overhead,
        event_loop_lag_ms=lag,
        cpu=cpu,
    )
    report.acceptance = _acceptance(report, nominal_first_token_s)
    return report


def _acceptance(report: Report, nominal: float | None) -> dict[str, Any]:
    """Issue 7, acceptance 5 (fake engine): no errors, lag p99 < 20 ms, overhead p50 < 1 ms.

    The TTFT overhead is judged three ways: against the engine's nominal first-token time (this
    charges gRPC's own round trip and the fake engine's timer slack to the service), and, with
    ``--compare-bare``, against the two floors under the same load: a bare grpc.aio handler
    streaming the same messages on ``asyncio.sleep`` (this charges the fake engine's CPU on the
    loop to the service), and the same handler on the same fake engine (what the service's own
    code adds "beyond retrieval and engine", the acceptance's words)."""
    out: dict[str, Any] = {"no_errors": report.streams["errors"] == 0}
    lag_p99 = report.event_loop_lag_ms.get("p99")
    out["event_loop_lag_p99_under_20ms"] = None if lag_p99 is None else lag_p99 < 20.0
    if nominal is not None:
        p50 = report.ttft_overhead_ms["client_ttft_minus_nominal_engine_and_retrieval"]["p50"]
        out["ttft_overhead_p50_under_1ms"] = None if p50 is None else p50 < 1.0
    for key, baseline in (("grpc", report.baseline), ("grpc_and_engine", report.baseline_engine)):
        if baseline is not None:
            added = baseline["service_adds_ttft_ms"]["p50"]
            out[f"service_adds_under_1ms_p50_over_bare_{key}"] = None if added is None else added < 1.0
    return out


def attach_baseline(report: Report, bare: Report, *, with_engine: bool = False) -> None:
    """Put a floor's run beside ``report`` and judge what the service adds to TTFT over it."""

    def diff(q: str) -> float | None:
        a, b = report.ttft_ms.get(q), bare.ttft_ms.get(q)
        return None if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) else round(a - b, 3)

    baseline = {
        "server": bare.settings.get("server"),
        "ttft_ms": bare.ttft_ms,
        "ttft_overhead_ms": bare.ttft_overhead_ms,
        "event_loop_lag_ms": {k: v for k, v in bare.event_loop_lag_ms.items() if k in ("n", "p50", "p99", "max")},
        "throughput": bare.throughput,
        "streams": bare.streams,
        "cpu": bare.cpu,
        "service_adds_ttft_ms": {"p50": diff("p50"), "p90": diff("p90"), "p99": diff("p99")},
    }
    if with_engine:
        report.baseline_engine = baseline
    else:
        report.baseline = baseline
    nominal = report.ttft_overhead_ms.get("nominal_engine_first_token_ms")
    report.acceptance = _acceptance(report, None if nominal is None else nominal / 1000.0)


def attach_direct(report: Report, direct: dict[str, float]) -> None:
    """Issue 7, acceptance 5 (real engine): the service's throughput is >= 95% of the engine's
    own at the same concurrency."""
    service = report.throughput.get("tokens_per_s") or 0.0
    ratio = service / direct["tokens_per_s"] if direct["tokens_per_s"] else None
    report.direct = {**direct, "service_tokens_per_s": service, "ratio": None if ratio is None else round(ratio, 3)}
    report.acceptance["service_throughput_at_least_95pct_of_direct"] = None if ratio is None else ratio >= 0.95


def attach_transport(http: Report, grpc: Report) -> None:
    """Issue 15, acceptance 5: TTFT p50 through SSE within 1 ms of gRPC's under the same load."""

    def diff(q: str) -> float | None:
        a, b = http.ttft_ms.get(q), grpc.ttft_ms.get(q)
        return None if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) else round(a - b, 3)

    http.other_transport = {
        "transport": "grpc",
        "ttft_ms": grpc.ttft_ms,
        "ttft_overhead_ms": grpc.ttft_overhead_ms,
        "event_loop_lag_ms": {k: v for k, v in grpc.event_loop_lag_ms.items() if k in ("n", "p50", "p99", "max")},
        "throughput": grpc.throughput,
        "streams": grpc.streams,
        "cpu": grpc.cpu,
        "http_minus_grpc_ttft_ms": {"p50": diff("p50"), "p90": diff("p90"), "p99": diff("p99")},
    }
    added = diff("p50")
    http.acceptance["http_ttft_p50_within_1ms_of_grpc"] = None if added is None else abs(added) <= 1.0
    http.acceptance["no_errors_over_grpc"] = grpc.streams["errors"] == 0


def format_table(report: Report) -> str:
    def fmt(d: dict[str, Any], keys: Sequence[str] = ("n", "p50", "p90", "p99", "max")) -> str:
        return "  ".join(f"{k}={'n/a' if d.get(k) is None else d[k]}" for k in keys if k in d)

    s = report.streams
    t = report.throughput
    lines = [
        "apihelper load: " + ", ".join(f"{k}={v}" for k, v in report.settings.items()),
        "",
        f"{'streams':34} started={s['started_in_window']} completed={s['completed']} "
        f"cancelled={s['cancelled_by_client']} cut_at_end={s['cut_at_end']} errors={s['errors']}",
        f"{'errors by status':34} {report.errors_by_status or 'none'}",
        f"{'throughput (window ' + str(t['window_s']) + ' s)':34} tokens/s={t['tokens_per_s']} "
        f"deltas/s={t['deltas_per_s']} completions/s={t['completions_per_s']}",
        f"{'TTFT at the client (ms)':34} {fmt(report.ttft_ms)}",
        f"{'first message, sources (ms)':34} {fmt(report.time_to_first_message_ms)}",
    ]
    labels = {
        "client_ttft_minus_nominal_engine_and_retrieval": "service overhead on TTFT (ms)",
        "client_ttft_minus_measured_engine_and_retrieval": "  same, engine time as measured",
        "client_to_engine_call": "  client -> engine.stream called",
        "client_to_handler_retrieval": "    client -> handler at retrieval",
        "handler_retrieval_to_engine_call": "    retrieval -> engine.stream",
        "engine_call_to_first_token": "  engine call -> first token",
        "engine_first_token_to_client": "  engine first token -> client",
        "client_ttft_minus_server_reported_ttft": "client TTFT - server's first_token_ms",
    }
    for key, label in labels.items():
        if key in report.ttft_overhead_ms:
            lines.append(f"{label:34} {fmt(report.ttft_overhead_ms[key], ('n', 'p50', 'p99', 'max'))}")
    lag = report.event_loop_lag_ms
    lines.append(
        f"{'server event-loop lag (ms)':34} " + (lag["n/a"] if "n/a" in lag else fmt(lag, ("n", "p50", "p99", "max")))
    )
    if isinstance(lag.get("server_gc_pauses"), dict):
        g = lag["server_gc_pauses"]
        lines.append(f"{'  server GC pauses':34} n={g['collections']} total={g['total_ms']} ms max={g['max_ms']} ms")
    client_lag = lag["client_loop"]
    lines.append(
        f"{'client event-loop lag (ms)':34} "
        + (fmt(client_lag, ("n", "p50", "p99", "max")) if isinstance(client_lag, dict) else str(client_lag))
    )
    c = report.cpu
    if c["server_cpu_pct_of_one_core"] is None:
        lines.append(
            f"{'CPU (% of one core)':34} clients={c['client_cpu_pct_of_one_core']} (server: n/a, it runs elsewhere)"
        )
    else:
        lines.append(
            f"{'CPU (% of one core)':34} server={c['server_cpu_pct_of_one_core']} "
            f"(its event loop busy {c['server_loop_busy_pct']}%, {c['server_loop_iterations_per_s']} iterations/s) "
            f"clients={c['client_cpu_pct_of_one_core']} other processes={c['other_processes_cpu_pct_of_one_core']} "
            f"(machine cores: {c['cores']})"
        )
    floors = (("bare grpc.aio floor", report.baseline), ("bare grpc.aio + same engine", report.baseline_engine))
    for name, b in floors:
        if b is None:
            continue
        lines.append(
            f"{name + ', same load':34} TTFT {fmt(b['ttft_ms'])}; lag {fmt(b['event_loop_lag_ms'], ('p50', 'p99', 'max'))}; "
            f"server CPU {b['cpu']['server_cpu_pct_of_one_core']}%"
        )
        lines.append(f"{'  service adds to TTFT (ms)':34} {fmt(b['service_adds_ttft_ms'], ('p50', 'p90', 'p99'))}")
    if report.other_transport is not None:
        o = report.other_transport
        lines.append(
            f"{'over gRPC, same load':34} TTFT {fmt(o['ttft_ms'])}; lag {fmt(o['event_loop_lag_ms'], ('p50', 'p99', 'max'))}; "
            f"server CPU {o['cpu']['server_cpu_pct_of_one_core']}%"
        )
        lines.append(f"{'  HTTP minus gRPC TTFT (ms)':34} {fmt(o['http_minus_grpc_ttft_ms'], ('p50', 'p90', 'p99'))}")
    if report.direct is not None:
        d = report.direct
        lines.append(
            f"{'engine driven directly, same load':34} tokens/s={d['tokens_per_s']} streams={d['streams']}; "
            f"through the service {d['service_tokens_per_s']} = {d['ratio']} of it"
        )
    lines.append(f"{'acceptance 5':34} " + " ".join(f"{k}={v}" for k, v in report.acceptance.items()))
    return "\n".join(lines)
