"""``apihelper-serve``: the composition root. The only place that picks concrete classes.

Reads Settings once, builds the embedder, the Milvus retriever, the engine and the metrics
recorder, starts the front ends (gRPC, and HTTP beside it in the same event loop), and on
SIGTERM/SIGINT drains them together (health NOT_SERVING -> both stop accepting -> one grace
period for the streams in flight on either -> engine shutdown -> retriever closed). Every
lifetime is held by one exit stack in :func:`serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from importlib.metadata import version
from pathlib import Path

from apihelper.errors import ApiHelperError
from apihelper.service.engine.choice import choose_engine
from apihelper.service.engine.config import OpenVINOConfig, TensorRTLLMConfig, from_settings
from apihelper.service.engine.protocol import Engine
from apihelper.service.grpc.server import event_loop_factory
from apihelper.service.metrics import NullRecorder, Recorder
from apihelper.service.settings import Settings, load_settings

log = logging.getLogger("apihelper")


async def build_engine(settings: Settings) -> Engine:
    """The engine ``settings`` name (``--engine auto``: ``service.engine.choice``), loaded with its
    options built once from the settings (``service.engine.config``)."""
    model = Path(settings.model)
    kind = choose_engine(settings.engine, model, settings.device)
    log.info("engine: %s (--engine %s) for %s", kind.value, settings.engine.value, model)
    config = from_settings(kind, settings)
    if isinstance(config, TensorRTLLMConfig):
        from apihelper.service.engine.tensorrt_llm_engine import TensorRTLLMEngine

        return await TensorRTLLMEngine.load(model, config)
    if isinstance(config, OpenVINOConfig):
        from apihelper.service.engine.openvino_engine import OpenVINOEngine

        return await OpenVINOEngine.load(model, config)
    from apihelper.service.engine.transformers_engine import TransformersEngine

    return await TransformersEngine.load(model, config)


async def serve(settings: Settings) -> None:
    """Build every part, serve until SIGTERM/SIGINT, then release every part in reverse order.

    One ``AsyncExitStack`` owns each resource from the moment it exists: a failure (or a signal)
    at any step of start-up releases what was built before it (Milvus Lite's server and lock, the
    engine's threads and memory), and a normal stop drains the gRPC server first, then shuts the
    engine down, then closes the retriever.
    """
    from apihelper.retriever.adapter import query_embedder
    from apihelper.retriever.embedding import Embedder
    from apihelper.retriever.milvus_retriever import open_retriever
    from apihelper.retriever.rerank import LODO_RERANK, OFF
    from apihelper.service.frontends import start_server

    stop = asyncio.Event()
    starting = asyncio.current_task()
    serving = False

    def on_signal() -> None:
        if serving:
            stop.set()
        elif starting is not None:
            starting.cancel()  # start-up interrupted: the exit stack releases what was built

    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
            stack.callback(loop.remove_signal_handler, sig)
        embedder = query_embedder(await asyncio.to_thread(Embedder), settings.query_adapter)
        retriever = await open_retriever(
            settings.milvus_uri,
            settings.milvus_token,
            embedder,
            rerank=LODO_RERANK if settings.retrieval_rerank else OFF,
        )
        stack.push_async_callback(retriever.close)
        engine = await build_engine(settings)
        stack.push_async_callback(engine.shutdown)
        recorder = build_recorder(settings, engine, embedder.model_name)
        stack.callback(recorder.close)
        if engine.info.random_weights:
            log.warning(
                "serving %s: a development model with RANDOM weights; its text is not meaningful", engine.info.model
            )
        running = await start_server(settings, engine, retriever, recorder)
        stack.push_async_callback(running.stop)
        # Everything loaded so far (models, tokenizers, libraries) lives until exit: move it out of
        # the collector's reach, or each full collection walks ~600k objects and stalls the event
        # loop for ~350 ms (measured with bench/load).
        gc.collect()
        gc.freeze()
        print(f"apihelper: listening on {settings.host}:{running.port}", flush=True)
        if running.http_port:
            scheme = "https" if settings.tls_cert_file else "http"
            print(f"apihelper: HTTP on {scheme}://{settings.host}:{running.http_port}/", flush=True)
        serving = True
        await stop.wait()
        log.info("signal received: draining for up to %.1fs", settings.shutdown_grace_seconds)
    log.info("stopped")


def build_recorder(settings: Settings, engine: Engine, embedding_model: str) -> Recorder:
    """The Prometheus exporter, serving /metrics, or a recorder that drops everything when the
    metrics port is 0."""
    if not settings.metrics_port:
        return NullRecorder()
    from apihelper.service.metrics.prometheus import PrometheusRecorder

    prometheus = PrometheusRecorder(
        version=version("apihelper"),
        engine_kind=engine.info.kind,
        model=engine.info.model,
        prompt_format=engine.info.prompt_format.value,
        embedding_model=embedding_model,
        engine_stats=engine.stats,
    )
    metrics_port = prometheus.serve(settings.metrics_host, settings.metrics_port)
    print(f"apihelper: metrics on http://{settings.metrics_host}:{metrics_port}/metrics", flush=True)
    return prometheus


def quiet_teardown() -> None:
    """After a clean stop ("stopped" is logged), send what the interpreter's teardown writes to
    stderr nowhere: libraries loaded with torch (triton's nanobind bindings) report hundreds of
    "leaked" objects at exit, objects that live until exit by design (``gc.freeze`` above).
    Triton silences its own workers' teardown the same way. Only the clean path does this."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        stderr = sys.stderr.fileno()
    except (OSError, ValueError):  # stderr is not a file (an embedding caller replaced it)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stderr)
    os.close(devnull)


def main(argv: list[str] | None = None) -> None:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv, os.environ)
    except ApiHelperError as exc:
        # Before anything is opened: one line, no traceback, argparse's exit status for bad usage.
        print(f"apihelper-serve: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        factory = event_loop_factory(settings.event_loop)
        log.info("event loop: %s", "uvloop" if factory is not None else "asyncio")
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(settings))
        quiet_teardown()
    except asyncio.CancelledError:
        log.info("start-up interrupted by a signal; everything built so far was released")
    except ApiHelperError as exc:
        # Configuration problems found at start-up: one clear line, no traceback.
        print(f"apihelper-serve: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
