"""Request keys: which requests are "the same" for single-flight coalescing and the cache.

Two requests share a key when their texts match after normalization and every other
input that shapes the answer (class, target language, model tier, prompt version and
kind of result) is identical.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata

# Bumped if the key layout itself changes, so old cache entries can never be mistaken for new ones.
_KEY_LAYOUT = "voicelane-key-1"


def normalize_text(text: str) -> str:
    """Unicode NFC, case-folded, whitespace runs collapsed to one space, stripped.

    NFC is applied again after case folding because folding can produce decomposed
    sequences (e.g. "İ" folds to "i" plus a combining dot).
    """
    folded = unicodedata.normalize("NFC", text).casefold()
    return " ".join(unicodedata.normalize("NFC", folded).split())


def request_key(
    *,
    text: str,
    request_class: str,
    target_lang: str,
    tier: str,
    prompt_version: str,
    kind: str = "text",
) -> str:
    """The sha256 hex key of a request.

    `text` is normalized; the other components are used exactly as given. `kind` keeps
    different products of the same text apart, e.g. "text" for the rewritten text and
    "audio:<voice>:<format>" for its synthesized speech.
    """
    payload = json.dumps(
        [_KEY_LAYOUT, normalize_text(text), request_class, target_lang, tier, prompt_version, kind],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
