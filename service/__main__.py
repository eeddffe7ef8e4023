"""``apihelper-serve``: the composition root. The only place that picks concrete classes.

Reads Settings once, builds the embedder, the Milvus retriever and the engine, starts the gRPC
server, and on SIGTERM/SIGINT drains it (health NOT_SERVING -> grace period -> engine shutdown).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from service.engine.protocol import Engine
from service.errors import ApiHelperError, ConfigurationError
from service.metrics import NullRecorder, Recorder
from service.prompts import PromptFormat
from service.settings import Settings, load_settings

log = logging.getLogger("apihelper")


async def build_engine(settings: Settings) -> Engine:
    prompt_format = PromptFormat(settings.prompt_format) if settings.prompt_format else None
    if settings.engine == "tensorrt_llm":
        from service.engine.tensorrt_llm_engine import TensorRTLLMEngine

        return await TensorRTLLMEngine.load(
            Path(settings.model),
            prompt_format=prompt_format,
            kv_cache_free_gpu_memory_fraction=settings.kv_cache_free_gpu_memory_fraction,
            enable_block_reuse=settings.enable_block_reuse,
        )
    from service.engine.transformers_engine import TransformersEngine

    return await TransformersEngine.load(
        Path(settings.model),
        device=settings.device,
        dtype=settings.dtype,
        prompt_format=prompt_format,
        max_concurrent=settings.max_batch_size,
        num_blocks=settings.kv_cache_blocks or None,
        block_size=settings.kv_block_size,
        max_batch_tokens=settings.max_batch_tokens,
    )


async def serve(settings: Settings) -> None:
    from retriever.embedding import Embedder
    from retriever.service import open_retriever
    from service.grpc.server import start_server

    embedder = await asyncio.to_thread(Embedder)
    retriever = await open_retriever(settings.milvus_uri, settings.milvus_token, embedder)
    engine = await build_engine(settings)
    recorder: Recorder = NullRecorder()
    prometheus = None
    if settings.metrics_port:
        from service.metrics.prometheus import PrometheusRecorder

        prometheus = PrometheusRecorder(
            version=version("apihelper"),
            engine_kind=engine.info.kind,
            model=engine.info.model,
            prompt_format=engine.info.prompt_format.value,
            embedding_model=embedder.model_name,
            engine_stats=engine.stats,
        )
        metrics_port = prometheus.serve(settings.metrics_host, settings.metrics_port)
        print(f"apihelper: metrics on http://{settings.metrics_host}:{metrics_port}/metrics", flush=True)
        recorder = prometheus
    if engine.info.random_weights:
        log.warning("serving %s: a development model with RANDOM weights; its text is not meaningful", engine.info.model)
    running = await start_server(settings, engine, retriever, recorder)
    # Everything loaded so far (models, tokenizers, libraries) lives until exit: move it out of
    # the collector's reach, or each full collection walks ~600k objects and stalls the event
    # loop for ~350 ms (measured with bench/load).
    gc.collect()
    gc.freeze()
    print(f"apihelper: listening on {settings.host}:{running.port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: draining for up to %.1fs", settings.shutdown_grace_seconds)
    await running.stop()
    if prometheus is not None:
        prometheus.close()
    log.info("stopped")


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to serve on: uvloop's where installed ("auto") or asked for, else asyncio's
    (None). Every stream shares this loop, and grpc.aio accepts each new call through several of
    its iterations: uvloop's cheaper iterations cut ~10% off time to first token at 256 streams
    (bench/load/README.md)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigurationError("event_loop uvloop: uvloop is not installed (pip install uvloop)") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(sys.argv[1:] if argv is None else argv, os.environ)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        factory = event_loop_factory(settings.event_loop)
        log.info("event loop: %s", "uvloop" if factory is not None else "asyncio")
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(settings))
    except ApiHelperError as exc:
        # Configuration problems found at start-up: one clear line, no traceback.
        print(f"apihelper-serve: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
