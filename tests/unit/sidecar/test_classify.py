"""Request classes and their priorities."""

from __future__ import annotations

import pytest

from voicelane.sidecar.classify import (
    default_class_for_text,
    priority_for,
)
from voicelane.sidecar.config import ClassesConfig, RequestClass

CLASSES = ClassesConfig()
SHORT = "Hej! Ses vi kl. 15.30?"
LONG = "Det här är ett längre meddelande. " * 5  # 170 characters


@pytest.mark.parametrize("request_class", [RequestClass.CHAT, RequestClass.NOTIFICATION])
def test_short_chat_and_notifications_run_first(request_class: RequestClass) -> None:
    assert priority_for(request_class, SHORT, CLASSES) == 0


@pytest.mark.parametrize("request_class", [RequestClass.CHAT, RequestClass.NOTIFICATION])
def test_long_chat_and_notifications_run_at_priority_1(request_class: RequestClass) -> None:
    assert len(LONG.strip()) > CLASSES.short_max_chars
    assert priority_for(request_class, LONG, CLASSES) == 1


def test_the_short_limit_is_inclusive_and_configurable() -> None:
    assert priority_for(RequestClass.CHAT, "x" * 130, CLASSES) == 0
    assert priority_for(RequestClass.CHAT, "x" * 131, CLASSES) == 1
    assert priority_for(RequestClass.CHAT, "x" * 20, ClassesConfig(short_max_chars=10)) == 1


def test_whitespace_padding_does_not_make_a_text_long() -> None:
    padded = "Hej" + " " * 200 + "där\n\n\n"
    assert priority_for(RequestClass.CHAT, padded, CLASSES) == 0


@pytest.mark.parametrize(
    ("request_class", "priority"),
    [(RequestClass.EMAIL_TLDR, 1), (RequestClass.EMAIL, 1), (RequestClass.EMAIL_SEGMENT, 2)],
)
def test_email_priorities_do_not_depend_on_length(request_class: RequestClass, priority: int) -> None:
    assert priority_for(request_class, SHORT, CLASSES) == priority
    assert priority_for(request_class, LONG * 10, CLASSES) == priority


def test_an_unlabelled_text_is_chat_so_its_length_sets_its_priority() -> None:
    short_class = default_class_for_text(SHORT, CLASSES)
    long_class = default_class_for_text(LONG, CLASSES)
    assert priority_for(short_class, SHORT, CLASSES) == 0
    assert priority_for(long_class, LONG, CLASSES) == 1
