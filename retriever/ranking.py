"""Rules that order hybrid results beyond their fused scores: a prior by audience and variants last.

- :func:`doc_prior`: Python docs for the command line (``metadata["audience"] == "cli"``: click or
  typer commands, modules of a ``cli`` package; see ``loaders.python_pkg.audience``) lose
  ``CLI_PENALTY`` standardised units of fused score, unless the query itself asks for the command
  line. A whole SDK wheel holds a CLI that wraps every SDK function in a command of the same name
  and docstring; without the prior, "how do I ... in Python" finds the command first. The penalty
  was chosen on the Backend.AI functional train split (whole wheel: top-1 0.3 -> 0.8; 2.0 puts
  CLI docs below every SDK candidate of similar relevance; bench/retrieval/README.md).
- :func:`diversify`: docs that are variants of one callable (function-schema definitions sharing
  a name: ``name`` and ``name#<hash>``) keep their first, best place; further variants move behind
  the other results. A prompt with three copies of one function shows the model fewer choices
  (BFCL live_multiple validation: top-5 0.910 -> 0.943, top-1 unchanged by construction).

Both are pure functions of what the store returns; nothing here knows a corpus.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TypeVar

from apihelper.retriever.doc_kinds import audience, function_schema_metadata
from apihelper.retriever.textnorm import split_words
from apihelper.retriever.types import ApiDoc

T = TypeVar("T")

CLI_PENALTY = 2.0
# How a question asks for the command line rather than the library. Deliberately narrow:
# "run a command in my session" or "open a terminal" are API questions in many SDKs.
CLI_WORDS = frozenset({"cli", "clis", "commandline"})


def asks_for_cli(query: str) -> bool:
    """Whether a query names the command line ("with the CLI", "from the command line")."""
    words = split_words(query)
    if not CLI_WORDS.isdisjoint(words):
        return True
    return any(a == "command" and b == "line" for a, b in itertools.pairwise(words))


def doc_prior(doc: ApiDoc, *, cli_query: bool) -> float:
    """The score added to a doc's fused score (0 or -CLI_PENALTY)."""
    if audience(doc) == "cli" and not cli_query:
        return -CLI_PENALTY
    return 0.0


def variant_group(doc: ApiDoc) -> str:
    """What makes docs variants of one callable: a function schema's bare name, else the key."""
    metadata = function_schema_metadata(doc)
    name = metadata.get("name") if metadata is not None else None
    return name if isinstance(name, str) and name else doc.key


def diversify(items: Sequence[T], group: Callable[[T], str]) -> list[T]:
    """``items`` (best first) with each group's first item in place and its repeats moved to the
    end, in their order."""
    seen: set[str] = set()
    first: list[T] = []
    repeats: list[T] = []
    for item in items:
        key = group(item)
        (repeats if key in seen else first).append(item)
        seen.add(key)
    return first + repeats


__all__ = ["CLI_PENALTY", "CLI_WORDS", "asks_for_cli", "diversify", "doc_prior", "variant_group"]
