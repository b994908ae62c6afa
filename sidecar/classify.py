"""Request classes: the priority that follows from what the app says a text is, and its length.

Priorities (0 is served first): a short chat or notification is 0; a longer one, an
email TL;DR and a whole email (whose TL;DR is spoken first) are 1; an email segment is
2, which the scheduler dispatches only while nothing of priority 0 or 1 is pending.
"""

from __future__ import annotations

from voicelane.core.routing import text_length
from voicelane.sidecar.config import ClassesConfig, RequestClass


def priority_for(request_class: RequestClass, text: str, classes: ClassesConfig) -> int:
    """The scheduling priority of `text` sent as `request_class` (0 highest)."""
    if request_class in (RequestClass.CHAT, RequestClass.NOTIFICATION):
        return 0 if text_length(text) <= classes.short_max_chars else 1
    if request_class is RequestClass.EMAIL_SEGMENT:
        return 2
    # EMAIL_TLDR, and EMAIL: a whole email is answered with its TL;DR first.
    return 1


def default_class_for_text(text: str, classes: ClassesConfig) -> RequestClass:
    """The class of a transparent-API call that carries no X-Voicelane-Source header.

    Always CHAT, so length alone sets the priority through `priority_for`: a short text
    runs at 0 and a longer one at 1. An unlabelled long text is deliberately not treated
    as an email segment: the app is waiting for the answer, and idle-only dispatch could
    starve it behind steady chat traffic.
    """
    # `text` and `classes` stay in the signature so the rule can grow without changing callers.
    return RequestClass.CHAT
