"""The built-in detectors: compiled patterns plus the checks a regex cannot express.

Secrets, e-mail, cards, IPs and phones live here; identity and account numbers (IBAN, SSN,
national ids, passports, dates of birth, AWS secret keys) in :mod:`._identifiers`, street
addresses in :mod:`._addresses`; :data:`DETECTORS` gathers them under their setting names.

Invariants:

- A :class:`Detector` is pure and immutable; every pattern is compiled once, at import.
- A detector only *proposes* spans; :class:`~monitor.redaction.redact.Redactor`
  resolves overlaps by :data:`PRIORITY` (earlier name wins) and never rescans
  its own output, so a placeholder (``[EMAIL]``) is never matched again.
- Precision first: a candidate is kept only when its checks pass (Luhn and
  issuer ranges for cards, octet ranges and :mod:`ipaddress` for IPs, digit
  counts, separators and context for phones; check digits for IBANs and national
  ids). Plain digit runs are never phones unless a phone keyword (``Tel:``,
  ``phone``, ``Handy`` ...) stands right before; never SSNs, passport numbers or
  dates of birth without their own keyword.
- Where ``groups`` names groups, only the first group that took part is
  replaced (``Bearer [BEARER_TOKEN]``, ``api_key=[API_KEY]``); else the whole match.
- Speed: every pattern starts with a literal or a single character class so
  the regex engine skips ahead in C; "not preceded by" guards come right after
  that first character. Keyword patterns are lower-case and run on the
  lower-cased text (offsets are identical; the ``ci`` twin is used when
  lower-casing changes the length). E-mail and IPv6 candidates are anchored on
  ``@`` and ``:``.
- Every built-in detector also carries a ``superset``: a byte-level pattern
  (Hyperscan syntax) that matches somewhere in the UTF-8 of any text in which
  the detector can report a finding (:mod:`monitor.redaction._prefilter`). It
  only lets a text be skipped; the patterns and checks above still decide.
  What keeps it a superset: look-arounds, ``\\b`` and most of what only a
  check rejects are left out or loosened; every element that can match a
  non-ASCII character takes any byte of ``\\x80-\\xff`` (with an upper bound
  four times the character count, or none), and all other elements take
  ASCII only, so any non-ASCII character may stand for another (a keyword's
  own ``é`` lists its bytes, those of ``É`` and those of the JSON stand-in);
  keywords are matched case-insensitively, and the few non-ASCII characters
  that lower-case to ASCII (:data:`CASE_TWINS`) put every keyword detector in play.
  Supersets start at their rarest part (``@``, a keyword, a colon): a pattern
  that starts with a common class makes Hyperscan slow everywhere.
"""


from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Iterator

from monitor.redaction._addresses import ADDRESS
from monitor.redaction._base import (
    _DIGITS,
    _HI,
    _NOT_BLANK,
    CASE_TWINS,
    Detector,
    Validator,
    _after,
    _before,
    _lower,
    _ndigits,
    _word,
    _word_start,
)
from monitor.redaction._identifiers import AWS_SECRET, DATE_OF_BIRTH, IBAN, NATIONAL_ID, PASSPORT, SSN

__all__ = ["Detector", "DETECTORS", "PRIORITY", "KINDS", "CASE_TWINS", "luhn_ok"]

# --------------------------------------------------------------------------- bearer / basic

_BEARER, _BEARER_CI = _lower(r"bearer[ \t]+(?P<v>[a-z0-9\-._~+/]{8,}=*)(?![\w\-.~+/=])")
_BASIC, _BASIC_CI = _lower(r"basic[ \t]+(?P<v>[a-z0-9+/]{6,}={0,2})(?![\w+/=])")


def _bearer_ok(m: re.Match[str], text: str) -> bool:
    """Opaque tokens carry digits; long mixed-case strings count too. Rejects prose ("Bearer bonds")."""
    tok = text[m.start("v"):m.end("v")]
    if not _word_start(text, m.start(), "-"):
        return False
    if any(c.isdigit() for c in tok):
        return any(c.isalpha() for c in tok)
    return len(tok) >= 24 and any(c.isupper() for c in tok) and any(c.islower() for c in tok)


def _basic_ok(m: re.Match[str], text: str) -> bool:
    """Basic credentials are base64 of ``user:password``: decode and look for the colon."""
    raw = text[m.start("v"):m.end("v")]
    if not _word_start(text, m.start(), "-"):
        return False
    try:
        decoded = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return False
    return ":" in decoded and decoded.isprintable()


BEARER_TOKEN = (
    Detector("BEARER_TOKEN", _BEARER, ("v",), prefilter_ci=("bearer",), validate=_bearer_ok, ci=_BEARER_CI,
             superset=rf"bearer[ \t]+[a-z0-9\-._~+/{_HI}]{{8}}"),
    Detector("BEARER_TOKEN", _BASIC, ("v",), prefilter_ci=("basic",), validate=_basic_ok, ci=_BASIC_CI,
             superset=rf"basic[ \t]+[a-z0-9+/{_HI}]{{6}}"),
)

# --------------------------------------------------------------------------- API keys and secrets

_KEY_FORMATS = re.compile(r"""(?:
        sk-ant-[A-Za-z0-9_-]{20,}                        # Anthropic
      | sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}  # OpenAI
      | AKIA[A-Z0-9]{16} | ASIA[A-Z0-9]{16}              # AWS access key ids
      | gh[opsur]_[A-Za-z0-9]{30,}                       # GitHub classic
      | github_pat_[A-Za-z0-9_]{30,}                     # GitHub fine-grained
      | xox[abposr]-[A-Za-z0-9-]{10,}                    # Slack
      | AIza[0-9A-Za-z_-]{35}                            # Google
      | sk_(?:live|test)_[0-9A-Za-z]{16,}                # Stripe secret
      | rk_(?:live|test)_[0-9A-Za-z]{16,}                # Stripe restricted
      | hf_[A-Za-z0-9]{30,}                              # Hugging Face
    )(?![\w-])""", re.X)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*(?![\w-])")
_PEM = re.compile(r"-----BEGIN[A-Z ]{0,20} PRIVATE KEY-----.*?-----END[A-Z ]{0,20} PRIVATE KEY-----", re.S)
_URL_CREDS = re.compile(r"://[^\s/:@\[\]]{1,64}:(?P<v>[^\s/@\[\]]{1,128})@")
_CLI_CREDS = re.compile(r"-(?:u|-user)[ =]['\"]?[^\s:'\"]{1,64}:(?P<v>[^\s'\"]{1,128})")
_ASSIGN, _ASSIGN_CI = _lower(r"""
    (?:api[_-]?key|apikey|api[_-]?secret|client[_-]?secret|secret(?:[_-]?access)?(?:[_-]?key)?
      |passw(?:or)?[dt]|passphrase|pass|kennwort|mot[ _]de[ _]passe|contrase[ñn]a
      |access[_-]?token|auth[_-]?token|refresh[_-]?token|session[_-]?token|private[_-]?key)
    ["']?[ \t]*(?P<op>=>|:=|=|:)[ \t]*
    (?:"(?P<dq>[^"\n]{1,256})"|'(?P<sq>[^'\n]{1,256})'|(?P<bare>[^\s"'`,;&<>(){}\[\]]{3,255}[^\s"'`,;&<>(){}\[\].:]))
    """, re.X)
_SAID, _SAID_CI = _lower(
    r"(?:password|passwort|kennwort|mot de passe|contrase[ñn]a)[ \t]+(?:is|was|lautet|ist|war|est|es)"
    r"[ \t]*:?[ \t]+(?P<v>[^\s\"'`]{3,63}[^\s\"'`.,;:)])")
_NOT_A_VALUE = re.compile(r"""(?ix)^(?:
      <.*> | \$.* | \{\{.*\}\} | %\(.* | \[[A-Z_]+\]
    | (?:os|process|self|settings|config|env|args|opts|options|ctx|request|req)\..*
    | .*your[_ -].* | .*[_ -]here | x{3,} | \*+ | \.{3,} | … | -+
    | none | null | nil | true | false | undefined | str | string | bytes | int | secretstr
    | optional\b.* | required | redacted | hidden | masked | env
    )$""")
_IDENTIFIER = re.compile(r"[a-z_][\w.]*")
_PROSE_NEXT = re.compile(r"[ \t]+[^\W\d_]")


def _cli_creds_ok(m: re.Match[str], text: str) -> bool:
    """``curl -u user:password``: an option of its own (after a blank), with a password-like value:
    not letters only or digits only (``docker run -u 1000:1000``, ``-u root:wheel`` are user:group)."""
    start, v = m.start(), m.group("v")
    return ((start == 0 or text[start - 1] in " \t") and len(v) >= 4 and not v.isalpha() and not v.isdigit()
            and not _NOT_A_VALUE.match(v))


def _format_key_ok(m: re.Match[str], text: str) -> bool:
    """Provider formats: a word of its own, with a digit and a letter (``sk-`` + hyphenated prose is not)."""
    key = m.group()
    return (_word_start(text, m.start(), "-")
            and any(c.isdigit() for c in key) and any(c.isalpha() for c in key[3:]))


def _jwt_ok(m: re.Match[str], text: str) -> bool:
    return _word_start(text, m.start(), "-")


def _said_ok(m: re.Match[str], text: str) -> bool:
    """``the password is hunter2``: only a value with a digit and a letter (not ``is incorrect``)."""
    v = m.group("v")
    return (_word_start(text, m.start()) and any(c.isdigit() for c in v) and any(c.isalpha() for c in v)
            and not _NOT_A_VALUE.match(v))


def _assign_ok(m: re.Match[str], text: str) -> bool:
    """Keep literal values; drop references and placeholders (``os.environ[...]``, ``${X}``, ``<key>``).

    The key may carry a prefix (``OPENAI_API_KEY``, ``db.password``) but must not end a word
    (``mypassword``); a bare ``pass`` counts only with such a prefix (``DB_PASS``)."""
    start = m.start()
    if start and text[start - 1].isalnum():
        return False
    if m.group().startswith("pass") and not m.group().startswith(("passw", "passphrase")) and (
            start == 0 or text[start - 1] not in "_.-"):
        return False  # bare "pass" only as part of a name: DB_PASS=, smtp.pass:
    value = m.group("dq") or m.group("sq") or m.group("bare")
    if not value or _NOT_A_VALUE.match(value.strip()):
        return False
    if m.group("bare") is not None:
        if _after(m, 1) in ("(", "["):
            return False  # a call or an index in code: getpass(), os.environ["X"]
        if _IDENTIFIER.fullmatch(value) and any(w in value for w in ("key", "secret", "pass", "token")):
            return False  # another variable: password=db_password
        if m.group("op") == ":" and value.isalpha() and _PROSE_NEXT.match(_after(m, 2)):
            return False  # prose: "Password: must be at least ..."
    return True


# Every _ASSIGN keyword ends in one of these, the last two followed by letters (api_key, OPENAI_API_KEY,
# secret_access, db.password, contraseña ...). Few and long literals keep Hyperscan fast.
_ASSIGN_TAILS = rf"(?:key|secret|access|token|kennwort|(?:pass|contras)[a-z{_HI}]*)"

API_KEY = (
    Detector("API_KEY", _PEM, prefilter=("PRIVATE KEY",),
             superset=r"-----BEGIN[A-Z ]{0,20} PRIVATE KEY-----"),
    Detector("API_KEY", _KEY_FORMATS,
             prefilter=("sk-", "AKIA", "ASIA", "gho_", "ghp_", "ghs_", "ghu_", "ghr_", "github_pat_",
                        "xox", "AIza", "_live_", "_test_", "hf_"),
             validate=_format_key_ok,
             superset=r"sk-[A-Za-z0-9_-]{20}|A[KS]IA[A-Z0-9]{16}|gh[opsur]_[A-Za-z0-9]{30}"
                      r"|github_pat_[A-Za-z0-9_]{30}|xox[abposr]-[A-Za-z0-9-]{10}|AIza[0-9A-Za-z_-]{35}"
                      r"|[sr]k_(?:live|test)_[0-9A-Za-z]{16}|hf_[A-Za-z0-9]{30}"),
    Detector("API_KEY", _JWT, prefilter=("eyJ",), validate=_jwt_ok,
             superset=r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8}"),
    Detector("API_KEY", _URL_CREDS, ("v",), prefilter=("://",),
             validate=lambda m, _: not _NOT_A_VALUE.match(m.group("v")),
             superset=rf"://[^{_NOT_BLANK}/:@\[\]]{{1,256}}:[^{_NOT_BLANK}/@\[\]]{{1,512}}@"),
    Detector("API_KEY", _CLI_CREDS, ("v",), prefilter=("-u ", "-u=", "--user"),
             validate=_cli_creds_ok,
             superset=rf"-(?:u|-user)[ =]['\"]?[^{_NOT_BLANK}:'\"]{{1,256}}:[^{_NOT_BLANK}'\"]{{4}}"),
    Detector("API_KEY", _ASSIGN, ("dq", "sq", "bare"), validate=_assign_ok, ci=_ASSIGN_CI,
             prefilter_ci=("key", "secret", "pass", "token", "kennwort", "contrase"),
             superset=_ASSIGN_TAILS + r"[\"']?[ \t]*(?:=>|:=|=|:)[ \t]*"
                      rf"(?:\"[^\"\n]|'[^'\n]|[^{_NOT_BLANK}\"'`,;&<>(){{}}\[\]]{{4}})"),
    Detector("API_KEY", _SAID, ("v",), validate=_said_ok, ci=_SAID_CI,
             prefilter_ci=("pass", "kennwort", "contrase"),
             superset=rf"(?:passwor[dt]|passe|kennwort|contrase[a-z{_HI}]*a)[ \t]+(?:is|was|lautet|ist|war|est|es)"
                      rf"[ \t]*:?[ \t]+[^{_NOT_BLANK}\"'`]{{4}}"),
)

# --------------------------------------------------------------------------- email

_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]{1,64}@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24}(?![\w-]|\.[^\W_])")
_FILE_TLDS = frozenset({
    "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "pdf", "js", "ts", "css", "py", "json",
    "yaml", "yml", "txt", "md", "html", "xml", "zip", "gz", "tar", "exe", "dll", "so", "mp3", "mp4"})


def _email_candidates(pattern: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    """Anchored on ``@``: walk back over the local part (64 characters at most), then match there."""
    at = text.find("@")
    while at != -1:
        start = at
        while start > 0 and at - start < 64 and (text[start - 1].isalnum() or text[start - 1] in "._%+-"):
            start -= 1
        m = pattern.match(text, start) if start < at else None
        if m is not None:
            yield m
            at = text.find("@", m.end())
        else:
            at = text.find("@", at + 1)


def _email_ok(m: re.Match[str], text: str) -> bool:
    """Not ``icon@2x.png``-style asset names; no leading or trailing dot in the local part."""
    local, _, domain = m.group().partition("@")
    return (domain.rsplit(".", 1)[-1].lower() not in _FILE_TLDS
            and not local.startswith(".") and not local.endswith("."))


# From the "@" on (a leading class would make Hyperscan run an engine from every letter): the domain.
EMAIL = (Detector("EMAIL", _EMAIL, prefilter=("@",), validate=_email_ok, finder=_email_candidates,
                  superset=rf"@(?:[A-Za-z0-9{_HI}][A-Za-z0-9_\-{_HI}]*\.)+[A-Za-z{_HI}]{{2}}"),)

# --------------------------------------------------------------------------- payment cards

_CARD = re.compile(r"[0-9](?<![\w.,+\-/][0-9])(?:[ -]?[0-9]){12,18}(?!\w|[.,\-/][0-9])")


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _issuer_ok(d: str) -> bool:
    """Issuer (IIN) ranges and the lengths each issues; anything else is not a card."""
    n, p2, p3, p4 = len(d), int(d[:2]), int(d[:3]), int(d[:4])
    if d[0] == "4":
        return n in (13, 16, 19)                       # Visa
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16                                 # Mastercard
    if p2 in (34, 37):
        return n == 15                                 # Amex
    if 300 <= p3 <= 305 or p2 in (36, 38, 39):
        return 14 <= n <= 19                           # Diners
    if 3528 <= p4 <= 3589:
        return 16 <= n <= 19                           # JCB
    if p2 == 50 or 56 <= p2 <= 69:
        return 13 <= n <= 19                           # Discover, UnionPay, Maestro, RuPay
    return False


def _card_ok(m: re.Match[str], text: str) -> bool:
    """13-19 digits in an issuer range, Luhn-valid, grouped like a card (4-4-4-4, 4-6-5 ...) if at all."""
    raw = m.group()
    digits = raw.replace(" ", "").replace("-", "")
    if not (_issuer_ok(digits) and luhn_ok(digits)):
        return False
    seps = {c for c in raw if not c.isdigit()}
    if not seps:
        return True
    if len(seps) > 1:
        return False
    groups = [len(g) for g in re.split(r"[ -]", raw)]
    if groups in ([4, 6, 5], [4, 6, 4]):
        return True                                    # Amex, Diners
    return len(groups) >= 4 and all(g == 4 for g in groups[:-1]) and 1 <= groups[-1] <= 4


CARD = (Detector("CARD", _CARD, prefilter=_DIGITS, validate=_card_ok, superset=r"[0-9](?:[ -]?[0-9]){12}"),)

# --------------------------------------------------------------------------- IP addresses

_IPV4 = re.compile(r"[0-9](?<![\w.][0-9])[0-9]?[0-9]?\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?!\w|\.?[0-9])")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|:)(?:[0-9A-Fa-f]{0,4}:){1,7}"
    r"(?:[0-9A-Fa-f]{1,4}|(?:[0-9]{1,3}\.){3}[0-9]{1,3})?(?:%[0-9A-Za-z_.]+)?(?![\w:]|\.[0-9])")
_IPV6_HINT = re.compile(r":[0-9A-Fa-f:]")
_HEX = frozenset("0123456789abcdefABCDEF")
_VERSION_BEFORE = re.compile(r"(?i)\b(?:version|ver\.?|release|build|rev\.?|firmware|v)[ \t]*$")


def _ipv4_ok(m: re.Match[str], text: str) -> bool:
    """Four octets 0-255 without leading zeros, not introduced as a version (``version 1.2.3.4``)."""
    for octet in m.group().split("."):
        if int(octet) > 255 or (len(octet) > 1 and octet[0] == "0"):
            return False
    return not _VERSION_BEFORE.search(_before(m, 12))


def _ipv6_candidates(pattern: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    """Anchored on a colon followed by a hex digit or colon; the address starts at most 4 hex digits before."""
    hint = _IPV6_HINT.search(text)
    while hint is not None:
        colon = hint.start()
        start = colon
        while start > 0 and colon - start < 4 and text[start - 1] in _HEX:
            start -= 1
        m = pattern.match(text, start)
        if m is not None:
            yield m
            hint = _IPV6_HINT.search(text, m.end())
        else:
            hint = _IPV6_HINT.search(text, colon + 1)


def _ipv6_ok(m: re.Match[str], text: str) -> bool:
    """Valid per :mod:`ipaddress`, two groups and four hex digits at least, outside the IETF-reserved
    ranges: not ``::``, ``::1``, ``a::b`` or ``dead::beef`` (slices and C++ scopes look like those)."""
    addr = m.group().split("%", 1)[0]
    if "::" not in addr and addr.count(":") != (6 if "." in addr else 7):
        return False  # uncompressed needs all eight groups: not 12:30:45 or a MAC address
    try:
        ip = ipaddress.IPv6Address(addr)
    except ValueError:
        return False
    groups = [g for g in addr.split(":") if g]
    if len(groups) < 2 or sum(len(g) for g in groups) < 4:
        return False
    return "." in addr or not ip.is_reserved


IP = (
    # What _ipv6_ok accepts: eight groups (six before a dotted quad): ":g" five times and a colon; or "::"
    # with two groups at least: one after it, or two before it. Starting at a colon keeps Hyperscan fast.
    Detector("IP", _IPV6, prefilter=(":",), validate=_ipv6_ok, finder=_ipv6_candidates,
             superset=r"::[0-9A-Fa-f]|:[0-9A-Fa-f]{1,4}::|(?::[0-9A-Fa-f]{1,4}){5}:"),
    Detector("IP", _IPV4, prefilter=_DIGITS, validate=_ipv4_ok, superset=r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]"),
)

# --------------------------------------------------------------------------- phone numbers

_PHONE_WORDS = (
    r"phone\w*|telephone|tel|t[ée]l[ée]phone|tlf|telefon\w*|tel[ée]fono|mobile?|m[óo]vil|handy|fax"
    r"|whatsapp|portable|contact|kontakt|cell(?:[ -]?phone)?(?=\s*[:#])|mob"
    r"|call\s+(?:me|us)\s+(?:at|on)|text\s+me\s+at|reach\s+(?:me|us)\s+(?:at|on)"
    r"|ll[áa]m\w*\s+al|appelez(?:-moi|-nous)?\s+au|rufen\s+sie\s+(?:mich\s+|uns\s+)?an"
    r"|erreichbar\s+unter|unter\s+der\s+nummer|au\s+num[ée]ro")
_SEP = r"(?:[ \t]?[\-/][ \t]?|[ \t.])"
_END = r"(?![\w]|[.,\-/][0-9])"


def _guard(first: str) -> str:
    """Right after the first character ``first``: not glued to a word, sign, currency or longer number."""
    return rf"(?<![\w+\-.$€£#/,]{first})(?<![0-9][ \-]{first})"


_G_PAREN, _G_DIGIT_OR_PAREN = _guard(r"\("), _guard(r"[(0-9]")
_PHONE_KEYWORD, _PHONE_KEYWORD_CI = _lower(
    rf"({_PHONE_WORDS})\b[^\d\n+(\[]{{0,24}}(?P<v>\+?\(?[0-9](?:[0-9 \t().\-/]{{5,24}})[0-9]){_END}")
_PHONE_INTL = re.compile(
    rf"\+(?<![\w+]\+)[0-9]{{1,3}}(?:[ \t\-]?\(0?[0-9]{{0,5}}\))?(?:{_SEP}?[0-9]{{1,6}}){{1,6}}{_END}")
_PHONE_NANP_1 = re.compile(
    rf"1{_guard('1')}[ .\-](?:\([0-9]{{3}}\)[ \t]?|[0-9]{{3}}[.\-])[0-9]{{3}}[.\-][0-9]{{4}}{_END}")
_PHONE_NANP = re.compile(
    rf"[(0-9]{_G_DIGIT_OR_PAREN}(?:(?<=\()[0-9]{{3}}\)[ \t]?|(?<=[0-9])[0-9]{{2}}[.\-])"
    rf"[0-9]{{3}}[.\-][0-9]{{4}}{_END}")
_PHONE_TRUNK = re.compile(
    rf"(?:\({_G_PAREN}0[0-9]{{1,4}}\)[ \t]?|0{_guard('0')}[0-9]{{1,4}}{_SEP})"
    rf"[0-9]{{2,8}}(?:{_SEP}[0-9]{{2,8}}){{0,4}}{_END}")
_PHONE_IBERIAN = re.compile(
    rf"[6-9]{_guard('[6-9]')}[0-9]{{1,2}}(?P<s>[ \-])[0-9]{{2,3}}(?P=s)[0-9]{{2}}(?P=s)[0-9]{{2}}{_END}")

_DATE = re.compile(r"(?:19|20)\d{2}[./\-]\d{1,2}[./\-]\d{1,2}|\d{1,2}[./\-]\d{1,2}[./\-](?:19|20)\d{2}")
_TIME = re.compile(r"\d{1,2}:\d{2}")
_NEG_BEFORE = re.compile(
    r"(?i)(?:\b(?:order|invoice|inv|rechnung\w*|bestell\w*|facture|factura|pedido|commande|ticket|case|ref"
    r"|reference|tracking|sku|isbn|issn|iban|bic|account|acct|konto\w*|serial|s/?n|version|build|id|zip|plz"
    r"|postal|po|nr|no|n[°º]|number|qty|amount|total|port|pid)|#)\W{0,3}$")
_NEG_GAP = re.compile(
    r"(?i)\b(?:zip|plz|postal|postcode|code|order|invoice|ref|reference|id|account|iban|serial|pin|ext"
    r"|facture|factura|rechnung|bestellung|pedido|commande|record|customer|client|kunde\w*|ticket|case"
    r"|contract|vertrag\w*|contrat|contrato)\b")
_WORD = re.compile(r"[^\W\d_]+")
_UNIT_AFTER = re.compile(
    r"(?i)^[ \t]?(?:%|€|\$|£|¥|eur\b|usd\b|gbp\b|chf\b|k?g\b|km\b|m\b|ms\b|s\b|[kmgt]i?b\b|bytes?\b"
    r"|tokens?\b|px\b|x\b|rows?\b|items?\b|times\b|mal\b|fois\b|veces\b|st(?:ück)?\b|units?\b)")
_CURRENCY_BEFORE = re.compile(r"[$€£¥][ \t]?$")


def _phone_shape_ok(m: re.Match[str], group: int | str, lo: int, hi: int) -> bool:
    """Digit count in range, no date or time inside, no currency or unit around it."""
    s = m.group(group)
    if not lo <= _ndigits(s) <= hi or _DATE.search(s) or _TIME.search(s):
        return False
    return not _UNIT_AFTER.match(_after(m, 10, group)) and not _CURRENCY_BEFORE.search(_before(m, 2, group))


def _phone_context(lo: int, hi: int) -> Validator:
    """Shape checks plus: not introduced as an order, invoice, id, port ... number; ``00`` is
    followed by a country code (``0049 ...``), never by another zero."""

    def ok(m: re.Match[str], text: str) -> bool:
        if m.group().startswith("000"):
            return False
        return _phone_shape_ok(m, 0, lo, hi) and not _NEG_BEFORE.search(_before(m, 24).split("\n")[-1])

    return ok


def _phone_keyword_ok(m: re.Match[str], text: str) -> bool:
    """Keyword is a word of its own (not inside ``[PHONE]``); at most three words and nothing
    naming another kind of number between keyword and number."""
    start = m.start()
    if not _word_start(text, start) or (start and text[start - 1] == "["):
        return False
    gap = m.string[m.end(1):m.start("v")]
    return _phone_shape_ok(m, "v", 7, 16) and not _NEG_GAP.search(gap) and len(_WORD.findall(gap)) <= 3


# The superset of _PHONE_KEYWORD: a keyword of _PHONE_WORDS ("téléphone" ends in "phone", "telefono" is
# "telefon" and \w*), then, for ASCII text, a non-word character (\b), at most 25 more that are not
# digits (the gap and the number's "+("), and seven characters of the number. A non-ASCII character in
# that stretch, or in the \w* of "phone\w*", takes the second alternative (a bound counted in characters
# would need 4 x 26 bytes, which takes Hyperscan seconds to compile and a slow engine to run).
_PHONE_FIXED = ("tel", "tlf", "mob", "mobil", "mobile", "movil", "m\u00f3vil", "tel\u00e9fono", "handy", "fax",
                "whatsapp", "portable", "contact", "kontakt", "cell", "cell phone", "cell-phone", "cellphone",
                "call me at", "call me on", "call us at", "call us on", "text me at", "reach me at", "reach me on",
                "reach us at", "reach us on", "appelez au", "appelez-moi au", "appelez-nous au", "rufen sie an",
                "rufen sie mich an", "rufen sie uns an", "erreichbar unter", "unter der nummer", "au numero",
                "au num\u00e9ro")
_PHONE_W = ("phone", "telefon")  # followed by \w*
_LLAM = ("llam", "ll\u00e1m")  # ll[áa]m\w*\s+al




_PHONE_AFTER = (rf"(?:[^a-z0-9_\n{_HI}][^0-9\n{_HI}]{{0,25}}[0-9][0-9 \t().\-/]{{6}}"
                rf"|(?:[^a-z0-9_\n{_HI}][^0-9\n{_HI}]{{0,24}})?[{_HI}])")
_SUP_SEP = r"(?:[ \t]?[\-/][ \t]?|[ \t.])"
_SUP_NANP = r"(?:[.\-]|\)[ \t]?)[0-9]{3}[.\-][0-9]{4}"  # both NANP forms, from the area code's end on

PHONE = (
    Detector("PHONE", _PHONE_KEYWORD, ("v",), prefilter=_DIGITS, validate=_phone_keyword_ok, ci=_PHONE_KEYWORD_CI,
             superset="(?:" + "|".join(map(_word, _PHONE_FIXED)) + "|(?:" + "|".join(map(_word, _PHONE_W))
                      + ")[a-z0-9_]*|(?:" + "|".join(map(_word, _LLAM)) + r")[a-z0-9_]*[\s\x1c-\x1f]+al)"
                      + _PHONE_AFTER + "|(?:" + "|".join(map(_word, _LLAM)) + rf")[a-z0-9_]*[\s\x1c-\x1f]*[{_HI}]"),
    Detector("PHONE", _PHONE_INTL, prefilter=("+",), validate=_phone_context(8, 16),
             superset=r"\+[0-9][0-9 \t().\-/]{7}"),
    Detector("PHONE", _PHONE_NANP_1, prefilter=_DIGITS, validate=_phone_context(11, 11), superset=_SUP_NANP),
    Detector("PHONE", _PHONE_NANP, prefilter=_DIGITS, validate=_phone_context(10, 10), superset=_SUP_NANP),
    # 9-13 digits: p (2-5) before the first separator, 9 - p at least after it
    Detector("PHONE", _PHONE_TRUNK, prefilter=_DIGITS, validate=_phone_context(9, 13),
             superset="|".join(rf"(?:\(0[0-9]{{{p - 1}}}\)[ \t]?|0[0-9]{{{p - 1}}}{_SUP_SEP})[0-9]{{2}}"
                               rf"(?:{_SUP_SEP}?[0-9]){{{7 - p}}}" for p in range(2, 6))),
    Detector("PHONE", _PHONE_IBERIAN, prefilter=_DIGITS, validate=_phone_context(9, 9),
             superset=r"[6-9][0-9]{1,2}[ \-][0-9]{2,3}[ \-][0-9]{2}[ \-][0-9]{2}"),
)

# --------------------------------------------------------------------------- registry

DETECTORS: dict[str, tuple[Detector, ...]] = {
    "bearer_token": BEARER_TOKEN,
    "api_key": API_KEY + AWS_SECRET,
    "email": EMAIL,
    "card": CARD,
    "iban": IBAN,
    "ssn": SSN,
    "national_id": NATIONAL_ID,
    "passport": PASSPORT,
    "date_of_birth": DATE_OF_BIRTH,
    "ip": IP,
    "phone": PHONE,
    "address": ADDRESS,
}
"""Setting name (``redaction.detectors``) to its patterns."""

PRIORITY: tuple[str, ...] = ("bearer_token", "api_key", "email", "card", "iban", "ssn", "national_id", "passport",
                             "date_of_birth", "ip", "phone", "address")
"""Resolution order: a span claimed by an earlier detector cannot be claimed by a later one.
Custom rules run right after ``api_key`` (secrets always win; operator rules beat heuristics).
Numbers with a check or a context word (IBAN ... date of birth) come before IP and phone, whose
shapes they can contain (``DE89 3704 0044 ...`` holds a phone-like run)."""

KINDS: dict[str, str] = {name: dets[0].kind for name, dets in DETECTORS.items()}
"""Setting name to placeholder kind (``email`` -> ``EMAIL``, shown as ``[EMAIL]``)."""
