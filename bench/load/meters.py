"""Meters of the process under load: event-loop lag, garbage-collector pauses, loop busy time, CPU."""

from __future__ import annotations

import array
import asyncio
import contextlib
import gc
import os
import time
from pathlib import Path
from typing import Any

from apihelper.bench.load.config import LAG_PROBE_INTERVAL_S


class LagProbe:
    """Sleeps ``interval`` s in a loop on the running event loop and records each overshoot."""

    def __init__(self, interval: float = LAG_PROBE_INTERVAL_S) -> None:
        self.interval = interval
        # (when, overshoot seconds), in arrays: no objects for the garbage collector to track
        self._when = array.array("d")
        self._lag = array.array("d")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bench-lag-probe")

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.interval)
            now = time.perf_counter()
            self._when.append(now)
            self._lag.append(now - before - self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def between(self, start: float, end: float) -> list[float]:
        return [lag for when, lag in zip(self._when, self._lag, strict=False) if start <= when <= end]

    @property
    def samples(self) -> list[tuple[float, float]]:
        return list(zip(self._when, self._lag, strict=False))


class GcMeter:
    """Garbage-collector pauses in this process (they stop the event loop), by when they ended."""

    def __init__(self) -> None:
        self._end = array.array("d")
        self._seconds = array.array("d")
        self._generation = array.array("b")
        self._began = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._began = now
        else:
            self._end.append(now)
            self._seconds.append(now - self._began)
            self._generation.append(info.get("generation", -1))

    def start(self) -> None:
        gc.callbacks.append(self._callback)

    def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)

    def summary(self, start: float, end: float) -> dict[str, Any]:
        inside = [
            (d, g)
            for when, d, g in zip(self._end, self._seconds, self._generation, strict=False)
            if start <= when <= end
        ]
        by_gen: dict[str, dict[str, float]] = {}
        for g in sorted({g for _, g in inside}):
            ds = [d for d, gen in inside if gen == g]
            by_gen[str(g)] = {
                "n": len(ds),
                "total_ms": round(sum(ds) * 1000.0, 2),
                "max_ms": round(max(ds) * 1000.0, 3),
            }
        return {
            "collections": len(inside),
            "by_generation": by_gen,
            "total_ms": round(sum(d for d, _ in inside) * 1000.0, 2),
            "max_ms": round(max((d for d, _ in inside), default=0.0) * 1000.0, 3),
        }


class LoopBusyMeter:
    """How much of the time the event loop spends outside its selector wait, i.e. running
    callbacks: 100% means saturated. Wraps the loop's selector (a private attribute of asyncio's
    selector loops); on other loops it reports nothing."""

    def __init__(self) -> None:
        self._wait_end = array.array("d")  # when each selector wait ended
        self._waited = array.array("d")  # and how long it was
        self._selector: Any = None
        self._original: Any = None

    def start(self) -> None:
        selector = getattr(asyncio.get_running_loop(), "_selector", None)
        if selector is None or not hasattr(selector, "select"):
            return
        original = selector.select
        wait_end, waited = self._wait_end, self._waited

        def select(timeout: float | None = None) -> Any:
            before = time.perf_counter()
            try:
                return original(timeout)
            finally:
                now = time.perf_counter()
                wait_end.append(now)
                waited.append(now - before)

        self._selector, self._original = selector, original
        selector.select = select

    def stop(self) -> None:
        if self._selector is not None:
            self._selector.select = self._original
            self._selector = None

    def iterations(self, start: float, end: float) -> int:
        return sum(1 for when in self._wait_end if start <= when <= end)

    def busy_fraction(self, start: float, end: float) -> float | None:
        if not self._wait_end or end <= start:
            return None
        waited = sum(w for when, w in zip(self._wait_end, self._waited, strict=False) if start <= when <= end)
        return max(0.0, 1.0 - waited / (end - start))


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat); None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")
