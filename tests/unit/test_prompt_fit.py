"""The prompt fit (``apihelper.service.prompt_fit``): the docs kept are the longest prefix that
fits, found with each doc tokenized once, whatever the formats and the docs' sizes."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from apihelper.errors import InvalidRequestError
from apihelper.retriever.types import ApiDoc, RetrievedDoc
from apihelper.service.engine.fake import FakeEngine
from apihelper.service.prompt_fit import PromptFitter, prompt_text
from apihelper.service.prompts import PromptFormat, build_prompt


def _doc(i: int, words: int) -> RetrievedDoc:
    text = " ".join(f"d{i}w{j}" for j in range(words))
    metadata = {
        "kind": "function_schema",
        "name": f"f{i}",
        "schema_format": "openai",
        "summary": text,
        "function": {"name": f"f{i}", "description": text, "parameters": {"type": "object", "properties": {}}},
    }
    return RetrievedDoc(ApiDoc(key=f"f{i}", title=f"f{i}", text=text, index_text="", metadata=metadata), "c", 1.0)


def _exact(engine: FakeEngine, fmt: PromptFormat, instruction: str, docs: list[RetrievedDoc], budget: int) -> int:
    """The longest prefix that fits, the slow way (every prefix rendered and counted)."""
    best = 0
    for k in range(len(docs) + 1):
        if engine.count_tokens(prompt_text(engine, build_prompt(fmt, instruction, docs[:k]))) <= budget:
            best = k
    return best


@settings(max_examples=60, deadline=None)
@given(
    fmt=st.sampled_from(list(PromptFormat)),
    sizes=st.lists(st.integers(min_value=0, max_value=300), max_size=12),
    max_tokens=st.integers(min_value=1, max_value=900),
    instruction=st.text(alphabet="abc xyz", max_size=200),
)
# Found by Hypothesis: the fourth doc costs a token less after the others than alone, so the
# arithmetic's estimate said it would not fit where it does.
@example(fmt=PromptFormat.OPENFUNCTIONS_V2, sizes=[0, 0, 0, 39], max_tokens=900, instruction="a a")
def test_the_kept_docs_are_the_longest_prefix_that_fits(
    fmt: PromptFormat, sizes: list[int], max_tokens: int, instruction: str
) -> None:
    engine = FakeEngine(max_model_len=1024)
    fitter = PromptFitter(engine)
    try:
        docs = [_doc(i, n) for i, n in enumerate(sizes)]
        kept, prompt = fitter.fit_now(fmt, instruction, docs, max_tokens)
        assert kept == docs[: len(kept)]
        assert prompt == prompt_text(engine, build_prompt(fmt, instruction, kept))
        assert engine.count_tokens(prompt) <= 1024 - max_tokens or not kept
        assert len(kept) == _exact(engine, fmt, instruction, docs, 1024 - max_tokens)
    finally:
        fitter.close()


def test_an_instruction_that_leaves_no_room_is_a_bad_request() -> None:
    engine = FakeEngine(max_model_len=64)
    fitter = PromptFitter(engine)
    try:
        with pytest.raises(InvalidRequestError) as info:
            fitter.fit_now(PromptFormat.GORILLA_V0, "word " * 100, [_doc(0, 3)], 16)
        assert info.value.field == "sampling.max_tokens"
    finally:
        fitter.close()


@settings(max_examples=80, deadline=None)
@given(
    texts=st.lists(st.text(alphabet="ab cd\n.", max_size=400), max_size=8),
    budget=st.integers(min_value=0, max_value=300),
)
def test_trimmed_texts_are_prefixes_whose_counts_fit_the_budget(texts: list[str], budget: int) -> None:
    engine = FakeEngine()
    fitter = PromptFitter(engine)
    try:
        cut = fitter.trim_now(texts, budget)
    finally:
        fitter.close()
    assert len(cut) == len(texts)
    for text, (kept, tokens) in zip(texts, cut, strict=True):
        assert text.startswith(kept)
        assert tokens == (engine.count_tokens(kept) if kept else 0)
    assert sum(tokens for _, tokens in cut) <= budget
    if sum(engine.count_tokens(t) for t in texts if t) <= budget:
        assert [kept for kept, _ in cut] == texts  # everything fits: nothing is cut


def test_every_text_shows_its_head_before_one_takes_the_rest() -> None:
    engine = FakeEngine()
    fitter = PromptFitter(engine)
    long = " ".join(f"w{i}" for i in range(500))
    try:
        cut = fitter.trim_now([long, long, "short one"], 90)
    finally:
        fitter.close()
    assert all(kept for kept, _ in cut)
    assert cut[2][0] == "short one"
    assert cut[0][1] > cut[1][1] >= 90 // 3 - 1  # what the short text left went to the first
