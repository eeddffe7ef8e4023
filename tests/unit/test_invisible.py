"""Issue 25 row 14: zero-width and other format characters (Unicode Cf) are removed where the
bidirectional controls already were: in corpus text at ingest and in what a prompt quotes, so
they cannot hide a role word or a marker from the defanging."""

from __future__ import annotations

import sys
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from apihelper.retriever.invisible import INVISIBLE
from apihelper.retriever.loaders._text import clean_text
from apihelper.service.prompts import inert_text

FORMAT_CHARS = "\u200b\u200c\u200d\u2060\u00ad\ufeff\u202e\u2066\U000e0041"


def test_every_format_and_control_character_of_this_python_is_matched() -> None:
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        category = unicodedata.category(char)
        invisible = category == "Cf" or (category == "Cc" and char not in "\t\n")
        matched = bool(INVISIBLE.fullmatch(char))
        # A later Unicode's format characters may still be unassigned (Cn) in this Python's.
        assert matched == invisible or (matched and category == "Cn"), (hex(code), category)


@given(
    word=st.sampled_from(["ASSISTANT:", "USER:", "<<<api_call>>>", "<|im_start|>", "### Response:"]),
    hidden=st.lists(st.sampled_from(FORMAT_CHARS), min_size=1, max_size=4),
    where=st.integers(min_value=1, max_value=3),
)
def test_format_characters_cannot_hide_a_role_word_or_a_marker(word: str, hidden: list[str], where: int) -> None:
    smuggled = word[:where] + "".join(hidden) + word[where:]
    assert inert_text(smuggled) == inert_text(word) != word
    assert clean_text(smuggled) == word
