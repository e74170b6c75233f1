"""PII guard: offline detector, policies against known false positives, masking round trips,
stream restoration, and the held-out evaluation (so a regression in recall, false positives
or latency fails here)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mixroute.evaluation.pii import GoldSpan, PIIReport, evaluate_pii, match_spans
from mixroute.guards.entities import PIIEntity, message_text
from mixroute.guards.pii import (
    DEFAULT_ENTITIES,
    SUPPORTED_TYPES,
    PIIDetector,
    merge_overlapping,
)
from mixroute.guards.redact import Redactor, StreamRestorer

DATA = Path(__file__).resolve().parents[1] / "src" / "mixroute" / "data" / "guards" / "pii"

# Non-ASCII before every entity: offsets must be code points, not UTF-8 bytes.
PREFIX = "Zoë from Kraków (Łódź) → "


def _no_network(*_args: Any, **_kwargs: Any) -> None:
    raise AssertionError("the PII detector tried to open a network connection")


@pytest.fixture(scope="module")
def detector() -> Iterator[PIIDetector]:
    """One detector for the module, built and warmed with the network switched off."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _no_network)
        patch.setattr(socket, "create_connection", _no_network)
        built = PIIDetector(DEFAULT_ENTITIES)
        # tldextract and spaCy both run here: still no connection.
        built.detect("I'm Ana Souza, mail me at ana.souza@example.org from Porto.")
        yield built


def _found(detector: PIIDetector, text: str) -> list[tuple[str, str]]:
    return [(e.type, text[e.start : e.end]) for e in detector.detect(text)]


@pytest.mark.parametrize(
    ("kind", "value", "tail"),
    [
        ("EMAIL_ADDRESS", "zoe.nowak@example.org", " is my work address."),
        ("PHONE_NUMBER", "(415) 555-0132", " is my cell phone."),
        ("PHONE_NUMBER", "+44 20 7946 0958", ", my London number."),
        ("CREDIT_CARD", "4111 1111 1111 1111", " is the card they charged."),
        ("CREDIT_CARD", "2221 0000 0000 0009", " is my Mastercard."),
        ("US_SSN", "219-09-9999", " is my SSN."),
        ("IP_ADDRESS", "203.0.113.45", " keeps hitting my server."),
        ("IP_ADDRESS", "2001:db8::8a2e:370:7334", " is my IPv6 address."),
        ("IBAN_CODE", "DE89 3704 0044 0532 0130 00", " is my IBAN."),
        ("URL", "https://zoe-nowak.dev/about", " is my site."),
        ("STREET_ADDRESS", "1428 Elm Street, Springfield, IL 62704", " is where I live."),
        ("STREET_ADDRESS", "Lindenstraße 41, 50674 Köln", " is my new flat."),
    ],
)
def test_structured_types_with_code_point_offsets(
    detector: PIIDetector, kind: str, value: str, tail: str
) -> None:
    text = PREFIX + value + tail
    entities = [e for e in detector.detect(text) if e.type != "LOCATION" and e.type != "PERSON"]
    assert [(e.type, e.start, e.end) for e in entities] == [
        (kind, len(PREFIX), len(PREFIX) + len(value))
    ]
    assert text[entities[0].start : entities[0].end] == value


def test_ssn_without_separators_needs_context(detector: PIIDetector) -> None:
    assert _found(detector, "My SSN is 219099999, keep it safe.") == [("US_SSN", "219099999")]
    assert _found(detector, "Calculate 219099999 squared.") == []


def test_luhn_invalid_card_is_not_reported(detector: PIIDetector) -> None:
    assert _found(detector, "The card 4111 1111 1111 1112 was declined.") == []
    assert _found(detector, "Is 5555555555554444 divisible by 11?") == []


@pytest.mark.parametrize(
    "text",
    [
        "Upgrade from 3.11.4 to 3.12.1 broke my build.",
        "Windows build 10.0.19045.3693 crashes; firmware 4.2.10.3 too.",
        "The meeting is on 2024-06-01 at 09:30, or 12/03/2025.",
        "The price went from $1,299.99 to $1,149.00.",
        "Is 2,147,483,647 a prime number?",
        "What is 12345678 divided by 9?",
        "My order #58213 shipped; tracking 1Z999AA10123456784.",
        "The ISBN 0-306-40615-2 doesn't show up in my library app.",
        "Convert the timestamp 1700000000 to a date.",
    ],
)
def test_numbers_that_are_not_phone_numbers(detector: PIIDetector, text: str) -> None:
    assert _found(detector, text) == []


def test_organizations_dates_and_nrp_are_never_reported(detector: PIIDetector) -> None:
    text = (
        "I have worked at Microsoft and the United Nations since 12 March 2021; "
        "my German colleagues at Deutsche Bank say hi."
    )
    kinds = {e.type for e in detector.detect(text)}
    assert kinds <= SUPPORTED_TYPES
    assert not kinds & {"ORGANIZATION", "NRP", "DATE_TIME"}


def test_names_and_places_with_a_personal_cue(detector: PIIDetector) -> None:
    assert _found(detector, "My name is Aisha Bello and I live in Lyon.") == [
        ("PERSON", "Aisha Bello"),
        ("LOCATION", "Lyon"),
    ]
    assert _found(detector, "Write a thank-you note to my landlord, Mr. Okonkwo.") == [
        ("PERSON", "Okonkwo")
    ]


def test_public_figures_and_trivia_places_are_not_pii(detector: PIIDetector) -> None:
    for text in (
        "When did Abraham Lincoln give the Gettysburg Address?",
        "Why is Venice sinking?",
        "What did Rosa Parks do in Montgomery in 1955?",
        "Who lives at 10 Downing Street?",
    ):
        assert _found(detector, text) == [], text


def test_names_inside_identifiers_are_not_separate_entities(detector: PIIDetector) -> None:
    text = "Send it to diego.robledo@example.com or 78 avenue Jean Jaurès, 67000 Strasbourg."
    assert _found(detector, text) == [
        ("EMAIL_ADDRESS", "diego.robledo@example.com"),
        ("STREET_ADDRESS", "78 avenue Jean Jaurès, 67000 Strasbourg"),
    ]


def test_prefilter_skips_spacy_for_a_technical_prompt(detector: PIIDetector) -> None:
    before = detector.ner_calls
    assert _found(detector, "How do I reverse a list in Python 3.12 without copying it?") == []
    assert _found(detector, "What is the capital of France?") == []
    assert detector.ner_calls == before
    _found(detector, "My sister Ingrid lives in Bergen.")
    assert detector.ner_calls == before + 1


def test_selected_entities_only() -> None:
    emails_only = PIIDetector(["EMAIL_ADDRESS"], names=False)
    text = "I'm Ana, call +1 212 555 0199 or mail ana@example.org."
    assert [(e.type, text[e.start : e.end]) for e in emails_only.detect(text)] == [
        ("EMAIL_ADDRESS", "ana@example.org")
    ]
    assert emails_only.ner_calls == 0
    with pytest.raises(ValueError):
        PIIDetector(["ORGANIZATION"])


def test_never_logs_text_or_values(detector: PIIDetector, caplog: pytest.LogCaptureFixture) -> None:
    text = "I'm Zebulon Quixote, mail zebq@example.org, card 4111 1111 1111 1111, 12 Oak Street."
    with caplog.at_level(logging.DEBUG):
        assert len(detector.detect(text)) == 4
    for value in ("Zebulon", "zebq", "4111", "Oak Street"):
        assert value not in caplog.text


def test_merge_keeps_priority_type_over_union() -> None:
    merged = merge_overlapping(
        [
            PIIEntity("PHONE_NUMBER", 10, 22, 0.75),
            PIIEntity("IBAN_CODE", 0, 22, 1.0),
            PIIEntity("LOCATION", 30, 35, 0.85),
        ]
    )
    assert merged == [PIIEntity("IBAN_CODE", 0, 22, 1.0), PIIEntity("LOCATION", 30, 35, 0.85)]


MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "Support agent. Escalations go to ops-lead@example.com."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Hi, I'm Freya Navarro."},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": "My card 4111 1111 1111 1111 was charged twice."},
        ],
    },
    {"role": "assistant", "content": "Thanks Freya Navarro, is ops-lead@example.com right?"},
    {"role": "tool", "tool_call_id": "c1", "content": '{"ip": "198.51.100.7", "ok": true}'},
    {"role": "assistant", "content": None, "tool_calls": []},
]


def test_detect_messages_covers_every_role(detector: PIIDetector) -> None:
    found = detector.detect_messages(MESSAGES)
    by_message = {
        (index, message_text(MESSAGES[index])[e.start : e.end], e.type) for index, e in found
    }
    assert by_message == {
        (0, "ops-lead@example.com", "EMAIL_ADDRESS"),
        (1, "Freya Navarro", "PERSON"),
        (1, "4111 1111 1111 1111", "CREDIT_CARD"),
        (2, "Freya Navarro", "PERSON"),
        (2, "ops-lead@example.com", "EMAIL_ADDRESS"),
        (3, "198.51.100.7", "IP_ADDRESS"),
    }


def test_redactor_round_trip_with_consistent_placeholders(detector: PIIDetector) -> None:
    redactor = Redactor()
    found = detector.detect_messages(MESSAGES)
    masked = redactor.mask_messages(MESSAGES, found)
    assert masked[0]["content"] == "Support agent. Escalations go to [EMAIL_ADDRESS_1]."
    assert masked[1]["content"][0]["text"] == "Hi, I'm [PERSON_1]."
    assert masked[1]["content"][1] == MESSAGES[1]["content"][1]
    assert masked[1]["content"][2]["text"] == "My card [CREDIT_CARD_1] was charged twice."
    # The same value in another message gets the same placeholder.
    assert masked[2]["content"] == "Thanks [PERSON_1], is [EMAIL_ADDRESS_1] right?"
    assert masked[3]["content"] == '{"ip": "[IP_ADDRESS_1]", "ok": true}'
    assert masked[4] == MESSAGES[4]
    assert MESSAGES[0]["content"].endswith("ops-lead@example.com.")  # input untouched
    assert redactor.restore(masked[2]["content"]) == MESSAGES[2]["content"]
    assert redactor.restore("[PERSON_9] stays, [PERSON_1] goes") == (
        "[PERSON_9] stays, Freya Navarro goes"
    )


def test_same_value_twice_in_one_text() -> None:
    redactor = Redactor()
    text = "a@example.com, b@example.com, a@example.com"
    entities = [
        PIIEntity("EMAIL_ADDRESS", 0, 13, 1.0),
        PIIEntity("EMAIL_ADDRESS", 15, 28, 1.0),
        PIIEntity("EMAIL_ADDRESS", 30, 43, 1.0),
    ]
    masked = redactor.mask(text, entities)
    assert masked == "[EMAIL_ADDRESS_1], [EMAIL_ADDRESS_2], [EMAIL_ADDRESS_1]"
    assert redactor.restore(masked) == text


def _streamed(redactor: Redactor, chunks: list[str]) -> tuple[list[str], str]:
    restorer = StreamRestorer(redactor)
    shown = [restorer.feed(chunk) for chunk in chunks]
    return shown, "".join(shown) + restorer.flush()


def test_stream_restorer_handles_split_placeholders() -> None:
    redactor = Redactor()
    redactor.mask("mail kim@example.com", [PIIEntity("EMAIL_ADDRESS", 5, 20, 1.0)])
    redactor.mask("I'm Ruth Eze", [PIIEntity("PERSON", 4, 12, 0.85)])

    shown, total = _streamed(redactor, ["Write to [EMAIL_", "ADDRESS_1] now."])
    assert shown == ["Write to ", "kim@example.com now."]
    assert total == "Write to kim@example.com now."

    shown, total = _streamed(redactor, ["Dear [PER", "SON", "_1], hi [", "x] [EMAIL"])
    assert shown == ["Dear ", "", "Ruth Eze, hi ", "[x] "]
    assert total == "Dear Ruth Eze, hi [x] [EMAIL"  # an unfinished tail is flushed as is


def test_stream_restorer_hold_back_is_bounded() -> None:
    redactor = Redactor()
    redactor.mask("x", [PIIEntity("PERSON", 0, 1, 0.85)])
    restorer = StreamRestorer(redactor)
    chunks = ["a" * 50, "[PERSO", "[", "N_1", "] and [PERSON_1"]
    fed = shown = ""
    for chunk in chunks:
        fed += chunk
        shown += restorer.feed(chunk)
        held = len(fed) - len(shown)
        assert 0 <= held < redactor.longest_placeholder
    assert shown == "a" * 50 + "[PERSO[N_1] and "
    assert restorer.flush() == "[PERSON_1"


def test_match_rule_needs_half_of_the_gold_span() -> None:
    gold = [GoldSpan("STREET_ADDRESS", 10, 30)]
    assert match_spans(gold, [PIIEntity("STREET_ADDRESS", 10, 20, 0.75)]) == 1
    assert match_spans(gold, [PIIEntity("STREET_ADDRESS", 10, 19, 0.75)]) == 0
    assert match_spans(gold, [PIIEntity("PERSON", 10, 30, 0.85)]) == 0
    two = [PIIEntity("STREET_ADDRESS", 10, 25, 0.75), PIIEntity("STREET_ADDRESS", 15, 30, 0.7)]
    assert match_spans(gold, two) == 1


@pytest.fixture(scope="module")
def heldout_report(detector: PIIDetector) -> PIIReport:
    return evaluate_pii(detector, DATA / "heldout.jsonl")


# Held-out numbers reached once (docs/results/pii-eval.txt), rounded down: a regression in
# any of them fails. PHONE_NUMBER (0.942) is below the project's 95% aim; the others meet it.
HELDOUT_RECALL_FLOOR = {
    "EMAIL_ADDRESS": 1.0,
    "URL": 1.0,
    "IBAN_CODE": 1.0,
    "CREDIT_CARD": 1.0,
    "US_SSN": 1.0,
    "IP_ADDRESS": 1.0,
    "STREET_ADDRESS": 1.0,
    "PHONE_NUMBER": 0.94,
    "PERSON": 0.95,
    "LOCATION": 0.89,
}
HELDOUT_PRECISION_FLOOR = {"PERSON": 0.97, "LOCATION": 0.98}


def test_heldout_recall_and_precision(heldout_report: PIIReport) -> None:
    assert heldout_report.lines == 476
    for kind, floor in HELDOUT_RECALL_FLOOR.items():
        assert heldout_report.stats(kind).recall >= floor, kind
    for kind, floor in HELDOUT_PRECISION_FLOOR.items():
        assert heldout_report.stats(kind).precision >= floor, kind
    structured = [k for k in HELDOUT_RECALL_FLOOR if k not in ("PERSON", "LOCATION")]
    assert heldout_report.micro(structured).precision == 1.0
    assert heldout_report.micro(["STREET_ADDRESS", "PERSON", "LOCATION"]).recall >= 0.85


def test_heldout_false_positives_and_latency(heldout_report: PIIReport) -> None:
    assert heldout_report.clean_lines == 167
    assert heldout_report.fp_rate_clean <= 0.02  # reached: 1/167
    assert heldout_report.clean_lines_flagged <= 1
    assert heldout_report.ner_runs_clean is not None and heldout_report.ner_runs_clean <= 5
    # Reached 0.5 ms / 4.8 ms on one shared core; the bounds leave room for a busy machine.
    assert heldout_report.latency_p50_without_ner_ms is not None
    assert heldout_report.latency_p50_without_ner_ms <= 2.0
    assert heldout_report.latency_p50_with_ner_ms is not None
    assert heldout_report.latency_p50_with_ner_ms <= 15.0
