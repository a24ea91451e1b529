"""Identity and account numbers: IBAN, US SSN, national ids, passports, dates of birth, AWS secrets.

Precision comes from the number itself where it carries a check (IBAN mod 97,
German Steuer-IdNr ISO 7064 mod 11,10, Dutch BSN 11-proof, French NIR mod 97,
Spanish DNI/NIE mod 23), from issuing rules where it has none (SSA's invalid
SSN ranges, HMRC's NINO prefixes), and from a context word otherwise: a bare
nine-digit number is an SSN only after ``SSN`` / ``social security``, a date is
a date of birth only after ``born``, ``DOB``, ``geboren`` ..., a passport number
only after ``passport``, ``Reisepass`` ... and a 40-character AWS secret key only
near ``aws``, ``secret`` or an access key id. Supersets follow the rules of
:mod:`monitor.redaction.detectors`: context detectors' supersets are their
keywords; number detectors' supersets start at digits.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

from monitor.redaction._base import _ANY, _BLANKS, _DIGITS, Detector, _before, _lower, _word, _word_start

__all__ = ["IBAN", "SSN", "NATIONAL_ID", "PASSPORT", "DATE_OF_BIRTH", "AWS_SECRET",
           "iban_ok", "steuer_id_ok", "bsn_ok", "nir_ok"]

_NO_ALNUM_AFTER = r"(?![0-9A-Za-z])"

# --------------------------------------------------------------------------- IBAN

IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28,
    "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}
"""ISO 13616 registry: country code to IBAN length (SWIFT's IBAN registry)."""

_IBAN_HEAD = re.compile(r"[0-9](?<=[A-Za-z][A-Za-z][0-9])[0-9]")
"""The check digits after two letters: digits are rarer than letters, so the scan skips ahead faster."""
_ALNUM_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ALNUM = _ALNUM_UPPER | frozenset("abcdefghijklmnopqrstuvwxyz")


def iban_ok(iban: str) -> bool:
    """ISO 13616: known country, its length, and the ISO 7064 mod 97-10 check (``== 1``)."""
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not all(c in _ALNUM_UPPER for c in iban):
        return False
    digits = "".join(str(int(c, 36)) for c in iban[4:] + iban[:4])
    return int(digits) % 97 == 1


def _iban_candidates(pattern: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    """From each ``CCdd`` on: exactly the country's length in characters, compact or in groups of four
    separated by single spaces or hyphens (``DE89 3704 0044 0532 0130 00``), in one case; never glued
    to a following letter or digit."""
    for m in pattern.finditer(text):
        start = m.start() - 2
        if start > 0 and text[start - 1] in _ALNUM:
            continue
        head = text[start:m.end()]
        need = IBAN_LENGTHS.get(head[:2].upper())
        if need is None or head[0].islower() != head[1].islower():
            continue
        pos, left, end = m.end(), need - 4, len(text)
        sep = text[pos] if pos < end and text[pos] in " -" else ""
        while left > 0:
            if sep:
                if pos >= end or text[pos] != sep:
                    break
                pos += 1
            group = min(4, left) if sep else left
            if pos + group > end or not all(c in _ALNUM for c in text[pos:pos + group]):
                break
            pos += group
            left -= group
        if left == 0 and (pos == end or not text[pos].isalnum()):
            yield _ANY.match(text, start, pos)


def _iban_found_ok(m: re.Match[str], text: str) -> bool:
    raw = m.group().replace(" ", "").replace("-", "")
    return (raw.isupper() or raw.islower()) and iban_ok(raw.upper())  # one case throughout


IBAN = (Detector("IBAN", _IBAN_HEAD, prefilter=_DIGITS, finder=_iban_candidates, validate=_iban_found_ok,
                 superset=r"[A-Za-z]{2}[0-9]{2}(?:[ \-]?[A-Za-z0-9]){11}"),)

# --------------------------------------------------------------------------- US social security numbers

_SSN_NOT_ISSUED = frozenset({"078051120", "219099999", "123456789"})
"""Numbers the SSA voided after they were printed in advertising (and the textbook example)."""
_SSN_DASHED = re.compile(r"[0-9](?<![\w\-.,+][0-9])(?<![0-9]/[0-9])[0-9]{2}-[0-9]{2}-[0-9]{4}(?![\w]|[\-.,/][0-9])")
"""A dashed 3-2-4 number standing alone: a URL path segment (``/lookup/536-22-1234``) counts, a
fraction or date (``1/536-22-1234``) does not."""
_SSN_WORDS = (r"ssn|social[ \t]+security(?:[ \t]+(?:number|no\.?|#))?|soc\.?[ \t]?sec\.?(?:[ \t]?(?:no\.?|#))?"
              r"|ss#|ss[ \t]+no\.?")
_SSN_KEYWORD, _SSN_KEYWORD_CI = _lower(
    rf"(?:{_SSN_WORDS})(?![a-z])[^0-9\n]{{0,24}}?(?P<v>[0-9]{{3}}(?P<s>[ \-]?)[0-9]{{2}}(?P=s)[0-9]{{4}})"
    r"(?![0-9a-z]|[\-.,/][0-9])")
_SSN_NEG_BEFORE = re.compile(
    r"(?i)\b(?:order|invoice|ticket|case|ref|reference|tracking|sku|serial|part|model|item|po|account|acct|phone"
    r"|tel|fax|call|mrn|record|patient[ \t]+id|claim|policy)(?:\W+\w+){0,2}\W*$")
"""Another kind of number named in the three words before a dashed 3-2-4 number (``part number``, ``MRN``)."""


def ssn_ok(digits: str) -> bool:
    """SSA rules: no area 000, 666 or 900-999, no group 00, no serial 0000, not a voided number."""
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return (area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"
            and digits not in _SSN_NOT_ISSUED)


def _ssn_dashed_ok(m: re.Match[str], text: str) -> bool:
    return ssn_ok(m.group().replace("-", "")) and not _SSN_NEG_BEFORE.search(_before(m, 24).split("\n")[-1])


def _ssn_keyword_ok(m: re.Match[str], text: str) -> bool:
    return _word_start(text, m.start()) and ssn_ok(re.sub(r"[ \-]", "", m.group("v")))


SSN = (
    Detector("SSN", _SSN_KEYWORD, ("v",), prefilter_ci=("ss", "social", "sec"),
             validate=_ssn_keyword_ok, ci=_SSN_KEYWORD_CI,
             superset=rf"ssn|social{_BLANKS}security|soc\.?[ \t]?sec|ss#|ss[ \t]+no"),
    Detector("SSN", _SSN_DASHED, prefilter=("-",), validate=_ssn_dashed_ok,
             superset=r"[0-9]{3}-[0-9]{2}-[0-9]{4}"),
)

# --------------------------------------------------------------------------- national ids (EU, UK)

_NINO = re.compile(r"[A-Z](?<![0-9A-Za-z][A-Z])[A-Z](?:[0-9]{6}|[ ][0-9]{6}[ ]|(?:[ ][0-9]{2}){3}[ ])[A-D]"
                   + _NO_ALNUM_AFTER)


def _nino_ok(m: re.Match[str], text: str) -> bool:
    """HMRC: first letter not D F I Q U V, second not D F I O Q U V, prefix not BG GB KN NK NT TN ZZ."""
    a, b = m.group()[0], m.group()[1]
    return a not in "DFIQUV" and b not in "DFIOQUV" and a + b not in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ")


def steuer_id_ok(d: str) -> bool:
    """German Steuer-IdNr: 11 digits, no leading 0; in the first ten one digit occurs twice or three
    times (not three in a row) and no other repeats; ISO 7064 MOD 11,10 check digit."""
    if len(d) != 11 or not d.isascii() or not d.isdigit() or d[0] == "0":
        return False
    repeats = [(c, n) for c, n in Counter(d[:10]).items() if n > 1]
    if len(repeats) != 1 or repeats[0][1] > 3 or (repeats[0][1] == 3 and repeats[0][0] * 3 in d[:10]):
        return False
    product = 10
    for ch in d[:10]:
        s = (int(ch) + product) % 10 or 10
        product = (2 * s) % 11
    return (11 - product) % 10 == int(d[10])


def bsn_ok(d: str) -> bool:
    """Dutch BSN: 9 digits passing the 11-proof (weights 9..2 and -1)."""
    if len(d) != 9 or not d.isascii() or not d.isdigit() or d == "0" * 9:
        return False
    return (sum(int(c) * w for c, w in zip(d[:8], range(9, 1, -1))) - int(d[8])) % 11 == 0


def nir_ok(nir: str) -> bool:
    """French NIR: sex 1/2, year, month (01-12, 20, 30-42, 50-99), department (2A/2B for Corsica),
    commune, order, and the key ``97 - number mod 97``."""
    if len(nir) != 15 or nir[0] not in "12":
        return False
    month = int(nir[3:5])
    if not (1 <= month <= 12 or month == 20 or 30 <= month <= 42 or month >= 50):
        return False
    body = nir[:13].replace("2A", "19").replace("2B", "18")
    if not body.isdigit():
        return False
    return 97 - int(body) % 97 == int(nir[13:])


_STEUER_WORDS = (r"steuer[\- ]?id(?:[\- ]?nr\.?|[\- ]?nummer)?|steuer-?identifikationsnummer"
                 r"|steuerliche[ \t]+identifikationsnummer|identifikationsnummer|idnr\.?"
                 r"|tax[ \t]+id(?:entification)?(?:[ \t]+(?:number|no\.?))?")
_STEUER_ID, _STEUER_ID_CI = _lower(
    rf"(?:{_STEUER_WORDS})(?![a-z])[^0-9\n]{{0,24}}?(?P<v>[1-9][0-9](?P<s>[ ]?)[0-9]{{3}}(?P=s)[0-9]{{3}}(?P=s)[0-9]{{3}})"
    r"(?![0-9])")
_BSN, _BSN_CI = _lower(
    r"(?:bsn|burgerservicenummer|sofi-?nummer)(?![a-z])[^0-9\n]{0,24}?"
    r"(?P<v>[0-9]{9}|[0-9]{4}\.[0-9]{2}\.[0-9]{3}|[0-9]{3}[ .][0-9]{3}[ .][0-9]{3})(?![0-9])")
_NIR = re.compile(r"[12](?<![\w\-.,/][12])(?P<s>[ ]?)[0-9]{2}(?P=s)[0-9]{2}(?P=s)(?:[0-9]{2}|2[AB])(?P=s)[0-9]{3}"
                  r"(?P=s)[0-9]{3}[ ]?[0-9]{2}(?![\w]|[\-.,/][0-9])")
_DNI = re.compile(r"(?:[0-9](?<![\w\-.,/][0-9])[0-9]{7}|[XYZ](?<![\w][XYZ])-?[0-9]{7})-?[A-Z](?![\w])")
_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def _dni_ok(m: re.Match[str], text: str) -> bool:
    """Spanish DNI (8 digits) or NIE (X/Y/Z + 7 digits): the letter is the number mod 23."""
    raw = m.group().replace("-", "")
    number = "XYZ".index(raw[0]) if raw[0] in "XYZ" else None
    digits = raw[1:-1] if number is not None else raw[:-1]
    value = int(f"{number}{digits}" if number is not None else digits)
    return _DNI_LETTERS[value % 23] == raw[-1]


NATIONAL_ID = (
    Detector("NATIONAL_ID", _STEUER_ID, ("v",), validate=lambda m, t: _word_start(t, m.start())
             and steuer_id_ok(m.group("v").replace(" ", "")), ci=_STEUER_ID_CI,
             prefilter_ci=("steuer", "identifikationsnummer", "idnr", "tax"),
             superset="steuer|identifikationsnummer|idnr|tax" + _BLANKS + "id"),
    Detector("NATIONAL_ID", _BSN, ("v",), validate=lambda m, t: _word_start(t, m.start())
             and bsn_ok(re.sub(r"[ .]", "", m.group("v"))), ci=_BSN_CI,
             prefilter_ci=("bsn", "burgerservicenummer", "sofi"), superset="bsn|burgerservicenummer|sofi-?nummer"),
    Detector("NATIONAL_ID", _NINO, prefilter=("A", "B", "C", "D"), validate=_nino_ok,
             superset=r"[0-9]{6}[A-D]|(?: [0-9]{2}){3} [A-D]| [0-9]{6} [A-D]"),
    Detector("NATIONAL_ID", _NIR, prefilter=("1", "2"), validate=lambda m, _: nir_ok(m.group().replace(" ", "")),
             superset=r"[12] ?[0-9]{2} ?[0-9]{2} ?[0-9][0-9AB] ?[0-9]{3} ?[0-9]{3} ?[0-9]{2}"),
    Detector("NATIONAL_ID", _DNI, prefilter=_DIGITS, validate=_dni_ok, superset=r"[0-9]{7}-?[A-Z]"),
)

# --------------------------------------------------------------------------- passports

_PASSPORT_WORDS = (r"passport|passeport|pasaporte|passaporto|(?:paspoort|reisepass)(?:nummer|nr\.?)?|passnummer"
                   r"|pass-?nr\.?")
_PASSPORT, _PASSPORT_CI = _lower(
    rf"(?:{_PASSPORT_WORDS})(?![a-z])[^0-9\n]{{0,24}}?(?P<v>[a-z]{{0,3}}[0-9][a-z0-9]{{4,9}})(?![a-z0-9])")
_PASSPORT_SUP = ("passport", "passeport", "pasaporte", "passaporto", "paspoort", "reisepass", "passnummer",
                 "pass-nr", "passnr")


def _passport_ok(m: re.Match[str], text: str) -> bool:
    """6 to 12 characters with four digits at least (US, UK: 9 digits; DE: C01X00T47; ES: XDA123456)."""
    v = m.group("v")
    return _word_start(text, m.start()) and 6 <= len(v) <= 12 and sum(c.isdigit() for c in v) >= 4


PASSPORT = (Detector("PASSPORT", _PASSPORT, ("v",), validate=_passport_ok, ci=_PASSPORT_CI,
                     prefilter_ci=("pas",), superset="|".join(_PASSPORT_SUP)),)

# --------------------------------------------------------------------------- dates of birth

_MONTHS = sorted({
    "january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november",
    "december", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    "januar", "jänner", "februar", "märz", "maerz", "mai", "juni", "juli", "oktober", "dezember", "okt", "dez",
    "janvier", "février", "fevrier", "mars", "avril", "juin", "juillet", "août", "aout", "septembre", "octobre",
    "novembre", "décembre", "decembre", "enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto",
    "septiembre", "setiembre", "octubre", "noviembre", "diciembre", "gennaio", "febbraio", "aprile", "maggio",
    "giugno", "luglio", "settembre", "ottobre", "dicembre", "januari", "februari", "maart", "mei", "augustus",
}, key=len, reverse=True)
_MONTH = "(?:" + "|".join(map(re.escape, _MONTHS)) + r")\.?"
_DATE = (rf"[0-9]{{1,2}}(?:st|nd|rd|th|er|\.|º)?[ \t](?:of[ \t]|de[ \t])?{_MONTH},?[ \t](?:de[ \t])?[0-9]{{4}}"
         rf"|{_MONTH}[ \t][0-9]{{1,2}}(?:st|nd|rd|th)?,?[ \t][0-9]{{4}}"
         rf"|[0-9]{{1,2}}[\-/]{_MONTH}[\-/](?:[0-9]{{4}}|[0-9]{{2}})"
         r"|[0-9]{4}[./\-][0-9]{1,2}[./\-][0-9]{1,2}"
         r"|[0-9]{1,2}[./\-][0-9]{1,2}[./\-](?:[0-9]{4}|[0-9]{2})"
         r"|[0-9]{1,2}\.[ \t][0-9]{1,2}\.[ \t][0-9]{4}")
_DOB_WORDS = (r"date[ \t]+of[ \t]+birth|birth[ \t]?date|birthday|born|dob|d\.o\.b\.?|geburtsdatum|geboren|geb\."
              r"|date[ \t]+de[ \t]+naissance|née?[ \t]+(?:le|à)|fecha[ \t]+(?:de[ \t]+)?nac(?:imiento|\.)|nacid[oa]"
              r"|data[ \t]+di[ \t]+nascita|nat[oa][ \t]+il|geboortedatum")
_DOB, _DOB_CI = _lower(rf"(?:{_DOB_WORDS})(?![a-z])[^0-9\n]{{0,30}}?(?P<v>{_DATE})(?![0-9])")
_MONTH_NUMBER = re.compile(r"[0-9]+")


def _dob_ok(m: re.Match[str], text: str) -> bool:
    """Keyword a word of its own; numeric dates must be a possible calendar date (d/m/y, m/d/y or y-m-d)
    with a year from 1900 on."""
    if not _word_start(text, m.start()):
        return False
    nums = [int(x) for x in _MONTH_NUMBER.findall(m.group("v"))]
    year = next((n for n in nums if n >= 100), None)
    if year is not None and not 1900 <= year <= 2100:
        return False
    if len(nums) == 3:
        a, b, c = nums
        if a >= 100:  # y-m-d
            return 1 <= b <= 12 and 1 <= c <= 31
        return (1 <= a <= 31 and 1 <= b <= 12) or (1 <= a <= 12 and 1 <= b <= 31)
    return len(nums) == 2 and 1 <= min(nums) <= 31  # day and year around a month name


DATE_OF_BIRTH = (Detector(
    "DATE_OF_BIRTH", _DOB, ("v",), validate=_dob_ok, ci=_DOB_CI,
    prefilter_ci=("birth", "born", "dob", "d.o.b", "geb", "naissance", "né", "nac", "nascita",
                  "nato", "nata", "geboorte"),
    superset="|".join(["birth", "born", "dob", r"d\.o\.b", "geboren", r"geb\.", "geburt", "naissance",
                       _word("né") + "e?" + _BLANKS + "(?:le|" + _word("à") + ")", r"nac(?:imiento|\.)", "nacid[oa]",
                       "nascita", "nat[oa]" + _BLANKS + "il", "geboorte"])),)

# --------------------------------------------------------------------------- AWS secret access keys

_AWS_SECRET = re.compile(r"[A-Za-z0-9/+](?<![A-Za-z0-9/+=][A-Za-z0-9/+])[A-Za-z0-9/+]{39}(?![A-Za-z0-9/+=])")
_AWS_ID = re.compile(r"A[KS]IA[A-Z0-9]{16}")
_HEX = frozenset("0123456789abcdefABCDEF")


def _aws_secret_ok(m: re.Match[str], text: str) -> bool:
    """Mixed case and a digit, not hex (a SHA-1), and ``aws`` or ``secret`` in the 80 characters
    before, or an access key id within 200 characters either side."""
    key = m.group()
    if (not any(c.isdigit() for c in key) or not any(c.isupper() for c in key) or not any(c.islower() for c in key)
            or all(c in _HEX for c in key)):
        return False
    before = text[max(0, m.start() - 80):m.start()].lower()
    if "aws" in before or "secret" in before:
        return True
    return _AWS_ID.search(text, max(0, m.start() - 200), min(len(text), m.end() + 200)) is not None


AWS_SECRET = (Detector("API_KEY", _AWS_SECRET, prefilter_ci=("aws", "secret", "akia", "asia"),
                       validate=_aws_secret_ok,
                       superset=r"[aA][wW][sS]|[sS][eE][cC][rR][eE][tT]|A[KS]IA[A-Z0-9]{16}"),)
