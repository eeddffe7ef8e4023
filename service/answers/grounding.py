"""What a question offers a call's arguments: the spans a string value may copy, the numbers it
names, and whether it mentions an optional parameter. Pure functions of the question's text.

The call grammar (``grammar.GrammarOptions.grounded``) lets a constrained model write a string
value only as one of :func:`question_spans` (or a string its schema offers, or the placeholder
``"<name>"``), so "sess-42" can be copied and "][" cannot be written; the verdict's grounding check
(``check.ungrounded_values``) accepts exactly what appears in the question. Optional parameters
are offered only when :func:`mentions` says the question speaks of them.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable

MAX_SPAN_WORDS = 4  # a span is up to this many consecutive words of the question
MAX_SPANS = 96  # spans offered per question (longest questions: the first ones)
MAX_QUESTION_CHARS = 2000  # the part of the question read

# Punctuation stripped from a span's ends ("sess-42," -> "sess-42"); inside a span it stays.
_EDGE = "\"'`.,;:!?()[]{}<>“”‘’"
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_NUMBER_RE = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
_QUOTED_RE = re.compile(r"\"([^\"]{1,200})\"|'([^']{1,200})'|`([^`]{1,200})`|“([^”]{1,200})”")
_STOPWORDS = frozenset(
    [
        "the",
        "and",
        "for",
        "with",
        "from",
        "into",
        "that",
        "this",
        "than",
        "then",
        "when",
        "what",
        "which",
        "while",
        "your",
        "you",
        "are",
        "was",
        "were",
        "has",
        "have",
        "not",
        "but",
        "all",
        "any",
        "can",
        "its",
        "use",
        "using",
        "new",
        "get",
        "set",
        "list",
        "make",
        "create",
        "show",
        "give",
        "want",
        "need",
        "please",
    ]
)


_MONTH = (
    r"(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
    r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAY = r"(\d{1,2})(?:st|nd|rd|th)?"
_NUMERIC_DATE_RE = re.compile(r"(?<![\w.])(\d{4})[-./](\d{1,2})[-./](\d{1,2})(?![\w])")
_MONTH_DAY_YEAR_RE = re.compile(rf"\b{_MONTH}\.?\s+{_DAY},?\s+(\d{{4}})\b", re.IGNORECASE)
_DAY_MONTH_YEAR_RE = re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH}\.?,?\s+(\d{{4}})\b", re.IGNORECASE)


def question_dates(question: str) -> tuple[str, ...]:
    """The calendar dates the question writes with their year ("March 14th, 2023", "13th of Feb
    2024", "2023.4.15"), each in ISO form ("2023-03-14"): the form date parameters take, which a
    string copied from the question cannot be."""
    text = question[:MAX_QUESTION_CHARS]
    found: list[tuple[int, int, int]] = []
    for m in _NUMERIC_DATE_RE.finditer(text):
        found.append((int(m.group(1)), int(m.group(2)), int(m.group(3))))
    for m in _MONTH_DAY_YEAR_RE.finditer(text):
        found.append((int(m.group(3)), _MONTHS.index(m.group(1)[:3].lower()) + 1, int(m.group(2))))
    for m in _DAY_MONTH_YEAR_RE.finditer(text):
        found.append((int(m.group(3)), _MONTHS.index(m.group(2)[:3].lower()) + 1, int(m.group(1))))
    out: dict[str, None] = {}
    for year, month, day in found:
        try:
            out[datetime.date(year, month, day).isoformat()] = None
        except ValueError:
            continue
    return tuple(out)


_CLOCK_RE = re.compile(
    r"(?<![\w:.])(\d{1,2})(?::(\d{2}))?\s?([ap])\.?m\b\.?|(?<![\w:.])(\d{1,2}):(\d{2})(?![\w:])", re.I
)


def question_times(question: str) -> tuple[str, ...]:
    """The clock times the question writes ("11PM", "3:30 pm", "9:00"), each as 24-hour "HH:MM"
    ("23:00", "15:30", "09:00")."""
    out: dict[str, None] = {}
    for m in _CLOCK_RE.finditer(question[:MAX_QUESTION_CHARS]):
        if m.group(3):
            hour, minute = int(m.group(1)), int(m.group(2) or 0)
            if not 1 <= hour <= 12:
                continue
            hour = hour % 12 + (12 if m.group(3).lower() == "p" else 0)
        else:
            hour, minute = int(m.group(4)), int(m.group(5))
        if hour < 24 and minute < 60:
            out[f"{hour:02d}:{minute:02d}"] = None
    return tuple(out)


# Value forms a schema states (its ``format``, or the form its description spells out), as the
# regular expression a grounded string must match.
FORM_DATE = r"\d{4}-\d{2}-\d{2}"
FORM_TIME = r"\d{2}:\d{2}"


def stated_form(schema_format: object, description: object) -> str:
    """The form a string parameter's schema states: an ISO date (``format: date``, or
    "YYYY-MM-DD" in its description without a time), a 24-hour time (``format: time``, or
    "HH:MM" without a date); "" when it states none of these."""
    text = description if isinstance(description, str) else ""
    if schema_format == "date" or ("YYYY-MM-DD" in text and "HH" not in text):
        return FORM_DATE
    if schema_format == "time" or ("HH:MM" in text and "YYYY" not in text):
        return FORM_TIME
    return ""


def question_spans(question: str, max_chars: int = 128) -> tuple[str, ...]:
    """Quoted strings of the question first, then its dates in ISO form (:func:`question_dates`)
    and its times as "HH:MM" (:func:`question_times`), then its words and runs of up to :data:`MAX_SPAN_WORDS` words, ends stripped of
    punctuation; each at most ``max_chars``."""
    text = question[:MAX_QUESTION_CHARS]
    spans: dict[str, None] = {}
    for match in _QUOTED_RE.finditer(text):
        quoted = next(g for g in match.groups() if g is not None).strip()
        if quoted:
            spans[quoted] = None
    for derived in (*question_dates(text), *question_times(text)):
        spans[derived] = None
    words = text.split()
    for size in range(1, MAX_SPAN_WORDS + 1):
        for start in range(len(words) - size + 1):
            span = " ".join(words[start : start + size]).strip(_EDGE)
            if span and len(span) <= max_chars:
                spans[span] = None
    return tuple(s for s in spans if len(s) <= max_chars)[:MAX_SPANS]


def question_numbers(question: str) -> tuple[float, ...]:
    """The numbers written in the question, in order."""
    return tuple(float(m.group()) for m in _NUMBER_RE.finditer(question[:MAX_QUESTION_CHARS]))


def _words(text: str) -> set[str]:
    """Lower-case words of ``text``, identifiers split (``max_lifetime_minutes``, ``gpuType``)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text).replace("_", " ").replace("-", " ")
    return {w.lower() for w in _WORD_RE.findall(spaced)}


def _stem(word: str) -> str:
    return word[:5]


def mentions(question: str, name: str, description: str = "") -> bool:
    """Whether ``question`` speaks of a parameter: a word of its name (3+ letters, not a stop
    word), or two words of its description (5+ letters), appear in it (compared by their first
    five letters: "graceful" and "gracefully" match)."""
    asked = {_stem(w) for w in _words(question) if w not in _STOPWORDS}
    named = {_stem(w) for w in _words(name) if len(w) >= 3 and w not in _STOPWORDS}
    if named & asked:
        return True
    described = {_stem(w) for w in _words(description) if len(w) >= 5 and w not in _STOPWORDS}
    return len(described & asked) >= 2


def named_values(question: str, values: Iterable[object]) -> tuple[str, ...]:
    """The enum values (strings of 3+ characters) ``question`` names, as a whole word or phrase,
    case aside: "Find a Theater event" names ``event_type`` "Theater"."""
    text = question[:MAX_QUESTION_CHARS].lower()
    found: list[str] = []
    for value in values:
        if not isinstance(value, str) or len(value.strip()) < 3:
            continue
        if re.search(r"(?<!\w)" + re.escape(value.strip().lower()) + r"(?!\w)", text):
            found.append(value)
    return tuple(found)


def names_value(question: str, values: Iterable[object], default: object = None) -> bool:
    """Whether ``question`` names one of a parameter's enum values (:func:`named_values`) other
    than its ``default``: "showing at imax" asks for ``show_type`` "imax" though it never says
    "show type". Naming the default asks for nothing (leaving the parameter out gives it)."""
    return any(v != default for v in named_values(question, values))


def echoes_name(span: str, name: str) -> bool:
    """Whether ``span`` is no value for the parameter ``name``: it says nothing but the
    parameter's own name and stop words ("session" for ``session_id``), or it is several words
    and begins or ends with one of those ("session sess-42": the span "sess-42" is offered)."""
    own = {_stem(w) for w in _words(name)}

    def filler(word: str) -> bool:
        lowered = word.strip(_EDGE).lower()
        return not any(c.isdigit() for c in lowered) and (
            _stem(lowered) in own or lowered in _STOPWORDS or len(lowered) < 2
        )

    parts = span.split()
    if not parts:
        return False
    if len(parts) == 1:
        return all(filler(w) for w in _words(span)) and not any(c.isdigit() for c in span)
    return filler(parts[0]) or filler(parts[-1])


def in_bounds(value: float, minimum: float | None, maximum: float | None) -> bool:
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def grounded_numbers(
    question: Iterable[float], offered: Iterable[float], minimum: float | None, maximum: float | None, *, integer: bool
) -> tuple[float, ...]:
    """The numbers a bounded parameter may take: the question's and its schema's (default,
    example) within the bounds, else its inclusive minimum; () when none can be named."""
    fits = [v for v in (*question, *offered) if in_bounds(v, minimum, maximum) and (not integer or v == int(v))]
    if not fits and minimum is not None:
        fits = [float(int(minimum)) if integer and minimum == int(minimum) else minimum]
    return tuple(dict.fromkeys(fits))


__all__ = [
    "FORM_DATE",
    "FORM_TIME",
    "echoes_name",
    "grounded_numbers",
    "in_bounds",
    "mentions",
    "named_values",
    "names_value",
    "question_dates",
    "question_numbers",
    "question_spans",
    "question_times",
    "stated_form",
]
