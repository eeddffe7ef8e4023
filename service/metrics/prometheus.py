"""Prometheus metrics: the only module that imports prometheus_client.

Every metric is named ``apihelper_*`` and documented by its help text; histograms have explicit
buckets sized for LLM serving (milliseconds for retrieval and token gaps, up to minutes for whole
generations). Engine and GPU gauges are read at scrape time by a collector, so they are never
stale and cost nothing between scrapes. A private registry per server: no global state.

The recorder is called on the event loop that serves every stream, so its cost per token is
kept small: the per-token histogram is a :class:`LoopHistogram` (no lock, one observation call
per delta whatever the tokens it carries), and labelled children are looked up once.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from apihelper.retriever.types import RetrievalMode
from apihelper.service.engine.protocol import EngineStats, FinishReason
from apihelper.service.metrics.gpu import GpuReader

# Buckets (seconds). Retrieval: embedding a query is ~20 ms on a CPU, a search a few ms.
RETRIEVAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)
# Time to first token and queue time: ~7 ms on TensorRT-LLM up to seconds under load on a CPU.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
# Inter-token latency: 4.5 ms/token is a 7B decode floor on an H100; CPU dev models are slower.
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
# Whole requests: up to minutes for long generations.
E2E_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0)
# Event-loop lag: under a millisecond when idle; tens of ms means every stream is waiting.
LOOP_LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
DOC_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50)
RETRIEVAL_MODES = tuple(m.value for m in RetrievalMode if m is not RetrievalMode.NONE)
FINISH_REASONS = tuple(r.value for r in FinishReason)
STREAMING_RPCS = ("Generate", "Watch")  # the streams a stall can end


class PrometheusRecorder:
    def __init__(
        self,
        *,
        version: str,
        engine_kind: str,
        model: str,
        prompt_format: str,
        embedding_model: str,
        engine_stats: Callable[[], EngineStats],
        gpu: GpuReader | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "apihelper_requests", "RPCs finished, by method and final gRPC status code.", ["rpc", "code"], registry=r
        )
        self.in_flight = Gauge("apihelper_requests_in_flight", "RPCs being served now, by method.", ["rpc"], registry=r)
        self.stalled = Counter(
            "apihelper_stalled_streams",
            "Streams ended because the client took no message for the stall timeout, by method.",
            ["rpc"],
            registry=r,
        )
        self.request_duration = Histogram(
            "apihelper_request_duration_seconds",
            "RPC duration from arrival to the last message, by method (end-to-end latency).",
            ["rpc"],
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "apihelper_time_to_first_token_seconds",
            "Generate: time from request arrival to the first streamed text, retrieval included.",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = LoopHistogram(
            "apihelper_inter_token_latency_seconds",
            "Generate: time between consecutive generated tokens.",
            buckets=ITL_BUCKETS,
        )
        r.register(self.itl)
        self.queue = Histogram(
            "apihelper_queue_time_seconds",
            "Generate: time from submission to the engine until it started the request.",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.generation = Histogram(
            "apihelper_generation_duration_seconds",
            "Generate: whole generation, from arrival to the final message.",
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.embed = Histogram(
            "apihelper_retrieval_embed_seconds",
            "Retrieval: embedding the query, by retrieval mode.",
            ["mode"],
            buckets=RETRIEVAL_BUCKETS,
            registry=r,
        )
        self.search = Histogram(
            "apihelper_retrieval_search_seconds",
            "Retrieval: the vector/BM25 search in Milvus, by retrieval mode.",
            ["mode"],
            buckets=RETRIEVAL_BUCKETS,
            registry=r,
        )
        self.docs = Histogram(
            "apihelper_retrieval_docs", "Retrieval: docs returned per query.", buckets=DOC_BUCKETS, registry=r
        )
        self.empty = Counter(
            "apihelper_retrieval_empty_results",
            "Retrieval: queries that returned no doc, by mode.",
            ["mode"],
            registry=r,
        )
        self.prompt_tokens = Counter("apihelper_prompt_tokens", "Prompt tokens processed.", registry=r)
        self.completion_tokens = Counter("apihelper_completion_tokens", "Completion tokens generated.", registry=r)
        self.completion_per_request = Histogram(
            "apihelper_request_completion_tokens",
            "Completion tokens per Generate request.",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.finished = Counter(
            "apihelper_generations", "Generations that ran to an end, by finish reason.", ["finish_reason"], registry=r
        )
        self.loop_lag_seconds = Histogram(
            "apihelper_event_loop_lag_seconds",
            "How late the server's event loop ran a periodic timer (all streams share that loop).",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        # Known label values start at zero, so rate() and the dashboard see them before the first event.
        for mode in RETRIEVAL_MODES:
            self.empty.labels(mode)
            self.embed.labels(mode)
            self.search.labels(mode)
        for reason in FINISH_REASONS:
            self.finished.labels(reason)
        for rpc in STREAMING_RPCS:
            self.stalled.labels(rpc)
        Info("apihelper_build", "The running service: version, engine, model and formats.", registry=r).info(
            {
                "version": version,
                "engine": engine_kind,
                "model": model,
                "prompt_format": prompt_format,
                "embedding_model": embedding_model,
            }
        )
        r.register(_LiveCollector(engine_stats, gpu or GpuReader()))
        # Labelled children by label values: prometheus_client's labels() takes a lock each call.
        self._rpc_children: dict[str, tuple[Gauge, Histogram]] = {}
        self._code_children: dict[tuple[str, str], Counter] = {}
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- Recorder ------------------------------------------------------------------------------

    def rpc_started(self, rpc: str) -> None:
        self._rpc(rpc)[0].inc()

    def rpc_finished(self, rpc: str, code: str, seconds: float) -> None:
        in_flight, duration = self._rpc(rpc)
        in_flight.dec()
        duration.observe(seconds)
        counter = self._code_children.get((rpc, code))
        if counter is None:
            counter = self._code_children[(rpc, code)] = self.requests.labels(rpc, code)
        counter.inc()

    def stream_stalled(self, rpc: str) -> None:
        self.stalled.labels(rpc).inc()

    def _rpc(self, rpc: str) -> tuple[Gauge, Histogram]:
        children = self._rpc_children.get(rpc)
        if children is None:
            children = self._rpc_children[rpc] = (self.in_flight.labels(rpc), self.request_duration.labels(rpc))
        return children

    def retrieval(self, mode: str, embed_seconds: float, search_seconds: float, docs: int) -> None:
        self.embed.labels(mode).observe(embed_seconds)
        self.search.labels(mode).observe(search_seconds)
        self.docs.observe(docs)
        if docs == 0:
            self.empty.labels(mode).inc()

    def queue_time(self, seconds: float) -> None:
        self.queue.observe(seconds)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def inter_token(self, seconds: float, tokens: int) -> None:
        # A delta may carry several tokens (detokenization holds back partial characters):
        # spread the gap evenly so the histogram counts tokens, not deltas.
        tokens = max(tokens, 1)
        self.itl.observe(seconds / tokens, tokens)

    def generation_finished(
        self, seconds: float, prompt_tokens: int, completion_tokens: int, finish_reason: str
    ) -> None:
        self.generation.observe(seconds)
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.inc(completion_tokens)
        self.completion_per_request.observe(completion_tokens)
        self.finished.labels(finish_reason).inc()

    def loop_lag(self, seconds: float) -> None:
        self.loop_lag_seconds.observe(seconds)

    # -- HTTP ----------------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on a background thread; returns the bound port."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class LoopHistogram(Collector):
    """A histogram written by one thread only (the event loop) with no lock, scraped from another.

    An observation is a bisect and two additions. A scrape copies the bucket counts in one call
    (atomic under the GIL) and derives the cumulative buckets and the count from that copy, so
    they always agree; the sum may be one observation ahead or behind, which no query notices.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = tuple(float(b) for b in buckets)
        if list(self._bounds) != sorted(set(self._bounds)) or math.inf in self._bounds:
            raise ValueError(f"{name}: buckets must be finite and strictly increasing")
        self._counts = [0] * (len(self._bounds) + 1)  # the last is +Inf
        self._sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        """Record ``count`` observations of ``value``."""
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le means <=).
        self._counts[bisect.bisect_left(self._bounds, value)] += count
        self._sum += value * count

    def describe(self) -> Iterator[Metric]:
        return iter([HistogramMetricFamily(self._name, self._documentation)])

    def collect(self) -> Iterator[Metric]:
        counts = list(self._counts)
        total = self._sum
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip((*self._bounds, math.inf), counts, strict=False):
            cumulative += count
            buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
        yield HistogramMetricFamily(self._name, self._documentation, buckets=buckets, sum_value=total)


class _LiveCollector(Collector):
    """Engine and GPU gauges, read when Prometheus scrapes."""

    def __init__(self, engine_stats: Callable[[], EngineStats], gpu: GpuReader) -> None:
        self._engine_stats = engine_stats
        self._gpu = gpu

    def describe(self) -> Iterator[Metric]:
        return iter(())  # dynamic: described by collect()

    def collect(self) -> Iterator[Metric]:
        stats = self._engine_stats()
        yield GaugeMetricFamily(
            "apihelper_engine_running_requests", "Requests the engine is generating for now.", value=stats.running
        )
        yield GaugeMetricFamily(
            "apihelper_engine_waiting_requests", "Requests queued in the engine, not yet started.", value=stats.waiting
        )
        if stats.kv_cache_usage is not None:
            yield GaugeMetricFamily(
                "apihelper_engine_kv_cache_usage_ratio",
                "Fraction of the engine's KV cache in use (0..1).",
                value=stats.kv_cache_usage,
            )
        yield GaugeMetricFamily(
            "apihelper_gpu_available",
            "1 when NVML reports at least one GPU; 0 means no GPU series are exported.",
            value=1.0 if self._gpu.available else 0.0,
        )
        readings = self._gpu.read()
        if not readings:
            return
        families = {
            "utilization_ratio": GaugeMetricFamily(
                "apihelper_gpu_utilization_ratio",
                "GPU busy fraction over NVML's sample period.",
                labels=["gpu", "name"],
            ),
            "memory_used_bytes": GaugeMetricFamily(
                "apihelper_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu", "name"]
            ),
            "memory_total_bytes": GaugeMetricFamily(
                "apihelper_gpu_memory_total_bytes", "GPU memory in total.", labels=["gpu", "name"]
            ),
            "power_watts": GaugeMetricFamily("apihelper_gpu_power_watts", "GPU power draw.", labels=["gpu", "name"]),
            "temperature_celsius": GaugeMetricFamily(
                "apihelper_gpu_temperature_celsius", "GPU core temperature.", labels=["gpu", "name"]
            ),
        }
        for reading in readings:
            labels = [str(reading.index), reading.name]
            for attr, family in families.items():
                value = getattr(reading, attr)
                if value is not None:
                    family.add_metric(labels, float(value))
        yield from families.values()
