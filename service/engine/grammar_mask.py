"""Per-request grammar masks in transformers' continuous batching (a sibling of ``seeded_sampling``).

A request registered in :class:`GrammarConstraints` (by the manager's request id) generates under
its compiled xgrammar grammar; every other request is left alone and pays one dict lookup per step.

How it plugs in (transformers 5.x, ``ContinuousBatchingLogitsProcessorList``):

- :func:`install` puts :class:`GrammarMask` *first* in the manager's processor list, before
  temperature / top-k / top-p and seeded sampling, so those only ever see allowed tokens (a top-k
  of 1 after an unmasked argmax could otherwise leave nothing to sample). It must run before the
  manager starts: the processor-argument tensors are sized then.
- ``prepare_tensor_args`` runs on the manager's thread while the next batch is prepared, for the
  rows that will produce a token. At that point the token sampled in the previous step has been
  appended to ``state.generated_tokens`` (``update_batch`` runs before the next
  ``prepare_next_batch``), so the processor feeds each constrained request's matcher the tokens
  it has not seen yet, then fills that row of a CPU bitmask.
- ``__call__`` (same thread, right after the forward pass) applies the bitmask to the constrained
  rows only (``xgrammar.apply_token_bitmask_inplace(..., indices=rows)``) and returns early when
  the batch has none.
- This needs synchronous batching: with ``use_async_batching`` the next batch is prepared before
  the previous token is known (it is carried over on the device), so :func:`install` refuses a
  manager whose resolved config has it on (CUDA graphs turn it on by default: set
  ``ContinuousBatchingConfig(use_async_batching=False)`` to constrain on a GPU).

A matcher that rejects a sampled token (which the mask makes impossible unless another processor
changes it afterwards) fails closed: from then on its row allows only the stop tokens, so the
request ends instead of generating unconstrained text.

Compiling is done by :class:`GrammarCompilerCache` (xgrammar's ``GrammarCompiler`` plus an LRU of
compiled grammars by ``GuidedDecoding.key``), off the event loop via ``compile_async``.

This is the only module that imports xgrammar; the transformers engine imports it lazily and
serves without guided decoding where xgrammar is not installed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import xgrammar as xgr

from apihelper.errors import InvalidRequestError
from apihelper.service.engine.protocol import GuidedDecoding

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Compiling


# A call grammar longer than this is refused rather than compiled (a corpus-wide grammar of a
# 500-operation corpus is a few hundred KB; compile time grows with the grammar and the vocabulary).
MAX_GRAMMAR_BYTES = 4 * 1024 * 1024


class GrammarTooLargeError(InvalidRequestError):
    """A call grammar is over the size the engine compiles (the request may ask for fewer docs, or
    no constraint)."""

    def __init__(self, message: str) -> None:
        super().__init__("constrain_calls", message)


@dataclass(frozen=True)
class Compiled:
    grammar: xgr.CompiledGrammar
    seconds: float  # compile time; 0.0 on a cache hit
    cache_hit: bool


class GrammarCompilerCache:
    """Compiles grammars for one tokenizer, keeping the last ``max_entries`` compiled. Thread-safe;
    the compile itself runs without the lock held.

    Single-flight: while a grammar is being compiled, other requests for the same key wait for
    that compile instead of starting their own (four first requests against a corpus-wide grammar
    were four compiles of it: 94 s of CPU and +640 MiB). A grammar longer than
    ``max_grammar_bytes`` is refused before any compile (:class:`GrammarTooLargeError`): compile
    time grows with it and cannot be interrupted once started."""

    def __init__(
        self,
        tokenizer_info: xgr.TokenizerInfo,
        *,
        max_entries: int = 64,
        max_threads: int = 1,
        max_grammar_bytes: int = MAX_GRAMMAR_BYTES,
    ) -> None:
        self._compiler = xgr.GrammarCompiler(tokenizer_info, max_threads=max_threads, cache_enabled=False)
        self._max_entries = max_entries
        self._max_grammar_bytes = max_grammar_bytes
        self._cache: OrderedDict[str, xgr.CompiledGrammar] = OrderedDict()
        self._compiling: dict[str, concurrent.futures.Future[xgr.CompiledGrammar]] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_hf_tokenizer(
        cls, tokenizer: Any, *, vocab_size: int, stop_token_ids: Sequence[int], **kwargs: Any
    ) -> GrammarCompilerCache:
        """``vocab_size``: the model's (lm_head rows), which may exceed the tokenizer's."""
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids))
        return cls(info, **kwargs)

    def compile(self, grammar: GuidedDecoding) -> Compiled:
        key = grammar.key
        size = len(grammar.ebnf.encode())
        if size > self._max_grammar_bytes:
            raise GrammarTooLargeError(
                f"the call grammar of these docs is {size} bytes, over the limit of {self._max_grammar_bytes}: "
                "narrow retrieval.corpora or set constrain_calls to false"
            )
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return Compiled(hit, 0.0, True)
            pending = self._compiling.get(key)
            if pending is None:
                mine: concurrent.futures.Future[xgr.CompiledGrammar] = concurrent.futures.Future()
                self._compiling[key] = mine
        if pending is not None:  # another thread compiles it: wait for that one
            started = time.perf_counter()
            return Compiled(pending.result(), time.perf_counter() - started, True)
        started = time.perf_counter()
        try:
            compiled = self._compiler.compile_grammar(grammar.ebnf)
        except BaseException as exc:
            with self._lock:
                del self._compiling[key]
            mine.set_exception(exc)
            raise
        seconds = time.perf_counter() - started
        with self._lock:
            del self._compiling[key]
            self._cache[key] = compiled
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        mine.set_result(compiled)
        return Compiled(compiled, seconds, False)

    async def compile_async(self, grammar: GuidedDecoding) -> Compiled:
        """``compile`` in a worker thread: compiling a corpus-wide grammar takes up to seconds."""
        return await asyncio.to_thread(self.compile, grammar)


# ---------------------------------------------------------------------------------------------
# Which requests are constrained


class GrammarConstraints:
    """Request id -> compiled grammar, shared by the engine (event loop) and the processor (the
    manager's thread). Register before ``add_request``; discard however the stream ends."""

    def __init__(self) -> None:
        self._grammars: dict[str, xgr.CompiledGrammar] = {}
        self._lock = threading.Lock()

    def add(self, request_id: str, grammar: xgr.CompiledGrammar) -> None:
        with self._lock:
            self._grammars[request_id] = grammar

    def discard(self, request_id: str) -> None:
        with self._lock:
            self._grammars.pop(request_id, None)

    def get(self, request_id: str) -> xgr.CompiledGrammar | None:
        with self._lock:
            return self._grammars.get(request_id)

    def __len__(self) -> int:
        return len(self._grammars)  # a plain read: exact enough for "is anything constrained"

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._grammars


@dataclass
class _Active:
    matcher: xgr.GrammarMatcher
    seen: int = 0  # generated tokens already fed to the matcher
    failed: bool = False


# ---------------------------------------------------------------------------------------------
# The processor


def stop_only_bitmask(words: int, vocab_size: int, stop_token_ids: Sequence[int]) -> torch.Tensor:
    """One bitmask row (xgrammar's layout: int32 words, bit ``t % 32`` of word ``t // 32``)
    allowing only ``stop_token_ids``."""
    values = [0] * words
    for token in stop_token_ids:
        if 0 <= token < vocab_size:
            values[token // 32] |= 1 << (token % 32)
    # Words are unsigned 32-bit patterns; int32 holds bit 31 as the sign.
    return torch.tensor([v - (1 << 32) if v >= 1 << 31 else v for v in values], dtype=torch.int32)


def grammar_mask_class(base: type[Any]) -> type[Any]:
    """The processor class, derived from transformers' ``ContinuousBatchingLogitsProcessor``
    (passed in, so this module never imports transformers)."""

    class GrammarMask(base):  # type: ignore[misc]  # base is only known at runtime
        """Masks constrained rows to their grammar; see the module docstring."""

        supported_kwargs: ClassVar[dict[str, type]] = {}
        ignored_kwargs: tuple[str, ...] = ()

        def __init__(
            self, constraints: GrammarConstraints, *, vocab_size: int, max_rows: int, stop_token_ids: Sequence[int]
        ) -> None:
            self.constraints = constraints
            self.vocab_size = vocab_size
            self._bitmask = xgr.allocate_token_bitmask(max_rows, vocab_size)
            self._stop_only = stop_only_bitmask(self._bitmask.size(1), vocab_size, stop_token_ids)
            self._active: dict[str, _Active] = {}
            self._rows: list[int] = []
            self._zeros = torch.zeros(max_rows, dtype=torch.int32)
            self.masked_rows = 0  # rows masked so far (for tests and metrics)
            self.mask_seconds = 0.0  # time spent filling and applying masks (this thread)

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(0)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            n = len(requests_with_new_token)
            self._rows = []
            if not len(self.constraints) and not self._active:
                return self._zeros[:n]
            started = time.perf_counter()
            for row, future in enumerate(requests_with_new_token):
                state = future.state
                active = self._active.get(state.request_id)
                if active is None:
                    grammar = self.constraints.get(state.request_id)
                    if grammar is None:
                        continue
                    active = self._active[state.request_id] = _Active(xgr.GrammarMatcher(grammar))
                self._advance(state.request_id, active, state.generated_tokens)
                if active.failed:
                    self._bitmask[row].copy_(self._stop_only)
                else:
                    active.matcher.fill_next_token_bitmask(self._bitmask, row)
                self._rows.append(row)
            self._forget_finished()
            self.mask_seconds += time.perf_counter() - started
            flags = self._zeros[:n].clone()
            flags[self._rows] = 1
            return flags

        def _advance(self, request_id: str, active: _Active, generated: Sequence[int]) -> None:
            if len(generated) < active.seen:  # the request restarted (re-prefilled from scratch)
                active.matcher.reset()
                active.seen, active.failed = 0, False
            for token in generated[active.seen :]:
                if not active.failed and not active.matcher.accept_token(int(token)):
                    logger.warning(
                        "grammar mask: request %s sampled token %d outside its grammar; "
                        "only stop tokens are allowed from now on",
                        request_id,
                        token,
                    )
                    active.failed = True
            active.seen = len(generated)

        def _forget_finished(self) -> None:
            if len(self._active) > len(self.constraints):
                for request_id in [r for r in self._active if r not in self.constraints]:
                    del self._active[request_id]

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            # The rows come from prepare_tensor_args on this same thread, just before this forward
            # pass (synchronous batching): reading tensor_arg would cost a device sync on a GPU.
            if not self._rows:
                return scores
            bitmask = self._bitmask[: scores.size(0)]
            if bitmask.device != scores.device:
                bitmask = bitmask.to(scores.device, non_blocking=True)
            started = time.perf_counter()
            xgr.apply_token_bitmask_inplace(scores, bitmask, vocab_size=self.vocab_size, indices=self._rows)
            self.masked_rows += len(self._rows)
            self.mask_seconds += time.perf_counter() - started
            return scores

    return GrammarMask


def install(
    manager: Any,
    processor_base: type[Any],
    constraints: GrammarConstraints,
    *,
    vocab_size: int,
    stop_token_ids: Sequence[int],
) -> Any | None:
    """Put a grammar mask first in ``manager``'s processor list (before ``manager.start()``) and
    return it; None, changing nothing, when the manager batches asynchronously or its processor
    list does not have the shape this code was written against (transformers 5.2x)."""
    config = getattr(manager, "continuous_batching_config", None)
    if config is None or getattr(config, "use_async_batching", None) is not False:
        return None
    processors = getattr(manager, "logit_processor", None)
    wanted = ("logits_processor", "tensors_required", "supported_keys", "do_processing")
    if processors is None or not all(hasattr(processors, name) for name in wanted):
        return None
    max_rows = int(getattr(config, "max_requests_per_batch", 0) or 0)
    if max_rows < 1:
        return None
    mask = grammar_mask_class(processor_base)(
        constraints, vocab_size=vocab_size, max_rows=max_rows, stop_token_ids=stop_token_ids
    )
    processors.logits_processor.insert(0, mask)  # first: temperature/top-k/top-p see only allowed tokens
    processors.tensors_required += 1
    processors.do_processing = True
    return mask
