"""Refusal phrases in 14 languages, compiled once; :func:`is_refusal` looks for them at the start of a reply.

Languages: en, de, fr, es, it, pt, nl, pl, tr, zh, ja, ko, ru, ar.

Invariants:

- Pure: no state, no I/O; every pattern is compiled at import.
- Cheap: the head is checked for a few keywords per language (``in``, C speed); only the
  patterns of languages whose keywords occur run, and of those only the ones that can match at
  all (:func:`_candidates`: a word every alternative of the language contains must be there too).
- Only the *head* of a reply is searched: its first two sentences (at most :data:`HEAD_CHARS`
  characters), or the whole reply when it is that short. A refusal that only comes after a
  long preamble is missed on purpose: "I can't ..." deep inside an answer is usually an
  explanation ("the command cannot run because ..."), not a refusal.
- Precision first. A refusal needs a first-person negated modal *and* a verb of helping or
  producing ("I can't help with", "je ne peux pas vous aider", "我无法提供", "お答えできません"),
  or an explicit formula ("I must decline", "as an AI language model, I cannot", "this request
  violates ..."). Idioms are excluded ("I can't help but notice", "I can't wait to" and its
  translations, "I cannot stress enough", "je ne peux que", "non posso che"); so are hedges
  about the *answer* ("I can't give you an exact number"), conditions ("... without the order
  number", "until you share the logs"), partial help in the same sentence ("..., but here is a
  skeleton") and phrases inside quotation marks ("you could reply: "Sorry, I can't help with that"").
"""

from __future__ import annotations

import re

__all__ = ["HEAD_CHARS", "is_refusal", "head"]

HEAD_CHARS = 360
"""The head (first two sentences) is cut at this many characters."""

_NORMALISE = (("\u2019", "'"), ("\u2018", "'"), ("\u02bc", "'"), ("\u201c", '"'), ("\u201d", '"'), ("\u201e", '"'),
              ("\u00ab", '"'), ("\u00bb", '"'), ("\u00a0", " "), ("\u202f", " "))
"""Typographic apostrophes and quotes to ASCII, no-break spaces to spaces (str.replace: C speed)."""
_SENTENCE_END = re.compile(r"[.!?…。！？\n](?:(?<=[。！？\n])|(?=[\s\"')\]*_]|$))")
"""A sentence end: one of .!?… before a space, quote, bracket, * or _ (or at the end), or 。！？ or a
line break. Written to start with a character set, which the engine skips to in C, rather than as
``[.!?…](?=...)|[。！？]|\\n`` (the same one-character matches), which tries three alternatives at
every position."""
_DOT_END = re.compile(r"\.(?=[\s\"')\]*_]|$)")
""":data:`_SENTENCE_END` in a text with no other sentence-ending character."""
_LEAD = re.compile(r"^[\s>*_#\"'`\-]+")
_ASCII_LEAD = frozenset("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f >*_#\"'`-")
"""The ASCII characters :data:`_LEAD` strips (``\\s`` in ASCII, then the markup)."""
"""The ASCII characters :data:`_LEAD` strips."""

# ---------------------------------------------------------------------------- English

_EN_MODAL = r"""(?:
    \b(?:i|we)\s+(?:really\s+|simply\s+|just\s+|unfortunately\s+|definitely\s+|absolutely\s+|still\s+)?
      (?:can't|cannot|can\s+not|won't|will\s+not|shouldn't|should\s+not|must\s+not|mustn't|refuse\s+to
        |(?:must|have\s+to|need\s+to|will\s+have\s+to|'ll\s+have\s+to)\s+(?:respectfully\s+|politely\s+)?decline\s+to
        |(?:won't|will\s+not|wouldn't|would\s+not)\s+be\s+able\s+to
        |(?:don't|do\s+not)\s+think\s+i\s+(?:can|should)
        |(?:don't|do\s+not)\s+feel\s+comfortable)
  | \b(?:i'm|i\s+am|we're|we\s+are)\s+(?:really\s+|afraid\s+i'm\s+|sorry,?\s+but\s+i'm\s+)?
      (?:not\s+able\s+to|unable\s+to|not\s+going\s+to|not\s+allowed\s+to|not\s+permitted\s+to
        |not\s+in\s+a\s+position\s+to|not\s+comfortable|not\s+willing\s+to)
  | \bi(?:'d|\s+would)\s+rather\s+not
)"""
_EN_FILLER = r"""(?:\s+(?:and\s+(?:will|would)\s+not|and\s+won't|in\s+good\s+conscience|ethically|legally|safely
    |responsibly|directly|personally|really|actually|fully|currently|possibly|knowingly|continue\s+to|,))*"""
_EN_HELP_IDIOMS = r"(?!\s+(?:but|noticing|thinking|feeling|wondering|laughing|smiling|it|myself)\b)"
_EN_VERB = r"""(?:
    help""" + _EN_HELP_IDIOMS + r"""|assist|provide|comply|fulfil|fulfill|support|create|write|generate|produce|give
  | share|answer|respond|complete|engage|participate|facilitate|offer|draft|compose|make|build|develop
  | design|continue|discuss|encourage|condone|promote|endorse|contribute|explain\s+how|tell\s+you\s+how
  | walk\s+you\s+through|show\s+you\s+how|teach|go\s+along|accommodate|process\s+(?:that|this|your|such)
  | do\s+(?:that|this|so|it|what\s+you)|honou?r|reveal|disclose|browse|role-?play|pretend|impersonate
  | diagnose|prescribe|predict|access\s+(?:the\s+internet|real-time|realtime|external|live|current|the\s+web)
  | look\s+up|search\s+the\s+(?:internet|web)|be\s+of\s+(?:help|assistance)|agree\s+to|carry\s+out|perform
  | translate|summari[sz]e|recommend(?![^.!?\n]{0,40}\benough\b)
)\b"""
_EN_HEDGE = r"""(?!\s+(?:you\s+)?(?:(?:an?|the|any)\s+)?(?:exact|precise|definitive|definite|accurate|complete
    |comprehensive|full|exhaustive|detailed|100\s?%|final|perfect|guarantee|specific\s+(?:number|date|figure|time|price)
    |real\s+numbers)\b)"""

_EN = [
    _EN_MODAL + _EN_FILLER + r"\s+(?:you\s+)?" + _EN_VERB + _EN_HEDGE,
    # "as an AI language model, I cannot ...", "I'm just an AI, I can't ..."
    r"""\bas\s+an?\s+(?:ai|artificial\s+intelligence|(?:large\s+)?language\s+model|llm|chatbot|virtual\s+assistant)\b
        [^.!?\n]{0,60}?\bi\s+(?:can't|cannot|can\s+not|am\s+not\s+able|am\s+unable|'m\s+not\s+able|'m\s+unable|won't
        |will\s+not|must\s+not|(?:do\s+not|don't)\s+have\s+the\s+ability|am\s+not\s+allowed|am\s+not\s+permitted
        |must\s+decline|have\s+to\s+decline)""",
    r"\bi'?m\s+(?:just|only)\s+an?\s+(?:ai|language\s+model|bot)\b[^.!?\n]{0,40}?\b(?:can't|cannot|unable|not\s+able)",
    # explicit formulas
    r"\bi\s+(?:must|have\s+to|will\s+have\s+to|need\s+to)\s+(?:respectfully\s+|politely\s+)?(?:decline|refuse)\b",
    r"\bi\s+(?:respectfully\s+|politely\s+)?decline\s+(?:to|this|that|your)\b",
    r"""\b(?:that's|that\s+is|this\s+is|it's|it\s+is)\s+(?:not\s+something\s+(?:i|we)
          (?:\s+can|\s+am\s+able\s+to|'m\s+able\s+to|\s+are\s+able\s+to|'re\s+able\s+to|\s+will|'ll)
        |something\s+(?:i|we)\s+(?:can't|cannot|won't|will\s+not|am\s+not\s+able\s+to))\s+(?:help|assist|do|provide
        |support|discuss|answer|create|write|share)""",
    # the subject dropped: "Sorry, can't help with that." / "Can't help with that."
    r"""(?:^|[.!]\s+|\b(?:sorry|unfortunately|apologies|afraid)[,.!]?\s+(?:but\s+)?)(?:can't|cannot)\s+(?:help|assist
        |do\s+(?:that|this|it))\b""",
    r"""\b(?:this|that|your|the)\s+request\s+(?:violates|goes\s+against|is\s+against|conflicts\s+with
        |is\s+not\s+something)""",
    r"""\b(?:violates?|against)\s+(?:my|our|openai's|the)\s+(?:guidelines|policies|policy|usage\s+polic(?:y|ies)
        |content\s+polic(?:y|ies)|terms\s+of\s+(?:use|service)|principles|programming|ethical\s+guidelines)""",
    r"""\bi\s+(?:don't|do\s+not)\s+have\s+(?:access\s+to|the\s+ability\s+to)\s+(?:real-?time|live|current|the\s+internet
        |the\s+web|browse|external|up-to-date|today's)""",
    r"\bi\s+(?:can't|cannot|won't|will\s+not)\s+(?:do|help\s+with)\s+(?:that|this)\b",
]

# ---------------------------------------------------------------------------- other languages

_DE_VERB = (r"(?:helfen|behilflich|unterstützen|erfüllen|nachkommen|beantworten|bereitstellen|liefern|geben"
            r"|erstellen|schreiben|verfassen|generieren|tun|machen|anbieten|weiterhelfen|mitwirken|stellen|teilen"
            r"|nennen|\w*geben)")
_DE_GAP = r"(?:(?!\baber\b|\bgerne?\b|\bjedoch\b)[^.!?\n]){0,50}?"
_DE = [
    r"\b(?:ich\s+(?:kann|darf|werde|möchte|will)|(?:kann|darf|werde|möchte|will)\s+ich)\b" + _DE_GAP
    + r"\b(?:nicht|keine[nmrs]?)\b" + _DE_GAP + r"\b" + _DE_VERB + r"\b",
    r"\bich\s+bin\s+(?:leider\s+)?(?:nicht\s+in\s+der\s+lage|außerstande)\b",
    r"\bich\s+muss\s+[^.!?\n]{0,40}?\bablehnen\b",
    r"\bals\s+(?:ki|künstliche\s+intelligenz|sprachmodell|ki-sprachmodell|ki-assistent)\b[^.!?\n]{0,40}?"
    r"\b(?:kann|darf)\s+ich\s+(?:ihnen\s+|dir\s+|leider\s+)*(?:nicht|keine)",
]
_FR_VERB = (r"(?:aider|répondre|fournir|donner|assister|satisfaire|accéder\s+à\s+(?:cette|votre|ta)\s+demande"
            r"|faire\s+(?:cela|ça|ceci)|créer|écrire|rédiger|générer|partager|traiter|accomplir|participer|continuer"
            r"|proposer|expliquer\s+comment|apporter|communiquer|divulguer|accompagner)")
_FR = [
    r"\bje\s+ne\s+(?:peux|pourrai|pourrais|vais|veux|saurais|suis\s+pas\s+autorisée?\s+à)\s+pas\b[^.!?\n]{0,40}?\b"
    + _FR_VERB + r"\b",
    r"\bje\s+ne\s+(?:peux|pourrai|pourrais)\s+pas\s+(?:le\s+faire|faire\s+(?:cela|ça))",
    r"\bje\s+ne\s+suis\s+pas\s+(?:en\s+mesure|autorisée?|habilitée?)\b",
    r"\bje\s+(?:dois\s+)?(?:refuse[rs]?|décline[rs]?)\s+(?:de|cette|votre|ta)\b",
    r"\ben\s+tant\s+qu[e']\s*(?:ia|intelligence\s+artificielle|modèle\s+de\s+langage|assistant)\b[^.!?\n]{0,40}?"
    r"\bje\s+ne\s+(?:peux|suis|dois)",
]
_ES_VERB = (r"(?:ayudar\w*|asistir\w*|proporcionar\w*|dar(?:te|le|les)?|ofrecer\w*|cumplir|responder\w*|satisfacer"
            r"|crear\w*|escribir\w*|redactar\w*|generar\w*|compartir\w*|hacer\s+(?:eso|esto|lo\s+que)|facilitar\w*"
            r"|colaborar|participar|continuar|complacer\w*|atender\w*|brindar\w*)")
_ES = [
    r"\bno\s+(?:puedo|podré|podría|voy\s+a|estoy\s+en\s+condiciones\s+de|me\s+es\s+posible|soy\s+capaz\s+de"
    r"|estoy\s+autorizad[oa]\s+a|debo)\b[^.!?\n]{0,40}?\b" + _ES_VERB + r"\b",
    r"\bcomo\s+(?:un\s+|una\s+)?(?:modelo\s+de\s+lenguaje|ia|inteligencia\s+artificial|asistente\s+de\s+ia)\b"
    r"[^.!?\n]{0,40}?\bno\s+(?:puedo|tengo|me\s+es)",
    r"\bdebo\s+(?:rechazar|declinar)\b",
]
_IT_VERB = (r"(?:aiutar\w*|assister\w*|fornir\w*|dar\w*|offrir\w*|soddisfare|rispondere|creare|scrivere|generare"
            r"|condividere|fare\s+(?:questo|ciò|quello)|collaborare|partecipare|continuare|esaudire|accontentar\w*)")
_IT = [
    r"\bnon\s+(?:posso|potrò|potrei|sono\s+in\s+grado\s+di|riesco\s+a|mi\s+è\s+possibile|sono\s+autorizzat[oa]\s+a"
    r"|devo)\b[^.!?\n]{0,40}?\b" + _IT_VERB + r"\b",
    r"\bcome\s+(?:un\s+)?(?:modello\s+linguistico|modello\s+di\s+linguaggio|ia|intelligenza\s+artificiale"
    r"|assistente\s+ia)\b[^.!?\n]{0,40}?\bnon\s+(?:posso|sono)",
]
_PT_VERB = (r"(?:ajud\w*|auxiliar|fornecer|dar|oferecer|cumprir|atender|responder|criar|escrever|gerar|compartilhar"
            r"|partilhar|fazer\s+(?:isso|isto|o\s+que)|colaborar|participar|continuar|prestar)")
_PT = [
    r"\bnão\s+(?:posso|poderei|poderia|consigo|sou\s+capaz\s+de|estou\s+em\s+condições\s+de|vou|devo"
    r"|estou\s+autorizad[oa]\s+a)\b[^.!?\n]{0,40}?\b" + _PT_VERB + r"\b",
    r"\bcomo\s+(?:um\s+|uma\s+)?(?:modelo\s+de\s+linguagem|ia|inteligência\s+artificial|assistente\s+de\s+ia)\b"
    r"[^.!?\n]{0,40}?\bnão\s+(?:posso|tenho|sou)",
]
_NL_VERB = (r"(?:helpen|assisteren|ondersteunen|geven|leveren|verstrekken|beantwoorden|voldoen|maken|schrijven"
            r"|genereren|delen|doen|bieden|ingaan)")
_NL = [
    r"\b(?:ik\s+(?:kan|mag|zal|ga|wil)|(?:kan|mag|zal|wil)\s+ik)\b(?:(?!\bmaar\b|\bgraag\b)[^.!?\n]){0,40}?\bniet\b"
    r"[^.!?\n]{0,30}?\b" + _NL_VERB + r"\b",
    r"\bik\s+ben\s+(?:helaas\s+)?niet\s+in\s+staat\b",
    r"\bals\s+(?:een\s+)?(?:ai|taalmodel|ai-taalmodel|ai-assistent)\b[^.!?\n]{0,40}?"
    r"\bkan\s+ik\s+(?:je\s+|u\s+)?(?:niet|geen)",
]
_ZH = [
    r"(?:我|本助手|作为(?:一个|一款)?(?:ai|人工智能)(?:语言模型|助手|模型)?[，,]?\s*我)(?:恐怕|真的|实在|目前|暂时)?"
    r"(?:无法|不能|不可以|没办法|没有办法|不会|不便|拒绝|不被允许)"
    r"(?:为你|为您|帮你|帮您|帮助你|帮助您|向你|向您|给你|给您|替你|替您|就此|对此)?"
    r"(?:帮助|协助|提供|满足|回答|完成|处理|生成|编写|写|创作|参与|支持|回应|执行|给出|分享|透露|帮忙|帮|答复|配合)",
    r"(?:这个|此|该|您的|你的)(?:请求|要求|问题)我(?:无法|不能)",
    r"违反了?(?:我的|相关的?)?(?:使用)?(?:政策|准则|规定)",
]
_JA = [
    r"(?:お手伝い|お答え|お応え|回答|対応|提供|協力|作成|お力になること|お受け|ご案内|サポート|支援)"
    r"(?:すること|いたすこと|させていただくこと)?(?:は|が|を)?"
    r"(?:でき(?:ません|かねます|ない)|いたしかねます|致しかねます|しかねます|できかねます)",
    r"(?:ご依頼|ご要望|リクエスト|ご質問|要求)(?:には|に)(?:応じ|お応え|お答え|対応)(?:られません|できません|いたしかねます)",
    r"aiとして[^。！？\n]{0,30}?(?:できません|できかねます)",
]
_KO = [
    r"(?:도와|도움을\s*드릴|도움을\s*줄|답변(?:을|해)?\s*드릴|답변할|제공(?:해)?\s*드릴|제공할|응할|지원할"
    r"|작성(?:해)?\s*드릴|응해\s*드릴|도와\s*드릴)\s*수\s*(?:없습니다|없어요|없어|없네요)",
]
_RU = [
    r"(?:\bя\s+)?\bне\s+(?:могу|смогу|буду|стану|вправе)\b[^.!?\n]{0,40}?"
    r"(?:помо\w*|предостав\w*|выполн\w*|ответ\w*|дать|созда\w*|написа\w*|сгенерир\w*|подел\w*|участв\w*|содейств\w*)",
    r"\bя\s+не\s+(?:имею\s+права|в\s+состоянии)\b",
]
_PL = [
    r"\bnie\s+(?:mogę|moge|jestem\s+w\s+stanie|będę|mógłbym|mogłabym|moglbym)\b[^.!?\n]{0,40}?"
    r"(?:pomóc|pomoc\w*|udziel\w*|dostarcz\w*|spełni\w*|odpowiedzie\w*|stworzy\w*|napisa\w*|wygenerowa\w*|zrobić"
    r"|przygotowa\w*|wykona\w*)",
]
_TR = [
    r"(?:yardımcı\s+olamam|yardımcı\s+olamayacağım|yardım\s+edemem|yardım\s+edemeyeceğim|sağlayamam|veremem"
    r"|yanıtlayamam|cevaplayamam|yerine\s+getiremem|oluşturamam|yazamam|destek\s+olamam)",
]
_AR = [
    r"(?:لا\s+(?:أستطيع|استطيع|يمكنني|أقدر\s+على)|لن\s+(?:أتمكن|أستطيع|يمكنني)|لا\s+يسعني)\s*(?:من\s+)?(?:\S+\s+){0,2}?"
    r"(?:المساعدة|مساعدتك|مساعدتكم|تقديم|توفير|الإجابة|تلبية|القيام|إنشاء|كتابة|مشاركة)",
]

_GATED: tuple[tuple[tuple[str, ...], tuple[str, ...], bool], ...] = (
    # gate (one of these substrings must be in the lower-cased head), patterns, Latin script?
    (("n't", "not", "unable", "declin", "refus", "rather", "as a", "violat", "against", "just an", "only an"),
     _EN, True),
    (("nicht", "kein", "lage", "außerstande", "ablehnen"), _DE, True),
    ((" ne ", "refus", "déclin"), _FR, True),
    (("no ", "debo "), _ES, True),
    (("non ",), _IT, True),
    (("não",), _PT, True),
    (("niet", "geen"), _NL, True),
    (("nie ",), _PL, True),
    (("amam", "emem", "olamay", "edemey"), _TR, True),
    (("无法", "不能", "不可以", "没办法", "没有办法", "不会", "不便", "拒绝", "不被允许", "违反"), _ZH, False),
    (("でき", "かね", "られません"), _JA, False),
    (("수",), _KO, False),
    (("не ",), _RU, False),
    (("لا", "لن"), _AR, False),
)
_EN_FIRST = r"(?=\b[iwatyvsuc]|[.!])"
"""Every English alternative starts at a word beginning with one of these letters (``i``, ``we``,
``as``, ``that``, ``your``, ``violates``, ``sorry``, ``unfortunately``, ``can't`` at the start) or at
``.``/``!``: checked first, so that the engine does not try eleven alternatives at every position
(a third of the cost; the matches are the same)."""
_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile((_EN_FIRST if patterns is _EN else "") + "(?:" + "|".join(f"(?:{p})" for p in patterns) + ")", re.X)
    for _, patterns, _ in _GATED)
"""One compiled pattern per language, in :data:`_GATED` order."""
_EN_GATE = _GATED[0][0]
# The English pre-checks below run on the head reversed where the words vary before a fixed ending,
# so that every pattern starts with a literal: the engine jumps between its occurrences (memchr)
# instead of trying a dozen alternatives at every position.
_EN_NT_REVERSED = re.compile(r"t'n(?:ac|ow|od|dluohs|tsum|dluow)")
"""can't, won't, don't, shouldn't, mustn't, wouldn't (reversed): the "n't" of the English alternatives."""
_EN_NOT_REVERSED = re.compile(r"ton(?:nac|\s+(?:nac|lliw|dluohs|tsum|dluow|od|ma|era|yllaer|rehtar|si|s'|m'|er'))")
"""Where "not" stands in the English alternatives (reversed): in "cannot" or after can, will, should,
must, would, do, am, are, really, rather, is, 's, 'm, 're (can not, i'm not, that is not ...); and
:data:`_EN_NOT_ABLE` ("i'm just an ai, not able to ...")."""
_EN_NOT_ABLE = re.compile(r"not\s+able")
_EN_REFUSE = re.compile(r"refuse\b")
_EN_DECLINE = re.compile(r"decline\b")
"""Refuse and decline are whole words in the English alternatives (not "declined", "refused")."""
_NON_LATIN_FROM = "\u0400"
"""The gates and patterns of zh, ja, ko, ru and ar all need a character from here up (Cyrillic on)."""
_I_EN, _I_DE, _I_FR, _I_ES, _I_IT, _I_PT, _I_NL, _I_PL, _I_TR = range(9)
"""Indices in :data:`_GATED` of the Latin-script languages."""


def _english(h: str) -> bool:
    """False when no English pattern can match ``h`` or its gate misses (then the pattern need not
    run); True when both may hold. Every English alternative contains can't/won't/don't/shouldn't/
    mustn't/wouldn't, a "not" of :data:`_EN_NOT_REVERSED`, unable, or refuse/decline as a word; or else
    (this|that|your|the) request + violates/against/conflicts, or violates/against + guidelines/
    polic*/terms/principles/programming. All but "request ... conflicts with" contain a gate key."""
    if "n't" in h or "not" in h:
        backwards = h[::-1]
        if ("n't" in h and _EN_NT_REVERSED.search(backwards) is not None
                or "not" in h and (_EN_NOT_REVERSED.search(backwards) is not None
                                   or _EN_NOT_ABLE.search(h) is not None)):
            return True
    if ("unable" in h or "refuse" in h and _EN_REFUSE.search(h) is not None
            or "decline" in h and _EN_DECLINE.search(h) is not None):
        return True
    if "violat" in h or "against" in h:
        return ("request" in h or "guidelines" in h or "polic" in h or "terms" in h or "principles" in h
                or "programming" in h)
    return "conflicts" in h and "request" in h and any(key in h for key in _EN_GATE)


def _candidates(h: str) -> list[int]:
    """The languages (indices of :data:`_GATED`) whose patterns must run on ``h``: exactly those whose
    gate hits, less those whose pattern cannot match for want of a word every one of its
    alternatives contains (German "ich", French "je", Spanish puedo/podr*/voy/estoy/posible/soy/
    debo/como, Italian poss*/potr*/sono/riesco/devo/come; in an ASCII head, Turkish amam/emem).
    A few substring checks (C speed) instead of the 50 gate keys; the verdicts are the same."""
    run = [_I_EN] if _english(h) else []
    if "ich" in h and ("nicht" in h or "kein" in h or "ablehnen" in h or "außerstande" in h):
        run.append(_I_DE)  # "lage" alone cannot match: "nicht in der lage" has "nicht"
    if "je" in h and (" ne " in h or "refus" in h or "déclin" in h):
        run.append(_I_FR)
    if ("no " in h or "debo " in h) and ("puedo" in h or "podr" in h or "voy" in h or "estoy" in h or "posible" in h
                                         or "soy" in h or "debo" in h or "como" in h):
        run.append(_I_ES)
    if "non " in h and ("poss" in h or "potr" in h or "sono" in h or "riesco" in h or "devo" in h or "come" in h):
        run.append(_I_IT)
    if "nie" in h:
        if "niet" in h:
            run.append(_I_NL)
        if "nie " in h:
            run.append(_I_PL)
    elif "geen" in h:
        run.append(_I_NL)
    if h.isascii():  # no "não"; Turkish matches without ı, ğ, ş all end in -amam or -emem
        if "amam" in h or "emem" in h:
            run.append(_I_TR)
        return run
    if "não" in h:
        run.append(_I_PT)
    if "amam" in h or "emem" in h or "olamay" in h or "edemey" in h:
        run.append(_I_TR)
    if max(h) >= _NON_LATIN_FROM:
        run.extend(i for i, (gate, _, latin) in enumerate(_GATED) if not latin and any(key in h for key in gate))
    return run

_IDIOM = re.compile(r"\bwait|wachten|erwarten|attendre|esperar|aspettare|vedo\s+l'ora|doczeka|дождат|не\s+терпится")
"""Inside a match: "can't wait to help" in any language (eager, not refusing)."""
_CANCEL = re.compile(r"""(?:
    \bwithout\s+(?:the|your|an?|more|further|additional|some|any|seeing|knowing|access\s+to\s+(?:the|your))\b
  | \b(?:unless|until)\s+(?:you|i|we|the|your)\b | \byet\b
  | ,?\s+but\s+(?:here|below|the\s+following|this\s+(?:should|will|is)|you\s+can\s+(?:use|try|run|check))
  | ,?\s+however,?\s+here
  | \bsin\s+(?:el|la|los|las|tu|su|más)\b | \bsans\s+(?:le|la|les|votre|ton|ta|vos|plus)\b
  | \bohne\s+(?:die|den|das|ihre|deine|weitere)\b | \bsenza\s+(?:il|la|i|le|il\s+tuo|più)\b
  | \bsem\s+(?:o|a|os|as|mais)\b
  | \bzonder\s+(?:de|het|uw|je)\b
)""", re.X)

def head(text: str) -> str:
    """The first two sentences of ``text`` (lower-cased, quotes and spaces normalised), at most
    :data:`HEAD_CHARS` characters; the whole text when shorter."""
    text = text[:HEAD_CHARS + 40]
    ascii_text = text.isascii()
    if not ascii_text:
        for a, b in _NORMALISE:
            if a in text:
                text = text.replace(a, b)
    if not ascii_text or text[:1] in _ASCII_LEAD:
        lead = _LEAD.match(text)
        if lead is not None:
            text = text[lead.end():]
    cut = len(text)
    # ASCII without !, ? or a line break can only end sentences with ".": a literal the engine finds
    # with memchr, instead of a character set it tests at every position (tens of instructions each)
    ends = _DOT_END if ascii_text and "!" not in text and "?" not in text and "\n" not in text else _SENTENCE_END
    end = ends.search(text, 3)  # sentence ends before the fourth character do not count
    if end is not None:
        end = ends.search(text, end.end())
        if end is not None:
            cut = end.end()
    return text[:min(cut, HEAD_CHARS)].lower()


def is_refusal(completion: str) -> bool:
    """True when the reply declines the request (see the module invariants)."""
    if not completion:
        return False
    h = head(completion)
    if len(h) < 6:
        return False
    for i in _candidates(h):
        for m in _PATTERNS[i].finditer(h):
            if h.count('"', 0, m.start()) % 2:
                continue  # inside quotation marks: quoted, not said
            if _IDIOM.search(h, m.start(), m.end()) is not None:
                continue  # "ich kann es nicht erwarten, Ihnen zu helfen": eager, not refusing
            end = _SENTENCE_END.search(h, m.end())
            if _CANCEL.search(h, m.end(), end.start() if end else len(h)) is not None:
                continue  # the rest of its sentence: a condition or partial help
            return True
    return False
