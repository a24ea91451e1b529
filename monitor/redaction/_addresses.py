"""Street addresses: the street line (house number, street name, street type) in the shapes used in
the US/UK, Germany/Austria/Switzerland/the Netherlands, France, Spain and Italy.

What is replaced is the street line only (``221B Baker Street``, ``Musterstraße 12``,
``12 rue de la Paix``, ``Calle Mayor 5``, ``Via Roma 12``); postcode and town stay, they
identify nobody on their own. No named-entity model: every shape needs a house number and a
street-type word (``Street``, ``Ave``, ``-straße``, ``rue``, ``Calle`` ...) and street names
that start with a capital letter, so an address typed all in lower case is missed (README:
measured recall). The supersets are the street-type words, next to a digit where they are
short or common words.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from monitor.redaction._base import _ANY, _DIGITS, _HI, Detector, _word, _word_start

__all__ = ["ADDRESS"]

_CAP = "A-ZÀ-ÖØ-Þ"
"""Capital letters of the Latin alphabets street names are written in here."""
_NAME = rf"(?:[0-9]{{1,3}}(?:st|nd|rd|th)|[{_CAP}][\w'’.\-]{{0,29}})"
"""One word of a street name: a capitalised word, or an ordinal (``5th``)."""

# --------------------------------------------------------------------------- US / UK: number, name, type

_EN_TYPES = ("Street", "St", "Avenue", "Ave", "Road", "Rd", "Boulevard", "Blvd", "Lane", "Ln", "Drive", "Dr",
             "Terrace", "Parkway", "Pkwy", "Highway", "Hwy", "Court", "Ct", "Place", "Pl", "Way", "Square", "Sq",
             "Crescent", "Close", "Circle", "Gardens", "Mews")
_EN = re.compile(
    rf"[0-9](?<![\w\-.,/:$€£][0-9])[0-9]{{0,4}}[A-Za-z]?,?[ \t](?:{_NAME}[ \t]){{1,4}}"
    rf"(?:{'|'.join(sorted(_EN_TYPES, key=len, reverse=True))})\.?(?:[ \t](?:NE|NW|SE|SW|N|S|E|W)\b)?(?![\w])")
_EN_NOT_NAMES = frozenset({"The", "A", "An", "And", "Or", "Of", "In", "On", "At", "To", "For", "By", "With", "From",
                           "I", "We", "You", "My", "Our", "Your", "It", "This", "That", "These", "Those"})


def _en_ok(m: re.Match[str], text: str) -> bool:
    """Not a number that ends a sentence or counts something (``in 2019 The Court``, ``3 Big Street``
    is kept): the first street-name word is no article, pronoun or preposition."""
    return m.group().split()[1] not in _EN_NOT_NAMES


# --------------------------------------------------------------------------- DE/AT/CH/NL: name+type, number

_DE_TYPES = ("straße", "strasse", "str.", "weg", "allee", "platz", "gasse", "damm", "ufer", "chaussee", "steig",
             "pfad", "straat", "laan", "plein", "gracht", "kade", "dijk", "singel")
_DE_NUMBER = re.compile(r"[ \t]?[0-9]{1,4}(?:[ \t]?[a-zA-Z](?![\w]))?(?![\w]|[.,][0-9])")
_DE_TYPE_VARIANTS = tuple(t[0].upper() + t[1:] for t in _DE_TYPES) + _DE_TYPES


def _de_candidates(pattern: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    """Anchored on the type and number (``straße 12``; ``str.find`` per type, cheaper than one
    alternation tried at every position): the street name is the word it is glued to
    (``Musterstraße``, ``Konrad-Adenauer-Straße``) or, for a type written apart (``Kölner Straße``),
    the capitalised word before it."""
    spans = []
    for word in _DE_TYPE_VARIANTS:
        at = text.find(word)
        while at >= 0:
            number = pattern.match(text, at + len(word))
            if number is not None:
                start = _street_name_start(text, at)
                if start is not None:
                    spans.append((start, number.end()))
            at = text.find(word, at + 1)
    for start, end in sorted(spans):
        yield _ANY.match(text, start, end)


def _street_name_start(text: str, at: int) -> int | None:
    start = at
    while start > 0 and (text[start - 1].isalpha() or text[start - 1] == "-"):
        start -= 1
    if start == at:  # written apart: one capitalised word before it
        if not text[at].isupper() or at < 2 or text[at - 1] != " ":
            return None
        start -= 1
        while start > 0 and (text[start - 1].isalpha() or text[start - 1] == "-"):
            start -= 1
        if start == at - 1:
            return None
    return start if text[start].isupper() and at - start >= 2 else None


# --------------------------------------------------------------------------- FR: number, type, name

_PARTICLE_FR = r"(?:(?:de|du|des|la|le|les|et|sur|aux?)[ \t]|[ld]['’])"
_FR_TYPES = ("rue", "avenue", "av.", "boulevard", "bd", "place", "chemin", "allée", "impasse", "quai", "cours",
             "route", "square")
_FR = re.compile(
    rf"[0-9](?<![\w\-.,/:$€£][0-9])[0-9]{{0,3}}(?:[ \t]?(?:bis|ter)|[A-Da-d])?,?[ \t]"
    rf"(?:{'|'.join(re.escape(t) + '|' + re.escape(t.capitalize()) for t in _FR_TYPES)})[ \t]"
    rf"{_PARTICLE_FR}*[{_CAP}][\w'’\-]*(?:[ \t]{_PARTICLE_FR}*[{_CAP}][\w'’\-]*){{0,4}}")

# --------------------------------------------------------------------------- ES / IT: type, name, number

_ES_TYPES = ("Calle", "C/", "Avenida", "Avda.", "Paseo", "Plaza", "Camino", "Carrer", "Rúa", "Via", "Viale",
             "Piazza", "Piazzale", "Corso", "Vicolo", "Largo")
_PARTICLE_ES = r"(?:(?:de|del|la|las|los|el|y|di|della|delle|dei|degli|San|Santa)[ \t])"
_ES = re.compile(
    rf"(?:{'|'.join(map(re.escape, sorted(_ES_TYPES, key=len, reverse=True)))})[ \t]?"
    rf"{_PARTICLE_ES}*[{_CAP}][\w'’\-]*(?:[ \t]{_PARTICLE_ES}*[{_CAP}][\w'’\-]*){{0,4}},?[ \t]"
    r"(?:n[º°o]\.?[ \t]?)?[0-9]{1,4}(?:[ \t]?[A-Za-z](?![\w]))?(?![\w]|[.,][0-9])")

# --------------------------------------------------------------------------- supersets

_NAME_BYTES = rf"[A-Za-z0-9_'.\-{_HI}]"
"""Any byte of a street-name word (``\\w``, apostrophes, dots and hyphens; non-ASCII)."""
_SUP_EN = (rf"[0-9][A-Za-z]?,?[ \t]{_NAME_BYTES}[A-Za-z0-9_'.\- \t{_HI}]*[ \t]"
           "(?:" + "|".join(sorted(_EN_TYPES, key=len, reverse=True)) + ")")


def _either_case(word: str) -> str:
    """``word`` with its first letter in either case, for a case-sensitive superset."""
    return f"[{word[0].upper()}{word[0]}]" + _word(word[1:])


_SUP_DE = "(?:" + "|".join(map(_either_case, _DE_TYPES)) + r")[ \t]?[0-9]"
_SUP_FR = r"[0-9][ \ta-zA-Z,]{0,5}[ \t](?:" + "|".join(map(_either_case, _FR_TYPES)) + r")[ \t]"
_SUP_ES = "(?:" + "|".join(map(_word, _ES_TYPES)) + ")"

ADDRESS = (
    Detector("ADDRESS", _EN, prefilter=_DIGITS, validate=_en_ok, superset=_SUP_EN),
    Detector("ADDRESS", _DE_NUMBER, prefilter=_DIGITS, finder=_de_candidates, superset=_SUP_DE),
    Detector("ADDRESS", _FR, prefilter=_DIGITS, validate=lambda m, t: _word_start(t, m.start()), superset=_SUP_FR),
    Detector("ADDRESS", _ES, prefilter=_DIGITS, validate=lambda m, t: _word_start(t, m.start()), superset=_SUP_ES),
)
