"""Splitting a text into sentences, so each is translated as the models were trained: one sentence at
a time. pysbd's rules know abbreviations, numbers and quotes per language ("Dr. Müller kam um 3 Uhr."
is one sentence) and the full-width marks of Chinese and Japanese."""

from __future__ import annotations

import re

import pysbd
from pysbd.languages import LANGUAGE_CODES

_SENTENCE_END = re.compile(r"[.!?。！？…;；]")


def _letters(parts: list[str]) -> str:
    return "".join("".join(p.split()) for p in parts)


class SentenceSplitter:
    """Sentences of a text in ``language`` (an ISO 639-1 code; languages pysbd lacks get its English
    rules)."""

    def __init__(self, language: str = "") -> None:
        self.language = language if language in LANGUAGE_CODES else "en"
        self._segmenter = pysbd.Segmenter(language=self.language, clean=False)

    def split(self, text: str) -> list[str]:
        """The sentences of ``text``, stripped; ``[text.strip()]`` when it has a single one."""
        body = text.strip()
        if not _SENTENCE_END.search(body, 0, len(body) - 1):  # no mark before the last character
            return [body]
        try:
            parts = [p.strip() for p in self._segmenter.segment(body)]
        except Exception:  # noqa: BLE001 - pysbd 0.3.4 builds regexes from text (German "z(b)"): one sentence then
            return [body]
        parts = [p for p in parts if p]
        if _letters(parts) != _letters([body]):  # pysbd drops trailing marks ("Er kam.!?"): never lose text
            return [body]
        return parts or [body]
