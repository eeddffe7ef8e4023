"""A scripted ``Engine`` for tests of the layers above it (pipeline, gRPC, clients).

It keeps the whole engine contract (deltas then one final output, stop strings, ``max_tokens``,
the context limit, cancellation, ``abort``, ``shutdown``, failures) without a model: the answer is
a fixed text, or a function of the prompt, split into word-sized "tokens". No torch, no threads.
bench/load drives the service with it to measure the service's own cost, so it is kept cheap:
O(1) work per token, and token counting in C (``str.split``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import re
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass

from apihelper.errors import EngineUnavailableError, InvalidRequestError
from apihelper.service.engine.base import EngineBase, check_sampling, incremental_text
from apihelper.service.engine.protocol import (
    EngineInfo,
    EngineOutput,
    EngineRequest,
    EngineStats,
    FinishReason,
)
from apihelper.service.prompts import ChatPrompt, PromptFormat, render_chatml

# A token is a run of non-space characters with the whitespace before it (like BPE's "Ġword").
_PIECE = re.compile(r"\s*\S+|\s+")

GORILLA_V0_REPLY = (
    "<<<domain>>>: Sessions <<<api_call>>>: POST /sessions <<<api_provider>>>: Backend.AI "
    "<<<explanation>>>: Create a compute session with the given image. <<<code>>>: "
    "session = client.ComputeSession.get_or_create('python:3.11')"
)
OPENFUNCTIONS_V2_REPLY = "<<function>>create_session(image='python:3.11')"


# Requests kept in ``FakeEngine.requests``: enough for any test, bounded for long benchmarks.
KEEP_REQUESTS = 1000


def pieces(text: str) -> list[str]:
    return _PIECE.findall(text)


@functools.lru_cache(maxsize=1024)  # the pipeline and stream() count the same prompt
def count_pieces(text: str) -> int:
    """``len(pieces(text))`` without building them: one per run of non-space characters (with
    the whitespace before it), plus one for trailing whitespace."""
    return len(text.split()) + (1 if text[-1:].isspace() else 0)


@dataclass(frozen=True)
class _Stop:
    reason: FinishReason | None  # None: fail with EngineUnavailableError


class FakeEngine(EngineBase[asyncio.Queue[_Stop]]):
    """``reply`` is the answer text, or a function from the prompt to it."""

    def __init__(
        self,
        reply: str | Callable[[str], str] | None = None,
        *,
        prompt_format: PromptFormat = PromptFormat.GORILLA_V0,
        max_model_len: int = 2048,
        token_delay_s: float = 0.0,
        model: str = "fake",
    ) -> None:
        if reply is None:
            reply = GORILLA_V0_REPLY if prompt_format is PromptFormat.GORILLA_V0 else OPENFUNCTIONS_V2_REPLY
        self._reply = reply
        self._info = EngineInfo(kind="fake", model=model, prompt_format=prompt_format, max_model_len=max_model_len)
        self._token_delay_s = token_delay_s
        self._in_flight = {}
        self._closed = False
        self.requests: deque[EngineRequest] = deque(maxlen=KEEP_REQUESTS)  # the latest accepted
        self.fail_after: int | None = None  # raise EngineUnavailableError after N tokens
        self.healthy = True  # a failure marks the engine unhealthy, as a dead executor would

    def count_tokens(self, text: str) -> int:
        return count_pieces(text) + 1  # + <s>

    def render_chat(self, prompt: ChatPrompt) -> str:
        return render_chatml(prompt)

    async def stream(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        if self._closed:
            raise EngineUnavailableError("the fake engine is shut down")
        sampling = request.sampling
        check_sampling(sampling)
        prompt_tokens = self.count_tokens(request.prompt)
        self._admit(request, prompt_tokens)
        if request.guided is not None:
            raise InvalidRequestError("constrain_calls", "the fake engine cannot constrain decoding")
        reply = self._reply(request.prompt) if callable(self._reply) else self._reply
        answer = pieces(reply)
        # The ids are always the first n pieces, which tile the reply: decoding them is a slice,
        # not a join per step, and holds no list of prefixes (that was quadratic in the reply).
        text_reply = "".join(answer)
        ends = list(itertools.accumulate((len(p) for p in answer), initial=0))

        def decode(ids: Sequence[int]) -> str:
            return text_reply[: ends[len(ids)]]

        text = incremental_text(decode, sampling.stop)
        control: asyncio.Queue[_Stop] = asyncio.Queue()
        self._in_flight[request.request_id] = control
        self.requests.append(request)
        try:
            produced = 0  # the answer's first ``produced`` pieces are generated
            first = True
            while True:
                await asyncio.sleep(self._token_delay_s)  # a cancellation point, as a real step
                if not control.empty():
                    stop = control.get_nowait()
                    if stop.reason is None:
                        raise EngineUnavailableError("the fake engine is shutting down")
                    yield EngineOutput("", stop.reason, prompt_tokens, produced)
                    return
                if self.fail_after is not None and produced >= self.fail_after:
                    self.healthy = False
                    raise EngineUnavailableError("the fake engine failed (fail_after)")
                done = produced >= len(answer)  # the end of the answer plays the part of EOS
                if not done:
                    produced += 1
                length = not done and produced >= sampling.max_tokens
                delta, stopped = text.update(range(produced), final=done or length)
                reason = FinishReason.STOP if stopped or done else FinishReason.LENGTH if length else None
                if not delta and reason is None:
                    continue
                yield EngineOutput(
                    text_delta=delta,
                    finish_reason=reason,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=produced,
                    queue_seconds=0.0 if first else None,
                )
                first = False
                if reason is not None:
                    return
        finally:
            if self._in_flight.get(request.request_id) is control:
                del self._in_flight[request.request_id]

    def _abort(self, flight: asyncio.Queue[_Stop]) -> None:
        flight.put_nowait(_Stop(FinishReason.CANCELLED))

    async def check_health(self) -> None:
        if self._closed:
            raise EngineUnavailableError("the fake engine is shut down")
        if not self.healthy:
            raise EngineUnavailableError("the fake engine failed")

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self._in_flight), waiting=0, kv_cache_usage=None)

    async def shutdown(self) -> None:
        self._closed = True
        for control in self._in_flight.values():
            control.put_nowait(_Stop(None))
        self._in_flight.clear()
