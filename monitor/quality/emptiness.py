"""Empty completions: nothing but whitespace, punctuation and layout. Pure, C-level scans."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["is_empty"]


_CONTENT_CHAR = re.compile(r"[^\W_]")  # a letter or digit, any script


def is_empty(completion: str) -> bool:
    """True when the completion has no content: empty, or only whitespace, punctuation,
    control/format characters (zero-width spaces) and math/currency/modifier symbols
    (```` ``` ````, ``---``, ``**``, ``{}``).

    Invariants: any letter or digit in any script, or any "other symbol" (emoji, ``©``), is
    content; a redaction placeholder (``[EMAIL]``) is content. Cost: C-level scans (and a look at
    the distinct characters of a text without letters or digits).
    """
    if not completion or completion.isspace():
        return True
    if completion[:1].isalnum() or _CONTENT_CHAR.search(completion) is not None:  # [^\W_] is isalnum()
        return False
    if completion.isascii():  # ASCII has no "other symbols"
        return True
    return not any(unicodedata.category(c) == "So" for c in set(completion))
