"""The streaming repetition filter (service/repetition.py): duplicates never reach the client,
and what was streamed is exactly the final text."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from apihelper.service.answers.repetition import RepetitionFilter
from tests.support import budget

LOOPING = (
    "<<<domain>>>: Natural Language Processing Text Generation\n"
    "<<<api_call>>>: pipeline('text-generation', model='gpt2')\n"
    "<<<code>>>: from transformers import pipeline\n"
    "generator = pipeline('text-generation', model='gpt2')\n"
    "generator = pipeline('text-generation', model='gpt2')\n"
    "generator = pipeline('text-generation', model='gpt2')\n"
    "print(generator('Hello'))\n"
)
CLEAN = (
    "<<<domain>>>: Natural Language Processing Text Generation\n"
    "<<<api_call>>>: pipeline('text-generation', model='gpt2')\n"
    "<<<code>>>: from transformers import pipeline\n"
    "generator = pipeline('text-generation', model='gpt2')\n"
    "print(generator('Hello'))\n"
)


def run(
    chunks: Iterable[str], *, enabled: bool = True, stop_after: int | None = None
) -> tuple[list[str], RepetitionFilter]:
    f = RepetitionFilter(enabled, stop_after=stop_after)
    out = [f.feed(c) for c in chunks]
    out.append(f.flush())
    return out, f


def chunked(text: str, rng: random.Random) -> list[str]:
    pieces, i = [], 0
    while i < len(text):
        n = rng.randint(1, 7)
        pieces.append(text[i : i + n])
        i += n
    return pieces


def test_a_line_repeated_three_times_reaches_the_client_once() -> None:
    rng = random.Random(3)
    for chunks in ([LOOPING], list(LOOPING), chunked(LOOPING, rng), chunked(LOOPING, rng)):
        out, f = run(chunks)
        streamed = "".join(out)
        assert streamed == CLEAN
        assert streamed == f.text  # the deltas concatenate to exactly the final text
        assert streamed.count("generator = pipeline('text-generation', model='gpt2')") == 1
        assert f.suppressed_lines == 2


def test_text_is_not_held_back_beyond_the_current_line() -> None:
    f = RepetitionFilter()
    assert f.feed("import torch and more\n") == "import torch and more\n"
    # A new line that starts like an earlier one is held while it might be a duplicate...
    assert f.feed("import tor") == ""
    # ...and released as soon as it differs from every earlier line.
    assert f.feed("chvision") == "import torchvision"
    assert f.feed(" as tv\n") == " as tv\n"
    # A line that starts like no earlier line streams straight through.
    assert f.feed("model = ") == "model = "


def test_short_and_blank_lines_may_repeat() -> None:
    text = "def a():\n    x = compute_value()\n    return x\n\n}\n}\n```\n```\n\n    return x\n"
    out, f = run(list(text))
    # "    return x" (8 non-blank chars) counts; "}" , "```" and blank lines never do.
    assert "".join(out) == "def a():\n    x = compute_value()\n    return x\n\n}\n}\n```\n```\n\n"
    assert f.suppressed_lines == 1


def test_end_of_stream_duplicate_and_truncated_repeat_are_dropped() -> None:
    out, f = run(["the same long line\n", "the same long line"])
    assert "".join(out) == f.text == "the same long line\n"
    # Cut off by max_tokens in the middle of another repeat.
    out, f = run(["the same long line\n", "the same lo"])
    assert "".join(out) == f.text == "the same long line\n"
    # A short unfinished last line is kept.
    out, f = run(["the same long line\n", "the"])
    assert "".join(out) == "the same long line\nthe"


def test_disabled_filter_passes_everything_through() -> None:
    out, f = run(list(LOOPING), enabled=False)
    assert "".join(out) == f.text == LOOPING
    assert f.suppressed_lines == 0


def test_stop_after_signals_a_looping_generation() -> None:
    f = RepetitionFilter(stop_after=3)
    for _ in range(3):
        f.feed("loop line again and again\n")
    assert not f.should_stop
    f.feed("loop line again and again\n")
    assert f.should_stop and f.suppressed_lines == 3


def test_random_streams_concatenate_to_the_final_text_and_lose_only_duplicates() -> None:
    rng = random.Random(11)
    lines = [
        "alpha beta gamma",
        "alpha beta delta",
        "x = load_model('a')",
        "x = load_model('ab')",
        "",
        "  ",
        "}",
        "print(result)",
    ]
    for _ in range(300):
        text = "\n".join(rng.choice(lines) for _ in range(rng.randint(0, 12)))
        out, f = run(chunked(text, rng))
        streamed = "".join(out)
        assert streamed == f.text
        # Reference: drop exact repeats of eligible lines (and a trailing unfinished repeat/prefix).
        seen: set[str] = set()
        kept: list[str] = []
        parts = text.split("\n")
        for i, line in enumerate(parts):
            last = i == len(parts) - 1
            eligible = len(line.strip()) >= 8
            if eligible and (line in seen or (last and any(s.startswith(line) for s in seen))):
                continue
            if eligible:
                seen.add(line)
            kept.append(line + ("" if last else "\n"))
        assert streamed == "".join(kept), (text, streamed)


def test_linear_time_on_long_streams() -> None:
    rng = random.Random(5)
    text = "".join(f"line number {rng.randint(0, 2000)} with some words\n" for _ in range(20_000))
    start = time.perf_counter()
    out, f = run(chunked(text, rng))
    assert time.perf_counter() - start < budget(5)
    assert "".join(out) == f.text
    assert len(set(f.text.splitlines())) == len(f.text.splitlines())


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["ab", "abc", "x", "abcdefgh1", "abcdefgh2", "\n", "\n\n", " "]), max_size=40),
    st.randoms(use_true_random=False),
)
def test_how_the_text_is_chunked_never_changes_what_is_shown(parts: list[str], rng: random.Random) -> None:
    text = "".join(parts)
    by_char, _ = run(list(text))
    by_chunk, filt = run(chunked(text, rng))
    assert "".join(by_chunk) == "".join(by_char) == filt.text
