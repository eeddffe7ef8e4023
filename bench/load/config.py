"""What a load run is asked to do: the load (LoadConfig), the run around it (RunOptions), limits."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from apihelper.v1 import apihelper_pb2 as pb

MAX_DURATION_S = 3600.0


LAG_PROBE_INTERVAL_S = 0.010


DEFAULT_INSTRUCTION = "Create a new compute session with the python:3.11 image"

TRANSPORTS = ("grpc", "http")


_MODES = {
    "hybrid": pb.RETRIEVAL_MODE_HYBRID,
    "dense": pb.RETRIEVAL_MODE_DENSE,
    "keyword": pb.RETRIEVAL_MODE_KEYWORD,
    "none": pb.RETRIEVAL_MODE_NONE,
}


@dataclass(frozen=True)
class LoadConfig:
    """What the load generator does; picklable, so client processes get it as is."""

    concurrency: int = 16
    duration_s: float = 10.0
    warmup_s: float = 1.0
    ramp_s: float = 0.5  # workers start spread over this many seconds
    cancel_prob: float = 0.0
    cancel_max_messages: int = 24  # a cancelled stream is cut after randint(0, this) messages
    deadline_s: float | None = None
    channels: int = 1  # per client process; streams are spread round-robin
    max_calls: int = 2_000_000  # streams in all, across client processes
    seed: int = 0
    instruction: str = DEFAULT_INSTRUCTION
    max_tokens: int | None = None
    retrieval_mode: str = "hybrid"
    corpora: tuple[str, ...] = ()
    top_k: int | None = None
    transport: str = "grpc"  # grpc: Generate streams | http: POST /v1/generate, Server-Sent Events

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.channels < 1 or self.max_calls < 1:
            raise ValueError("concurrency, channels and max_calls must be positive")
        if not 0 < self.duration_s <= MAX_DURATION_S or not 0 <= self.warmup_s <= MAX_DURATION_S:
            raise ValueError(f"duration must be in (0, {MAX_DURATION_S:g}] s and warmup in [0, {MAX_DURATION_S:g}] s")
        if not 0.0 <= self.cancel_prob <= 1.0:
            raise ValueError("cancel_prob must be in [0, 1]")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError("deadline must be positive")
        if self.retrieval_mode not in _MODES:
            raise ValueError(f"retrieval_mode must be one of {', '.join(_MODES)}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")


def check_loopback(target: str) -> str:
    """``target`` (HOST:PORT) when HOST is a loopback address or localhost; ValueError otherwise."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"target must be HOST:PORT, got {target!r}")
    bare = host.strip("[]")
    if bare == "localhost":
        return target
    try:
        loopback = ipaddress.ip_address(bare).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"only loopback targets (127.0.0.0/8, ::1, localhost) are allowed, got {host!r}")
    return target


@dataclass(frozen=True)
class RunOptions:
    cfg: LoadConfig
    target: str | None = None
    inprocess: str | None = None  # fake | real | bare
    client: str = "process"  # process | inline (in-process modes)
    client_procs: int = 1
    token_rate: float = 50.0
    reply_words: int = 0  # 0: FakeEngine's default Gorilla reply
    server_max_streams: int = 0  # 0: 2 x concurrency
    recorder: str = "prometheus"
    device: str = "cpu"
    profile: str | None = None  # cProfile the server process over the run, dump here
    compare_bare: bool = False  # --inprocess fake: first run the bare grpc.aio floor under the same load
    gc_freeze: bool = True  # gc.freeze() in the server process once it has started, as service/__main__.py does
    event_loop: str = "auto"  # the server process's loop, chosen as service/__main__.py does (main() applies it)
    compare_direct: bool = False  # --inprocess real: first drive the engine directly at the same concurrency
    compare_transports: bool = False  # in-process: the same load over gRPC, then over HTTP (SSE)
