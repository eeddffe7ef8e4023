"""What every engine adapter does the same way, in one place (no engine library imported here).

``EngineBase`` holds the ``Engine`` protocol's bookkeeping (``info``, ``num_in_flight``, ``abort``
by request id) and the checks every adapter makes before it submits a request (the sampling
values, the prompt plus ``max_tokens`` against the model's context, a request id already
running). The functions below are the steps the adapters share: the stop strings' text filter,
how a step of generated ids becomes a text delta and a finish reason, waiting for output while
checking that the engine still runs, when a request whose consumer does not drain is ended, and
writing a chat prompt with a tokenizer's chat template.
"""

from __future__ import annotations

import abc
import asyncio
import math
import time
from collections.abc import Callable, Container, Sequence
from typing import Any, Generic, TypeVar

from apihelper.errors import InvalidRequestError
from apihelper.service.engine.protocol import EngineInfo, EngineRequest, FinishReason, SamplingParams
from apihelper.service.engine.stops import IncrementalText
from apihelper.service.prompts import ChatPrompt

FlightT = TypeVar("FlightT")
T = TypeVar("T")

# Prompts up to this many characters are tokenized on the event loop (well under a millisecond);
# longer ones go to a worker thread so they never stall other streams.
INLINE_TOKENIZE_CHARS = 16_384
# How far an engine may run ahead of a stream's consumer (tokens) before the request is ended: a
# consumer this far behind is not reading (a gRPC stream's writes block only once the client's
# flow-control window, 64 KiB by default, is full).
MAX_TOKENS_AHEAD = 256


class EngineBase(abc.ABC, Generic[FlightT]):
    """The protocol's bookkeeping over ``_in_flight`` (request id -> the adapter's own record of
    a running stream); an adapter sets ``_info`` and ``_in_flight`` and says how a stream is
    aborted (``_abort``)."""

    _info: EngineInfo
    _in_flight: dict[str, FlightT]

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def num_in_flight(self) -> int:
        return len(self._in_flight)

    async def abort(self, request_id: str) -> None:
        """Abort a running request; its stream ends with ``FinishReason.CANCELLED`` (an id that
        is not running: nothing to do)."""
        flight = self._in_flight.get(request_id)
        if flight is not None:
            self._abort(flight)

    @abc.abstractmethod
    def _abort(self, flight: FlightT) -> None:
        """End ``flight``'s stream with ``FinishReason.CANCELLED`` after what it generated."""

    def _admit(self, request: EngineRequest, prompt_tokens: int) -> None:
        """Refuse, before submitting, a request whose prompt plus ``max_tokens`` does not fit the
        model's context, or whose id is running already."""
        max_tokens = request.sampling.max_tokens
        limit = self._info.max_model_len
        if prompt_tokens + max_tokens > limit:
            raise InvalidRequestError(
                "sampling.max_tokens",
                f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the "
                f"model's {limit} tokens; lower max_tokens or retrieve fewer documents",
            )
        if request.request_id in self._in_flight:
            raise InvalidRequestError("request_id", "a request with this id is already running")


def check_sampling(sampling: SamplingParams) -> None:
    """Refuse sampling values no engine can apply, naming the field as the wire does."""
    if sampling.max_tokens < 1:
        raise InvalidRequestError("sampling.max_tokens", "must be at least 1")
    if sampling.temperature < 0 or not math.isfinite(sampling.temperature):
        raise InvalidRequestError("sampling.temperature", "must be a number >= 0")
    if not 0.0 < sampling.top_p <= 1.0:
        raise InvalidRequestError("sampling.top_p", "must be in (0, 1]")
    if sampling.top_k < 0:
        raise InvalidRequestError("sampling.top_k", "must be >= 0")
    if sampling.repetition_penalty <= 0 or not math.isfinite(sampling.repetition_penalty):
        raise InvalidRequestError("sampling.repetition_penalty", "must be a number > 0")


async def tokenized(tokenize: Callable[[str], T], prompt: str) -> T:
    """``tokenize(prompt)``: on the event loop for a short prompt, in a worker thread for a long
    one (``INLINE_TOKENIZE_CHARS``)."""
    if len(prompt) <= INLINE_TOKENIZE_CHARS:
        return tokenize(prompt)
    return await asyncio.to_thread(tokenize, prompt)


def incremental_text(decode: Callable[[Sequence[int]], str], stops: Sequence[str]) -> IncrementalText:
    """The text filter of one stream (``service.engine.stops``); bad stop strings are the
    request's fault."""
    try:
        return IncrementalText(decode, stops)
    except ValueError as exc:
        raise InvalidRequestError("sampling.stop", str(exc)) from exc


def text_step(
    text: IncrementalText,
    generated: Sequence[int],
    *,
    finished: bool,
    eos_token_ids: Container[int],
    stopped_by_engine: bool = False,
) -> tuple[str, FinishReason | None]:
    """The text delta of a step that has generated ``generated`` so far, and why the request
    ended where it did: a stop string found here, an end-of-sequence token (never text) or the
    engine's own stop (``stopped_by_engine``) is ``STOP``; finishing otherwise is ``LENGTH``."""
    eos = finished and bool(generated) and generated[-1] in eos_token_ids
    delta, stopped = text.update(generated[:-1] if eos else generated, final=finished)
    if stopped:
        return delta, FinishReason.STOP
    if finished:
        return delta, FinishReason.STOP if eos or stopped_by_engine else FinishReason.LENGTH
    return delta, None


async def wait_for_news(
    ready: asyncio.Event, has_news: Callable[[], bool], poll_interval_s: float, check_alive: Callable[[], None]
) -> None:
    """Until ``has_news()``, woken by ``ready``; every ``poll_interval_s`` without news
    ``check_alive`` runs (it raises when the engine is gone, so a stream never waits forever)."""
    while not has_news():
        ready.clear()
        try:
            async with asyncio.timeout(poll_interval_s):
                await ready.wait()
        except TimeoutError:
            check_alive()


def runaway_reason(ahead: int, last_take: float, max_ahead: int, stall_timeout_s: float | None) -> str | None:
    """Why a request whose consumer is ``ahead`` tokens behind and last took output at
    ``last_take`` (``time.monotonic()``) is ended, or None while it may run on."""
    if ahead > max_ahead:
        return f"{ahead} tokens ahead of its consumer"
    if stall_timeout_s is not None and time.monotonic() - last_take > stall_timeout_s:
        return f"its consumer took nothing for {stall_timeout_s:g} s"
    return None


def render_with_template(tokenizer: Any, prompt: ChatPrompt, model: str, **options: Any) -> str:
    """``prompt`` written with ``tokenizer``'s chat template, the assistant's turn opened; a
    tokenizer that wraps another (TensorRT-LLM's) may carry the template on the inner one.
    ``options``: the tokenizer's own keywords (``tokenize=False`` for Hugging Face's)."""
    inner = getattr(tokenizer, "tokenizer", None)
    if not getattr(tokenizer, "chat_template", None) and not getattr(inner, "chat_template", None):
        raise InvalidRequestError("prompt_format", f"{model} has no chat template")
    text = tokenizer.apply_chat_template(
        prompt.message_dicts(),
        add_generation_prompt=True,
        tools=[dict(t) for t in prompt.tools] or None,
        **options,
    )
    return str(text)
