"""Captions made from digit labels: the text side of the embedded text-to-image benchmark."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DEFAULT_TEMPLATES = ("a handwritten {word}", "the digit {digit}", "a drawing of the number {word}",
                     "handwritten digit {digit}", "the number {word}", "a scribbled {word}")


def make_caption(label: int, template: str) -> str:
    return template.format(word=WORDS[int(label)], digit=int(label))


def caption_table(templates: tuple[str, ...], num_classes: int = 10) -> list[list[str]]:
    """captions[label][template index]."""
    return [[make_caption(c, t) for t in templates] for c in range(num_classes)]


def captions_of(labels, template_index, templates: tuple[str, ...]) -> list[str]:
    """The caption of each (label, template index) pair."""
    return [make_caption(int(c), templates[int(t)]) for c, t in zip(labels, template_index)]


@dataclass(frozen=True)
class CaptionConfig:
    """Caption templates; ``{word}`` is the digit's name, ``{digit}`` its numeral."""

    templates: tuple[str, ...] = DEFAULT_TEMPLATES

    def __post_init__(self):
        if not self.templates:
            raise ConfigError("templates must not be empty")
        for t in self.templates:
            if "{word}" not in t and "{digit}" not in t:
                raise ConfigError(f"template {t!r} names no digit (use {{word}} or {{digit}})")
            try:
                make_caption(7, t)
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(f"template {t!r} is not a valid format string: {exc}") from None
