"""Language identification for ingest: script routing, a prose sample, py3langid on a restricted set.

Invariants:

- Pure and deterministic: the same text always gives the same answer; no I/O after the
  model is loaded. py3langid's bundled model (no download) is loaded once, lazily, on the first
  text that needs it, under a lock; it is then only read, so concurrent calls are safe.
- The answer is an ISO 639-1 code from :data:`LANGUAGES`, or ``""`` when the text is too
  short, has no prose (code, JSON, numbers, emoji), or the classifier is not confident enough.
- Latin-script prose whose function words leave no doubt (:func:`_fast_latin`), and Cyrillic or
  Arabic script with letters only one language of its pair uses (:func:`_by_letters`), are
  decided without py3langid: that saves its cost (about 40 us a text on a slow core); the
  tests check that the shortcuts agree with py3langid wherever they decide.
- Scripts used by one language of the set decide alone: kana means Japanese, Hangul Korean,
  Han without kana Chinese, Greek, Hebrew, Thai, Devanagari (Hindi). Latin, Cyrillic and
  Arabic script go to py3langid restricted to the languages of the set written in that script
  (fewer candidates: fewer confusions on short texts).
- Cost is bounded by :data:`SAMPLE_CHARS`, not by the text's length: only the first prose
  (code fences, inline code, URLs, placeholders and code-like lines removed) is classified.
"""

from __future__ import annotations

import copy
import re
import threading
from collections import Counter
from itertools import chain
from typing import Any

__all__ = ["LANGUAGES", "CORE_LANGUAGES", "SAMPLE_CHARS", "MIN_WORDS", "MIN_CJK_CHARS", "MIN_CONFIDENCE",
           "detect", "prose_sample", "warm_up"]

CORE_LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "it", "pt", "nl", "pl", "ru", "zh", "ja", "ko", "ar", "tr")
"""The languages the labelled tests hold the detector to."""

_LATIN = ("en", "de", "fr", "es", "it", "pt", "nl", "pl", "tr", "sv", "da", "no", "fi", "cs", "ro", "hu", "id", "vi")
_CYRILLIC = ("ru", "uk")
_ARABIC = ("ar", "fa")
_SINGLE_SCRIPT = ("zh", "ja", "ko", "el", "he", "th", "hi")

LANGUAGES: frozenset[str] = frozenset(_LATIN + _CYRILLIC + _ARABIC + _SINGLE_SCRIPT)
"""Every code :func:`detect` may return (besides ``""``). Languages that are easily confused
with a core language on short texts (Catalan, Galician, Afrikaans, Slovak, Bulgarian ...) are
left out on purpose: their texts get the nearest language of the set or ``""``."""

SAMPLE_CHARS = 200
"""Prose characters classified at most (the cost of py3langid grows with the bytes it reads)."""
MIN_WORDS = 3
"""Fewer words (of two letters or more) than this in the sample: ``""``."""
MIN_CJK_CHARS = 4
"""Fewer Han/kana/Hangul characters than this (when they dominate): ``""``."""
MIN_CONFIDENCE = 0.60
"""py3langid's normalised probability below which the answer is ``""``."""

# ----------------------------------------------------------------------------- fast path: function words

_FUNCTION_WORDS: dict[str, str] = {
    "en": "the and of to is are was were you your it its this that these those with for on in not be been have has had "
          "can could will would should what which how my me we our they their there from at by an or if but do does "
          "did "
          "please thanks thank about just so than then also all any some here when where why who want need get "
          "them each more only most other such into over very between own once both through after before because "
          "however while been being",
    "de": "der die das und ist nicht ich sie es ein eine einen einem einer dem den des zu mit auf für von wie was wir "
          "ihr "
          "ihre ihnen bitte auch noch nach bei aus oder aber wenn dass kann können sind wird werden hat haben mein "
          "meine "
          "mir mich dir dich schon nur im am um über vielen danke sollte gibt doch hier warum wo sich diese dieser "
          "kein "
          "keine sehr habe bin",
    "fr": "le la les des du de et est un une je vous tu il elle nous ne pas pour dans sur avec que qui ce cette ces "
          "mais "
          "ou au aux mon ma mes votre vos sont être avoir été comme plus bien merci bonjour très peux faire où si son "
          "sa "
          "ses leur leurs cela ça aussi déjà peut voici voilà chez sûr donc alors quand toujours rien tout tous "
          "toutes fait dois êtes sommes suis",
    "es": "el la los las de del y en es un una que por para con no se su sus lo le al como pero más muy está estoy "
          "esta "
          "este mi me tu te yo usted hay puedo cómo qué dónde gracias hola también cuando porque ya ser son fue sin "
          "sobre todo esto eso aquí tienes tiene hacer puede puedes desde entre nuestro nuestra",
    "it": "il lo la gli le di del della dei delle un una che non per con in mi ti si sono come ma anche più questo "
          "questa ho hai ha al alla nel nella io tu lei grazie ciao perché dove cosa molto posso essere sei siamo ci "
          "da dal dalla su sul sulla ecco sei stato stata fatto puoi può tutto tutti ancora",
    "pt": "os as de do da dos das um uma que não em no na nos nas com para por se seu sua meu minha você eu ele ela "
          "mais mas como muito está estou isso este esta obrigado obrigada olá também quando porque onde pode posso ao "
          "aos pelo pela foi ser são já aqui tem também você está entre nosso nossa",
    "nl": "de het een en is van in op te dat die niet ik je jij we wij zijn met voor er maar om als aan ook nog bij "
          "uit "
          "naar wat hoe waar kan kunt wordt heb heeft hebben mijn dit deze bedankt dank graag wel geen zou moet hun "
          "zij wil hier kunnen naar jullie onze ons",
    "pl": "na się nie jest to że do jak co ale po czy mój moje mnie mi ja ty pan pani jestem są dla przez od tak już "
          "bardzo dziękuję proszę może mogę gdzie tego ten ta tym oraz jeszcze był była było jestem których który "
          "która które można ze za oto ich jego jej we tej tych",
    "tr": "bir ve bu da de için ile ne mi mı ben sen siz biz çok daha var yok ama gibi nasıl neden nerede değil olarak "
          "sonra kadar her şey benim sizin teşekkür teşekkürler lütfen evet hayır ki veya olan bana şu mu mü "
          "nerede ne zaman ise size bize",
}
"""Frequent function words of the core Latin-script languages (words of two letters or more)."""
_VOTES: dict[str, tuple[str, ...]] = {}
for _lang, _words in _FUNCTION_WORDS.items():
    for _w in _words.split():
        if _lang not in _VOTES.get(_w, ()):
            _VOTES[_w] = (*_VOTES.get(_w, ()), _lang)
_LETTER_VOTES = (("tr", re.compile(r"[ğı]")), ("pl", re.compile(r"[łąęśźżćń]")))
"""Letters only Turkish (dotless i, soft g) or only Polish use among the languages of the set."""


def _fast_latin(lower_words: list[str], lower_sample: str) -> str:
    """The language of a Latin-script sample when its function words leave no doubt, else ``""``.

    Decides only with 3+ votes, votes for at least a fifth of the words, and at least twice
    the runner-up's; everything else goes to py3langid. On the labelled texts and the speed-test
    events it never disagrees with py3langid (the tests check this); it merely saves the cost.
    """
    votes = Counter(chain.from_iterable(filter(None, map(_VOTES.get, lower_words))))
    for lang, rx in _LETTER_VOTES:
        n = len(rx.findall(lower_sample))
        if n:
            votes[lang] = votes.get(lang, 0) + n
    if not votes:
        return ""
    best = max(votes, key=votes.__getitem__)
    top = votes[best]
    second = max((v for lang, v in votes.items() if lang != best), default=0)
    if top >= 3 and top * 5 >= len(lower_words) and top >= 2 * second:
        return best
    return ""


# ----------------------------------------------------------------------------- prose sample

_FENCE = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)", re.S)
_INLINE_CODE = re.compile(r"`[^`\n]{0,200}`")
# Removed from each line before classifying; each pattern runs only when its gate is in the line.
# Possessive quantifiers (++, *+) keep every pattern linear, also on CJK text without spaces.
_NOISE: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("://", re.compile(r"\w++://\S++")),                          # URLs
    ("www.", re.compile(r"www\.\S++")),
    ("[", re.compile(r"\[[A-Z][A-Z0-9_]{1,63}\]")),                # redaction placeholders: [EMAIL], [API_KEY]
    ("@", re.compile(r"[\w.+\-]{1,64}@[\w\-]++(?:\.[\w\-]++)++")),  # e-mail addresses (unredacted input)
    ("/", re.compile(r"(?:~|\.{1,2})?/[\w.\-/]++")),              # paths
    ("_", re.compile(r"\w*+_\w++")),                              # snake_case identifiers
    (".", re.compile(r"\b[a-zA-Z]\w*+(?:\.\w++)++(?:\(\))?")),  # dotted names: config.yaml, os.path.join()
)
_DOTTED_GATE = re.compile(r"\.\w")  # a literal first: the engine scans for "." in C; ". " ends sentences
_NUMBER = re.compile(r"\d[\d.,:/\-]*+")
_CODE_CHARS = re.compile(r"[{}\[\]()<>=;\"|\\$&^%@_+]")
_WORD = re.compile(r"[^\W\d_]{2,}")
_ANY_LETTER = re.compile(r"[^\W\d_]")
_DATA_LINE_START = frozenset("|{}[]<")

_NON_LATIN = re.compile(r"[^\x00-\u024f\u1e00-\u1eff\u2000-\u206f\u20a0-\u20cf]")
_LATIN_LETTER = re.compile(r"[A-Za-z\u00c0-\u024f\u1e00-\u1eff]+")
_CJK = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
                  r"\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]+")
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]+")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]+")
_OTHER_SCRIPTS: tuple[tuple[str, int, int, re.Pattern[str]], ...] = (
    # name, first and last code point of the block, its letters
    ("cyrillic", 0x0400, 0x04FF, re.compile(r"[\u0400-\u04ff]+")),
    ("arabic", 0x0600, 0x06FF, re.compile(r"[\u0600-\u06ff\u0750-\u077f\ufb50-\ufdff\ufe70-\ufeff]+")),
    ("arabic", 0x0750, 0x077F, re.compile(r"[\u0600-\u06ff\u0750-\u077f\ufb50-\ufdff\ufe70-\ufeff]+")),
    ("greek", 0x0370, 0x03FF, re.compile(r"[\u0370-\u03ff]+")),
    ("hebrew", 0x0590, 0x05FF, re.compile(r"[\u0590-\u05ff]+")),
    ("thai", 0x0E00, 0x0E7F, re.compile(r"[\u0e00-\u0e7f]+")),
    ("devanagari", 0x0900, 0x097F, re.compile(r"[\u0900-\u097f]+")),
)
_SCRIPT_LANGUAGE = {"greek": "el", "hebrew": "he", "thai": "th", "devanagari": "hi"}
_CJK_WEIGHT = 2.5
"""A Han/kana/Hangul character counts as this many Latin letters when picking the main script."""


def prose_sample(text: str, limit: int = SAMPLE_CHARS) -> str:
    """The first ``limit`` characters (about) of the prose in ``text``.

    Code fences (a fence left open runs to the end), inline code, URLs, paths, identifiers,
    numbers and redaction placeholders are removed; so are lines that look like code or data
    (many brackets, quotes, operators). Never longer than ``limit`` + one line's remainder.
    """
    text = text[:4 * limit]  # a fence opened here and closed later is cut open: it runs to the end
    if "```" in text or "~~~" in text:
        text = _FENCE.sub("\n", text)
    if "`" in text:
        text = _INLINE_CODE.sub(" ", text)
    out: list[str] = []
    size = 0
    start = 0
    n = len(text)
    while start < n and size < limit:
        end = text.find("\n", start)
        if end < 0:
            end = n
        line = text[start:min(end, start + limit + 40)]
        start = end + 1
        if not line or line.isspace():
            continue
        head = line.lstrip()[:1]
        if head in _DATA_LINE_START or (head == '"' and '":' in line) or _ANY_LETTER.search(line) is None:
            continue  # a table row, markup, JSON, a separator
        if _CODE_CHARS.subn("", line)[1] * 8 > len(line):  # > 1 in 8: code or data
            continue
        out.append(line)
        size += len(line)
    sample = " ".join(out)
    for gate, rx in _NOISE:
        if gate in sample and (gate != "." or _DOTTED_GATE.search(sample) is not None):
            sample = rx.sub(" ", sample)
    sample = _NUMBER.sub(" ", sample)
    return sample[:limit + 40] if len(sample) > limit + 40 else sample


# ----------------------------------------------------------------------------- the classifier

_lock = threading.Lock()
_identifiers: dict[str, Any] | None = None
_unavailable = False


def _load() -> dict[str, Any] | None:
    """One py3langid identifier per script group (shallow copies sharing the model), or None
    when py3langid is not installed: then texts the shortcuts and script rules cannot decide
    get ``""``."""
    global _identifiers, _unavailable
    if _identifiers is not None or _unavailable:
        return _identifiers
    with _lock:
        if _identifiers is None and not _unavailable:
            try:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier
            except ImportError:  # pragma: no cover - then only the shortcuts and script rules answer
                _unavailable = True
                return None
            base = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
            known = set(base.nb_classes)
            built: dict[str, Any] = {}
            for group, langs in (("latin", _LATIN), ("cyrillic", _CYRILLIC), ("arabic", _ARABIC)):
                ident = copy.copy(base)
                ident.set_languages([lang for lang in langs if lang in known])
                built[group] = ident
            _identifiers = built
    return _identifiers


_LETTER_RULES: dict[str, tuple[tuple[str, re.Pattern[str]], tuple[str, re.Pattern[str]]]] = {
    # script: (language, letters only it uses), (the other language, letters only that one uses)
    "cyrillic": (("ru", re.compile(r"[ыэъё]|(?<!\w)(?:и|что|это|как|или|но|мне|меня|его|если|только|уже|когда"
                                   r"|где|есть|нет|вы|он|она|они)(?!\w)")),
                 ("uk", re.compile(r"[іїєґ]"))),
    "arabic": (("ar", re.compile(r"[ةيكى]")), ("fa", re.compile(r"[پچژگکی]"))),
}


_SCRIPT_LETTERS = {"cyrillic": re.compile(r"[\u0400-\u04ff]+"),
                   "arabic": re.compile(r"[\u0600-\u06ff\u0750-\u077f]+")}


def _by_letters(script: str, lower_sample: str) -> str:
    """Russian vs Ukrainian, Arabic vs Persian, by letters only one of each pair uses.

    The first language when it has such letters (Russian: or words such as и, что, это) and the
    second none, or none over 60+ letters of the script (Ukrainian prose of that length all but
    always has і/ї/є, Persian پ/چ/گ/ک/ی); the second when it has 2+ and the first none; else
    ``""`` (then py3langid decides)."""
    rule = _LETTER_RULES.get(script)
    if rule is None:
        return ""
    (a, rx_a), (b, rx_b) = rule
    na, nb = len(rx_a.findall(lower_sample)), len(rx_b.findall(lower_sample))
    if nb == 0 and (na >= 1 or sum(map(len, _SCRIPT_LETTERS[script].findall(lower_sample))) >= 60):
        return a
    if na == 0 and nb >= 2:
        return b
    return ""


def warm_up() -> bool:
    """Load py3langid's model now (about 0.7 s) instead of on the first text that needs it; call
    it at ingest startup. True when the model is available."""
    return _load() is not None


def classify_raw(group: str, sample: str) -> tuple[str, float]:
    """py3langid's best language for ``sample`` among ``group``'s (``latin``, ``cyrillic``,
    ``arabic``) and its probability; ``("", 0.0)`` without py3langid."""
    idents = _load()
    if idents is None:
        return "", 0.0
    lang, confidence = idents[group].classify(sample)
    return lang, float(confidence)


def _classify(group: str, sample: str) -> str:
    lang, confidence = classify_raw(group, sample)
    return lang if confidence >= MIN_CONFIDENCE else ""


def _main_script(sample: str, first_non_latin: str) -> tuple[str, int]:
    """The script with the most (weighted) letters in ``sample`` and its letter count: ``latin``,
    ``kana`` (Japanese), ``han`` (Chinese), ``hangul`` or a name of :data:`_OTHER_SCRIPTS`. Besides
    Latin and CJK, only the script of the first non-Latin character is counted (mixes of two
    non-Latin, non-CJK scripts in one text are rare)."""
    latin = sum(map(len, _LATIN_LETTER.findall(sample)))
    chars = "".join(_CJK.findall(sample))
    if len(chars) * _CJK_WEIGHT > latin:
        hangul = sum(map(len, _HANGUL.findall(chars)))
        if hangul * 2 >= len(chars):
            return "hangul", len(chars)
        kana = sum(map(len, _KANA.findall(chars)))
        return ("kana" if kana * 20 >= len(chars) else "han"), len(chars)  # Japanese: kana >= 5% of CJK
    cp = ord(first_non_latin)
    for name, lo, hi, rx in _OTHER_SCRIPTS:
        if lo <= cp <= hi:
            count = sum(map(len, rx.findall(sample)))
            return (name, count) if count > latin else ("latin", latin)
    return "latin", latin


def detect(text: str) -> str:
    """ISO 639-1 code of the language of ``text``'s prose, or ``""`` (see the module invariants)."""
    if not text:
        return ""
    sample = prose_sample(text)
    if not sample:
        return ""
    m = _NON_LATIN.search(sample)
    script, letters = ("latin", -1) if m is None else _main_script(sample, m.group())
    if script in ("kana", "han", "hangul"):
        if letters < MIN_CJK_CHARS:
            return ""
        return {"kana": "ja", "han": "zh", "hangul": "ko"}[script]
    lower = sample.lower()
    words = _WORD.findall(lower)
    if len(words) < MIN_WORDS:
        return ""
    if script in _SCRIPT_LANGUAGE:
        return _SCRIPT_LANGUAGE[script]
    if script == "latin":
        fast = _fast_latin(words, lower) if len(words) >= 5 else ""
    else:
        fast = _by_letters(script, lower)
    return fast or _classify(script, sample)


# The frozen copy shares the live module's loaded py3langid identifiers (the model, not the decisions):
# one 1.5 s load and one copy of the model in memory for both.
from monitor.quality.language_id import _load  # noqa: E402,F811
