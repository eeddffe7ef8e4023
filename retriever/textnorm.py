"""Keyword normalisation for BM25, done in Python because Milvus Lite cannot.

Milvus Lite only has the ``standard`` tokenizer: no stemmer, no stop words (the filters are accepted
and ignored). So both sides of BM25 are normalised here, with the same function:

- at ingest, ``MilvusStore`` stores ``keyword_terms(doc keyword text)`` in the analyzed field;
- at search time, the query goes through ``keyword_terms`` too.

``keyword_terms``: identifiers are split (``createFromParams``, ``delete_files``,
``/folders/{name}/mkdir`` -> words), text is lower-cased, English function words are dropped, and a
light stemmer folds inflections ("folders" -> "folder", "created"/"creating"/"creates" ->
"creat"). The output is a space-separated string of terms, which the ``standard`` tokenizer splits
back into the same terms on any Milvus (Lite or server).

The stemmer is deliberately light (plurals, -ing, -ed, -ly, -ies): stems only need to agree between
query and document, and aggressive stemming conflates API words that differ ("policy"/"police").
"""

from __future__ import annotations

import re
from functools import lru_cache

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_TOKEN = re.compile(r"[A-Za-z]+|[0-9]+")
_WORDISH = re.compile(r"[A-Za-z0-9]+")

# Function words of English (a short, standard list: articles, pronouns, auxiliaries,
# prepositions, conjunctions). Content words, including verbs such as "get" or "list", are kept,
# and so are negations and particles ("no", "not", "without", "up", "out", "off", "over"): API
# names are built from them (update_password_no_auth, logout, sign_up).
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "then",
        "else",
        "than",
        "so",
        "as",
        "of",
        "at",
        "by",
        "for",
        "from",
        "in",
        "into",
        "on",
        "onto",
        "to",
        "with",
        "within",
        "via",
        "per",
        "under",
        "about",
        "above",
        "below",
        "between",
        "through",
        "during",
        "before",
        "after",
        "further",
        "here",
        "there",
        "when",
        "where",
        "why",
        "how",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "this",
        "that",
        "these",
        "those",
        "am",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "have",
        "has",
        "had",
        "having",
        "do",
        "does",
        "did",
        "doing",
        "would",
        "should",
        "could",
        "can",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "i",
        "me",
        "my",
        "myself",
        "we",
        "us",
        "our",
        "ours",
        "you",
        "your",
        "yours",
        "he",
        "him",
        "his",
        "she",
        "her",
        "it",
        "its",
        "they",
        "them",
        "their",
        "theirs",
        "all",
        "any",
        "both",
        "each",
        "few",
        "more",
        "most",
        "other",
        "some",
        "such",
        "only",
        "own",
        "same",
        "too",
        "very",
        "just",
        "also",
        "s",
        "t",
        "d",
        "ll",
        "m",
        "o",
        "re",
        "ve",
        "y",
        "let",
        "lets",
        "please",
    ]
)

_VOWEL = re.compile(r"[aeiouy]")
_DOUBLE = re.compile(r"(bb|dd|ff|gg|mm|nn|pp|rr|tt)$")


def _has_vowel(stem: str) -> bool:
    return bool(_VOWEL.search(stem))


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A light English stemmer for lower-case words (plurals, -ing, -ed, -ly; short words kept)."""
    if len(word) <= 3 or not word.isalpha():
        return word
    w = word
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith(("sses", "xes", "ches", "shes", "zes")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix in ("ingly", "edly", "ing", "ed"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3 and _has_vowel(w[: -len(suffix)]):
            w = w[: -len(suffix)]
            if _DOUBLE.search(w):  # "mapped" -> "mapp" -> "map"
                w = w[:-1]
            break
    else:
        if w.endswith("ly") and len(w) > 5:
            w = w[:-2]
    # "create", "created", "creates", "creating" all end as "creat".
    if w.endswith("e") and len(w) > 4:
        w = w[:-1]
    if w.endswith("y") and len(w) > 4 and w[-2] not in "aeiou":
        w = w[:-1] + "i"
    return w


def split_words(text: str) -> list[str]:
    """Lower-case words of ``text`` with identifiers split (camelCase, snake_case, paths, dots)."""
    words: list[str] = []
    for chunk in _WORDISH.findall(text):
        for part in _CAMEL.split(chunk):
            words.extend(t.lower() for t in _TOKEN.findall(part))
    return words


def keyword_terms(text: str) -> str:
    """``text`` as BM25 terms: split, lower-cased, stop words dropped, stemmed, space-joined."""
    return " ".join(stem(w) for w in split_words(text) if w not in STOP_WORDS)


__all__ = ["STOP_WORDS", "keyword_terms", "split_words", "stem"]
