"""Fitting retrieved docs (or a caller's tools) into the model's context: linear, off the loop.

The prompt keeps as many docs, best first, as fit beside ``max_tokens``. Re-rendering and
re-tokenizing the whole prompt once per dropped doc is quadratic in the request (1 MB of tools
froze the event loop for tens of seconds); here the work is bounded by the context, not by the
request:

1. each doc's tokens are counted once, alone (cached by the doc's content, so a corpus doc is
   counted once for every request that retrieves it), and only while the running total still
   fits: docs past the first that overflows are never tokenized, and a doc whose text is longer
   than :data:`MAX_CHARS_PER_TOKEN` times the room left cannot fit and is not tokenized at all;
2. the prefix that fits is found by arithmetic (the prompt without docs, plus what the docs'
   shared lead costs once, plus each doc's own tokens);
3. the prompt is rendered and counted once to confirm; only where tokens merge across a doc's
   boundary otherwise than alone is the count repeated, one doc at a time from a prompt that is
   already about the context's size: a doc dropped while the estimate was short, the next doc
   taken while the prompt with it still fits.

All tokenizer work runs in one worker thread (:meth:`PromptFitter.fit` awaits it), so the event
loop, and every other request over every front end, carries on meanwhile; the single worker keeps
the tokenizer's calls in order and the cache free of locks.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from apihelper.errors import InvalidRequestError
from apihelper.retriever.types import RetrievedDoc
from apihelper.service.engine.protocol import Engine
from apihelper.service.prompts import Prompt, PromptFormat, build_prompt

# No tokenizer we serve has tokens longer than this many characters on average over a text; a
# doc longer than this times the tokens left cannot fit, whatever it holds.
MAX_CHARS_PER_TOKEN = 64
# Docs whose token counts are kept (an LRU): a few corpora's worth of hot docs.
CACHE_ENTRIES = 16384


def prompt_text(engine: Engine, prompt: Prompt) -> str:
    """The text the engine is given: a completion prompt as it is, a conversation written with the
    model's chat template."""
    return prompt if isinstance(prompt, str) else engine.render_chat(prompt)


class PromptFitter:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._counts: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apihelper-prompt-fit")

    async def fit(
        self, fmt: PromptFormat, instruction: str, docs: Sequence[RetrievedDoc], max_tokens: int
    ) -> tuple[list[RetrievedDoc], str]:
        """The docs kept (a prefix of ``docs``) and the prompt's text, computed in the worker."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self.fit_now, fmt, instruction, list(docs), max_tokens)

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    async def trim(self, texts: Sequence[str], budget: int) -> list[tuple[str, int]]:
        """``texts`` cut to ``budget`` tokens in all, each with its count (the counts add up to at
        most ``budget``): each gets an equal share first, so every text shows its head, then what
        the short ones left goes to the cut ones in order. For doc text handed to a caller by
        token budget (the MCP ``search_apis``); in the worker."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self.trim_now, list(texts), budget)

    def trim_now(self, texts: list[str], budget: int) -> list[tuple[str, int]]:
        """:meth:`trim`'s work, in the calling thread (the worker's)."""
        shares = [self._cut(text, budget // max(1, len(texts))) for text in texts]
        left = budget - sum(tokens for _, tokens in shares)
        out = []
        for text, (kept, tokens) in zip(texts, shares, strict=True):
            if left > 0 and len(kept) < len(text):
                longer, more = self._cut(text, tokens + left)
                if more >= tokens:
                    kept, left, tokens = longer, left - (more - tokens), more
            out.append((kept, tokens))
        return out

    def _cut(self, text: str, budget: int) -> tuple[str, int]:
        """The longest prefix of ``text`` whose tokens fit in ``budget``, and its count: the whole
        text when it fits, else a binary search over prefix lengths (a prefix never needs fewer
        tokens than one it extends, give or take a merge at the cut: each probe is counted)."""
        if budget <= 0 or not text:
            return "", 0
        high = min(len(text), (budget + 1) * MAX_CHARS_PER_TOKEN)  # longer cannot fit
        if high == len(text):
            whole = self._tokens(text)
            if whole <= budget:
                return text, whole
        best: tuple[str, int] = ("", 0)
        low = 1
        while low <= high:
            middle = (low + high) // 2
            count = self._tokens(text[:middle])
            if count <= budget:
                best, low = (text[:middle], count), middle + 1
            else:
                high = middle - 1
        return best

    def fit_now(
        self, fmt: PromptFormat, instruction: str, docs: list[RetrievedDoc], max_tokens: int
    ) -> tuple[list[RetrievedDoc], str]:
        """:meth:`fit`'s work, in the calling thread (the worker's)."""
        budget = self._engine.info.max_model_len - max_tokens
        base = self._tokens(self._render(fmt, instruction, []))
        if base > budget:
            raise InvalidRequestError(
                "sampling.max_tokens",
                f"the instruction plus max_tokens={max_tokens} exceeds the model's "
                f"context of {self._engine.info.max_model_len} tokens",
            )
        kept = self._prefix_by_arithmetic(fmt, docs, budget - base)
        prompt = self._render(fmt, instruction, kept)
        used = self._tokens(prompt)
        if used > budget:  # tokens merged less across a boundary than alone: drop from the end
            while kept and used > budget:
                kept.pop()
                prompt = self._render(fmt, instruction, kept)
                used = self._tokens(prompt)
            return kept, prompt
        # ... or more (a separator that shares a token with its neighbour): take the next docs
        # while the whole prompt still fits.
        while len(kept) < len(docs) and len(docs[len(kept)].doc.text) <= (budget - used + 1) * MAX_CHARS_PER_TOKEN:
            longer = self._render(fmt, instruction, [*kept, docs[len(kept)]])
            count = self._tokens(longer)
            if count > budget:
                break
            kept, prompt, used = [*kept, docs[len(kept)]], longer, count
        return kept, prompt

    def _prefix_by_arithmetic(self, fmt: PromptFormat, docs: list[RetrievedDoc], room: int) -> list[RetrievedDoc]:
        """The longest prefix of ``docs`` whose estimated tokens fit in ``room``."""
        if not docs or room <= 0:
            return []
        empty = self._tokens(self._render(fmt, "", []))
        first = self._doc_tokens(fmt, docs[0], empty)  # the shared lead plus the first doc
        if first > room:
            return []
        # What the lead costs once: one doc alone costs lead + doc, two copies lead + 2 docs.
        twice = self._tokens(self._render(fmt, "", [docs[0], docs[0]])) - empty
        lead = max(0, 2 * first - twice)
        used, kept = lead, []
        for doc in docs:
            if len(doc.doc.text) > (room - used + 1) * MAX_CHARS_PER_TOKEN:
                break  # cannot fit: not worth tokenizing
            used += self._doc_tokens(fmt, doc, empty) - lead
            if used > room:
                break
            kept.append(doc)
        return kept

    def _doc_tokens(self, fmt: PromptFormat, doc: RetrievedDoc, empty: int) -> int:
        """What ``doc`` adds to a prompt without docs (its lead included), counted once."""
        key = (fmt.value, _doc_digest(doc))
        count = self._counts.get(key)
        if count is None:
            count = self._tokens(self._render(fmt, "", [doc])) - empty
            self._counts[key] = count
            if len(self._counts) > CACHE_ENTRIES:
                self._counts.popitem(last=False)
        else:
            self._counts.move_to_end(key)
        return count

    def _render(self, fmt: PromptFormat, instruction: str, docs: Sequence[RetrievedDoc]) -> str:
        return prompt_text(self._engine, build_prompt(fmt, instruction, docs))

    def _tokens(self, text: str) -> int:
        return self._engine.count_tokens(text)


def _doc_digest(doc: RetrievedDoc) -> str:
    """What a doc's rendering depends on: its key, its text and its metadata (a tool's schema)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(doc.doc.key.encode("utf-8", "surrogatepass"))
    h.update(b"\0")
    h.update(doc.doc.text.encode("utf-8", "surrogatepass"))
    h.update(b"\0")
    h.update(repr(sorted(doc.doc.metadata.items(), key=lambda kv: kv[0])).encode("utf-8", "surrogatepass"))
    return h.hexdigest()
