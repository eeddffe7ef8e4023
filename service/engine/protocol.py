"""The Engine protocol: the one seam between the pipeline and a generation backend.

An engine takes a prompt string and streams text deltas. It owns tokenization, batching and
stop handling; the pipeline never sees token tensors or a vendor type. Adapters (transformers,
TensorRT-LLM) are the only modules that import their engine library, and they do it lazily.

Contract every adapter keeps:
- ``stream`` yields ``EngineOutput`` deltas in order; exactly the last one has ``finish_reason``.
- Cancelling the consumer of ``stream`` (client disconnect, deadline) aborts the request in the
  engine before ``CancelledError`` propagates; ``abort`` does the same from outside.
- ``num_in_flight`` counts requests the engine still holds; it returns to 0 after every stream
  ends, however it ends.
- ``stream`` raises ``InvalidRequestError`` (field ``sampling.max_tokens``, as on the wire) before submitting when the
  prompt plus ``max_tokens`` does not fit ``info.max_model_len``.
- ``check_health`` raises ``EngineUnavailableError`` when the engine can no longer serve; a
  stream whose engine fails raises the same error (never hangs).
- A request with ``guided`` set generates only text its grammar accepts, on engines whose
  ``info.guided_decoding`` is true; others raise ``InvalidRequestError`` (field
  ``constrain_calls``) rather than ignore it.
- ``render_chat`` writes a conversation with the model's own chat template (the prompt text of
  chat formats), or raises ``InvalidRequestError`` (field ``prompt_format``) for a model without one.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from apihelper.service.prompts import ChatPrompt, PromptFormat


class FinishReason(str, enum.Enum):
    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_tokens or the model's context reached
    CANCELLED = "cancelled"  # aborted (client gone, deadline, shutdown)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings as the engine applies them. ``temperature == 0`` means greedy."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    seed: int | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0


@dataclass(frozen=True)
class GuidedDecoding:
    """A grammar the generated text must follow: EBNF in xgrammar's dialect (root rule ``root``),
    the form both engines take (xgrammar directly, TensorRT-LLM's ``GuidedDecodingParams``).
    ``key`` identifies the grammar (the engines cache compiled grammars by it)."""

    ebnf: str
    key: str


@dataclass(frozen=True)
class EngineRequest:
    request_id: str
    prompt: str
    sampling: SamplingParams
    guided: GuidedDecoding | None = None


@dataclass(frozen=True)
class EngineOutput:
    """One step of a stream: the new text, and on the last step why it ended.

    Token counts are cumulative for the request so far. ``queue_seconds`` is set on the first
    output: time from submission until the engine started working on the request.
    """

    text_delta: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_seconds: float | None = None


class ApiChoice(str, enum.Enum):
    """How a constrained answer's API is chosen: by the model among the retrieved docs, or fixed
    to the retriever's top-ranked doc (the model fills its arguments). A model's manifest names
    the policy chosen for it on the validation splits; a request may override it."""

    MODEL = "model"
    RETRIEVER = "retriever"


@dataclass(frozen=True)
class EngineInfo:
    kind: str  # "transformers" | "tensorrt_llm" | a test double's name
    model: str  # model name or directory
    prompt_format: PromptFormat
    max_model_len: int  # prompt + completion tokens the engine accepts
    random_weights: bool = False  # the development model: its text means nothing
    guided_decoding: bool = False  # honours EngineRequest.guided
    extra: dict[str, str] = field(default_factory=dict)
    api_choice: ApiChoice = ApiChoice.MODEL  # the manifest's policy (model when none says)


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_cache_usage: float | None = None  # 0..1 where the engine reports it


@runtime_checkable
class Engine(Protocol):
    @property
    def info(self) -> EngineInfo: ...

    @property
    def num_in_flight(self) -> int: ...

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` encodes to (the pipeline fits retrieved docs into the context)."""
        ...

    def render_chat(self, prompt: ChatPrompt) -> str:
        """``prompt`` as the model's chat template writes it, the assistant's turn opened."""
        ...

    def stream(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]: ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None: ...

    def stats(self) -> EngineStats: ...

    async def shutdown(self) -> None: ...
