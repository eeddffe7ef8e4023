"""Characters that show as nothing: removed from corpus text at ingest and from what a prompt
quotes, so that a word cannot be hidden from the defanging (``ASSISTANT\\u200b:``,
``<<<\\u200bapi_call>>>``) or reordered on screen.

:data:`INVISIBLE` matches the C0 and C1 controls (tab and newline excepted) and every Unicode
format character (general category Cf, Unicode 15.1: soft hyphen, zero-width space and joiners,
bidirectional marks, embeddings, overrides and isolates, invisible operators, the byte-order
mark, interlinear annotation, tags ...). A unit test checks it against the running Python's
``unicodedata``. Zero-width joiners go too: they join emoji and shape some scripts, which API
documentation can do without.
"""

from __future__ import annotations

import re

INVISIBLE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f"
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    "\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f]"
)
