"""The street-address recognizer: postal addresses written in English and European shapes.

Presidio has no recognizer for postal addresses, so this one is ours: a set of bounded
regular expressions (no quadratic backtracking on long runs of letters) for the common
written forms, registered like any presidio pattern recognizer.
"""

from __future__ import annotations

import regex
from presidio_analyzer import Pattern, PatternRecognizer

from mixroute.guards.pii_types import LANGUAGE, STREET_ADDRESS

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
