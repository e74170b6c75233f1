"""Presidio's structured-PII recognizers, made offline and tightened.

Presidio's stock email validator downloads the public-suffix list on first use (through
``tldextract``'s default extractor), its URL pattern takes seconds on long dotted strings,
its IBAN check logs the value, its IP pattern accepts IPv6 look-alikes in code and its card
pattern misses Mastercard's 2-series. The recognizers here subclass or replace those, and
every ``tldextract`` here reads only the snapshot it ships with, never the network.
"""

from __future__ import annotations

import regex
import tldextract
from presidio_analyzer import Pattern, PatternRecognizer
from presidio_analyzer.predefined_recognizers import (
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
)

from mixroute.guards.pii_types import LANGUAGE, URL
from mixroute.guards.pii_validators import FILE_EXTENSIONS

_EMAIL_CHARS = r"\w!#$%&'*+/=?^`{|}~\-"
# Presidio's email shape, anchored at the start of the local part (so a long dotted run
# before an "@" is not rescanned from every position) and with RFC 5321's 64-character
# local part; the domain is an atomic group for the same reason.
_EMAIL_REGEX = (
    rf"(?<![{_EMAIL_CHARS}.])[{_EMAIL_CHARS}](?:[{_EMAIL_CHARS}.]{{0,62}}[{_EMAIL_CHARS}])?"
    r"@(?>\w+(?:-+\w+)*(?:\.\w+(?:-+\w+)*)+)\b"
)


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's email recognizer with a ``tldextract`` that never goes to the network.

    The stock validator uses the module-level extractor, which downloads the public-suffix
    list on first use; this one only reads the snapshot shipped inside ``tldextract``.
    """

    def __init__(self) -> None:
        super().__init__(patterns=[Pattern("email (anchored)", _EMAIL_REGEX, 0.5)])
        self._extract = tldextract.TLDExtract(
            cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True
        )

    def validate_result(self, pattern_text: str) -> bool:
        """A real public suffix after the ``@`` (``a@b.c`` is not an email)."""
        return bool(self._extract(pattern_text).fqdn)


class QuietIbanRecognizer(IbanRecognizer):
    """Presidio's IBAN recognizer, minus its error log that would contain the value."""

    def validate_result(self, pattern_text: str) -> bool | None:
        """Reject anything that is not plain A-Z/0-9 before presidio's mod-97 check."""
        compact = pattern_text.replace(" ", "").replace("-", "")
        if not compact.isascii() or not compact.isalnum():
            return False
        result: bool | None = super().validate_result(pattern_text)
        return result


class StrictIpRecognizer(IpRecognizer):
    """Presidio's IP recognizer; also rejects IPv6 look-alikes such as ``Cafe::`` in code."""

    def invalidate_result(self, pattern_text: str) -> bool:
        """True when ``ipaddress`` rejects it or an IPv6 has fewer than three hex groups."""
        if super().invalidate_result(pattern_text):
            return True
        if ":" in pattern_text and "." not in pattern_text:
            groups = [g for g in pattern_text.split("%")[0].split("/")[0].split(":") if g]
            return len(groups) < 3
        return False


_URL_SCHEMED = r"(?i)\b(?:https?|ftp)://[^\s<>\"'`]+"
# A maximal dotted run starting at a word boundary; the atomic group and the lookbehind
# keep this linear on inputs like "1.1.1.1..." (presidio's TLD-alternation regex is not).
_URL_BARE = (
    r"(?i)(?<![\w.@/:\-])(?>[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?"
    r"(?:\.[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?)+)(?::\d{2,5})?(?:/[^\s<>\"'`]*)?"
)


class WebUrlRecognizer(PatternRecognizer):
    """URLs with a scheme, or bare host names whose last label is a real public suffix.

    Replaces presidio's ``UrlRecognizer``, whose pattern tries a few hundred TLDs at
    every dot and takes seconds on long dotted strings. Bare names that are file names
    (``setup.py``, ``README.md``), products (``ASP.NET``) or abbreviations (``e.g.``) are
    rejected; the suffix list is ``tldextract``'s bundled snapshot, never downloaded.
    """

    def __init__(self) -> None:
        super().__init__(
            supported_entity=URL,
            patterns=[
                Pattern("url (scheme)", _URL_SCHEMED, 0.6),
                Pattern("url (host)", _URL_BARE, 0.5),
            ],
            context=["url", "website", "link", "site"],
            supported_language=LANGUAGE,
            global_regex_flags=regex.DOTALL | regex.MULTILINE,
        )
        self._extract = tldextract.TLDExtract(
            cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        """Scheme URLs keep their pattern score; bare hosts need a real, lower-case TLD."""
        if "://" in pattern_text:
            return None
        host = pattern_text.split("/", 1)[0].split(":", 1)[0].rstrip(".")
        tld = host.rsplit(".", 1)[-1]
        if not tld.isalpha() or not tld.islower() or tld in FILE_EXTENSIONS:
            return False
        if not self._extract(host).suffix:
            return False
        return None


# Presidio's card regex starts cards with 4, 5[0-5], 6, 1 or 3; Mastercard's 2221-2720
# range is missing, so it is added here. Luhn validation still decides.
CARD_REGEX = (
    r"\b(?!1\d{12}(?!\d))((4\d{3})|(5[0-5]\d{2})|(6\d{3})|(1\d{3})|(3\d{3})|"
    r"(2[2-7]\d{2}))[- ]?(\d{3,4})[- ]?(\d{3,4})[- ]?(\d{3,5})\b"
)
