"""The name and place policy: turns candidate spans into PERSON, LOCATION, or nothing.

spaCy's small model mislabels names (an unfamiliar full name as ORG, a product as a
person, a public figure as private), so its spans and the cue patterns' are only
*candidates*. Here they are cleaned (titles, possessives, lists split) and classified by
the context around them (``NamePolicy`` lists the rules, in order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import regex

from mixroute.guards.pii_lexicon import (
    NAME_LEAD,
    NAME_PARTICLES,
    NAME_WORD,
    NOT_NAMES,
    ORG_WORDS,
    PARTICLES,
    PLACE_WORDS,
    RELATIONS,
)
from mixroute.guards.pii_prefilter import is_question, sentence_of
from mixroute.guards.pii_types import LOCATION, PERSON

_PERSON_LEFT_STRONG = regex.compile(
    r"(?i)(?:\b(?:dear|hi|hello|hey|thanks|thank\s+you|cheers|regards|sincerely|love|best|"
    r"warmly|yours)\s*,?"
    r"|\b(?:hi|hey|hello)[,!]?\s+(?:it'?s|it\u2019s)|\bmeeting\s+with"
    r"|\b(?:this\s+is|i'?m|i\u2019m|i\s+am|my\s+name\s+is|name\s+is|named|called|call\s+me|"
    r"attn|from:|to:|cc:|bcc:|signed,?)"
    rf"|\b{NAME_LEAD}\s*[:,]?"
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
    rf"(?:{RELATIONS}|engineer|developer|designer|teacher|nurse|writer|artist|"
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
_NAME_TOKEN = regex.compile(rf"^{NAME_WORD}$")
_CAMEL = regex.compile(r"(?<=\p{Ll})\p{Lu}")
_NAME_PREFIX = regex.compile(r"^(?:Mc|Mac|De|Di|Da|Du|Le|La|Van|Von)$")
_TRAILING_TITLE = regex.compile(
    r"\b(?:Dr|Mr|Mrs|Ms|Mx|Prof|Sir|Dame|Rev|Mme|Mlle|Herr|Frau|Señor|Señora|Sra|Sr)\.?\s*$"
)
_TITLES = regex.compile(
    r"^(?:(?:Dr|Mr|Mrs|Ms|Mx|Prof|Sir|Dame|Rev|Capt|Mme|Mlle|Herr|Frau|Dear|The|the|Hi|"
    r"Hello)\.?\s+)+"
)


def _is_name_token(token: str) -> bool:
    """Capitalised, not a known non-name, and not camelCase ("SiteGround", "WordPress")."""
    if not _NAME_TOKEN.match(token) or token.rstrip("'\u2019") in NOT_NAMES:
        return False
    inner = _CAMEL.search(token)
    return inner is None or bool(_NAME_PREFIX.match(token[: inner.start() + 1]))


def _shape(span: str) -> str | None:
    """ "name", "place" (has a place word) or None (not 1-4 capitalised name words)."""
    tokens = span.split()
    if not 1 <= len(tokens) <= 4:
        return None
    inner_ok = all(_is_name_token(t) or t in PARTICLES for t in tokens[1:-1])
    if not (_is_name_token(tokens[0]) and _is_name_token(tokens[-1]) and inner_ok):
        return None
    if any(t in ORG_WORDS for t in tokens):
        return None
    places = sum(t in PLACE_WORDS for t in tokens)
    if places == len(tokens):
        return None
    return "place" if places else "name"


@dataclass(frozen=True)
class Candidate:
    """A span that may be a name, from spaCy (its label) or a cue pattern (``CUE_*``)."""

    start: int
    end: int
    label: str  # NER label (PERSON, LOCATION, ORGANIZATION, NRP, FACILITY) or CUE_*
    score: float


def clean_span(text: str, start: int, end: int) -> list[tuple[int, int]]:
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
    while lead and lead.group(1) in NOT_NAMES:
        start += int(lead.end())
        lead = regex.match(r"(\S+)\s+", text[start:end])
    trail = regex.search(r"\s+(\S+)$", text[start:end])
    while trail and trail.group(1) in NOT_NAMES:
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


def extend_name(text: str, start: int, end: int) -> int:
    """Extend a one-word span by a following surname on the same line ("Valentina Obi")."""
    if " " in text[start:end]:
        return end
    following = regex.match(
        rf"[ \t]+(?:{NAME_PARTICLES}[ \t]+)*({NAME_WORD})(?![\p{{L}}\d])", text[end:]
    )
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
        cand: Candidate,
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
        question = is_question(sentence_of(text, cand.start))
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
