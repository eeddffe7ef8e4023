"""Per-request seeded sampling for transformers' continuous batching (part of the transformers
engine; imported only from ``transformers_engine`` once transformers and torch are loaded).

Continuous batching samples every request of a batch with one shared ``torch.multinomial`` call
and one process-wide random generator, so what a request samples depends on what else ran
before and beside it. A request with a ``seed`` is made reproducible here instead:

- The seeded row's token is chosen by the Gumbel-max trick: ``argmax(scores + G)``, where
  ``scores`` are the logits after temperature, top-k and top-p (this processor runs last) and
  ``G`` is Gumbel noise. That draws exactly from ``softmax(scores)``, the distribution the
  manager would sample from.
- The noise is not drawn from a generator: it is a hash of (seed, position of the token in the
  sequence, token id). The same request therefore gets the same noise at every step whatever the
  batch holds, whichever thread or device runs it, and with no state to keep or clean up per
  request. The position comes from transformers' ``position_offset``, which is already advanced
  to the sampled token's position when the batch's processor arguments are prepared.
- The row's scores are then replaced by a one-hot (0 for the chosen token, -inf elsewhere), so
  the manager's multinomial can only pick that token.

Rows without a seed are left untouched. Everything is tensor arithmetic with no branch on
tensor values on a GPU (CUDA-graph capturable); on a CPU the processor returns early when no row
in the batch is seeded. Every intermediate integer stays below 2**63: int64 never overflows.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

NO_SEED = -1
_MASK32 = 0xFFFF_FFFF
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
# A 32-bit integer hash (xor-shift-multiply, two rounds): odd multiplier under 2**31, so a
# product of it and a 32-bit value fits int64.
_MIX_MULTIPLIER = 0x045D_9F3B


def step_seed(seed: int, position: int) -> int:
    """A 31-bit seed for the token at ``position`` of a request seeded with ``seed``.

    splitmix64's finalizer over both (``seed`` is a uint64 on the wire); 31 bits so it
    travels in transformers' int32 argument tensor and stays non-negative (negative = no seed).
    """
    z = (seed * 0x9E37_79B9_7F4A_7C15 + position * 0xBF58_476D_1CE4_E5B9 + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58_476D_1CE4_E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D0_49BB_1331_11EB) & _MASK64
    return (z ^ (z >> 31)) & 0x7FFF_FFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """Hash int64 values in [0, 2**32) to [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _MIX_MULTIPLIER) & _MASK32
    x = x ^ (x >> 16)
    x = (x * _MIX_MULTIPLIER) & _MASK32
    return x ^ (x >> 16)


def gumbel_noise(row_seeds: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Standard Gumbel noise of shape [rows, vocab_size], a pure function of each row's seed
    (an integer tensor of non-negative 31-bit seeds) and the token id."""
    tokens = _mix32(torch.arange(vocab_size, dtype=torch.int64, device=row_seeds.device))
    keys = tokens.unsqueeze(0) ^ row_seeds.to(torch.int64).unsqueeze(-1)
    # The top 24 bits as a float32 strictly inside (0, 1): log(u) and log(-log(u)) stay finite.
    uniform = ((_mix32(keys) >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
    return -torch.log(-torch.log(uniform))


def apply_seeded_choice(scores: torch.Tensor, row_seeds: torch.Tensor) -> torch.Tensor:
    """``scores`` [rows, vocab] with each seeded row (seed >= 0) made one-hot on its Gumbel-max
    token; rows with a negative seed are returned unchanged."""
    seeded = row_seeds >= 0
    noise = gumbel_noise(row_seeds.clamp(min=0), scores.size(-1))
    # Filtered tokens are -inf in scores and stay -inf with the noise added: never chosen.
    choice = torch.argmax(scores + noise, dim=-1, keepdim=True)
    tokens = torch.arange(scores.size(-1), device=scores.device).unsqueeze(0)
    one_hot = torch.where(tokens == choice, 0.0, float("-inf")).to(scores.dtype)
    return torch.where(seeded.unsqueeze(-1), one_hot, scores)


def seeded_processor_class(base: type[Any]) -> type[Any]:
    """The processor class, derived from transformers' ``ContinuousBatchingLogitsProcessor``
    (passed in, so this module never imports transformers itself)."""

    class SeededSampling(base):  # type: ignore[misc]  # base is only known at runtime
        """Reads the request's ``seed`` kwarg; see the module docstring."""

        supported_kwargs: ClassVar[dict[str, type]] = {"seed": int}
        ignored_kwargs: tuple[str, ...] = ()

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(NO_SEED)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            seeds = []
            for request in requests_with_new_token:
                state = request.state
                seed = state.logit_processor_kwargs.get("seed")
                seeds.append(NO_SEED if seed is None else step_seed(int(seed), int(state.position_offset)))
            return torch.tensor(seeds, dtype=torch.int32, device="cpu")

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            row_seeds = tensor_arg[: scores.size(0)]
            # A data-dependent branch only where no CUDA graph can be capturing this code.
            if scores.device.type == "cpu" and not bool((row_seeds >= 0).any()):
                return scores
            return apply_seeded_choice(scores, row_seeds)

    return SeededSampling


def install(processors: Any, processor_base: type[Any]) -> bool:
    """Append seeded sampling to a manager's ``ContinuousBatchingLogitsProcessorList`` before the
    manager starts (its argument tensors are sized when the batch processor is built). False,
    changing nothing, when the list does not have the shape this code was written against
    (transformers 5.2x): the engine then reports ``seed`` as not honoured.
    """
    wanted = ("logits_processor", "tensors_required", "supported_keys", "do_processing")
    if not all(hasattr(processors, name) for name in wanted):
        return False
    if not isinstance(processors.supported_keys, dict):
        return False
    sampler = seeded_processor_class(processor_base)()
    processors.logits_processor.append(sampler)  # last: after temperature, top-k and top-p
    processors.tensors_required += 1
    processors.supported_keys.update(sampler.supported_kwargs)
    processors.do_processing = True
    return True
