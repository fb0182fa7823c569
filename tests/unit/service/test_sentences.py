"""Splitting texts into sentences for translation (service.core.sentences)."""

from __future__ import annotations

import pytest

from service.core.sentences import SentenceSplitter


@pytest.mark.parametrize("language, text, sentences", [
    ("de", "Ein Mann fährt Fahrrad. Zwei Hunde spielen im Schnee!  Wer lacht?",
     ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee!", "Wer lacht?"]),
    ("de", "Dr. Müller kam um 3 Uhr. Er war müde.", ["Dr. Müller kam um 3 Uhr.", "Er war müde."]),  # abbreviation
    ("de", "Es kostet 3.50 Euro.", ["Es kostet 3.50 Euro."]),  # a decimal point ends nothing
    ("zh", "我是中国人。我说中文！你呢？", ["我是中国人。", "我说中文！", "你呢？"]),
    ("zh", "我是中国人，我说中文。", ["我是中国人，我说中文。"]),  # a comma does not end a sentence
    ("en", "  One sentence without an end ", ["One sentence without an end"]),
    ("xx", "First one. Second one.", ["First one.", "Second one."]),  # unknown language: English rules
])
def test_sentences(language, text, sentences):
    assert SentenceSplitter(language).split(text) == sentences


def test_unknown_languages_use_english_rules():
    assert SentenceSplitter("xx").language == "en" and SentenceSplitter("").language == "en"
    assert SentenceSplitter("de").language == "de"


@pytest.mark.parametrize("text", ["Ein Mann sagt z.B. Hallo. Die Variable z(b) ist gut.", "Er kam.!? Sie ging."])
def test_texts_the_rules_cannot_split_stay_whole_and_nothing_is_lost(text):
    """pysbd 0.3.4 raises re.error on some German abbreviations and drops trailing marks: such texts
    stay one sentence rather than fail or lose characters."""
    parts = SentenceSplitter("de").split(text)
    assert "".join("".join(p.split()) for p in parts) == "".join(text.split())
