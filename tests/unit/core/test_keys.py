"""Request keys: equal for the same text however it is typed, different for anything else."""

from __future__ import annotations

import unicodedata

from hypothesis import assume, given
from hypothesis import strategies as st

from voicelane.core.keys import normalize_text, request_key

BASE = {
    "text": "Hej Åsa, ses vi kl. 15.30?",
    "request_class": "chat",
    "target_lang": "sv",
    "tier": "fast",
    "prompt_version": "v1",
    "kind": "text",
}

# Letters whose upper and lower case fold to the same thing (unlike, say, Turkish dotless i).
CASE_ALPHABET = "abcdefghijklmnopqrstuvwxyzåäöéüABCDEFGHIJKLMNOPQRSTUVWXYZÅÄÖÉÜ0123456789.,!?'-"
words = st.lists(st.text(alphabet=CASE_ALPHABET, min_size=1, max_size=8), min_size=1, max_size=8)
whitespace_runs = st.text(alphabet=" \t\n\r\u00a0\u2003", min_size=1, max_size=4)


def key(**changes: str) -> str:
    return request_key(**{**BASE, **changes})


def test_normalize_text_folds_case_collapses_whitespace_and_strips() -> None:
    assert normalize_text("  Hej\t\tÅSA \n där  ") == "hej åsa där"


def test_normalize_text_composes_decomposed_characters() -> None:
    assert normalize_text("A\u030a") == "å"


@given(words=words, data=st.data())
def test_keys_equal_for_texts_differing_only_in_case(words: list[str], data: st.DataObject) -> None:
    text = " ".join(words)
    flips = data.draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    recased = "".join(c.swapcase() if flip else c for c, flip in zip(text, flips, strict=True))
    assert key(text=recased) == key(text=text)


@given(words=words, data=st.data())
def test_keys_equal_for_texts_differing_only_in_whitespace(words: list[str], data: st.DataObject) -> None:
    runs = data.draw(st.lists(whitespace_runs, min_size=len(words) + 1, max_size=len(words) + 1))
    spaced = runs[0] + "".join(word + run for word, run in zip(words, runs[1:], strict=True))
    assert key(text=spaced) == key(text=" ".join(words))


@given(text=st.text())
def test_keys_equal_for_nfc_and_nfd_forms(text: str) -> None:
    nfd = unicodedata.normalize("NFD", text)
    nfc = unicodedata.normalize("NFC", text)
    assert key(text=nfd) == key(text=nfc)


@given(a=st.text(), b=st.text())
def test_keys_differ_for_different_normalized_texts(a: str, b: str) -> None:
    assume(normalize_text(a) != normalize_text(b))
    assert key(text=a) != key(text=b)


@given(
    component=st.sampled_from(["request_class", "target_lang", "tier", "prompt_version", "kind"]),
    value=st.text(max_size=20),
)
def test_keys_differ_when_any_other_component_differs(component: str, value: str) -> None:
    assume(value != BASE[component])
    assert key(**{component: value}) != key()


def test_audio_and_text_of_the_same_request_do_not_collide() -> None:
    assert key(kind="audio:sv:wav") != key(kind="text")
    assert key(kind="audio:sv:wav") != key(kind="audio:sv:pcm")


def test_components_cannot_bleed_into_each_other() -> None:
    # A separator-joined key would make these equal.
    assert key(text="a b", target_lang="sv") != key(text="a", target_lang="b sv")
    assert key(tier="fast", prompt_version="v1") != key(tier="fastv", prompt_version="1")


def test_key_is_a_stable_sha256_hex_digest() -> None:
    first = key()
    assert first == key()
    assert len(first) == 64
    assert int(first, 16) >= 0
