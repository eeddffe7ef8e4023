"""The call grammar of a request: under ``constrain_calls`` an answer may only call real APIs.

:class:`CallConstraints` turns the docs an answer may call into the engine's
:class:`~apihelper.service.engine.protocol.GuidedDecoding`: the retrieved docs first, then, for
``gorilla_v0`` (whose answers name any API of the corpus), every doc of the sources' corpora
(the validation catalog, one grammar per corpus version); the function formats list their
functions in the prompt, so there the retrieved docs are the calls. Grammars are built in a worker
thread (a corpus-wide grammar is up to hundreds of KB of EBNF) and cached by what they were built
from; the engine caches what it compiles by the grammar's key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import weakref
from collections import OrderedDict
from collections.abc import Sequence

from apihelper.retriever.types import ApiDoc, RetrievedDoc
from apihelper.service.answers.allowed_calls import allowed_calls
from apihelper.service.answers.check import ApiCatalog
from apihelper.service.answers.grammar import GrammarOptions, NoAllowedCallsError, build_call_grammar
from apihelper.service.answers.grounding import question_spans
from apihelper.service.engine.protocol import GuidedDecoding
from apihelper.service.prompts import PromptFormat

# Grammars of retrieved doc sets kept (corpus-wide ones live as long as their catalog).
MAX_CACHED_GRAMMARS = 64

_Key = tuple[PromptFormat, tuple[tuple[str, str, str], ...], str]


class CallConstraints:
    """Builds and caches the call grammars of requests; see the module docstring."""

    def __init__(self, *, max_entries: int = MAX_CACHED_GRAMMARS, base_urls: Sequence[str] = ()) -> None:
        """``base_urls``: where REST calls go when their spec names no server (api_base_urls)."""
        self._max_entries = max_entries
        self._base_urls = tuple(base_urls)
        self._by_docs: OrderedDict[_Key, GuidedDecoding | None] = OrderedDict()
        # A catalog is one version of the sources' corpora: its grammar goes when it does.
        self._by_catalog: weakref.WeakKeyDictionary[ApiCatalog, GuidedDecoding | None] = weakref.WeakKeyDictionary()

    async def grammar(
        self, fmt: PromptFormat, docs: Sequence[RetrievedDoc], catalog: ApiCatalog | None, question: str = ""
    ) -> GuidedDecoding | None:
        """The grammar for an answer in ``fmt`` to a prompt with ``docs``, or None when none of
        them can be called (text docs only, say). ``catalog``: every doc of the docs' corpora.
        ``question``: the instruction; when given, the arguments are grounded in it (string
        values copied from it, optional parameters only where it mentions them: see
        ``grounding``), except in a corpus-wide gorilla_v0 grammar (one per corpus version)."""
        if fmt is PromptFormat.GORILLA_V0 and catalog is not None:
            # The catalog holds the retrieved docs too: one grammar per corpus version.
            if catalog not in self._by_catalog:
                self._by_catalog[catalog] = await asyncio.to_thread(_build, fmt, catalog.docs(), self._base_urls)
            return self._by_catalog[catalog]
        key: _Key = (fmt, tuple((d.corpus, d.doc.key, d.doc.content_hash) for d in docs), question)
        if key in self._by_docs:
            self._by_docs.move_to_end(key)
            return self._by_docs[key]
        grammar = await asyncio.to_thread(_build, fmt, [d.doc for d in docs], self._base_urls, question)
        self._by_docs[key] = grammar
        while len(self._by_docs) > self._max_entries:
            self._by_docs.popitem(last=False)
        return grammar


# chat_tools answers are the call and nothing else, as the models' function-calling data has
# them: no prose first (a small model otherwise spends its tokens explaining), and one call (left
# free, SmolLM2 adds unasked ones; parallel calls are not constrained).
_OPTIONS = {PromptFormat.CHAT_TOOLS: GrammarOptions(max_prose_chars=0, max_calls=1)}


def _build(
    fmt: PromptFormat, docs: Sequence[ApiDoc], base_urls: tuple[str, ...] = (), question: str = ""
) -> GuidedDecoding | None:
    options = dataclasses.replace(_OPTIONS.get(fmt) or GrammarOptions(), base_urls=base_urls)
    if question:
        options = dataclasses.replace(options, grounded=question_spans(question, options.max_string_chars))
    try:
        grammar = build_call_grammar(fmt, allowed_calls(fmt, docs, question), options)
    except NoAllowedCallsError:
        return None
    return GuidedDecoding(grammar.ebnf, grammar.key)
