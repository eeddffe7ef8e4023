"""The one call policy (``apihelper.service.calls``) behind every front end: the same rule for a
too-long deadline on gRPC and HTTP (cut to the server's maximum, not refused), the same outcome
counted, the same failures handled (a health re-check after UNAVAILABLE), a refused token counted
over HTTP as over gRPC."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from apihelper.errors import InvalidRequestError
from apihelper.service.calls import CallPolicy
from apihelper.service.engine.fake import FakeEngine
from apihelper.service.metrics import NullRecorder
from apihelper.v1 import apihelper_pb2 as pb
from tests.support import budget, http_client, live_server, stub_for, wait_until

LONG_REPLY = " ".join(["word"] * 400)


@dataclass
class Recording(NullRecorder):
    started: list[str] = field(default_factory=list)
    finished: list[tuple[str, str]] = field(default_factory=list)
    stalls: list[str] = field(default_factory=list)

    def rpc_started(self, rpc: str) -> None:
        self.started.append(rpc)

    def rpc_finished(self, rpc: str, code: str, seconds: float) -> None:
        self.finished.append((rpc, code))

    def stream_stalled(self, rpc: str) -> None:
        self.stalls.append(rpc)


def _policy(recorder: Recording | None = None, rechecks: list[int] | None = None) -> CallPolicy:
    return CallPolicy(
        recorder or Recording(),
        lambda: (rechecks if rechecks is not None else []).append(1),
        default_deadline_seconds=30.0,
        max_deadline_seconds=60.0,
        stall_timeout_seconds=5.0,
    )


@given(requested=st.floats(allow_nan=False, allow_infinity=False, min_value=1e-3, max_value=1e9))
def test_a_requested_deadline_is_kept_when_allowed_and_cut_to_the_maximum_otherwise(requested: float) -> None:
    async def check() -> None:
        policy = _policy()
        for client_ends in (True, False):
            limit = policy.deadline(requested, client_ends=client_ends)
            assert limit.seconds == min(requested, 60.0)
            if requested > 60.0:
                assert limit.at is not None and "maximum deadline of 60 s" in limit.reason
            else:
                assert (limit.at is None) == client_ends

    asyncio.run(check())


def test_no_deadline_gets_the_default_and_a_non_positive_one_is_a_bad_request() -> None:
    async def check() -> None:
        policy = _policy()
        limit = policy.deadline(None, client_ends=True)
        assert limit.seconds == 30.0 and limit.at is not None and "default of 30 s" in limit.reason
        for bad in ("0", "-1", "soon", "nan", "inf", "-inf"):
            with pytest.raises(InvalidRequestError) as info:
                policy.deadline(
                    policy.parse_seconds(bad, "x-request-timeout"), client_ends=False, named="x-request-timeout"
                )
            assert info.value.field == "x-request-timeout"
        assert policy.parse_seconds(None, "x") is None
        assert math.isclose(policy.parse_seconds("2.5", "x") or 0, 2.5)

    asyncio.run(check())


def test_each_call_is_counted_once_and_failures_follow_the_rules() -> None:
    recorder, rechecks = Recording(), list[int]()
    policy = _policy(recorder, rechecks)
    call = policy.start("X")
    call.failed(RuntimeError("boom"), "UNAVAILABLE")
    call.finish("OK")  # the first outcome stays
    call.stalled()
    assert recorder.finished == [("X", "UNAVAILABLE")] and rechecks == [1] and recorder.stalls == []
    stalled = policy.start("Y")
    stalled.stalled()
    stalled.cancelled()
    assert recorder.finished[-1] == ("Y", "DEADLINE_EXCEEDED") and recorder.stalls == ["Y"]
    policy.refused("Z", "UNAUTHENTICATED")
    assert recorder.started == ["X", "Y", "Z"] and recorder.finished[-1] == ("Z", "UNAUTHENTICATED")


async def test_a_too_long_deadline_is_cut_to_the_maximum_on_grpc_and_on_http_alike() -> None:
    engine = FakeEngine(LONG_REPLY, token_delay_s=0.01)
    recorder = Recording()
    async with (
        live_server(
            engine, recorder=recorder, http=True, default_deadline_seconds=0.3, max_deadline_seconds=0.5
        ) as server,
        stub_for(server) as stub,
        http_client(server, timeout=budget(30.0)) as client,
    ):
        request = pb.GenerateRequest(instruction="x", sampling=pb.SamplingParams(max_tokens=1000))
        started = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Generate(request, timeout=3600):
                pass
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        grpc_details = info.value.details() or ""
        assert "maximum deadline of 0.5 s" in grpc_details
        assert time.perf_counter() - started <= budget(2.0)

        # The same request over HTTP with a deadline far past the maximum: not a 400, the same
        # DEADLINE_EXCEEDED (504) with the same reason, once the maximum has passed.
        started = time.perf_counter()
        body = {"text": "x", "sampling": {"max_tokens": 1000}}
        answer = await client.post("/inference", json=body, headers={"X-Request-Timeout": "3600"})
        assert answer.status_code == 504, answer.text
        error = answer.json()["error"]
        assert error["type"] == "DEADLINE_EXCEEDED" and error["message"] == grpc_details
        assert time.perf_counter() - started <= budget(2.0)
        await wait_until(lambda: engine.num_in_flight == 0, 5, "the engine requests being aborted")
        assert ("Generate", "DEADLINE_EXCEEDED") in recorder.finished
        assert ("POST /inference", "DEADLINE_EXCEEDED") in recorder.finished

        # A deadline the server allows is the client's on both.
        quick = await client.post("/inference", json=body, headers={"X-Request-Timeout": "0.2"})
        assert quick.status_code == 504 and "x-request-timeout of 0.2 s" in quick.json()["error"]["message"]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Generate(request, timeout=0.2):
                pass
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_refused_token_is_counted_over_http_as_over_grpc() -> None:
    recorder = Recording()
    async with (
        live_server(recorder=recorder, http=True, auth_token="s3cret") as server,
        http_client(server) as client,
        stub_for(server) as stub,
    ):
        for _ in range(3):
            refused = await client.post(
                "/v1/retrieve", json={"instruction": "x"}, headers={"Authorization": "Bearer no"}
            )
            assert refused.status_code == 401
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListCorpora(pb.ListCorporaRequest())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert recorder.finished.count(("POST /v1/retrieve", "UNAUTHENTICATED")) == 3
        assert ("ListCorpora", "UNAUTHENTICATED") in recorder.finished


async def test_a_write_to_a_client_that_went_away_is_cancelled_not_internal(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 25 row 15: grpc's ExecuteBatchError (a write on a call whose connection is gone, as a
    connection refill attack makes happen) is the client leaving: CANCELLED, one info line, no
    traceback, no INTERNAL."""
    import importlib

    from apihelper.service.grpc.servicer import ApiHelperServicer

    cygrpc = importlib.import_module("grpc._cython.cygrpc")

    class GoneContext:  # grpc's servicer context, at the I/O boundary: its peer has left
        def time_remaining(self) -> float | None:
            return 30.0

        def peer(self) -> str:
            return "ipv4:127.0.0.1:1"

        async def write(self, message: object) -> None:
            raise cygrpc.ExecuteBatchError('Failed "execute_batch": (SendMessageOperation,)')

        async def abort(self, code: object, details: str) -> None:
            raise AssertionError("no status can be sent to a client that is gone")

    recorder = Recording()
    async with live_server(recorder=recorder) as server:
        servicer = ApiHelperServicer(server.core)
        with pytest.raises(asyncio.CancelledError):
            await servicer.Generate(pb.GenerateRequest(instruction="Create a new session"), GoneContext())  # type: ignore[arg-type]
    assert ("Generate", "CANCELLED") in recorder.finished
    assert not [r for r in caplog.records if r.exc_info or r.levelname in ("ERROR", "CRITICAL")]
