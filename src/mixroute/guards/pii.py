"""PII detection for chat requests: presidio's pattern recognizers, then a gated spaCy pass.

Why two engines. Structured identifiers (emails, phones, cards, SSNs, IPs, IBANs, URLs,
street addresses) are found by regular expressions plus validators (Luhn, mod-97,
``ipaddress``, libphonenumber); that path never touches spaCy and costs well under a
millisecond for a short prompt. Names and places need the NER model (a few ms), so it runs
only when a cheap pre-filter says the prompt is personal *and* holds a name-like word.
Both engines are presidio ``AnalyzerEngine`` objects built explicitly offline: no model
or public-suffix list is ever downloaded.

This module is the detector: it runs both engines, vets and scores what they find, and
merges the spans. The parts it puts together each live in a module of their own:

* ``pii_types``: the type names and their ``PRIORITY`` (re-exported here);
* ``pii_recognizers``, ``pii_addresses``: presidio recognizers made offline and tightened,
  and the street-address recognizer presidio lacks;
* ``pii_engines``: the regex engine and the NER engine (spaCy loaded from the installed
  package's directory, NER pipe only);
* ``pii_validators``: plausibility checks for structured spans;
* ``pii_lexicon``, ``pii_prefilter``, ``pii_names``: what names look like, whether a
  message can hold PII names at all, and which candidates are a PERSON or LOCATION.

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

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from presidio_analyzer import RecognizerResult
from presidio_analyzer.nlp_engine import SpacyNlpEngine

from mixroute.guards.entities import PIIEntity, text_parts
from mixroute.guards.pii_engines import (
    MODEL_PACKAGE,
    NER_LABELS,
    build_ner_engine,
    build_regex_engine,
)
from mixroute.guards.pii_lexicon import CUE_NAME, CUE_PLACE, FROM_TO, SHAPE_NAME
from mixroute.guards.pii_names import Candidate, NamePolicy, clean_span, extend_name
from mixroute.guards.pii_prefilter import is_personal, is_question, may_contain_names, sentence_of
from mixroute.guards.pii_types import (
    CREDIT_CARD,
    DEFAULT_ENTITIES,
    EMAIL_ADDRESS,
    IBAN_CODE,
    IP_ADDRESS,
    LANGUAGE,
    LOCATION,
    NAME_TYPES,
    PERSON,
    PHONE_NUMBER,
    PRIORITY,
    STREET_ADDRESS,
    SUPPORTED_TYPES,
    URL,
    US_SSN,
)
from mixroute.guards.pii_validators import card_ok, ip_ok, phone_ok, ssn_cue_before, trim_url

# What other modules import from here: the detector, span merging and the type names.
__all__ = [
    "CREDIT_CARD",
    "DEFAULT_ENTITIES",
    "EMAIL_ADDRESS",
    "IBAN_CODE",
    "IP_ADDRESS",
    "LOCATION",
    "NAME_TYPES",
    "PERSON",
    "PHONE_NUMBER",
    "PRIORITY",
    "STREET_ADDRESS",
    "SUPPORTED_TYPES",
    "URL",
    "US_SSN",
    "PIIDetector",
    "merge_overlapping",
]

# The score of a name that only a cue pattern found, and the floor of every name score.
_CUE_SCORE = 0.7


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
            if not phone_ok(text, start, end):
                return None
            score = 0.6 if text[start:end].isdigit() else 0.75
        elif kind == IP_ADDRESS:
            if not ip_ok(text, start, end):
                return None
        elif kind == URL:
            trimmed = trim_url(text, start, end)
            if trimmed is None:
                return None
            start, end = trimmed
            score = max(score, 0.6)
        elif kind == CREDIT_CARD:
            if not card_ok(text, start, end):
                return None  # a long number in arithmetic, not a payment card
        elif kind == US_SSN:
            if score < self.score_threshold and ssn_cue_before(text, start):
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
            if e.type != STREET_ADDRESS or not is_question(sentence_of(text, e.start))
        ]

    # -- names ---------------------------------------------------------------------

    def _names(self, text: str, blocked: Sequence[PIIEntity]) -> list[PIIEntity]:
        if self._ner_engine is None:
            return []
        self.ner_calls += 1
        nlp_engine = self._ner_engine.nlp_engine
        assert isinstance(nlp_engine, SpacyNlpEngine)
        # spaCy keeps every new string and tokenization it meets for the life of the
        # pipeline: ids, numbers and addresses in prompts grew the heap by about 0.7 KB per
        # call, without bound (bench/soak.py). A memory zone frees them when it ends; only
        # offsets, labels and scores (plain Python values) leave it. Zones must not nest
        # or overlap: every call runs on the guard service's one PII thread.
        with nlp_engine.get_nlp(LANGUAGE).memory_zone():
            artifacts = nlp_engine.process_text(text, LANGUAGE)
            results: list[RecognizerResult] = self._ner_engine.analyze(
                text=text,
                language=LANGUAGE,
                entities=list(NER_LABELS),
                nlp_artifacts=artifacts,
                score_threshold=0.0,
            )
        candidates: list[Candidate] = []
        for result in results:
            for start, end in clean_span(text, result.start, result.end):
                end = extend_name(text, start, end)
                candidates.append(Candidate(start, end, result.entity_type, float(result.score)))
        for match in CUE_NAME.finditer(text):
            group = 1 if match.group(1) else 2
            candidates.append(
                Candidate(match.start(group), match.end(group), "CUE_PERSON", _CUE_SCORE)
            )
        for match in SHAPE_NAME.finditer(text):
            for start, end in clean_span(text, match.start(), match.end()):
                candidates.append(Candidate(start, end, "CUE_SHAPE", _CUE_SCORE))
        for pattern in (CUE_PLACE, FROM_TO):
            for match in pattern.finditer(text):
                candidates.append(Candidate(match.start(1), match.end(1), "CUE_PLACE", _CUE_SCORE))
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

    def detect_messages(self, messages: Sequence[Any]) -> list[tuple[int, PIIEntity]]:
        """PII in every message of an OpenAI chat request, with each message's index.

        Every role is scanned (system, user, assistant, tool). Offsets refer to
        ``message_text(message)``: the content string, or the text parts of a list
        content joined with "\\n" (image and audio parts contribute nothing). Each part
        is scanned on its own, so an entity never spans two parts. The arguments of an
        assistant's ``tool_calls`` are not content and are not scanned.
        """
        found: list[tuple[int, PIIEntity]] = []
        for index, message in enumerate(messages):
            if not isinstance(message, Mapping):  # any body's `messages` reaches the guards
                continue
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
