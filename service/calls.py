"""The rules every call follows, whatever front end it came through: one place for all of them.

gRPC (``apihelper.service.grpc``) and HTTP (``apihelper.service.http``) are two doors into one
service; a third (MCP) mounts on HTTP later. They differ in how a call arrives and how its answer
and status go out, never in the rules below, which they take from :class:`CallPolicy` (the way TGI
has one interceptor and sglang one ``handle_request``):

- **Deadline.** A call without a deadline gets the server's default; one whose client asks for
  longer than the server's maximum is cut to the maximum (it is not refused: gRPC clients set
  long deadlines as a matter of course, and the answer a client wants is the same). A client may
  ask for less; a deadline that is not a positive number of seconds (HTTP's
  ``X-Request-Timeout: soon``, ``0``, ``-1``) is a bad request. :meth:`CallPolicy.deadline`
  says how long the call may run and what its DEADLINE_EXCEEDED says.
- **Outcome.** Each call is counted once in ``apihelper_requests_total`` with its outcome named
  as gRPC names it (``OK``, ``INVALID_ARGUMENT``, ``UNAUTHENTICATED``, ``CANCELLED`` ...), over
  every protocol; a call refused before its handler ran (a missing token) too
  (:meth:`CallPolicy.refused`).
- **Failures.** A call that meets UNAVAILABLE has the service's health re-checked at once (a
  load balancer hears NOT_SERVING without waiting for the next poll); an INTERNAL error (a bug:
  not an ``ApiHelperError``) is logged once with its traceback and the client gets no details.
- **Stalled clients.** A stream whose client takes nothing for ``stall_timeout_seconds`` ends,
  which aborts its engine request; counted as DEADLINE_EXCEEDED and in
  ``apihelper_stream_stalls_total``, one log line.
- **Streams.** Generate streams at once are limited over every protocol (:class:`StreamLimit`),
  and so are those of one client address (:func:`peer_address`: an IPv4 address, an IPv6 /64),
  however many connections it opens: past either limit a stream is refused at once.
- **Cancellation.** A client that goes away cancels the handler; the cancellation reaches the
  engine stream, which aborts the request. Counted as CANCELLED (DEADLINE_EXCEEDED when it was
  the client's own deadline that passed).

Each front end maps its protocol's errors to outcome names with its own table
(``apihelper.grpc_status``, ``apihelper.http_status``: both use gRPC's names) and hands the name
to :meth:`Call.failed`. Protocol types never reach this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import unquote

from apihelper.errors import InvalidRequestError, ResourceExhaustedError
from apihelper.service.metrics import Recorder

log = logging.getLogger(__name__)

OK = "OK"
CANCELLED = "CANCELLED"
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
UNAVAILABLE = "UNAVAILABLE"
INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class Deadline:
    """How long a call may run, and who ends it when that passes."""

    seconds: float
    # The event-loop time at which the server ends the call; ``None``: the client's own deadline
    # is within the server's maximum and its protocol ends the call then (gRPC cancels the handler).
    at: float | None
    reason: str  # what the DEADLINE_EXCEEDED says


class CallPolicy:
    """The per-call rules, built once over the core's recorder and health."""

    def __init__(
        self,
        recorder: Recorder,
        recheck_health: Callable[[], None],  # Health.recheck_soon
        *,
        default_deadline_seconds: float,
        max_deadline_seconds: float,
        stall_timeout_seconds: float,
    ) -> None:
        self.recorder = recorder
        self._recheck_health = recheck_health
        self.default_deadline_seconds = default_deadline_seconds
        self.max_deadline_seconds = max_deadline_seconds
        self.stall_timeout_seconds = stall_timeout_seconds

    def deadline(self, requested: float | None, *, client_ends: bool, named: str = "deadline") -> Deadline:
        """The deadline of a call whose client asked for ``requested`` seconds (``None``: nothing).

        ``client_ends``: the protocol ends the call at the client's deadline by itself (gRPC).
        ``named``: what the client's deadline is called in messages (HTTP: its header)."""
        now = asyncio.get_running_loop().time()
        if requested is None:
            seconds = self.default_deadline_seconds
            return Deadline(
                seconds, now + seconds, f"no deadline was set and the server's default of {seconds:g} s passed"
            )
        if client_ends and requested <= 0:  # already passed: the protocol is ending the call
            return Deadline(0.0, None, f"the {named} passed")
        if not math.isfinite(requested) or requested <= 0:
            raise InvalidRequestError(named, "must be a positive number of seconds")
        if requested > self.max_deadline_seconds:
            seconds = self.max_deadline_seconds
            return Deadline(seconds, now + seconds, f"the server's maximum deadline of {seconds:g} s passed")
        return Deadline(requested, None if client_ends else now + requested, f"the {named} of {requested:g} s passed")

    def parse_seconds(self, text: str | None, named: str) -> float | None:
        """A deadline given as text (an HTTP header): ``None`` when absent, else its seconds,
        or a bad request naming ``named``."""
        if text is None:
            return None
        try:
            seconds = float(text)
        except ValueError:
            raise InvalidRequestError(named, "must be a positive number of seconds") from None
        if not math.isfinite(seconds) or seconds <= 0:
            raise InvalidRequestError(named, "must be a positive number of seconds")
        return seconds

    def start(self, rpc: str) -> Call:
        """A call of ``rpc`` begins (counted as started now)."""
        return Call(self, rpc)

    def refused(self, rpc: str, code: str) -> None:
        """A call that ended before any handler ran (a missing token, bytes that do not decode)."""
        self.recorder.rpc_started(rpc)
        self.recorder.rpc_finished(rpc, code, 0.0)

    def _failed(self, rpc: str, exc: BaseException, code: str) -> None:
        if code == UNAVAILABLE:
            self._recheck_health()
        elif code == INTERNAL:
            log.error("%s: internal error", rpc, exc_info=exc)


class Call:
    """One call: counted once however it ends. A front end calls :meth:`finish` (or one of the
    helpers that finish with a reason) before it sends the status, so a client that has its
    status finds the call counted."""

    def __init__(self, policy: CallPolicy, rpc: str) -> None:
        self._policy = policy
        self.rpc = rpc
        self._started = time.perf_counter()
        self.code: str | None = None
        policy.recorder.rpc_started(rpc)

    @property
    def finished(self) -> bool:
        return self.code is not None

    def finish(self, code: str) -> None:
        """Count the call's outcome (the first one given wins)."""
        if self.code is None:
            self.code = code
            self._policy.recorder.rpc_finished(self.rpc, code, time.perf_counter() - self._started)

    def failed(self, exc: BaseException, code: str) -> None:
        """The call failed with ``exc``, whose outcome the front end's table names ``code``:
        re-check health after UNAVAILABLE, log an INTERNAL error, count it."""
        if self.code is None:
            self._policy._failed(self.rpc, exc, code)
        self.finish(code)

    def stalled(self) -> None:
        """The client took nothing for the stall timeout: the stream ends."""
        if self.code is None:
            self._policy.recorder.stream_stalled(self.rpc)
            log.info(
                "%s: the client took nothing for %g s; the stream ends", self.rpc, self._policy.stall_timeout_seconds
            )
        self.finish(DEADLINE_EXCEEDED)

    def cancelled(self, *, expired: bool = False) -> None:
        """The client went away (``expired``: its own deadline passed)."""
        self.finish(DEADLINE_EXCEEDED if expired else CANCELLED)


class StreamLimit:
    """Generate streams at once, over every protocol (``limit``), and of one client address
    (``per_peer``; 0: no such limit, for a server behind a proxy whose address every client
    shares). Past either a stream is refused at once (``ResourceExhaustedError``) rather than
    queued without bound: the client can retry elsewhere. A client's connections each have
    their own stream limit (gRPC's ``max_streams_per_connection``, one HTTP request at a time),
    so without ``per_peer`` two connections from one address could take every slot. Single
    event loop: no lock needed."""

    def __init__(self, limit: int, per_peer: int = 0) -> None:
        if limit < 1 or per_peer < 0:
            raise ValueError("the stream limit must be positive, the limit per client address not negative")
        self.limit = limit
        self.per_peer = per_peer
        self.active = 0
        self._by_peer: Counter[str] = Counter()

    def acquire(self, peer: str) -> None:
        """A stream of ``peer`` (a :func:`peer_address`) begins, or is refused."""
        if self.active >= self.limit:
            raise ResourceExhaustedError(f"{self.active} streams in progress, the limit is {self.limit}")
        if self.per_peer and self._by_peer[peer] >= self.per_peer:
            raise ResourceExhaustedError(
                f"{self._by_peer[peer]} streams of this client address in progress, the limit per address is "
                f"{self.per_peer}"
            )
        self.active += 1
        self._by_peer[peer] += 1

    def release(self, peer: str) -> None:
        self.active -= 1
        self._by_peer[peer] -= 1
        if self._by_peer[peer] <= 0:
            del self._by_peer[peer]  # the counter holds the addresses streaming now, no others

    def held_by(self, peer: str) -> int:
        return self._by_peer[peer]

    @contextlib.contextmanager
    def admit(self, peer: str) -> Iterator[None]:
        self.acquire(peer)
        try:
            yield
        finally:
            self.release(peer)


# A host usually holds a whole IPv6 /64: its streams count as one address's.
IPV6_PREFIX = 64


def peer_address(peer: str) -> str:
    """The client address a stream counts against, from how a front end names its peer: gRPC's
    ``ipv4:10.0.0.5:5555``, ``ipv6:[2001:db8::1]:5555`` (brackets maybe percent-encoded),
    ``unix:/run/x.sock``, or an HTTP client's host (``10.0.0.5``, ``::1``). An IPv4 address
    (an IPv4-mapped IPv6 one too) counts whole, an IPv6 address by its /64; anything else
    (a Unix socket, an unknown form) as itself."""
    text = unquote(peer)
    for scheme in ("ipv4:", "ipv6:"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
            if text.startswith("["):  # [address]:port
                text = text[1:].split("]", 1)[0]
            elif scheme == "ipv4:":  # address:port
                text = text.rsplit(":", 1)[0]
            break
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone (fe80::1%eth0) aside
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{IPV6_PREFIX}", strict=False))
    return str(address)
