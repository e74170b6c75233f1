"""The second check: cheap facts two texts must share before one's answer serves the other.

Embeddings see "convert 5 miles to km" and "convert 8 miles to km" as near-identical; the
answers differ. So a candidate above the similarity threshold must also agree on numbers,
named entities, negation, units, programming languages (in order), time words, contrast
words (pros/cons, before/after) and, in comparisons, the order of the things compared. Each
rule is a plain token comparison: microseconds. The word lists were tuned on the dev split
of ``data/cache`` only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*%?")
_NUMBER_UNIT = re.compile(r"\b\d+(?:\.\d+)?\s?(°[cCfF]|[a-zA-Z]{1,3})\b")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9+#'./-]*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n)\s*([A-Za-z][\w'-]*)")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_NEGATION = _words(
    "not no never none nor without cannot can't don't doesn't isn't aren't won't shouldn't "
    "wouldn't didn't unsafe non except avoid"
)
_UNIT_GROUPS = {
    "km": "km kilometer kilometers kilometre kilometres",
    "mi": "mi mile miles",
    "m": "m meter meters metre metres",
    "cm": "cm",
    "mm": "mm",
    "in": "inch inches",
    "ft": "ft foot feet",
    "yd": "yard yards",
    "kg": "kg kilogram kilograms",
    "g": "g gram grams",
    "lb": "lb lbs pound pounds",
    "oz": "oz ounce ounces",
    "fl": "fluid",
    "C": "c celsius °c",
    "F": "f fahrenheit °f",
    "K": "k kelvin",
    "l": "l liter liters litre litres",
    "ml": "ml milliliter milliliters",
    "gal": "gallon gallons",
    "cup": "cup cups",
    "tbsp": "tbsp tablespoon tablespoons",
    "tsp": "tsp teaspoon teaspoons",
    "qt": "quart quarts",
    "pt": "pint pints",
    "GB": "gb",
    "GiB": "gib",
    "MB": "mb",
    "MiB": "mib",
    "kB": "kb",
    "TB": "tb",
    "TiB": "tib",
    "mph": "mph",
    "kph": "kph km/h",
    "m/s": "m/s mps",
    "USD": "usd dollar dollars",
    "EUR": "eur euro euros",
    "GBP": "gbp",
    "JPY": "yen jpy",
    "h": "hour hours",
    "min": "minute minutes",
    "s": "second seconds",
    "day": "day days",
    "week": "week weeks",
    "month": "month months",
    "year": "year years",
    "acre": "acre acres",
    "ha": "hectare hectares",
    "psi": "psi",
    "bar": "bar",
    "Pa": "pascal",
    "kPa": "kpa",
    "J": "joule joules",
    "cal": "calorie calories",
    "kcal": "kcal",
    "W": "watt watts",
    "kW": "kw",
    "kWh": "kwh",
    "V": "volt volts",
    "A": "amp amps",
}
_UNITS = {alias: unit for unit, aliases in _UNIT_GROUPS.items() for alias in aliases.split()}
_LANGUAGES = _words(
    "python rust java javascript js typescript ts golang c c++ cpp c# csharp ruby php swift "
    "kotlin scala haskell perl matlab julia lua dart elixir erlang clojure sql bash shell "
    "powershell zsh fortran cobol ocaml f# zig nim groovy objective-c vba html css sass "
    "postgres postgresql mysql sqlite mongodb redis react vue angular django flask rails "
    "spring node node.js deno pandas numpy"
)
_TIME_WORDS = _words(
    "today tomorrow yesterday tonight now current currently latest last next previous past "
    "future morning evening weekend monday tuesday wednesday thursday friday saturday sunday "
    "january february march april june july august september october november december ago "
    "later earlier bc bce"
)
_CONTRAST_WORDS = _words(
    "pros cons advantages disadvantages benefits drawbacks risks strengths weaknesses before "
    "after min max minimum maximum increase decrease buy sell import export encode decode "
    "encrypt decrypt upload download push pull open close start stop enable disable add "
    "remove install uninstall first largest smallest biggest highest lowest longest shortest "
    "worst faster slower cheaper better worse above below under male female vegan vegetarian "
    "hot cold left right north south east west input output sender receiver population area "
    "capital gdp height weight age price cost boiling freezing melting where who"
)
_COMPARISON_MARKERS = _words("than vs versus over instead")
_CONVERSION_WORDS = _words("in to into per")
_STOPWORDS = _words(
    "a an the is are was were be of in on at to for do does did i my me you it and or what "
    "which how than vs versus over instead bigger smaller larger heavier lighter faster "
    "slower better worse more less"
)


@dataclass(frozen=True, slots=True)
class Facts:
    numbers: tuple[str, ...]
    entities: tuple[str, ...]
    negated: bool
    units: tuple[str, ...]
    languages: tuple[str, ...]  # in order: "Java faster than Python" is not the reverse
    time_words: frozenset[str]
    contrast: tuple[str, ...]
    compared: tuple[str, ...]  # content words, in order, of a comparison ("X bigger than Y")


def _is_number(word: str) -> bool:
    return bool(_NUMBER.fullmatch(word))


def facts(text: str) -> Facts:
    sentence_starts = {m.start(1) for m in _SENTENCE_START.finditer(text)}
    words = list(_WORD.finditer(text))
    tokens = [t.lower().rstrip(".?!,") for t in re.findall(r"[\w°+#'./-]+", text)]
    lower = [w.group().lower().rstrip(".?!,") for w in words]
    entities = tuple(
        w.group().rstrip(".?!,").lower()
        for w in words
        if w.group()[0].isupper()
        and w.start() not in sentence_starts
        and len(w.group()) > 1
        and w.group().lower() not in _LANGUAGES
        and w.group().lower() not in ("i", "i'm")
    )
    has_number = any(_is_number(t) for t in tokens)
    units = tuple(
        _UNITS[w]
        for i, w in enumerate(tokens)
        if w in _UNITS and (has_number or (i > 0 and tokens[i - 1] in _CONVERSION_WORDS))
    ) + tuple(
        _UNITS[m.group(1).lower()]
        for m in _NUMBER_UNIT.finditer(text)
        if m.group(1).lower() in _UNITS
    )
    compared: tuple[str, ...] = ()
    if any(w in _COMPARISON_MARKERS for w in lower):
        compared = tuple(w for w in lower if w not in _STOPWORDS)
    return Facts(
        numbers=tuple(n.replace(",", "") for n in _NUMBER.findall(text)),
        entities=entities,
        negated=any(w in _NEGATION or w.endswith("n't") for w in lower),
        units=units,
        languages=tuple(dict.fromkeys(w for w in lower if w in _LANGUAGES)),
        time_words=frozenset(w for w in lower if w in _TIME_WORDS),
        contrast=tuple(w for w in lower if w in _CONTRAST_WORDS),
        compared=compared,
    )


def agree(a: Facts, b: Facts) -> bool:
    return (
        a.numbers == b.numbers
        and a.negated == b.negated
        and a.units == b.units
        and a.languages == b.languages
        and a.time_words == b.time_words
        and a.contrast == b.contrast
        and _same_entities(a.entities, b.entities)
        and _same_comparison(a.compared, b.compared)
    )


def _same_entities(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """A substitution (each side names something the other does not: Austria / Australia)
    is a different question; one side naming a subset (capitalisation varies, or a word is
    sentence-initial) is not."""
    only_a, only_b = set(a) - set(b), set(b) - set(a)
    return not (only_a and only_b)


def _same_comparison(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """The same things compared in the other order ask the opposite question."""
    if not a or not b or set(a) != set(b):
        return True
    return a == b
