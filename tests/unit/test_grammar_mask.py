"""The grammar mask as a continuous-batching logits processor, against transformers' real
``ContinuousBatchingLogitsProcessorList`` and hand-made batch states (no model)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
import xgrammar as xgr
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper

from apihelper.service.answers.grammar import AllowedCall, CallKind, build_call_grammar
from apihelper.service.engine.grammar_mask import GrammarCompilerCache, GrammarConstraints, install, stop_only_bitmask
from apihelper.service.engine.protocol import GuidedDecoding
from apihelper.service.prompts import PromptFormat
from tests.unit.grammar_walk import STOP_ID, VOCAB, char_compiler

# transformers 5.x continuous batching (the env pinned like the TensorRT-LLM container has 4.57).
pytestmark = pytest.mark.transformers5
cb = pytest.importorskip("transformers.generation.continuous_batching.cb_logits_processors")
ContinuousBatchingLogitsProcessor = cb.ContinuousBatchingLogitsProcessor
ContinuousBatchingLogitsProcessorList = cb.ContinuousBatchingLogitsProcessorList
ContinuousBatchingTemperatureLogitsWarper = cb.ContinuousBatchingTemperatureLogitsWarper

V = len(VOCAB)


def manager(*, async_batching: bool | None = False, rows: int = 4) -> Any:
    processors = ContinuousBatchingLogitsProcessorList(
        LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(50)]), per_request_processors=True
    )
    config = SimpleNamespace(use_async_batching=async_batching, max_requests_per_batch=rows)
    return SimpleNamespace(continuous_batching_config=config, logit_processor=processors)


def request(request_id: str, generated: list[int] | None = None) -> Any:
    return SimpleNamespace(state=SimpleNamespace(request_id=request_id, generated_tokens=generated or []))


def literal_grammar(text: str) -> xgr.CompiledGrammar:
    return char_compiler().compile_grammar(f'root ::= "{text}"')


def allowed(scores_row: torch.Tensor) -> set[int]:
    return {i for i, v in enumerate(scores_row.tolist()) if v != float("-inf")}


@pytest.fixture
def constrained() -> tuple[Any, GrammarConstraints]:
    constraints = GrammarConstraints()
    mask = install(manager(), ContinuousBatchingLogitsProcessor, constraints, vocab_size=V, stop_token_ids=[STOP_ID])
    assert mask is not None
    return mask, constraints


def test_install_puts_the_mask_first() -> None:
    m = manager()
    before = m.logit_processor.tensors_required
    mask = install(m, ContinuousBatchingLogitsProcessor, GrammarConstraints(), vocab_size=V, stop_token_ids=[STOP_ID])
    assert m.logit_processor.logits_processor[0] is mask
    assert isinstance(m.logit_processor.logits_processor[1], ContinuousBatchingTemperatureLogitsWarper)
    assert m.logit_processor.tensors_required == before + 1


@pytest.mark.parametrize("async_batching", [True, None])
def test_install_refuses_asynchronous_batching(async_batching: bool | None) -> None:
    m = manager(async_batching=async_batching)
    before = list(m.logit_processor.logits_processor)
    assert (
        install(m, ContinuousBatchingLogitsProcessor, GrammarConstraints(), vocab_size=V, stop_token_ids=[STOP_ID])
        is None
    )
    assert list(m.logit_processor.logits_processor) == before


def test_only_constrained_rows_are_masked(constrained: tuple[Any, GrammarConstraints]) -> None:
    mask, constraints = constrained
    constraints.add("a", literal_grammar("ab"))
    flags = mask.prepare_tensor_args([request("b"), request("a")])
    assert flags.tolist() == [0, 1]
    scores = torch.randn(2, V)
    original = scores.clone()
    out = mask(scores, flags)
    assert torch.equal(out[0], original[0])  # the unconstrained row is untouched
    assert allowed(out[1]) == {VOCAB.index("a")}


def test_the_matcher_follows_the_generated_tokens(constrained: tuple[Any, GrammarConstraints]) -> None:
    mask, constraints = constrained
    constraints.add("a", literal_grammar("ab"))
    state = request("a")
    steps = []
    for _ in range(3):
        scores = mask(torch.zeros(1, V), mask.prepare_tensor_args([state]))
        (token,) = allowed(scores[0])
        steps.append(token)
        state.state.generated_tokens.append(token)  # what update_batch does after sampling
    assert steps == [VOCAB.index("a"), VOCAB.index("b"), STOP_ID]


def test_a_token_outside_the_grammar_fails_closed(constrained: tuple[Any, GrammarConstraints]) -> None:
    mask, constraints = constrained
    constraints.add("a", literal_grammar("ab"))
    scores = mask(torch.zeros(1, V), mask.prepare_tensor_args([request("a", [VOCAB.index("z")])]))
    assert allowed(scores[0]) == {STOP_ID}


def test_a_restarted_request_is_matched_from_the_start(constrained: tuple[Any, GrammarConstraints]) -> None:
    mask, constraints = constrained
    constraints.add("a", literal_grammar("ab"))
    mask.prepare_tensor_args([request("a", [VOCAB.index("a")])])
    scores = mask(torch.zeros(1, V), mask.prepare_tensor_args([request("a", [])]))
    assert allowed(scores[0]) == {VOCAB.index("a")}


def test_unconstrained_batches_are_left_alone(constrained: tuple[Any, GrammarConstraints]) -> None:
    mask, _ = constrained
    flags = mask.prepare_tensor_args([request("x"), request("y")])
    scores = torch.randn(2, V)
    assert mask(scores, flags) is scores
    assert flags.tolist() == [0, 0] and mask.masked_rows == 0


def test_discarded_requests_are_forgotten(constrained: tuple[Any, GrammarConstraints]) -> None:
    mask, constraints = constrained
    constraints.add("a", literal_grammar("ab"))
    mask.prepare_tensor_args([request("a")])
    constraints.discard("a")
    scores = torch.randn(1, V)
    assert mask(scores, mask.prepare_tensor_args([request("a")])) is scores


def test_the_mask_runs_before_temperature_and_top_k() -> None:
    """Through the whole processor list: a greedy (top-k 1) row picks the best *allowed* token."""
    m = manager()
    constraints = GrammarConstraints()
    install(m, ContinuousBatchingLogitsProcessor, constraints, vocab_size=V, stop_token_ids=[STOP_ID])
    constraints.add("a", literal_grammar("ab"))
    processors = m.logit_processor
    arg_storage = torch.zeros(processors.tensors_required, 4, dtype=torch.int32)
    processors.fill_defaults(arg_storage)
    future = SimpleNamespace(
        state=SimpleNamespace(request_id="a", generated_tokens=[], logit_processor_kwargs={"top_k": 1}),
        has_new_token=True,
    )
    args = processors.prepare_tensor_args([future], arg_storage)
    scores = torch.randn(1, V)
    scores[0, VOCAB.index("z")] = 100.0  # the model's favourite is not allowed
    out = processors(torch.zeros(1, dtype=torch.long), scores, args)
    assert allowed(out[0]) == {VOCAB.index("a")}


@pytest.mark.parametrize("tokens", [[0], [31], [31, 63], [5, 32, 95]])
def test_stop_only_rows_allow_exactly_the_stop_tokens(tokens: list[int]) -> None:
    vocab = 100
    row = stop_only_bitmask(xgr.get_bitmask_shape(1, vocab)[1], vocab, tokens)
    scores = torch.zeros(1, vocab)
    xgr.apply_token_bitmask_inplace(scores, row.unsqueeze(0), vocab_size=vocab)
    assert allowed(scores[0]) == set(tokens)


def test_compiled_grammars_are_cached_by_key() -> None:
    info = xgr.TokenizerInfo(VOCAB, xgr.VocabType.RAW, vocab_size=V, stop_token_ids=[STOP_ID])
    cache = GrammarCompilerCache(info, max_entries=1)
    built = [build_call_grammar(PromptFormat.GORILLA_V0, [AllowedCall(f"{n}()", CallKind.APIBENCH)]) for n in "fg"]
    one, two = (GuidedDecoding(g.ebnf, g.key) for g in built)
    first = cache.compile(one)
    assert not first.cache_hit and cache.compile(one).cache_hit
    cache.compile(two)
    assert not cache.compile(one).cache_hit  # evicted: max_entries=1


def test_concurrent_first_compiles_of_one_grammar_compile_it_once() -> None:
    """Issue 25 row 8: single-flight. Four threads ask for the same grammar at once: one compile,
    the others wait for it and get the same compiled grammar."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    info = xgr.TokenizerInfo(VOCAB, xgr.VocabType.RAW, vocab_size=V, stop_token_ids=[STOP_ID])
    cache = GrammarCompilerCache(info)
    real = cache._compiler
    calls: list[str] = []
    entered = threading.Event()
    release = threading.Event()

    class SlowCompiler:
        def compile_grammar(self, ebnf: str) -> Any:
            calls.append(ebnf)
            entered.set()
            release.wait(30)
            return real.compile_grammar(ebnf)

    cache._compiler = SlowCompiler()  # type: ignore[assignment]
    built = build_call_grammar(PromptFormat.GORILLA_V0, [AllowedCall("f()", CallKind.APIBENCH)])
    grammar = GuidedDecoding(built.ebnf, built.key)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(cache.compile, grammar) for _ in range(4)]
        assert entered.wait(30)
        release.set()
        results = [f.result(timeout=60) for f in futures]
    assert len(calls) == 1
    assert len({id(r.grammar) for r in results}) == 1
    assert sum(not r.cache_hit for r in results) == 1


def test_a_grammar_over_the_size_limit_is_refused_before_compiling() -> None:
    from apihelper.errors import InvalidRequestError

    info = xgr.TokenizerInfo(VOCAB, xgr.VocabType.RAW, vocab_size=V, stop_token_ids=[STOP_ID])
    cache = GrammarCompilerCache(info, max_grammar_bytes=16)
    built = build_call_grammar(PromptFormat.GORILLA_V0, [AllowedCall("f()", CallKind.APIBENCH)])
    with pytest.raises(InvalidRequestError) as info_:
        cache.compile(GuidedDecoding(built.ebnf, built.key))
    assert info_.value.field == "constrain_calls" and "limit of 16" in str(info_.value)
