"""Language of a text and whether a completion answers in another language than it was asked.

Pure and bounded: :func:`language` reads the first ~200 prose characters (py3langid's bundled model,
restricted per script: :mod:`monitor.quality.language_id`); the translation cues are looked for in the
first and last 300 characters. Call :func:`warm_up` once at startup (0.7 s).
"""

from __future__ import annotations

import re

from monitor.quality import language_id

__all__ = ["warm_up", "language", "language_mismatch"]


def warm_up() -> bool:
    """Load the language model (about 0.7 s, once per process) now rather than on the first event
    that needs it; call it when ingest starts. True when py3langid is available."""
    return language_id.warm_up()


def language(text: str) -> str:
    """ISO 639-1 code of the language ``text`` is written in, or ``""`` when unsure.

    Invariants: the answer is ``""`` or one of :data:`monitor.quality.language_id.LANGUAGES`;
    ``""`` when the prose (code blocks, inline code, URLs, numbers, placeholders and code-like
    lines removed) has fewer than 3 words (4 Han/kana/Hangul characters) or py3langid's
    probability is below 0.6. Only the first ~200 prose characters are read. Deterministic.
    """
    return language_id.detect(text)


_TRANSLATION_CUE = re.compile(
    r"translat|übersetz|tradu[isz]|traduc|vertaal|tłumacz|перевед|перевод|çevir|ترجم|翻[译訳]|번역"
    r"|\b(?:in|into|to)\s+(?:english|german|french|spanish|italian|portuguese|dutch|polish|russian|chinese"
    r"|japanese|korean|arabic|turkish)\b"
    r"|\b(?:auf|in)\s+(?:deutsch|englisch|französisch|spanisch|italienisch)\b"
    r"|\ben\s+(?:français|anglais|allemand|espagnol|italien)\b|\ben\s+(?:inglés|español|francés|alemán)\b"
    r"|\bin\s+(?:inglese|italiano|tedesco|francese)\b|\bem\s+(?:inglês|português)\b"
    r"|\bop\s+(?:engels|nederlands)\b|\bin\s+het\s+(?:engels|nederlands|duits|frans)\b"
    r"|\bpo\s+(?:angielsku|polsku)\b|\bпо-(?:английски|русски)\b|用(?:英文|英语|中文|日语)|(?:英語|日本語)で")
"""Asking for a translation or naming the output language; matched on lower-cased text."""
_CUE_CHARS = 300
"""Translation requests and "answer in English" stand at the start or the end of a prompt."""


_CUE_GATE = ("transl", "übersetz", "tradu", "vertaal", "tłumacz", "перев", "çevir", "ترجم", "翻", "번역", "engl",
             "germ", "fren", "span", "ital", "portug", "dutch", "polish", "russ", "chin", "japan", "korea", "arab",
             "turk", "deutsch", "franç", "franz", "anglais", "allemand", "espagnol", "inglé", "españ", "francé",
             "alemán", "ingle", "tedesco", "inglê", "nederl", "duits", "frans", "angiel", "polsk", "англ", "русск",
             "英", "中文", "日语", "日本語")
"""Substrings one of which every :data:`_TRANSLATION_CUE` match contains (``in`` is far cheaper)."""


def _asks_for_language(text: str) -> bool:
    if len(text) > 2 * _CUE_CHARS:
        text = text[:_CUE_CHARS] + "\n" + text[-_CUE_CHARS:]
    text = text.lower()
    if not any(g in text for g in _CUE_GATE):
        return False
    return _TRANSLATION_CUE.search(text) is not None


def language_mismatch(prompt: str, completion: str, *, prompt_language: str | None = None,
                      completion_language: str | None = None, instructions: str = "") -> bool:
    """True when prompt and completion are both in a known language and the languages differ.

    Invariants: False whenever either language is ``""`` (short texts, pure code: code blocks are
    never read), and False when the prompt or ``instructions`` (the system prompt) ask for a
    translation or name an output language ("translate", "auf Deutsch", "in English", "用英文")
    in their first or last 300 characters: then a different language is what was asked for.
    Languages already computed can be passed in (:func:`analyse` does) to save the work.
    """
    lp = language(prompt) if prompt_language is None else prompt_language
    if not lp:
        return False
    lc = language(completion) if completion_language is None else completion_language
    if not lc or lc == lp:
        return False
    return not (_asks_for_language(prompt) or instructions and _asks_for_language(instructions))
