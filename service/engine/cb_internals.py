"""The private state of transformers' ``ContinuousBatchingManager`` that the transformers engine
reads, each read behind one function here, and nowhere else.

transformers (5.x) has no public API for these, and they change between releases:
- a failed request's status code (``RequestStatus.FAILED``);
- the per-request result handlers (``output_router.result_handlers`` under ``output_router._lock``):
  a cancelled request never gets a final output, so its handler is dropped here;
- the batch processor (``batch_processor``: its scheduler's active and waiting requests, its KV
  cache's free capacity) and the input queue (``input_queue``), for ``stats``;
- the generation thread's fatal error (``background_thread_status.fatal_error``), for health.

Every function degrades to "unknown" where the state is not there (the engine keeps serving), and
``missing_internals`` names what a manager lacks: the engine logs it at load, and
``tests/integration/test_cb_internals.py`` fails on it against the installed transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# transformers' RequestStatus.FAILED (checked against the installed enum by the test).
FAILED_STATUS = 4


def is_failed(output: Any) -> bool:
    """A ``GenerationOutput`` of a request that failed in the manager."""
    return output.error is not None or int(output.status) == FAILED_STATUS


def drop_result_handler(manager: Any, request_id: str) -> bool:
    """Remove ``request_id``'s result handler (the manager drops it only after a final output).
    False where this manager keeps handlers elsewhere."""
    router = getattr(manager, "output_router", None)
    handlers = getattr(router, "result_handlers", None)
    lock = getattr(router, "_lock", None)
    if not isinstance(handlers, dict) or lock is None:
        return False
    with lock:
        handlers.pop(request_id, None)
    return True


@dataclass(frozen=True)
class SchedulerLoad:
    running: int
    waiting: int
    kv_cache_usage: float | None


def scheduler_load(manager: Any) -> SchedulerLoad | None:
    """Requests running and waiting in the manager, and its KV-cache usage; None before the batch
    processor exists or where this manager differs. Read from the manager's thread while it runs:
    a torn read is possible but harmless for a gauge."""
    processor: Any = getattr(manager, "batch_processor", None)
    scheduler: Any = getattr(processor, "scheduler", None)
    if scheduler is None:
        return None
    input_queue = getattr(manager, "input_queue", None)
    queued = input_queue.qsize() if input_queue is not None else 0
    usage: float | None = None
    try:
        usage = max(0.0, min(1.0, 1.0 - float(processor.cache.compute_free_capacity())))
    except Exception:  # a gauge must never break a metrics scrape
        usage = None
    return SchedulerLoad(
        running=len(scheduler.active_requests),
        waiting=len(scheduler.waiting_requests) + queued,
        kv_cache_usage=usage,
    )


def fatal_error(manager: Any) -> BaseException | None:
    """The error that stopped the manager's generation thread, if any."""
    status = getattr(manager, "background_thread_status", None)
    error = getattr(status, "fatal_error", None)
    return error if isinstance(error, BaseException) else None


def processor_ready(manager: Any) -> bool:
    """The generation thread has built its batch processor (the KV cache is allocated)."""
    return getattr(manager, "batch_processor", None) is not None


def missing_internals(manager: Any) -> list[str]:
    """The private names above that ``manager`` (a started one) does not have."""
    missing = []
    router = getattr(manager, "output_router", None)
    if not isinstance(getattr(router, "result_handlers", None), dict):
        missing.append("output_router.result_handlers")
    if getattr(router, "_lock", None) is None:
        missing.append("output_router._lock")
    processor = getattr(manager, "batch_processor", None)
    scheduler = getattr(processor, "scheduler", None)
    for name in ("active_requests", "waiting_requests"):
        if not hasattr(scheduler, name):
            missing.append(f"batch_processor.scheduler.{name}")
    if not callable(getattr(getattr(processor, "cache", None), "compute_free_capacity", None)):
        missing.append("batch_processor.cache.compute_free_capacity")
    if not hasattr(getattr(manager, "input_queue", None), "qsize"):
        missing.append("input_queue")
    if not hasattr(getattr(manager, "background_thread_status", None), "fatal_error"):
        missing.append("background_thread_status.fatal_error")
    return missing
