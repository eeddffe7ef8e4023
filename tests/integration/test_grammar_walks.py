"""Whatever a call grammar allows, the parser reads and the verdict calls valid: random walks
through grammars built from real corpora (the sample spec; Backend.AI's spec and client and the
HuggingFace APIBench records where ../shared is present), in every format, without a model."""

from __future__ import annotations

import random

import pytest

from apihelper.retriever.loaders import load_corpus
from apihelper.retriever.samples import sample_corpus_path
from apihelper.retriever.types import ApiDoc, RetrievedDoc
from apihelper.service.answers.allowed_calls import allowed_calls
from apihelper.service.answers.check import ApiCatalog, CheckedAnswer, Verdict, check_answer
from apihelper.service.answers.grammar import GrammarOptions, NoAllowedCallsError, build_call_grammar
from apihelper.service.answers.parse import parse_answer
from apihelper.service.prompts import PromptFormat
from tests.support import SHARED_CORPORA
from tests.unit.grammar_walk import char_compiler, walk

SHARED = SHARED_CORPORA
CORPUS_FILES = {
    "sample-openapi": None,
    "backendai-openapi": SHARED / "backend.ai" / "openapi.json",
    "backendai-client": SHARED / "backend.ai" / "backend.ai_client-24.3.0-py3-none-any.whl",
    "apibench-hf": SHARED / "apibench" / "huggingface_api.jsonl",
}
_LOADED: dict[str, list[ApiDoc]] = {}


def corpus_docs(name: str) -> list[ApiDoc]:
    """The docs of one of CORPUS_FILES, loaded once; skip where ../shared is absent."""
    if name not in _LOADED:
        path = CORPUS_FILES[name]
        if path is None:
            path = sample_corpus_path()
        elif not path.exists():
            pytest.skip(f"{path} is absent: this test needs the third-party corpora in ../shared/corpora")
        _LOADED[name] = load_corpus(path, include=["ai.backend.client.func"] if path.suffix == ".whl" else None)[1].docs
    return _LOADED[name]


def _corpora() -> dict[str, list[ApiDoc]]:
    found = {"sample-openapi": load_corpus(sample_corpus_path())[1].docs}
    optional = {
        "backendai-openapi": SHARED / "backend.ai" / "openapi.json",
        "backendai-client": SHARED / "backend.ai" / "backend.ai_client-24.3.0-py3-none-any.whl",
        "apibench-hf": SHARED / "apibench" / "huggingface_api.jsonl",
    }
    for name, path in optional.items():
        if path.exists():
            found[name] = load_corpus(path, include=["ai.backend.client.func"] if path.suffix == ".whl" else None)[
                1
            ].docs
    return found


CORPORA = _corpora()


# What the grammar leaves to the verdict: a string's pattern and format, a number's bounds, a
# length. The grammar fixes the API, the argument names, the types (nested objects and array items
# by their own schemas, required fields included) and the enums; these rules it does not encode.
VALUE_RULES = (
    "does not match the pattern",
    "is not a '",
    "less than the minimum",
    "greater than the maximum",
    "less than or equal to the minimum",
    "greater than or equal to the maximum",
    "is too long",
    "is too short",
    "is not a multiple of",
    "non-unique elements",
)


def _beyond_the_grammar(checked: CheckedAnswer) -> bool:
    """Wrong arguments only by rules the grammar does not encode (VALUE_RULES)."""
    return checked.verdict is Verdict.WRONG_ARGUMENTS and all(
        any(rule in reason for rule in VALUE_RULES) for reason in checked.reasons
    )


@pytest.mark.parametrize("fmt", [PromptFormat.GORILLA_V0, PromptFormat.OPENFUNCTIONS_V2])
@pytest.mark.parametrize("corpus_name", sorted(CORPUS_FILES))
def test_every_allowed_answer_is_a_valid_call(fmt: PromptFormat, corpus_name: str) -> None:
    """Random walks through the grammar of 12 docs at a time: the answers parse, and the validator
    calls every one of them valid (never unknown_api, never wrong_arguments)."""
    docs = corpus_docs(corpus_name)
    rng = random.Random(f"{fmt.value}/{corpus_name}")
    compiler = char_compiler()
    corpus = ApiCatalog(docs).prepare()
    verdicts: dict[Verdict, list[str]] = {}
    for _ in range(4):
        chosen = rng.sample(docs, min(12, len(docs)))
        calls = allowed_calls(fmt, chosen)
        try:
            built = build_call_grammar(fmt, calls, GrammarOptions(max_string_chars=12, max_prose_chars=20))
        except NoAllowedCallsError:
            continue
        compiled = compiler.compile_grammar(built.ebnf)
        retrieved = [RetrievedDoc(d, corpus_name, 1.0) for d in chosen]
        for _ in range(25):
            answer = walk(compiled, rng)
            parsed = parse_answer(fmt, answer)
            assert parsed.calls and parsed.calls[0].name, answer
            checked = check_answer(fmt, answer, retrieved, corpus)
            if _beyond_the_grammar(checked):
                continue
            verdicts.setdefault(checked.verdict, []).append(f"{answer!r}: {checked.reasons}")
    assert verdicts, "no grammar was built"
    bad = {v: examples[:3] for v, examples in verdicts.items() if v is not Verdict.VALID}
    assert not bad, bad


@pytest.mark.parametrize("corpus_name", sorted(CORPUS_FILES))
def test_every_allowed_tool_call_is_valid(corpus_name: str) -> None:
    """chat_tools walks: JSON that names an allowed tool, with arguments the validator accepts,
    read back by the chat_tools parser."""
    docs = corpus_docs(corpus_name)
    rng = random.Random(f"chat_tools/{corpus_name}")
    compiler = char_compiler()
    corpus = ApiCatalog(docs).prepare()
    bad: list[str] = []
    for _ in range(3):
        chosen = rng.sample(docs, min(12, len(docs)))
        built = build_call_grammar(
            PromptFormat.CHAT_TOOLS,
            allowed_calls(PromptFormat.CHAT_TOOLS, chosen),
            GrammarOptions(max_string_chars=12, max_prose_chars=20),
        )
        compiled = compiler.compile_grammar(built.ebnf)
        retrieved = [RetrievedDoc(d, corpus_name, 1.0) for d in chosen]
        for _ in range(20):
            answer = walk(compiled, rng)
            checked = check_answer(PromptFormat.CHAT_TOOLS, answer, retrieved, corpus)
            if checked.verdict is not Verdict.VALID and not _beyond_the_grammar(checked):
                bad.append(f"{answer!r} -> {checked.verdict.value}: {checked.reasons}")
    assert not bad, bad[:3]
