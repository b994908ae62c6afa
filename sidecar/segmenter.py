"""Cuts streamed model text into pieces to speak: an early first clause, then whole sentences.

Tokens arrive a few characters at a time; `Segmenter.feed` returns every segment a token
completes, so each can go to speech while the model keeps writing. The first segment may
end at a clause mark (comma, semicolon, colon, dash) once it is long enough to be worth saying,
or between words once it reaches its maximum length, so the first audio comes early; after that
only sentence ends cut. A sentence ends at . ! ? … (closing
quotes or brackets may follow) when whitespace and then a likely sentence start (a capital,
a digit, a quote, a bracket or a bullet) follow, or at the end of the text; a blank line
or a line break before a list item also ends one.

A single period does not end a sentence after a known abbreviation ("t.ex.", "kl. 15.30",
"Mr. Smith"), an initial ("J. Smith"), a list number ("1. Öppna appen") or a day before a
month name ("1. Maj"). Decimals, times, dates, URLs and e-mail addresses never have
whitespace right after their inner marks, so they are never cut.

Segments are slices of the input: joined, they give the input back exactly, whitespace
included (a segment keeps the whitespace that follows it; callers strip before speaking).
Every decision looks only at the text itself, never at how it was split into tokens: where
a decision needs text that has not arrived yet, the segmenter waits for it, so feeding a
text in any split gives the same segments as `segment_text` on the whole of it.

Written by hand rather than with a sentence splitter library because those work on whole
texts; this one must decide incrementally and identically for any token split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

TERMINAL_MARKS = ".!?…"
CLAUSE_MARKS = ",;:\N{EN DASH}\N{EM DASH}"
# Closing quotes and brackets that may follow a sentence's final mark: «"Stop." Then».
CLOSERS = "\"'”\N{RIGHT SINGLE QUOTATION MARK}»«“)]}"
# Characters that may open a sentence besides capitals and digits; Swedish uses ” and » to open too.
SENTENCE_OPENERS = "\"'“”„«»\N{LEFT SINGLE QUOTATION MARK}\N{RIGHT SINGLE QUOTATION MARK}([{¿¡"
BULLETS = "-*•\N{EN DASH}\N{EM DASH}"
# Characters stripped from the front of a word before it is compared with abbreviations.
WORD_OPENERS = "\"'“”„«»\N{LEFT SINGLE QUOTATION MARK}\N{RIGHT SINGLE QUOTATION MARK}([{"

SWEDISH_ABBREVIATIONS = frozenset(
    {
        "t.ex.", "bl.a.", "d.v.s.", "dvs.", "kl.", "ca.", "s.k.", "m.m.", "m.fl.", "osv.", "o.s.v.",
        "nr.", "st.", "jfr.", "fr.o.m.", "t.o.m.", "p.g.a.", "f.d.", "resp.", "tel.", "inkl.", "exkl.",
        "obs.", "ang.", "ev.",
    }
)  # fmt: skip
ENGLISH_ABBREVIATIONS = frozenset(
    {
        "e.g.", "i.e.", "mr.", "mrs.", "ms.", "dr.", "prof.", "etc.", "vs.", "st.", "no.", "approx.",
        "a.m.", "p.m.", "u.s.", "u.k.", "jr.", "sr.", "inc.", "ltd.", "cf.", "fig.",
    }
)  # fmt: skip
# Abbreviations that often end a sentence too: they end one before a capital ("… m.m. Sedan"),
# never before a digit ("No. 5"). All others never end a sentence ("t.ex. Stockholm", "Dr. Who").
SENTENCE_FINAL_ABBREVIATIONS = frozenset(
    {
        "etc.", "osv.", "o.s.v.", "m.m.", "m.fl.", "a.m.", "p.m.", "u.s.", "u.k.", "no.", "inc.", "ltd.",
        "jr.", "sr.",
    }
)  # fmt: skip
MONTHS = frozenset(
    {
        "januari", "februari", "mars", "april", "maj", "juni", "juli", "augusti", "september", "oktober",
        "november", "december", "january", "february", "march", "may", "june", "july", "august", "october",
    }
)  # fmt: skip
LIST_NUMBER_MAX_DIGITS = 3

_INITIALS = re.compile(r"(?:[^\W\d_]\.)*[^\W\d_]")
_CANDIDATES = re.compile("[" + re.escape(TERMINAL_MARKS + "\n") + "]")
_FIRST_CANDIDATES = re.compile("[" + re.escape(TERMINAL_MARKS + "\n" + CLAUSE_MARKS) + "]")


def abbreviations_for(lang: str) -> frozenset[str]:
    """Swedish text borrows English abbreviations ("etc.", "Dr."); English text rarely the reverse."""
    primary = lang.lower().replace("_", "-").split("-")[0]
    if primary == "en":
        return ENGLISH_ABBREVIATIONS
    return SWEDISH_ABBREVIATIONS | ENGLISH_ABBREVIATIONS


class _Verdict(Enum):
    YES = "yes"
    NO = "no"
    WAIT = "wait"  # the answer depends on text that has not arrived yet


@dataclass(frozen=True)
class _Judgement:
    verdict: _Verdict
    boundary: int = 0  # YES: where the next segment starts (after the whitespace)
    content_end: int = 0  # YES: where the segment's words and marks end
    resume: int = 0  # NO: where the search for the next candidate continues


_WAIT = _Judgement(_Verdict.WAIT)


def _yes(boundary: int, content_end: int) -> _Judgement:
    return _Judgement(_Verdict.YES, boundary=boundary, content_end=content_end)


def _no(resume: int) -> _Judgement:
    return _Judgement(_Verdict.NO, resume=resume)


def _has_words_before(text: str, end: int) -> bool:
    """Whether text[:end] holds a letter or digit (searched backwards: usually the previous character)."""
    return any(text[i].isalnum() for i in range(end - 1, -1, -1))


def _starts_sentence(char: str) -> bool:
    return char.isupper() or char.istitle() or char.isdigit() or char in SENTENCE_OPENERS or char in BULLETS


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


# A model's reply streams in at a few dozen tokens a second, so every character the first segment
# waits for delays the first audio: a reply being generated may end its first segment at a word
# break after 20 characters (a comma after 10). A text known in full is synthesised in
# milliseconds whatever its length, so it keeps the longer first clause and its better prosody.
STREAMED_FIRST_CLAUSE_MIN_CHARS = 10
STREAMED_FIRST_CLAUSE_MAX_CHARS = 20


class Segmenter:
    """Incremental segmenter for one stream of model tokens; `flush` at the end, then reusable."""

    @classmethod
    def for_model_reply(cls, lang: str) -> Segmenter:
        """The segmenter for a reply the model is still writing: the first audio as early as a few words."""
        return cls(
            lang=lang,
            first_clause_min_chars=STREAMED_FIRST_CLAUSE_MIN_CHARS,
            first_clause_max_chars=STREAMED_FIRST_CLAUSE_MAX_CHARS,
        )

    def __init__(
        self, *, lang: str = "sv", first_clause_min_chars: int = 20, first_clause_max_chars: int = 100
    ) -> None:
        if first_clause_min_chars < 1:
            raise ValueError("first_clause_min_chars must be at least 1")
        if first_clause_max_chars < first_clause_min_chars:
            raise ValueError("first_clause_max_chars must be at least first_clause_min_chars")
        self.lang = lang
        self.first_clause_min_chars = first_clause_min_chars
        self.first_clause_max_chars = first_clause_max_chars
        self._abbreviations = abbreviations_for(lang)
        self._reset()

    def _reset(self) -> None:
        self._buffer = ""
        self._scan_from = 0  # candidates before this index in the buffer are known not to cut
        self._first = True

    def feed(self, token: str) -> list[str]:
        """Segments completed by this token (often none)."""
        if not token:
            return []
        self._buffer += token
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """The remaining segments at the end of the stream; the segmenter starts afresh after."""
        segments = self._drain(final=True)
        self._reset()
        return segments

    @property
    def pending(self) -> str:
        """Text received but not yet part of a segment."""
        return self._buffer

    def _drain(self, *, final: bool) -> list[str]:
        segments: list[str] = []
        while self._buffer:
            end = self._next_boundary(final)
            if end is None:
                break
            segments.append(self._buffer[:end])
            self._buffer = self._buffer[end:]
            self._scan_from = 0
            self._first = False
        return segments

    # ----- boundaries ----------------------------------------------------------------------------

    def _next_boundary(self, final: bool) -> int | None:
        """Where the pending segment ends, or None until more text decides it (never None at the end)."""
        text = self._buffer
        size = len(text)
        lead = _skip_space(text, 0)
        if lead == size:
            return size if final else None
        limit = lead + self.first_clause_max_chars if self._first else None
        candidates = _FIRST_CANDIDATES if self._first else _CANDIDATES
        position = self._scan_from
        while True:
            match = candidates.search(text, position)
            if match is None:
                position = size
                break
            index = match.start()
            if limit is not None and index >= limit:
                position = index
                break
            judgement = self._judge(text, index, final)
            if judgement.verdict is _Verdict.WAIT:
                self._scan_from = index
                return None
            if judgement.verdict is _Verdict.YES:
                if limit is not None and judgement.content_end > limit:
                    return self._word_break(text, lead, limit, final)
                return judgement.boundary
            position = judgement.resume
        self._scan_from = position
        if limit is not None and size > limit:
            # Nothing cuts within the first clause's length: break between words instead.
            return self._word_break(text, lead, limit, final)
        return size if final else None

    def _word_break(self, text: str, lead: int, limit: int, final: bool) -> int | None:
        """After the last whitespace from `first_clause_min_chars` to `first_clause_max_chars` (or the first after).

        The floor keeps a first word or two from being spoken alone ("Ett ", "Så ").
        """
        floor = lead + self.first_clause_min_chars
        space = next((i for i in range(limit, floor - 1, -1) if text[i].isspace()), None)
        if space is None:
            space = next((i for i in range(limit + 1, len(text)) if text[i].isspace()), None)
            if space is None:
                return len(text) if final else None
        end = _skip_space(text, space)
        if end == len(text):
            return end if final else None
        return end

    def _judge(self, text: str, index: int, final: bool) -> _Judgement:
        char = text[index]
        if char == "\n":
            return self._judge_line_break(text, index, final)
        if char in TERMINAL_MARKS:
            return self._judge_terminal(text, index, final)
        return self._judge_clause(text, index, final)

    def _judge_terminal(self, text: str, index: int, final: bool) -> _Judgement:
        size = len(text)
        marks_end = index
        while marks_end < size and text[marks_end] in TERMINAL_MARKS:
            marks_end += 1
        content_end = marks_end
        while content_end < size and text[content_end] in CLOSERS:
            content_end += 1
        if content_end == size:
            return _yes(size, size) if final else _WAIT
        if not text[content_end].isspace() or not _has_words_before(text, marks_end):
            return _no(content_end)
        following = _skip_space(text, content_end)
        if following == size:
            return _yes(size, content_end) if final else _WAIT
        if not _starts_sentence(text[following]):
            return _no(content_end)
        if text[index:marks_end] == ".":
            ends = self._period_ends_sentence(text, index, following, final)
            if ends is None:
                return _WAIT
            if not ends:
                return _no(content_end)
        return _yes(following, content_end)

    def _period_ends_sentence(self, text: str, period: int, following: int, final: bool) -> bool | None:
        """A single period before whitespace and a likely sentence start; None: wait for more text."""
        start = period
        while start > 0 and not text[start - 1].isspace():
            start -= 1
        while start < period and text[start] in WORD_OPENERS:
            start += 1
        word = text[start:period]
        next_char = text[following]
        abbreviation = word.lower() + "."
        if abbreviation in self._abbreviations:
            return not next_char.isdigit() and abbreviation in SENTENCE_FINAL_ABBREVIATIONS
        if _INITIALS.fullmatch(word) and word.isupper():
            return False  # "J. Smith", "J.R.R. Tolkien"
        if word.isdigit() and len(word) <= LIST_NUMBER_MAX_DIGITS:
            if _opens_list_item(text, start):
                return False  # "1. Öppna appen"
            if next_char.isalpha():
                word_end = following
                while word_end < len(text) and text[word_end].isalpha():
                    word_end += 1
                if word_end == len(text) and not final:
                    return None
                if text[following:word_end].lower() in MONTHS:
                    return False  # an ordinal day: "den 1. Maj"
        return True

    def _judge_line_break(self, text: str, index: int, final: bool) -> _Judgement:
        following = _skip_space(text, index)
        if following == len(text):
            return _yes(following, index) if final else _WAIT
        if not _has_words_before(text, index):
            return _no(following)
        if text.count("\n", index, following) >= 2:
            return _yes(following, index)  # a blank line ends a paragraph
        item = _list_item_at(text, following, final)
        if item is None:
            return _WAIT
        return _yes(following, index) if item else _no(following)

    def _judge_clause(self, text: str, index: int, final: bool) -> _Judgement:
        after = index + 1
        if after == len(text):
            if not final:
                return _WAIT
        elif not text[after].isspace():
            return _no(after)  # "3,5", "15:30", a dash in a range
        if len(text[:after].strip()) < self.first_clause_min_chars or not _has_words_before(text, after):
            return _no(after)
        following = _skip_space(text, after)
        if following == len(text) and not final:
            return _WAIT
        return _yes(following, after)


def _opens_list_item(text: str, start: int) -> bool:
    """Whether a number at `start` begins a list item: at the segment's start, a line's start or after ':'."""
    while start > 0 and text[start - 1].isspace() and text[start - 1] != "\n":
        start -= 1
    return start == 0 or text[start - 1] in "\n:"


def _list_item_at(text: str, index: int, final: bool) -> bool | None:
    """Whether a list item ("1. ", "2) ", "- ", "• ") starts at `index`; None: wait for more text."""
    size = len(text)
    end = index
    while end < size and text[end].isdigit() and end - index <= LIST_NUMBER_MAX_DIGITS:
        end += 1
    if end == size:
        return False if final else None
    digits = end - index
    if digits == 0:
        if text[index] not in BULLETS:
            return False
    elif digits > LIST_NUMBER_MAX_DIGITS or text[end] not in ".)":
        return False
    marker_end = end + 1 if digits else index + 1
    if marker_end == size:
        return False if final else None
    return text[marker_end] in " \t"


def segment_text(
    text: str, lang: str = "sv", *, first_clause_min_chars: int = 20, first_clause_max_chars: int = 100
) -> list[str]:
    """The segments of a whole text: the same as feeding it to a `Segmenter` in any split, then flushing."""
    segmenter = Segmenter(
        lang=lang,
        first_clause_min_chars=first_clause_min_chars,
        first_clause_max_chars=first_clause_max_chars,
    )
    return [*segmenter.feed(text), *segmenter.flush()]
