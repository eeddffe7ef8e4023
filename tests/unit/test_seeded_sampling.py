"""Seeded sampling's arithmetic: deterministic, a pure function of (seed, position, token), and
an exact draw from the softmax of the processed scores (the Gumbel-max trick)."""

from __future__ import annotations

import math
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from apihelper.service.engine.seeded_sampling import (  # noqa: E402
    NO_SEED,
    apply_seeded_choice,
    gumbel_noise,
    install,
    step_seed,
)


def test_step_seeds_are_31_bit_and_differ_by_seed_and_position() -> None:
    seeds = {step_seed(seed, pos) for seed in (0, 1, 7, 2**32, 2**63 - 1, 2**64 - 1) for pos in range(200)}
    assert len(seeds) == 6 * 200
    assert all(0 <= s < 2**31 for s in seeds)
    assert step_seed(7, 12) == step_seed(7, 12)


def test_noise_is_a_pure_function_of_seed_and_token() -> None:
    seeds = torch.tensor([5, 5, 6], dtype=torch.int32)
    noise = gumbel_noise(seeds, 1000)
    assert noise.shape == (3, 1000) and torch.isfinite(noise).all()
    assert torch.equal(noise[0], noise[1])
    assert not torch.equal(noise[0], noise[2])
    # A row's noise does not depend on the other rows or on the vocabulary size beyond it.
    assert torch.equal(gumbel_noise(torch.tensor([6], dtype=torch.int32), 500)[0], noise[2, :500])


def test_noise_is_standard_gumbel() -> None:
    noise = gumbel_noise(torch.arange(200, dtype=torch.int32), 1000).double()
    euler_gamma = 0.5772156649
    assert abs(noise.mean().item() - euler_gamma) < 0.01  # sd of the mean ~ 1.28 / sqrt(2e5)
    assert abs(noise.var().item() - math.pi**2 / 6) < 0.03


def test_seeded_rows_become_one_hot_and_the_rest_are_untouched() -> None:
    scores = torch.randn(4, 50)
    scores[1, 10:] = float("-inf")  # filtered by top-k: never chosen
    out = apply_seeded_choice(scores, torch.tensor([3, 9, NO_SEED, 3], dtype=torch.int32))
    assert torch.equal(out[2], scores[2])
    for row in (0, 1, 3):
        assert (out[row] == 0).sum() == 1 and torch.isinf(out[row]).sum() == 49
    assert int(out[1].argmax()) < 10
    assert int(out[0].argmax()) == int(out[3].argmax()) or not torch.equal(scores[0], scores[3])


def test_choices_follow_the_softmax_of_the_scores() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    rows = 20_000
    scores = probs.log().expand(rows, 4).clone()
    seeds = torch.tensor([step_seed(1234, i) for i in range(rows)], dtype=torch.int32)
    chosen = apply_seeded_choice(scores, seeds).argmax(dim=-1)
    freq = torch.bincount(chosen, minlength=4).double() / rows
    # Binomial sd <= 0.0036 at 20,000 draws: 0.015 is more than four of them.
    assert torch.allclose(freq, probs.double(), atol=0.015), freq


class _Base:
    """Stands in for transformers' ContinuousBatchingLogitsProcessor (an ABC with no state)."""


class _Processors:
    def __init__(self) -> None:
        self.logits_processor: list[object] = ["temperature", "top_k", "top_p"]
        self.tensors_required = 3
        self.supported_keys: dict[str, type] = {"temperature": float, "top_k": int, "top_p": float}
        self.do_processing = True


class _State:
    def __init__(self, kwargs: dict[str, object], position: int) -> None:
        self.logit_processor_kwargs = kwargs
        self.position_offset = position


class _Future:
    def __init__(self, kwargs: dict[str, object], position: int) -> None:
        self.state = _State(kwargs, position)


def test_install_appends_a_processor_that_reads_the_seed_kwarg() -> None:
    processors = _Processors()
    assert install(processors, _Base)
    assert processors.tensors_required == 4 and processors.supported_keys["seed"] is int
    sampler: Any = processors.logits_processor[-1]
    args = sampler.prepare_tensor_args([_Future({"seed": 7}, 30), _Future({}, 30), _Future({"seed": 7}, 31)])
    assert args.dtype == torch.int32
    assert args.tolist() == [step_seed(7, 30), NO_SEED, step_seed(7, 31)]
    defaults = torch.zeros(8, dtype=torch.int32)
    sampler.fill_defaults(defaults)
    assert (defaults == NO_SEED).all()
    scores = torch.randn(2, 16)
    assert sampler(scores, torch.full((8,), NO_SEED, dtype=torch.int32)) is scores  # nothing seeded


def test_install_leaves_an_unknown_processor_list_alone() -> None:
    class Other:
        logits_processor: list[object] = []

    other = Other()
    assert not install(other, _Base)
    assert other.logits_processor == []
