"""Segmenter: early first clause, whole sentences after, no wrong cuts, any token split alike."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicelane.sidecar.segmenter import Segmenter, segment_text


def stripped(segments: list[str]) -> list[str]:
    return [segment.strip() for segment in segments]


def sentences(text: str, lang: str = "sv") -> list[str]:
    """Segments with the first-clause rule out of the way: only sentence ends cut."""
    return segment_text(text, lang, first_clause_min_chars=500, first_clause_max_chars=500)


def feed_all(segmenter: Segmenter, tokens: list[str]) -> list[str]:
    segments: list[str] = []
    for token in tokens:
        segments += segmenter.feed(token)
    return segments + segmenter.flush()


# ----- sentences and the first clause ------------------------------------------------------------


def test_a_long_enough_first_clause_is_spoken_first_then_whole_sentences() -> None:
    text = (
        "Hej Anna och alla andra i gruppen, mötet i morgon är flyttat till klockan tre. "
        "Ta med siffrorna, sammanfattningen och kaffe. Vi ses!"
    )
    assert stripped(segment_text(text)) == [
        "Hej Anna och alla andra i gruppen,",
        "mötet i morgon är flyttat till klockan tre.",
        "Ta med siffrorna, sammanfattningen och kaffe.",
        "Vi ses!",
    ]


def test_a_short_first_clause_waits_for_the_sentence() -> None:
    assert stripped(segment_text("Hej Anna, kom hit. Nu!")) == ["Hej Anna, kom hit.", "Nu!"]


def test_the_first_clause_threshold_is_configurable() -> None:
    segmenter = Segmenter(first_clause_min_chars=5)
    assert stripped(feed_all(segmenter, ["Hej Anna, kom hit. Nu!"])) == ["Hej Anna,", "kom hit.", "Nu!"]


@pytest.mark.parametrize("mark", [";", ":", "\N{EN DASH}", "\N{EM DASH}"])
def test_other_clause_marks_end_the_first_clause(mark: str) -> None:
    text = f"Det här är en ganska lång inledning {mark} sedan kommer resten."
    assert len(segment_text(text)) == 2


def test_a_long_first_sentence_without_marks_breaks_between_words() -> None:
    text = "ett två tre fyra fem sex sju åtta nio tio elva tolv tretton fjorton femton sexton sjutton arton"
    segments = segment_text(text, first_clause_max_chars=40)
    assert len(segments[0].strip()) <= 40
    assert segments[0].endswith(" ")
    assert not segments[0].strip().endswith(("fj", "fjor"))  # whole words only
    assert "".join(segments) == text


def test_a_word_break_never_leaves_a_first_word_alone() -> None:
    # "Ett " is under the first clause's minimum: the break comes after the next whole word instead.
    segments = segment_text(
        "Ett sammanträdesprotokoll skickas till alla", first_clause_min_chars=10, first_clause_max_chars=12
    )
    assert segments[0] == "Ett sammanträdesprotokoll "


def test_a_reply_being_written_speaks_its_first_few_words_early() -> None:
    reply = "Kan du ringa mig efter lunchen i morgon eftermiddag? Jag är ledig."
    tokens = [reply[i : i + 3] for i in range(0, len(reply), 3)]
    segmenter = Segmenter.for_model_reply("sv")
    fed = 0
    first: list[str] = []
    while not first:
        first = segmenter.feed(tokens[fed])
        fed += 1
    # Out before the sentence is, a few words long and ending between words.
    assert first == ["Kan du ringa mig "]
    assert len("".join(tokens[:fed])) < len("Kan du ringa mig efter lunchen")
    rest = feed_all(segmenter, tokens[fed:])
    assert stripped(rest) == ["efter lunchen i morgon eftermiddag?", "Jag är ledig."]
    # A known text keeps its whole first sentence.
    assert stripped(segment_text(reply))[0] == "Kan du ringa mig efter lunchen i morgon eftermiddag?"


def test_a_reply_being_written_still_ends_its_first_segment_at_a_short_clause() -> None:
    segmenter = Segmenter.for_model_reply("sv")
    assert segmenter.feed("Tack Anna, ") == []
    assert segmenter.feed("vi ses") == ["Tack Anna, "]


def test_questions_exclamations_and_closing_quotes_end_sentences() -> None:
    text = 'Vad?! Nej!! "Hej." sa hon. Han sa: "Kom nu." Sedan gick de. (Se bilagan.) Klart?'
    assert stripped(segment_text(text)) == [
        "Vad?!",
        "Nej!!",
        '"Hej." sa hon.',
        'Han sa: "Kom nu."',
        "Sedan gick de.",
        "(Se bilagan.)",
        "Klart?",
    ]


def test_swedish_quotes_may_open_a_sentence() -> None:
    assert stripped(segment_text("Hon log. ”Vi ses”, sa hon. »Okej.« Slut.")) == [
        "Hon log.",
        "”Vi ses”, sa hon.",
        "»Okej.«",
        "Slut.",
    ]


def test_a_lowercase_continuation_is_not_a_new_sentence() -> None:
    assert len(segment_text("Vänta... kanske imorgon. Vad? sa hon. Klart.")) == 3


def test_ellipses_end_a_sentence_only_before_a_new_one() -> None:
    assert stripped(segment_text("Jag vet inte... kanske imorgon. Hmm… Okej. Se [...] sidan två.")) == [
        "Jag vet inte... kanske imorgon.",
        "Hmm…",
        "Okej.",
        "Se [...] sidan två.",
    ]


def test_segments_keep_their_whitespace_and_join_back_exactly() -> None:
    text = "  Hej där.   Hur mår du?\n\nBra, tack.  "
    segments = segment_text(text)
    assert "".join(segments) == text
    assert segments == ["  Hej där.   ", "Hur mår du?\n\n", "Bra, tack.  "]


# ----- no wrong cuts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Vi ses kl. 15.30 vid entrén.",
        "Det tar ca. 3.5 s att ladda.",
        "Temperaturen är 3,5 grader i dag.",
        "Mötet börjar 15:30 och slutar 16.45 i morgon.",
        "Deadline är 2025-08-29 för alla.",
        "Deadline är 29.8.2025 för alla.",
        "Vi ses den 1. Maj i Stockholm.",
        "Ta med t.ex. kaffe och bl.a. kakor.",
        "Det gäller s.k. nyckelkunder, d.v.s. de största.",
        "Det gäller dvs. Anna och Erik.",
        "Ring tel. 08-123 45 67 i dag.",
        "Beställ nr. 5 och st. 3 av dem.",
        "Jfr. Sverige och Norge.",
        "Gäller fr.o.m. 1 juni t.o.m. 31 augusti.",
        "Inställt p.g.a. sjukdom hos f.d. VD:n.",
        "Kostar 100 kr resp. 200 kr.",
        "Läs mer på https://exempel.se/nyheter/2025/a.b?x=1 i dag.",
        "Läs mer på www.exempel.se. Sedan ringer du.",
        "Mejla anna.berg@firma.se före lunch.",
    ],
)
def test_swedish_abbreviations_numbers_and_addresses_do_not_split(text: str) -> None:
    segments = sentences(text, "sv")
    if text.startswith("Läs mer på www"):
        assert stripped(segments) == ["Läs mer på www.exempel.se.", "Sedan ringer du."]
    else:
        assert segments == [text]


@pytest.mark.parametrize(
    "text",
    [
        "We met Mr. Smith and Mrs. Jones today.",
        "Ask Dr. Who about it.",
        "Bring fruit, e.g. apples, i.e. something sweet.",
        "It was Arsenal vs. Chelsea at St. James.",
        "See No. 5 on the list.",
        "It takes approx. 3.5 s to load.",
        "We start at 9 a.m. sharp.",
        "J. R. R. Tolkien wrote it.",
        "Send it to bob@example.com before noon.",
    ],
)
def test_english_abbreviations_and_initials_do_not_split(text: str) -> None:
    assert sentences(text, "en") == [text]


def test_abbreviations_that_often_end_sentences_do_so_before_a_capital() -> None:
    assert stripped(segment_text("We bought apples, pears etc. Then we went home.", "en")) == [
        "We bought apples, pears etc.",
        "Then we went home.",
    ]
    assert stripped(segment_text("Vi köpte äpplen, päron m.m. Sedan gick vi hem.", "sv")) == [
        "Vi köpte äpplen, päron m.m.",
        "Sedan gick vi hem.",
    ]
    assert stripped(segment_text("We left at 5 p.m. Then it rained.", "en")) == [
        "We left at 5 p.m.",
        "Then it rained.",
    ]
    assert stripped(segment_text("No. That is wrong.", "en")) == ["No.", "That is wrong."]


def test_a_number_ends_a_sentence_unless_it_numbers_a_list() -> None:
    assert stripped(segment_text("Vi var 5. Sedan gick vi. År 2025. Nytt år.")) == [
        "Vi var 5.",
        "Sedan gick vi.",
        "År 2025.",
        "Nytt år.",
    ]


def test_numbered_lists_split_between_items_not_after_the_numbers() -> None:
    text = "Att göra:\n1. Köp mjölk\n2. Ring mamma\n3. Boka tid. Sedan vila."
    assert stripped(segment_text(text)) == [
        "Att göra:",
        "1. Köp mjölk",
        "2. Ring mamma",
        "3. Boka tid.",
        "Sedan vila.",
    ]
    inline = "Gör så här: 1. Öppna appen. 2. Klicka på knappen. Klart."
    assert stripped(segment_text(inline)) == [
        "Gör så här: 1. Öppna appen.",
        "2. Klicka på knappen.",
        "Klart.",
    ]


def test_bullets_and_blank_lines_split() -> None:
    text = "Inköpslista\n- mjölk\n- bröd\n\nmvh Anna"
    assert stripped(segment_text(text)) == ["Inköpslista", "- mjölk", "- bröd", "mvh Anna"]


def test_a_wrapped_line_does_not_split() -> None:
    assert segment_text("Vi behöver prata om\nbudgeten i morgon.") == ["Vi behöver prata om\nbudgeten i morgon."]


# ----- streaming -----------------------------------------------------------------------------------


def test_a_sentence_is_released_as_soon_as_the_next_one_starts() -> None:
    segmenter = Segmenter(lang="sv")
    assert segmenter.feed("Hej ") == []
    assert segmenter.feed("där.") == []
    assert segmenter.feed(" ") == []  # could still be "där. och" or "kl. 15"
    assert segmenter.feed("Hur") == ["Hej där. "]
    assert segmenter.feed(" mår du?") == []
    assert segmenter.flush() == ["Hur mår du?"]


def test_an_abbreviation_is_held_until_the_next_word_decides() -> None:
    segmenter = Segmenter(lang="sv")
    assert segmenter.feed("Vi ses kl. ") == []
    assert segmenter.feed("15.30 i ") == []
    assert segmenter.feed("hallen. Ta") == ["Vi ses kl. 15.30 i hallen. "]


def test_whitespace_split_across_tokens_stays_with_its_segment() -> None:
    segmenter = Segmenter(first_clause_min_chars=3)
    assert feed_all(segmenter, ["Hej,", " ", " ", "\n", "du. ", " ", "Då"]) == ["Hej,  \n", "du.  ", "Då"]


def test_flush_returns_the_rest_and_the_segmenter_starts_afresh() -> None:
    segmenter = Segmenter()
    assert segmenter.feed("Ingen punkt här") == []
    assert segmenter.flush() == ["Ingen punkt här"]
    assert segmenter.flush() == []
    long_clause = "Det här är en lång första bisats, och sedan resten."
    assert stripped(feed_all(segmenter, [long_clause])) == [
        "Det här är en lång första bisats,",
        "och sedan resten.",
    ]


def test_invalid_thresholds_are_refused() -> None:
    with pytest.raises(ValueError, match="first_clause_min_chars"):
        Segmenter(first_clause_min_chars=0)
    with pytest.raises(ValueError, match="first_clause_max_chars"):
        Segmenter(first_clause_min_chars=30, first_clause_max_chars=10)


# ----- properties ---------------------------------------------------------------------------------

FRAGMENTS = [
    "Hej", "där", "Anna", " ", "  ", "\n", "\n\n", ".", "!", "?", "?!", "...", "…", ",", ";", ":",
    " \N{EN DASH} ", '"', "”", "»", "(", ")", "t.ex.", "kl.", "Mr.", "Dr.", "etc.", "m.m.", "No.", "p.m.",
    "1.", "2)", "15.30",
    "3,5", "3.5", "2025-08-29", "29.8.2025", "Maj", "maj", "J.", "https://x.se/a.b", "a@b.se", "- ", "• ",
    "Öppna", "ok", "12", "U.S.", "st.", "1. ", "\n1. ", "\n- ", "den 1. Maj", "var 5. Sedan", "kl. 9",
    "t.ex. Anna", "etc. Then", "Hej, ", "J. R. Smith", ",  ", ".  ", "!\n\n", ": \n",
]  # fmt: skip
ALPHABET = 'aAbBöÖ1 .!?…,;:\N{EN DASH}"”)(\n-'

pieces = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(alphabet=ALPHABET, max_size=4)), max_size=40).map(
    "".join
)
# Texts that open with a clause, so the first-clause rule meets whitespace runs and early ends.
clause_first = st.tuples(
    st.sampled_from(["Hej", "Hej Anna och alla", "Det här är en lång inledning", "1. Punkt"]),
    st.sampled_from([",", ";", ":", " \N{EN DASH}", "\N{EM DASH}"]),
    st.text(alphabet=" \n\t", max_size=3),
    pieces,
).map("".join)
texts = st.one_of(pieces, clause_first)


def split_at(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(max(cut, 0), len(text)) for cut in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(text[start:point])
        start = point
    pieces.append(text[start:])
    return pieces


@settings(max_examples=400, deadline=None)
@given(
    text=texts,
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=30),
    lang=st.sampled_from(["sv", "en"]),
    min_chars=st.integers(min_value=1, max_value=30),
    extra_chars=st.integers(min_value=0, max_value=60),
)
def test_any_token_split_gives_the_same_segments_as_the_whole_text(
    text: str, cuts: list[int], lang: str, min_chars: int, extra_chars: int
) -> None:
    limits = {"first_clause_min_chars": min_chars, "first_clause_max_chars": min_chars + extra_chars}
    whole = segment_text(text, lang, **limits)
    assert "".join(whole) == text
    assert all(whole), "no empty segments"
    streamed = feed_all(Segmenter(lang=lang, **limits), split_at(text, cuts))
    assert streamed == whole
    by_character = feed_all(Segmenter(lang=lang, **limits), list(text))
    assert by_character == whole


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300), cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=20))
def test_arbitrary_unicode_text_joins_back_in_any_split(text: str, cuts: list[int]) -> None:
    whole = segment_text(text)
    assert "".join(whole) == text
    assert feed_all(Segmenter(), split_at(text, cuts)) == whole
