"""Incremental detokenization with stop strings, shared by the engine adapters.

An engine produces token ids one step at a time; a stream must carry text. This module owns the
rules for turning the growing list of ids into text deltas:

- the whole generated sequence is decoded each step and the new suffix is emitted, so tokenizers
  whose pieces depend on their neighbours (byte-level BPE, SentencePiece's leading space) come out
  exactly as a one-shot decode would;
- a trailing U+FFFD is held back until the next token completes the UTF-8 character (byte-level
  BPE splits multi-byte characters across tokens); at the end it is emitted as it is;
- text that could be the beginning of a stop string is held back until it is known not to be one;
  when a stop string appears, the text before it is emitted, the stop string never is, and the
  caller ends the request.

Pure Python, no engine library: it takes a ``decode`` function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHAR = "\ufffd"


class StopStringMatcher:
    """Finds stop strings in text and tells how much of a text's tail may still start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        self.stops = tuple(dict.fromkeys(stops))  # de-duplicated, order kept
        self._max_len = max((len(s) for s in self.stops), default=0)

    def find(self, text: str, start: int) -> int:
        """Index of the earliest stop string in ``text[start:]`` (as an index into text), or -1."""
        found = -1
        for stop in self.stops:
            index = text.find(stop, start)
            if index != -1 and (found == -1 or index < found):
                found = index
        return found

    def held_back(self, text: str, start: int) -> int:
        """Length of the longest tail of ``text[start:]`` that is a proper prefix of a stop string."""
        available = len(text) - start
        for length in range(min(self._max_len - 1, available), 0, -1):
            tail = text[len(text) - length :]
            if any(stop.startswith(tail) for stop in self.stops):
                return length
        return 0


class IncrementalText:
    """The text of one generation, emitted in safe increments.

    Call ``update`` with all generated ids so far (end-of-sequence tokens left out); it returns the
    text to emit now and whether a stop string ended the generation. After a stop, the generation
    is over and ``update`` must not be called again.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], stops: Sequence[str] = ()) -> None:
        self._decode = decode
        self._matcher = StopStringMatcher(stops)
        self._emitted = 0  # characters of the decoded text already handed out
        self.text = ""  # everything emitted so far

    def update(self, token_ids: Sequence[int], *, final: bool) -> tuple[str, bool]:
        decoded = self._decode(token_ids)
        # Until the end, a trailing U+FFFD may be half a character: neither emit it nor let a stop
        # string match across it.
        end = len(decoded)
        if not final:
            while end > self._emitted and decoded[end - 1] == REPLACEMENT_CHAR:
                end -= 1
        # Decoding more ids only ever appends to the text of fewer ids (for byte-level BPE and
        # SentencePiece alike); emitted text cannot be taken back, so the new text starts where
        # the emitted text ends either way.
        start = self._emitted
        # A stop string cannot begin inside the emitted text: any tail of it that could begin a
        # stop string was held back, so searching from ``start`` finds the earliest stop.
        stop_at = self._matcher.find(decoded[:end], start)
        if stop_at != -1:
            return self._emit(decoded[start:stop_at]), True
        if not final:
            end -= self._matcher.held_back(decoded[:end], start)
        return self._emit(decoded[start:end]), False

    def _emit(self, delta: str) -> str:
        self._emitted += len(delta)
        self.text += delta
        return delta


class StopFilter:
    """Text-level stop strings over streamed text deltas, for an engine that also stops on them
    itself but streams the first tokens of a multi-token stop string before it knows."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._matcher = StopStringMatcher(stops)
        self._text = ""
        self._emitted = 0

    def push(self, delta: str, *, final: bool, drop_tail: bool) -> tuple[str, bool]:
        """Add ``delta``; return the text to emit now and whether a stop string ended it.

        ``drop_tail``: the engine itself stopped on a stop string it cut from the text, so a held
        back tail is the beginning of that stop string and is dropped, not flushed.
        """
        self._text += delta
        start = self._emitted
        if self._matcher.stops:
            # A stop string cannot begin inside emitted text: any tail of it that could begin
            # one was held back, so searching from ``start`` finds the earliest stop.
            stop_at = self._matcher.find(self._text, start)
            if stop_at != -1:
                return self._emit(start, stop_at), True
        end = len(self._text)
        if not final or drop_tail:
            end -= self._matcher.held_back(self._text, start)
        return self._emit(start, end), False

    def _emit(self, start: int, end: int) -> str:
        self._emitted = end
        return self._text[start:end]
