"""``write_within``: when a cancellation lands mid-write, is the write blocked or just in flight?

The grpc servicer context is the I/O boundary here: its ``write`` is a double that the transport
either takes after a short while (a client that reads) or never (a zero flow-control window).
Whether a status may follow depends on that answer, and a wrong "blocked" leaves a reading client
waiting for a status that never comes.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from apihelper.service.grpc import servicer
from apihelper.service.grpc.servicer import StreamStalled, write_blocked, write_within


class Transport:
    """A servicer context whose writes the transport takes after ``take_s`` (never: ``None``)."""

    def __init__(self, take_s: float | None) -> None:
        self.take_s = take_s
        self.taken: list[Any] = []
        self.cancelled = 0

    async def write(self, message: Any) -> None:
        try:
            if self.take_s is None:
                await asyncio.Event().wait()
            await asyncio.sleep(self.take_s or 0)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.taken.append(message)


async def cancelled_mid_write(context: Transport, *, after_s: float, stall_s: float = 30) -> tuple[bool, float]:
    """Write under a deadline of ``after_s`` (landing mid-write); whether the write was blocked,
    and how long the writer took to leave."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    blocked = None
    deadline = started + after_s
    try:
        async with asyncio.timeout_at(deadline):
            await write_within(context, "token", stall_s, deadline=deadline)  # type: ignore[arg-type]  # the double
    except TimeoutError:
        blocked = write_blocked()
    assert blocked is not None, "the deadline did not land during the write"
    return blocked, loop.time() - started


async def test_a_write_in_flight_when_the_deadline_lands_is_taken_and_not_blocked() -> None:
    context = Transport(take_s=0.05)
    blocked, _ = await cancelled_mid_write(context, after_s=0.01)
    assert not blocked
    assert context.taken == ["token"]  # the message went: a status can follow it
    assert context.cancelled == 0


async def test_a_write_that_flow_control_holds_is_blocked_after_the_settle_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(servicer, "WRITE_SETTLE_SECONDS", 0.1)
    context = Transport(take_s=None)
    blocked, took = await cancelled_mid_write(context, after_s=0.01)
    assert blocked
    await asyncio.sleep(0)
    assert context.cancelled == 1  # the held write is given up, not left pending
    assert took >= 0.1
    assert not write_blocked()  # read once, then forgotten


async def test_the_settle_wait_stays_within_the_stall_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servicer, "WRITE_SETTLE_SECONDS", 30)
    context = Transport(take_s=None)
    blocked, took = await cancelled_mid_write(context, after_s=0.05, stall_s=0.2)
    assert blocked
    assert took < 5  # the stall timeout's end, not the settle time's (0.2 s on an idle machine)


async def test_a_write_that_waits_past_the_stall_timeout_is_a_stall() -> None:
    context = Transport(take_s=None)
    with pytest.raises(StreamStalled):
        await write_within(context, "token", 0.05)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert context.cancelled == 1
    assert not write_blocked()  # a stall is not a blocked write: the caller knows already


async def test_a_failed_write_after_the_cancellation_is_not_blocked_and_not_left_unretrieved() -> None:
    class Gone(Transport):
        async def write(self, message: Any) -> None:
            await asyncio.sleep(0.05)
            raise RuntimeError("the call was cancelled by the peer")

    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, ctx: unretrieved.append(ctx))
    blocked, _ = await cancelled_mid_write(Gone(take_s=0), after_s=0.01)
    assert not blocked
    await asyncio.sleep(0)
    gc.collect()
    assert not unretrieved


async def test_a_cancellation_far_from_the_deadline_is_the_client_going_away() -> None:
    # The write would be cut by the stall timeout before the deadline could land on it, so a
    # cancellation is the client leaving (or the server stopping): nothing to settle, no status.
    context = Transport(take_s=None)
    loop = asyncio.get_running_loop()

    async def write_then_ask() -> bool:
        try:
            await write_within(context, "token", 0.5, deadline=loop.time() + 60)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            return write_blocked()
        raise AssertionError("the write was not cancelled")

    writer = asyncio.create_task(write_then_ask())
    await asyncio.sleep(0.01)
    writer.cancel()
    assert await writer is False
    assert context.cancelled == 1
