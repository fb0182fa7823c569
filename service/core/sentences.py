"""Splitting a text into sentences, so each is translated as the models were trained: one sentence at
a time. pysbd's rules know abbreviations, numbers and quotes per language ("Dr. Müller kam um 3 Uhr."
is one sentence) and the full-width marks of Chinese and Japanese."""

from __future__ import annotations

import re

import pysbd
from pysbd.languages import LANGUAGE_CODES

_SENTENCE_END = re.compile(r"[.!?。！？…;；]")


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
        parts = [p.strip() for p in self._segmenter.segment(body)]
        return [p for p in parts if p] or [body]
