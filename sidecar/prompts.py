"""Prompt templates per request class: what the model is asked to do with a text."""

from __future__ import annotations

from voicelane.sidecar.config import PromptsConfig, RequestClass, SidecarConfig

LANGUAGE_NAMES = {"sv": "Swedish", "en": "English", "no": "Norwegian", "da": "Danish", "fi": "Finnish", "de": "German"}


def template_class(request_class: RequestClass) -> RequestClass:
    # A whole email is summarised first: its spoken part is the TL;DR.
    return RequestClass.EMAIL_TLDR if request_class is RequestClass.EMAIL else request_class


def build_messages(
    config: SidecarConfig, *, text: str, request_class: RequestClass, target_lang: str
) -> list[dict[str, str]]:
    prompts: PromptsConfig = config.prompts
    template = prompts.templates.get(template_class(request_class)) or prompts.templates.get(RequestClass.CHAT, "")
    system = template.format(
        target_lang=LANGUAGE_NAMES.get(target_lang.lower(), target_lang),
        tldr_max_chars=config.classes.tldr_max_chars,
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]
