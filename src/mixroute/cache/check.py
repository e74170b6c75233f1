"""The second check: cheap facts two texts must share before one's answer serves the other.

Embeddings see "convert 5 miles to km" and "convert 8 miles to km" as near-identical; the
answers differ. So a candidate above the similarity threshold must also agree on numbers,
named entities (in order), negation, units (in order), programming languages, time words and
contrast words (pros/cons, before/after). Each rule is a plain token comparison, microseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*(?:\.\d+)?%?")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9+#'.-]*")
_NEGATION = frozenset(
    {
        "not",
        "no",
        "never",
        "none",
        "nor",
        "without",
        "cannot",
        "can't",
        "don't",
        "doesn't",
        "isn't",
        "aren't",
        "won't",
        "shouldn't",
        "wouldn't",
        "didn't",
        "unsafe",
        "non",
        "except",
        "avoid",
    }
)
_UNITS = {
    "km": "km",
    "kilometer": "km",
    "kilometers": "km",
    "kilometre": "km",
    "kilometres": "km",
    "mile": "mi",
    "miles": "mi",
    "mi": "mi",
    "m": "m",
    "meter": "m",
    "meters": "m",
    "metre": "m",
    "metres": "m",
    "cm": "cm",
    "mm": "mm",
    "inch": "in",
    "inches": "in",
    "ft": "ft",
    "foot": "ft",
    "feet": "ft",
    "yard": "yd",
    "yards": "yd",
    "kg": "kg",
    "kilogram": "kg",
    "kilograms": "kg",
    "g": "g",
    "gram": "g",
    "grams": "g",
    "lb": "lb",
    "lbs": "lb",
    "pound": "lb",
    "pounds": "lb",
    "oz": "oz",
    "ounce": "oz",
    "ounces": "oz",
    "fluid": "fl",
    "c": "C",
    "celsius": "C",
    "f": "F",
    "fahrenheit": "F",
    "kelvin": "K",
    "k": "K",
    "l": "l",
    "liter": "l",
    "liters": "l",
    "litre": "l",
    "litres": "l",
    "ml": "ml",
    "milliliters": "ml",
    "gallon": "gal",
    "gallons": "gal",
    "cup": "cup",
    "cups": "cup",
    "tbsp": "tbsp",
    "tablespoon": "tbsp",
    "tablespoons": "tbsp",
    "tsp": "tsp",
    "teaspoon": "tsp",
    "teaspoons": "tsp",
    "quart": "qt",
    "quarts": "qt",
    "pint": "pt",
    "pints": "pt",
    "gb": "GB",
    "gib": "GiB",
    "mb": "MB",
    "mib": "MiB",
    "kb": "kB",
    "tb": "TB",
    "tib": "TiB",
    "mph": "mph",
    "kph": "kph",
    "km/h": "kph",
    "mps": "m/s",
    "m/s": "m/s",
    "usd": "USD",
    "dollar": "USD",
    "dollars": "USD",
    "eur": "EUR",
    "euro": "EUR",
    "euros": "EUR",
    "gbp": "GBP",
    "yen": "JPY",
    "jpy": "JPY",
    "hour": "h",
    "hours": "h",
    "minute": "min",
    "minutes": "min",
    "second": "s",
    "seconds": "s",
    "day": "day",
    "days": "day",
    "week": "week",
    "weeks": "week",
    "month": "month",
    "months": "month",
    "year": "year",
    "years": "year",
    "acre": "acre",
    "acres": "acre",
    "hectare": "ha",
    "hectares": "ha",
    "psi": "psi",
    "bar": "bar",
    "pascal": "Pa",
    "kpa": "kPa",
    "joule": "J",
    "joules": "J",
    "calorie": "cal",
    "calories": "cal",
    "kcal": "kcal",
    "watt": "W",
    "watts": "W",
    "kw": "kW",
    "kwh": "kWh",
    "volt": "V",
    "volts": "V",
    "amp": "A",
    "amps": "A",
    "°c": "C",
    "°f": "F",
}
_LANGUAGES = frozenset(
    {
        "python",
        "rust",
        "java",
        "javascript",
        "js",
        "typescript",
        "ts",
        "go",
        "golang",
        "c",
        "c++",
        "cpp",
        "c#",
        "csharp",
        "ruby",
        "php",
        "swift",
        "kotlin",
        "scala",
        "haskell",
        "perl",
        "r",
        "matlab",
        "julia",
        "lua",
        "dart",
        "elixir",
        "erlang",
        "clojure",
        "sql",
        "bash",
        "shell",
        "powershell",
        "zsh",
        "fortran",
        "cobol",
        "ocaml",
        "f#",
        "zig",
        "nim",
        "groovy",
        "objective-c",
        "vb",
        "vba",
        "html",
        "css",
        "sass",
        "postgres",
        "postgresql",
        "mysql",
        "sqlite",
        "mongodb",
        "redis",
        "react",
        "vue",
        "angular",
        "django",
        "flask",
        "rails",
        "spring",
        "node",
        "node.js",
        "deno",
        "pandas",
        "numpy",
    }
)
_TIME_WORDS = frozenset(
    {
        "today",
        "tomorrow",
        "yesterday",
        "tonight",
        "now",
        "current",
        "currently",
        "latest",
        "last",
        "next",
        "previous",
        "past",
        "future",
        "morning",
        "evening",
        "weekend",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
        "ago",
        "later",
        "earlier",
        "bc",
        "ad",
        "bce",
        "ce",
    }
)
_CONTRAST_WORDS = frozenset(
    {
        "pros",
        "cons",
        "advantages",
        "disadvantages",
        "benefits",
        "drawbacks",
        "risks",
        "before",
        "after",
        "min",
        "max",
        "minimum",
        "maximum",
        "increase",
        "decrease",
        "buy",
        "sell",
        "import",
        "export",
        "encode",
        "decode",
        "encrypt",
        "decrypt",
        "upload",
        "download",
        "push",
        "pull",
        "open",
        "close",
        "start",
        "stop",
        "enable",
        "disable",
        "add",
        "remove",
        "install",
        "uninstall",
        "first",
        "last",
        "largest",
        "smallest",
        "biggest",
        "highest",
        "lowest",
        "longest",
        "shortest",
        "best",
        "worst",
        "most",
        "least",
        "more",
        "less",
        "faster",
        "slower",
        "cheaper",
        "better",
        "worse",
        "above",
        "below",
        "over",
        "under",
        "male",
        "female",
        "vegan",
        "vegetarian",
        "hot",
        "cold",
        "left",
        "right",
        "north",
        "south",
        "east",
        "west",
        "input",
        "output",
        "sender",
        "receiver",
        "to",
        "from",
        "into",
        "population",
        "area",
        "capital",
        "gdp",
        "height",
        "weight",
        "age",
        "price",
        "cost",
    }
)
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n)\s*([A-Za-z][\w'-]*)")


@dataclass(frozen=True, slots=True)
class Facts:
    numbers: tuple[str, ...]
    entities: tuple[str, ...]
    negated: bool
    units: tuple[str, ...]
    languages: tuple[str, ...]  # in order: "Java faster than Python" is not the reverse
    time_words: frozenset[str]
    contrast: tuple[str, ...]


def facts(text: str) -> Facts:
    numbers = tuple(n.replace(",", "") for n in _NUMBER.findall(text))
    sentence_starts = {m.start(1) for m in _SENTENCE_START.finditer(text)}
    words = list(_WORD.finditer(text))
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
    units = tuple(_UNITS[w] for w in lower if w in _UNITS)
    return Facts(
        numbers=numbers,
        entities=entities,
        negated=any(w in _NEGATION or w.endswith("n't") for w in lower),
        units=units,
        languages=tuple(dict.fromkeys(w for w in lower if w in _LANGUAGES)),
        time_words=frozenset(w for w in lower if w in _TIME_WORDS),
        contrast=tuple(w for w in lower if w in _CONTRAST_WORDS),
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
    )


def _same_entities(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Entities must agree in content and order; lone capitalised words that only one side
    has (a capitalised common word, "Please") are tolerated."""
    shared_a = [e for e in a if e in b]
    shared_b = [e for e in b if e in a]
    if shared_a != shared_b:
        return False
    only = set(a) ^ set(b)
    return len(only) == 0
