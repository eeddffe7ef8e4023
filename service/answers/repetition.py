"""Repetition control for streamed answers: drop any line repeated verbatim within one answer.

Small models loop: Gorilla answers often repeat a line (an import, a sentence of the
explanation, a whole call) until ``max_tokens``. :class:`RepetitionFilter` sits between the
engine's text deltas and the client: it passes text through as it arrives and suppresses a
line that equals an earlier line of the same answer, so the client never sees the duplicate.

Streaming without delaying text: only the current line is ever held back, and only while it is
still a prefix of some earlier line (it might turn into a duplicate). As soon as it differs from
every earlier line it is released, and the rest of that line streams straight through. Earlier
lines are kept in a character trie, so each character costs O(1): O(n) for the whole answer.

Which lines count: lines with at least ``min_chars`` non-blank characters including a letter or
digit. Blank lines, ``}``, code fences and rules repeat legitimately and are never dropped.

The concatenation of everything :meth:`RepetitionFilter.feed` and :meth:`RepetitionFilter.flush`
return is exactly :attr:`RepetitionFilter.text`: report that as the final answer.

Pure and synchronous; one filter per answer.
"""

from __future__ import annotations

from typing import Any

_END = ""  # trie key marking "a whole earlier line ends here" (never a character of a line)

# A trie node maps one character to the next node; _END maps to True.
_Node = dict[str, Any]


class RepetitionFilter:
    """Suppress lines repeated verbatim within one streamed answer.

    ``enabled``: False passes everything through untouched (the request option).
    ``min_chars``: shorter lines (stripped) are never suppressed.
    ``stop_after``: when this many lines have been suppressed, :attr:`should_stop` turns True so
    the caller can end a generation that is only looping (None: never).
    """

    def __init__(self, enabled: bool = True, *, min_chars: int = 8, stop_after: int | None = None) -> None:
        self.enabled = enabled
        self.min_chars = min_chars
        self.stop_after = stop_after
        self.suppressed_lines = 0
        self._root: _Node = {}
        self._line: list[str] = []  # the current line so far, in pieces
        self._held: list[str] = []  # the part of it not yet emitted, in pieces
        self._node: _Node | None = self._root  # trie position of the current line; None: it matches no earlier line
        self._emitted: list[str] = []

    @property
    def text(self) -> str:
        """Everything emitted so far (after :meth:`flush`: the final answer)."""
        return "".join(self._emitted)

    @property
    def should_stop(self) -> bool:
        return self.stop_after is not None and self.suppressed_lines >= self.stop_after

    def feed(self, delta: str) -> str:
        """The part of ``delta`` (plus held-back text) that can be shown now; may be ''."""
        if not self.enabled:
            self._emitted.append(delta)
            return delta
        out: list[str] = []
        for i, segment in enumerate(delta.split("\n")):
            if i:
                self._end_line(out)
            if segment:
                self._feed_segment(segment, out)
        piece = "".join(out)
        if piece:
            self._emitted.append(piece)
        return piece

    def flush(self) -> str:
        """At the end of the answer: the held-back rest of the last line, unless it repeats (or,
        cut off by ``max_tokens``, starts to repeat) an earlier line."""
        if not self.enabled:
            return ""
        piece = ""
        if self._held:
            line = "".join(self._line)
            if self._node is not None and self._eligible(line):
                self.suppressed_lines += 1
            else:
                piece = "".join(self._held)
        self._reset_line()
        if piece:
            self._emitted.append(piece)
        return piece

    def _feed_segment(self, segment: str, out: list[str]) -> None:
        """Text with no newline: held while the line so far is a prefix of an earlier line."""
        self._line.append(segment)
        node = self._node
        if node is None:  # most text: the line already differs from every earlier line
            out.append(segment)
            return
        for ch in segment:
            nxt = node.get(ch)
            if nxt is None:
                # Differs from every earlier line: it can no longer be a duplicate.
                self._node = None
                out.extend(self._held)
                out.append(segment)
                self._held.clear()
                return
            node = nxt
        self._node = node
        self._held.append(segment)

    def _end_line(self, out: list[str]) -> None:
        line = "".join(self._line)
        duplicate = self._node is not None and _END in self._node and self._eligible(line)
        if duplicate:
            self.suppressed_lines += 1  # nothing of it was emitted: drop it with its newline
        else:
            out.extend(self._held)
            out.append("\n")
            if self._eligible(line):
                self._remember(line)
        self._reset_line()

    def _reset_line(self) -> None:
        self._line.clear()
        self._held.clear()
        self._node = self._root

    def _eligible(self, line: str) -> bool:
        stripped = line.strip()
        return len(stripped) >= self.min_chars and any(c.isalnum() for c in stripped)

    def _remember(self, line: str) -> None:
        node = self._root
        for ch in line:
            nxt = node.get(ch)
            if nxt is None:
                nxt = {}
                node[ch] = nxt
            node = nxt
        node[_END] = True


__all__ = ["RepetitionFilter"]
