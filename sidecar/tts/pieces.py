"""Cutting text into pieces short enough to synthesise in one go.

Speech is synthesised a piece at a time so that more urgent speech can start between two
pieces of a long text (see `voicelane.sidecar.tts.gate`). A piece ends where a listener
hears a pause anyway if it can: at a sentence end, else at a clause mark, else between
words; a run of text with no space in it is cut at the limit. Pieces are stripped of the
whitespace around them; nothing else of the text is lost or reordered.

Hand-written because `textwrap` only breaks at whitespace and the segmenter cuts by
sentence without a bound on length.
"""

from __future__ import annotations

from voicelane.sidecar.segmenter import CLAUSE_MARKS, CLOSERS, TERMINAL_MARKS

# A piece of this length takes espeak-ng a few tens of milliseconds: the longest a more urgent
# request waits for the engine. Most sentences fit, so most pieces end where a sentence ends.
PIECE_MAX_CHARS = 250


def speech_pieces(text: str, max_chars: int = PIECE_MAX_CHARS) -> list[str]:
    """`text` as pieces of at most `max_chars` characters, each cut where a pause is natural."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    pieces: list[str] = []
    rest = text.strip()
    while len(rest) > max_chars:
        cut = _cut(rest, max_chars)
        piece, rest = rest[:cut].strip(), rest[cut:].strip()
        if piece:
            pieces.append(piece)
    if rest:
        pieces.append(rest)
    return pieces


def _cut(text: str, max_chars: int) -> int:
    """Where the first piece of `text` (longer than `max_chars`) ends: the best break within the limit."""
    best_clause = best_space = 0
    # From the limit backwards (a break may be the whitespace right after the limit).
    for index in range(min(max_chars, len(text) - 1), 0, -1):
        if not text[index].isspace():
            continue
        mark = index - 1
        while mark > 0 and text[mark] in CLOSERS:
            mark -= 1
        if text[mark] in TERMINAL_MARKS:
            return index
        if not best_clause and text[mark] in CLAUSE_MARKS:
            best_clause = index
        if not best_space:
            best_space = index
    return best_clause or best_space or max_chars
