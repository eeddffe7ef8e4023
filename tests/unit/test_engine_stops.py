"""Incremental detokenization: split UTF-8 characters, held-back stop-string prefixes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from apihelper.service.engine.stops import IncrementalText, StopStringMatcher


def byte_decode(ids: Sequence[int]) -> str:
    """A byte-level 'tokenizer': each id is one UTF-8 byte."""
    return bytes(ids).decode("utf-8", errors="replace")


def feed(text: IncrementalText, data: bytes, *, final: bool = True) -> tuple[list[str], bool]:
    """Feed ``data`` one byte-token at a time; the deltas and whether a stop string ended it."""
    deltas: list[str] = []
    ids = list(data)
    for n in range(1, len(ids) + 1):
        delta, stopped = text.update(ids[:n], final=final and n == len(ids))
        deltas.append(delta)
        if stopped:
            return deltas, True
    return deltas, False


def test_split_utf8_characters_are_emitted_whole() -> None:
    source = "naïve 日本語 🙂!"
    text = IncrementalText(byte_decode)
    deltas, stopped = feed(text, source.encode())
    assert not stopped
    assert "".join(deltas) == source == text.text
    assert all("\ufffd" not in d for d in deltas)
    assert "🙂" in deltas  # the 4-byte emoji arrives as one delta, once complete


def test_a_dangling_byte_is_emitted_at_the_end() -> None:
    text = IncrementalText(byte_decode)
    deltas, _ = feed(text, b"ok\xe6\x97")  # half a character, then the generation ends
    assert "".join(deltas) == "ok\ufffd"


def test_an_invalid_byte_mid_text_does_not_block_the_stream() -> None:
    text = IncrementalText(byte_decode)
    deltas, _ = feed(text, b"a\xffbc", final=False)
    assert "".join(deltas) == "a\ufffdbc"


def test_stop_string_is_cut_and_never_emitted() -> None:
    text = IncrementalText(byte_decode, ["<<<end>>>"])
    deltas, stopped = feed(text, b"call(x=1) <<<end>>> more")
    assert stopped
    assert "".join(deltas) == "call(x=1) "
    assert all("<" not in d for d in deltas)


def test_earliest_of_several_stop_strings_wins() -> None:
    text = IncrementalText(byte_decode, ["\n\n", "END", "ab"])
    deltas, stopped = feed(text, b"xxENDab\n\n")
    assert stopped and "".join(deltas) == "xx"


def test_held_back_prefix_is_released_when_it_is_not_a_stop() -> None:
    text = IncrementalText(byte_decode, ["<stop>"])
    deltas, stopped = feed(text, b"a <sto> b", final=False)
    assert not stopped
    assert "".join(deltas) == "a <sto> b"
    # While "<sto" could still become "<stop>", nothing of it was emitted.
    assert deltas[2:6] == ["", "", "", ""]


def test_held_back_prefix_is_flushed_at_the_end() -> None:
    text = IncrementalText(byte_decode, ["<stop>"])
    deltas, stopped = feed(text, b"done <st")
    assert not stopped
    assert "".join(deltas) == "done <st"


def test_stop_string_split_across_a_multibyte_character() -> None:
    text = IncrementalText(byte_decode, ["→"])
    deltas, stopped = feed(text, "a→b".encode())
    assert stopped and "".join(deltas) == "a"


def test_matcher() -> None:
    matcher = StopStringMatcher(["abc", "bd", "abc"])
    assert matcher.stops == ("abc", "bd")
    assert matcher.find("xxabcbd", 0) == 2
    assert matcher.find("xxabcbd", 3) == 5
    assert matcher.find("xxabcbd", 6) == -1
    assert matcher.held_back("xxab", 0) == 2
    assert matcher.held_back("xxb", 0) == 1
    assert matcher.held_back("xxb", 3) == 0  # nothing after start
    assert matcher.held_back("xx", 0) == 0
    assert StopStringMatcher([]).held_back("anything", 0) == 0
    with pytest.raises(ValueError):
        StopStringMatcher(["ok", ""])
