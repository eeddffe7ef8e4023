"""Random walks through a compiled grammar with a character-level vocabulary: answers the grammar
allows, drawn without a model, to check what the parser and validator make of them."""

from __future__ import annotations

import random
import string

import xgrammar as xgr

STOP = "</s>"
# Single characters (every printable ASCII one, newline, a few non-ASCII) plus a few longer pieces,
# so walks through markers and names do not take a step per character.
PIECES = ["<<<api_call>>>: ", "<<<domain>>>: ", "<<<api_provider>>>:", "<<function>>", "<tool_call>[", "]</tool_call>"]
VOCAB = [STOP, *string.printable[:95], "\n", "é", "日", "🙂", *PIECES]
STOP_ID = 0


def char_compiler() -> xgr.GrammarCompiler:
    info = xgr.TokenizerInfo(VOCAB, xgr.VocabType.RAW, vocab_size=len(VOCAB), stop_token_ids=[STOP_ID])
    return xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)


def walk(compiled: xgr.CompiledGrammar, rng: random.Random, *, p_stop: float = 0.3, max_steps: int = 4000) -> str:
    """One answer the grammar accepts: uniformly random allowed tokens, stopping with ``p_stop``
    whenever stopping is allowed. Raises AssertionError if the grammar dead-ends."""
    matcher = xgr.GrammarMatcher(compiled)
    bitmask = xgr.allocate_token_bitmask(1, len(VOCAB))
    out: list[str] = []
    for _ in range(max_steps):
        matcher.fill_next_token_bitmask(bitmask)
        words = bitmask[0].tolist()
        allowed = [t for t in range(len(VOCAB)) if (words[t // 32] >> (t % 32)) & 1]
        assert allowed, f"grammar dead end after {''.join(out)!r}"
        if STOP_ID in allowed and (len(allowed) == 1 or rng.random() < p_stop):
            assert matcher.accept_token(STOP_ID)
            return "".join(out)
        token = rng.choice([t for t in allowed if t != STOP_ID])
        assert matcher.accept_token(token)
        out.append(VOCAB[token])
    raise AssertionError(f"no end after {max_steps} steps: {''.join(out)[:200]!r}")
