"""Plausibility checks for structured PII spans that a pattern alone cannot settle.

Presidio's recognizers (and libphonenumber) accept many strings that are not PII in
context: dates, versions, prices, ISBNs, order numbers and arithmetic read as phones or
cards; version strings read as IPv4 addresses; file names read as URLs. These checks look
at the span and the text around it, so the detector keeps only what still looks like the
identifier. They are plain functions over ``(text, start, end)``: no presidio, no spaCy.
"""

from __future__ import annotations

import regex


def _word_set(words: str) -> frozenset[str]:
    """A frozen set from whitespace-separated words (keeps long word lists readable)."""
    return frozenset(words.split())


_PHONE_CONTEXT = regex.compile(
    r"(?i)\b(?:phone|tel|telephone|call|called|calling|mobile|cell|number|text|sms|"
    r"whatsapp|fax|contact|reach|dial|voicemail|line)\b"
)
_STRONG_PHONE_CONTEXT = regex.compile(
    r"(?i)\b(?:phone|tel|telephone|call|called|calling|mobile|cell|text|sms|whatsapp|fax|"
    r"dial|voicemail|landline|hotline)\b"
)
_NOT_PHONE_CONTEXT = regex.compile(
    r"(?i)(?:\b(?:isbn|order|invoice|ticket|tracking|serial|model|part|sku|ref|reference|"
    r"receipt|case|build|version|ver|release|firmware|account|acct|routing|id|zip)\b"
    r"[\s#:.no]*|#\s*)$"
)
_DATE_LIKE = regex.compile(
    r"^(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})(?:[ T]\d|$)"
)
_THOUSANDS = regex.compile(r"^\d{1,3}(?:,\d{3})+(?:\.\d+)?$|^\d{1,3}(?:\.\d{3})+(?:,\d+)?$")
_CURRENCY_BEFORE = regex.compile(r"[$€£¥₹]\s*$|\b(?:USD|EUR|GBP|CHF|JPY)\s*$")
_CURRENCY_AFTER = regex.compile(r"^\s*(?:USD|EUR|GBP|CHF|JPY|dollars?|euros?|pounds?)\b")
_VERSION_WORDS = (
    r"version|ver|v|firmware|build|release|kernel|patch|bios|windows|ios|android|macos|"
    r"chrome|firefox|(?:update|upgrade)[ds]?(?:\s+(?:to|from))?"
)
_VERSION_BEFORE = regex.compile(rf"(?i)\b(?:{_VERSION_WORDS})\s*\.?\s*$")
_PHONE_VERSION_BEFORE = regex.compile(
    rf"(?i)\b(?:{_VERSION_WORDS}|python|node|java|rust|go|numpy|php|ruby|perl)\s*\.?\s*$"
)
_ARITHMETIC = regex.compile(
    r"(?i)\b(?:divisible|divided|divide|modulo|mod|squared|cubed|prime|factori[sz]e|"
    r"factors?|multipl(?:y|ied)|times|plus|minus|sum|product|remainder|sqrt|gcd|lcm|"
    r"calculate|compute|binary|hexadecimal|octal|base\s*\d+)\b|[\u00d7*=^%\u00f7]|\s[+/]\s"
)
_CARD_CONTEXT = regex.compile(
    r"(?i)\b(?:card|visa|mastercard|amex|discover|credit|debit|charged?|billed|payment|pay)"
)
_SSN_CONTEXT = regex.compile(r"(?i)\b(?:ssn|ssns|social\s+security(?:\s+number)?)\b")
_URL_TRAILING = ".,;:!?'\")]}>\u2019\u201d"
_URL_LEADING = "'\"(<[\u2018\u201c"
# Bare "host names" ending in these are file names (``setup.py``), not web addresses.
FILE_EXTENSIONS = _word_set(
    """
    py sh md rs pl cc ts js rb go cs cpp php txt json yaml yml toml cfg ini log csv xml
    html htm css lock conf env sql zip gz tar exe dll so bin mov mp3 mp4 png jpg jpeg
    gif pdf doc docx xls xlsx ppt pptx c h
    """
)


def phone_ok(text: str, start: int, end: int) -> bool:
    """Keep a libphonenumber match only if it still looks like a phone in context."""
    span = text[start:end]
    digits = sum(ch.isdigit() for ch in span)
    if not 7 <= digits <= 15:
        return False
    before = text[max(0, start - 24) : start]
    after = text[end : end + 12]
    if _DATE_LIKE.match(span) or _THOUSANDS.match(span):
        return False
    if _CURRENCY_BEFORE.search(before) or _CURRENCY_AFTER.match(after):
        return False
    if _NOT_PHONE_CONTEXT.search(before) or _PHONE_VERSION_BEFORE.search(before):
        return False
    # Part of a longer dotted or dashed number (a version, an ISBN, an IP).
    if regex.search(r"\d[.\-]$", before) or regex.match(r"^[.\-]\d", after):
        return False
    if "." in span and "+" not in span:
        groups = [len(g) for g in regex.split(r"[.\s]+", regex.sub(r"[()]", "", span)) if g]
        if groups not in ([3, 3, 4], [2, 4, 4], [3, 4, 4], [4, 3, 3]):
            return False
    groups = regex.split(r"[\s\-.]+", span.strip("()+ "))
    if len(groups) >= 3 and len(groups[-1]) == 1:
        return False  # ISBN-like: a single check digit at the end, never a phone
    around = before + " " + after
    if _ARITHMETIC.search(around) and not _STRONG_PHONE_CONTEXT.search(text):
        return False  # a number in a calculation ("12345678 divided by 9")
    plain = span.isdigit()
    if plain:
        # A long plain integer is a phone only with a phone word just before it.
        return bool(_PHONE_CONTEXT.search(text[max(0, start - 40) : start]))
    return True


def ip_ok(text: str, start: int, end: int) -> bool:
    """IPv4 look-alikes in version context or inside a longer dotted number are versions."""
    span = text[start:end]
    if ":" in span:
        return True
    before = text[max(0, start - 24) : start]
    after = text[end : end + 2]
    if regex.search(r"\d\.$|[vV]$", before) or regex.match(r"^\.\d", after):
        return False
    return not _VERSION_BEFORE.search(before) and "→" not in text[end : end + 4]


def trim_url(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Strip surrounding punctuation; keep bare domains only when they are clearly web."""
    while end > start and text[end - 1] in _URL_TRAILING:
        end -= 1
    while start < end and text[start] in _URL_LEADING:
        start += 1
    span = text[start:end]
    if not span:
        return None
    lowered = span.lower()
    if "://" in lowered or lowered.startswith("www."):
        return start, end
    host, _, path = span.partition("/")
    tld = host.rsplit(".", 1)[-1].lower()
    if tld in FILE_EXTENSIONS and not path:
        return None
    if text[max(0, start - 1) : start] in ("@", "_", ".") or text[end : end + 1].isalnum():
        return None  # part of an email or of a longer word ("kwame.mensah")
    return start, end


def card_ok(text: str, start: int, end: int) -> bool:
    """False for a card-shaped number in arithmetic with no payment word nearby."""
    window = text[max(0, start - 40) : end + 40]
    return not (_ARITHMETIC.search(window) and not _CARD_CONTEXT.search(window))


def ssn_cue_before(text: str, start: int) -> bool:
    """An "SSN" or "social security" cue just before the span (raises a weak match)."""
    return bool(_SSN_CONTEXT.search(text[max(0, start - 40) : start]))
