"""The PII type names the guard reports, and their order of precedence.

A module of its own because every part of the detector needs them (recognizers, name
policy, merging) and the detector module imports all of those parts: keeping the names
here avoids an import cycle. ``mixroute.guards.pii`` re-exports them.
"""

from __future__ import annotations

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

# The one language every recognizer and both presidio engines are registered for.
LANGUAGE = "en"
