"""Pieces of text for synthesis: bounded in length, cut where a listener hears a pause, nothing lost."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicelane.sidecar.tts.pieces import PIECE_MAX_CHARS, speech_pieces


def test_a_short_text_is_one_piece_stripped() -> None:
    assert speech_pieces("  Hej, hur mår du?\n") == ["Hej, hur mår du?"]
    assert speech_pieces("   ") == []


def test_a_long_text_is_cut_at_sentence_ends_before_clause_marks_or_spaces() -> None:
    text = "Mötet är flyttat. Vi ses i morgon, klockan tre, i det stora rummet på tredje våningen."
    assert speech_pieces(text, 40) == [
        "Mötet är flyttat.",
        "Vi ses i morgon, klockan tre,",
        "i det stora rummet på tredje våningen.",
    ]


def test_a_closing_quote_after_the_sentence_end_stays_with_its_sentence() -> None:
    assert speech_pieces('Han sa: "Stopp." Sedan gick han hem och åt middag.', 30) == [
        'Han sa: "Stopp."',
        "Sedan gick han hem och åt",
        "middag.",
    ]


def test_a_run_without_spaces_is_cut_at_the_limit() -> None:
    assert speech_pieces("a" * 25, 10) == ["a" * 10, "a" * 10, "a" * 5]


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        speech_pieces("Hej.", 0)


@given(
    text=st.text(alphabet=st.sampled_from("abc åäö,.;!?\n\"'»"), max_size=600),
    max_chars=st.integers(min_value=1, max_value=PIECE_MAX_CHARS),
)
def test_pieces_are_bounded_and_say_every_word_in_order(text: str, max_chars: int) -> None:
    pieces = speech_pieces(text, max_chars)
    assert all(0 < len(piece) <= max_chars for piece in pieces)
    assert all(piece == piece.strip() for piece in pieces)
    # Nothing but whitespace is lost where a piece ends.
    assert "".join("".join(pieces).split()) == "".join(text.split())
