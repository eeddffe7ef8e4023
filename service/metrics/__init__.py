"""Metrics behind a small recorder interface.

The pipeline and the gRPC layer call a :class:`Recorder`; they never see prometheus_client.
``apihelper.service.metrics.prometheus`` is the only module that imports prometheus_client, and
``apihelper.service.metrics.gpu`` the only one that imports NVML (nvidia-ml-py).
"""

from __future__ import annotations

from typing import Protocol


class Recorder(Protocol):
    """Events the service reports. Implementations must be cheap and never raise."""

    def rpc_started(self, rpc: str) -> None: ...

    def rpc_finished(self, rpc: str, code: str, seconds: float) -> None:
        """``code`` is the final gRPC status name (OK, CANCELLED, DEADLINE_EXCEEDED, ...)."""
        ...

    def stream_stalled(self, rpc: str) -> None:
        """A stream ended because its client took no message for the stall timeout."""
        ...

    def retrieval(self, mode: str, embed_seconds: float, search_seconds: float, docs: int) -> None: ...

    def queue_time(self, seconds: float) -> None: ...

    def first_token(self, seconds: float) -> None:
        """Time from request arrival to the first streamed text."""
        ...

    def inter_token(self, seconds: float, tokens: int) -> None:
        """``seconds`` between two consecutive deltas that carried ``tokens`` new tokens."""
        ...

    def generation_finished(
        self, seconds: float, prompt_tokens: int, completion_tokens: int, finish_reason: str
    ) -> None: ...

    def loop_lag(self, seconds: float) -> None:
        """How late the event loop ran a timer: the time every stream waits when the loop is busy."""
        ...

    def close(self) -> None:
        """Stop exporting (the /metrics server, the GPU collector); safe to call more than once."""
        ...


class NullRecorder:
    """Records nothing: for tests of other layers and for ``--metrics-port 0``."""

    def rpc_started(self, rpc: str) -> None:
        pass

    def rpc_finished(self, rpc: str, code: str, seconds: float) -> None:
        pass

    def stream_stalled(self, rpc: str) -> None:
        pass

    def retrieval(self, mode: str, embed_seconds: float, search_seconds: float, docs: int) -> None:
        pass

    def queue_time(self, seconds: float) -> None:
        pass

    def first_token(self, seconds: float) -> None:
        pass

    def inter_token(self, seconds: float, tokens: int) -> None:
        pass

    def generation_finished(
        self, seconds: float, prompt_tokens: int, completion_tokens: int, finish_reason: str
    ) -> None:
        pass

    def loop_lag(self, seconds: float) -> None:
        pass

    def close(self) -> None:
        pass
