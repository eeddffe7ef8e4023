"""Smoke test of the load generator (apihelper.bench.load, CLI bench/load/run.py): a short in-process run with the fake
engine and random cancels must count tokens, measure the server's event-loop lag and see no
error but the CANCELLED its own cancels cause. Timings are not asserted: CI machines vary."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from apihelper.bench.load.config import LoadConfig, RunOptions, check_loopback
from apihelper.bench.load.report import format_table, percentile
from apihelper.bench.load.run import options_from_args, run, run_transports


async def test_inprocess_fake_smoke_counts_tokens_lag_and_only_our_cancels() -> None:
    cfg = LoadConfig(
        concurrency=16, duration_s=2.0, warmup_s=0.3, ramp_s=0.3, cancel_prob=0.3, cancel_max_messages=8, seed=7
    )
    # inline: the client shares the server's loop, so the test needs no process start-up.
    report = await run(RunOptions(cfg=cfg, inprocess="fake", client="inline", token_rate=200.0))

    streams = report.streams
    assert streams["errors"] == 0, report.error_examples
    assert report.errors_by_status == {}
    assert streams["completed"] > 0 and streams["cancelled_by_client"] > 0
    assert report.throughput["tokens_per_s"] > 0 and report.throughput["deltas_per_s"] > 0
    ttft_p50 = report.ttft_ms["p50"]
    ttft_n = report.ttft_ms["n"]
    assert ttft_n is not None and ttft_n > 0 and ttft_p50 is not None and ttft_p50 > 0
    lag = report.event_loop_lag_ms
    lag_n, lag_p50, lag_p99, lag_max = lag["n"], lag["p50"], lag["p99"], lag["max"]
    assert lag_n is not None and lag_n > 50
    assert lag_p50 is not None and lag_p50 >= 0
    assert lag_max is not None and lag_p99 is not None and lag_max >= lag_p99
    overhead = report.ttft_overhead_ms
    assert overhead["nominal_engine_first_token_ms"] == pytest.approx(5.0)
    assert overhead["client_to_engine_call"]["n"] > 0  # the engine-boundary timestamps joined up
    assert set(report.acceptance) == {"no_errors", "event_loop_lag_p99_under_20ms", "ttft_overhead_p50_under_1ms"}
    text = format_table(report)
    assert "server event-loop lag" in text and "tokens/s" in text


async def test_separate_client_process_and_deadlines_are_reported_by_status() -> None:
    # A deadline shorter than a stream (20 tokens at 50/s = 0.4 s): streams end DEADLINE_EXCEEDED,
    # counted as errors by status; the client runs in a spawned process.
    cfg = LoadConfig(concurrency=4, duration_s=1.0, warmup_s=0.2, ramp_s=0.1, deadline_s=0.15)
    report = await run(RunOptions(cfg=cfg, inprocess="fake", client="process", token_rate=50.0))
    assert report.errors_by_status.get("DEADLINE_EXCEEDED", 0) > 0
    assert set(report.errors_by_status) == {"DEADLINE_EXCEEDED"}
    assert report.cpu["client_processes_cpu_s"] > 0
    assert not math.isnan(report.event_loop_lag_ms["p99"])


async def test_the_http_transport_and_the_comparison_with_grpc() -> None:
    # The same load over SSE (POST /v1/generate), then over gRPC, each on a fresh server: both
    # stream whole answers, the HTTP report carries gRPC's figures and the TTFT difference.
    cfg = LoadConfig(concurrency=4, duration_s=1.0, warmup_s=0.3, ramp_s=0.1, cancel_prob=0.3, cancel_max_messages=6)
    report = await run_transports(RunOptions(cfg=cfg, inprocess="fake", client="inline", token_rate=200.0))
    assert report.settings["transport"].startswith("HTTP")
    assert report.streams["errors"] == 0, report.error_examples
    assert report.streams["completed"] > 0 and report.streams["cancelled_by_client"] > 0
    assert report.throughput["tokens_per_s"] > 0
    assert report.ttft_overhead_ms["client_to_engine_call"]["n"] > 0  # request ids joined the engine marks
    other = report.other_transport
    assert other is not None and other["streams"]["completed"] > 0
    assert other["http_minus_grpc_ttft_ms"]["p50"] == pytest.approx(
        report.ttft_ms["p50"] - other["ttft_ms"]["p50"], abs=1e-2
    )
    assert isinstance(report.acceptance["http_ttft_p50_within_1ms_of_grpc"], bool)
    assert "HTTP minus gRPC TTFT" in format_table(report)
    with pytest.raises(ValueError):
        options_from_args(["--inprocess", "bare", "--http"])


def test_only_loopback_targets() -> None:
    assert check_loopback("127.0.0.1:50051") == "127.0.0.1:50051"
    assert check_loopback("localhost:1") == "localhost:1"
    assert check_loopback("[::1]:50051") == "[::1]:50051"
    for bad in ("10.0.0.1:50051", "example.com:443", "127.0.0.1", "127.0.0.1:0", "8.8.8.8:53"):
        with pytest.raises(ValueError):
            check_loopback(bad)


def test_percentile_and_arguments() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 99) == 5.0
    opts, _ = options_from_args(["--inprocess", "fake", "--concurrency", "8", "--token-rate", "20"])
    assert opts.cfg.ramp_s == pytest.approx(21 / 20)  # one fake stream: 20 tokens + the end step
    assert opts.cfg.warmup_s >= opts.cfg.ramp_s
    with pytest.raises(ValueError):
        options_from_args(["--inprocess", "fake", "--duration", "7200"])


@pytest.mark.transformers5  # the real stack: the transformers 5 engine on the dev model
async def test_real_stack_against_the_engine_driven_directly() -> None:
    cfg = LoadConfig(concurrency=2, duration_s=1.5, warmup_s=0.5, ramp_s=0.1, max_tokens=4, retrieval_mode="none")
    report = await run(RunOptions(cfg=cfg, inprocess="real", client="inline", compare_direct=True))
    assert report.streams["errors"] == 0, report.error_examples
    direct = report.direct
    assert direct is not None and direct["tokens_per_s"] > 0 and direct["streams"] > 0
    assert direct["ratio"] == pytest.approx(direct["service_tokens_per_s"] / direct["tokens_per_s"], abs=1e-3)
    assert isinstance(report.acceptance["service_throughput_at_least_95pct_of_direct"], bool)
    assert "engine driven directly" in format_table(report)


@pytest.mark.transformers5
async def test_constrained_bench_reports_every_configuration(dev_model_dir: Path) -> None:
    """Plumbing only (one round; the figure itself is for a quiet machine): both engines run,
    the constrained stream is masked, and each configuration is compared with the baseline."""
    from apihelper.bench.constrained.run import run as run_constrained

    summary = await run_constrained(dev_model_dir, rounds=1, device="cpu")
    assert {"A", "B", "C", "D"} <= set(summary)
    assert all(summary[k]["median_tokens_per_s"] > 0 for k in "ABCD")
    assert summary["A"]["vs_A_percent"] == 0.0
    assert isinstance(summary["acceptance_c_within_10_percent_of_a"], bool)
