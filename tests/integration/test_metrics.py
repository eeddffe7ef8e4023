"""Metrics over real traffic: scrape /metrics over HTTP, lint it with promtool, let a real
Prometheus server scrape it, and check the shipped dashboard against what is exported."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apihelper.service.engine.protocol import EngineStats
from apihelper.service.metrics.gpu import GpuReader, GpuReading
from apihelper.service.metrics.prometheus import PrometheusRecorder
from apihelper.v1 import apihelper_pb2 as pb
from apihelper.v1 import apihelper_pb2_grpc as pb_grpc
from tests.conftest import Serving
from tests.support import ROOT

# The real transformers engine (5.x continuous batching); deselected in the compat env.
pytestmark = pytest.mark.transformers5

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "apihelper.json"

# Every family the issue asks for (names without the _total/_bucket/_count/_sum suffixes).
EXPECTED = {
    "apihelper_requests": "counter",
    "apihelper_requests_in_flight": "gauge",
    "apihelper_stalled_streams": "counter",
    "apihelper_request_duration_seconds": "histogram",
    "apihelper_time_to_first_token_seconds": "histogram",
    "apihelper_inter_token_latency_seconds": "histogram",
    "apihelper_queue_time_seconds": "histogram",
    "apihelper_generation_duration_seconds": "histogram",
    "apihelper_retrieval_embed_seconds": "histogram",
    "apihelper_retrieval_search_seconds": "histogram",
    "apihelper_retrieval_docs": "histogram",
    "apihelper_retrieval_empty_results": "counter",
    "apihelper_prompt_tokens": "counter",
    "apihelper_completion_tokens": "counter",
    "apihelper_request_completion_tokens": "histogram",
    "apihelper_generations": "counter",
    "apihelper_event_loop_lag_seconds": "histogram",
    "apihelper_engine_running_requests": "gauge",
    "apihelper_engine_waiting_requests": "gauge",
    "apihelper_gpu_available": "gauge",
    "apihelper_build_info": "gauge",  # an Info metric reads back as a gauge of value 1
}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def drive(channel: grpc.aio.Channel, streams: int) -> tuple[int, int]:
    """Run ``streams`` Generate calls and one Retrieve; returns (prompt, completion) tokens seen."""
    stub = pb_grpc.ApiHelperStub(channel)

    async def one(i: int) -> tuple[int, int]:
        request = pb.GenerateRequest(
            instruction=f"Create a new session number {i}",
            retrieval=pb.RetrievalOptions(corpora=["demo"], top_k=2),
            sampling=pb.SamplingParams(max_tokens=12),
        )
        usage = pb.Usage()
        async for m in stub.Generate(request, timeout=60):
            if m.WhichOneof("event") == "completion":
                usage = m.completion.usage
        return usage.prompt_tokens, usage.completion_tokens

    results = await asyncio.gather(*(one(i) for i in range(streams)))
    await stub.Retrieve(pb.RetrieveRequest(instruction="list my sessions"), timeout=30)
    return sum(r[0] for r in results), sum(r[1] for r in results)


async def test_scrape_has_every_metric_with_plausible_values(serving: Serving, channel: grpc.aio.Channel) -> None:
    before = await asyncio.to_thread(scrape, serving.metrics_port)
    prompt_tokens, completion_tokens = await drive(channel, 3)
    after = await asyncio.to_thread(scrape, serving.metrics_port)

    families = {f.name: f.type for f in text_string_to_metric_families(after)}
    for name, kind in EXPECTED.items():
        assert families.get(name) == kind, f"{name} missing or not a {kind}"

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("apihelper_time_to_first_token_seconds_count") == 3  # one per completed stream
    assert delta("apihelper_requests_total", rpc="Generate", code="OK") == 3
    assert delta("apihelper_requests_total", rpc="Retrieve", code="OK") == 1
    assert delta("apihelper_completion_tokens_total") == completion_tokens
    assert delta("apihelper_prompt_tokens_total") == prompt_tokens
    assert delta("apihelper_request_completion_tokens_sum") == completion_tokens
    assert delta("apihelper_retrieval_embed_seconds_count", mode="hybrid") == 4
    assert delta("apihelper_inter_token_latency_seconds_count") > 0
    assert delta("apihelper_event_loop_lag_seconds_count") > 0  # the probe wakes 20 times a second
    assert value(after, "apihelper_requests_in_flight", rpc="Generate") == 0
    assert value(after, "apihelper_engine_running_requests") == 0
    # No GPU here: the gauge says so, and no GPU series is invented.
    assert value(after, "apihelper_gpu_available") == 0
    assert not any(name.startswith("apihelper_gpu_") and name != "apihelper_gpu_available" for name in families)
    build = [s for f in text_string_to_metric_families(after) if f.name == "apihelper_build_info" for s in f.samples]
    assert build and build[0].labels["engine"] == "transformers" and build[0].labels["embedding_model"]


async def test_invalid_argument_is_counted_by_status(serving: Serving, channel: grpc.aio.Channel) -> None:
    before = await asyncio.to_thread(scrape, serving.metrics_port)
    with pytest.raises(grpc.aio.AioRpcError):
        await pb_grpc.ApiHelperStub(channel).Retrieve(pb.RetrieveRequest(instruction=""), timeout=10)
    after = await asyncio.to_thread(scrape, serving.metrics_port)
    name, labels = "apihelper_requests_total", {"rpc": "Retrieve", "code": "INVALID_ARGUMENT"}
    assert value(after, name, **labels) - value(before, name, **labels) == 1


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make install` installs the Debian package prometheus")
    return path


async def test_promtool_accepts_the_scrape(serving: Serving, channel: grpc.aio.Channel) -> None:
    await drive(channel, 1)
    text = await asyncio.to_thread(scrape, serving.metrics_port)
    result = subprocess.run([_promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def prometheus_server(serving: Serving, tmp_path: Path) -> Iterator[int]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: `make install` installs the Debian package prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: apihelper\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{serving.metrics_port}']\n"
    )
    port = _free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=20)


def _query(port: int, expr: str) -> float | None:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except OSError:
        return None  # not up yet
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


async def test_real_prometheus_scrapes_ttft(
    serving: Serving, channel: grpc.aio.Channel, prometheus_server: int
) -> None:
    await drive(channel, 2)
    deadline = time.monotonic() + 60
    seen = None
    while time.monotonic() < deadline:
        seen = await asyncio.to_thread(_query, prometheus_server, "sum(apihelper_time_to_first_token_seconds_count)")
        if seen:
            break
        await asyncio.sleep(1)
    assert seen and seen > 0, "Prometheus never saw a TTFT observation"


class _OneGpu(GpuReader):
    """A double at the NVML boundary: one GPU with every field, to see the GPU families."""

    def __init__(self) -> None:
        pass

    @property
    def available(self) -> bool:
        return True

    def read(self) -> list[GpuReading]:
        return [GpuReading(0, "NVIDIA H100", 0.5, 1 << 30, 80 << 30, 300.0, 55.0)]


def _exported_names(serving: Serving) -> set[str]:
    from prometheus_client import generate_latest

    live = scrape(serving.metrics_port)
    gpu_recorder = PrometheusRecorder(
        version="t",
        engine_kind="k",
        model="m",
        prompt_format="p",
        embedding_model="e",
        engine_stats=lambda: EngineStats(running=1, waiting=0, kv_cache_usage=0.25),
        gpu=_OneGpu(),
    )
    with_gpu = generate_latest(gpu_recorder.registry).decode()
    return {s.name for text in (live, with_gpu) for f in text_string_to_metric_families(text) for s in f.samples}


def test_gpu_families_appear_with_a_gpu(serving: Serving) -> None:
    names = _exported_names(serving)
    for name in ("utilization_ratio", "memory_used_bytes", "memory_total_bytes", "power_watts", "temperature_celsius"):
        assert f"apihelper_gpu_{name}" in names
    assert "apihelper_engine_kv_cache_usage_ratio" in names


def test_dashboard_uses_only_exported_metrics(serving: Serving) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 12
    used = {name for e in exprs for name in re.findall(r"\b(apihelper_[a-z0-9_]+)", e)}
    missing = used - _exported_names(serving)
    assert not missing, f"dashboard queries metrics the service does not export: {sorted(missing)}"
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in (
        "first token",
        "inter-token",
        "tokens per second",
        "end-to-end",
        "retrieval",
        "error",
        "in flight",
        "kv cache",
        "gpu utilization",
        "gpu memory",
        "gpu power",
        "gpu temperature",
    ):
        assert topic in titles
