"""Schemathesis against the gateway's own OpenAPI description (src/mixroute/api/openapi.yaml).

Every operation in the description is fuzzed against one live in-process gateway (the demo
config: MoM routes, tool selection, PII and jailbreak guards, the cache) in front of real
simulator processes. Schemathesis generates bodies that match the schema and bodies that
break it; the gateway must never answer 5xx, every status must be documented, and every
documented JSON answer must match its schema. ``model`` is drawn from the names that reach
the router (MoM, auto), the pool's models and an alias, or left as schemathesis generated
it (an unknown name: the documented 404).

Deterministic (fixed derandomized examples), bounded per operation; docs/reliability.md
records the counts.
"""

from __future__ import annotations

import os
import zlib
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fuzz_gateway import ThreadedGateway, fuzz_config, running_gateway, start_demo_sims
from helpers import SimPool

pytestmark = pytest.mark.slow

SPEC = resources.files("mixroute.api").joinpath("openapi.yaml")
EXAMPLES = int(60 * float(os.environ.get("MIXROUTE_FUZZ_SCALE", "1")))

schema = schemathesis.openapi.from_path(str(SPEC))
schema.config.generation.update(
    max_examples=EXAMPLES,
    deterministic=os.environ.get("MIXROUTE_FUZZ_RANDOM") != "1",
    database="none",
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# None keeps the name schemathesis generated: almost always unknown, the 404 path.
MODEL_CHOICES = [None, "MoM", "auto", "general-llm", "math-llm", "code-llm", "gpt-4o-mini"]
# (method path, status) of every call, so the last test can show the fuzzing reached both
# answers and refusals rather than bouncing off the parser.
OUTCOMES: Counter[tuple[str, int]] = Counter()


@pytest.fixture(scope="module")
def fuzz_sims() -> Iterator[SimPool]:
    pool = start_demo_sims()
    yield pool
    pool.stop_all()


@pytest.fixture(scope="module")
def gateway(fuzz_sims: SimPool) -> Iterator[ThreadedGateway]:
    with running_gateway(fuzz_config(fuzz_sims)) as running:
        yield running


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


def choose_model(body: Any) -> str | None:
    """A model name for this body, picked by a hash of the body: deterministic per case
    (``@schema.given`` cannot be combined with the schema's examples phase) and spread
    evenly over ``MODEL_CHOICES``."""
    return MODEL_CHOICES[zlib.crc32(repr(body).encode()) % len(MODEL_CHOICES)]


@schema.parametrize()
def test_every_operation(
    case: schemathesis.Case, gateway: ThreadedGateway, session: requests.Session
) -> None:
    body: Any = case.body
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        model = choose_model(body)
        if model is not None:
            body["model"] = model
    response = case.call_and_validate(
        base_url=gateway.url, session=session, checks=CHECKS, timeout=30
    )
    OUTCOMES[(f"{case.method.upper()} {case.path}", response.status_code)] += 1


def test_spec_is_served_and_matches_the_source(gateway: ThreadedGateway) -> None:
    """``GET /openapi.json`` serves the file this suite fuzzes, and every route the
    description names exists in the running app (a 405/404 there would be a stale spec)."""
    served = httpx.get(gateway.url + "/openapi.json").json()
    assert served == schemathesis.openapi.from_path(str(SPEC)).raw_schema
    for path, operations in served["paths"].items():
        concrete = path.replace("{asset}", "app.js")
        for method in operations:
            response = httpx.request(method.upper(), gateway.url + concrete, content=b"{}")
            assert response.status_code not in {404, 405}, (method, path, response.text)


def test_fuzzing_reached_answers_and_refusals() -> None:
    """Each body-taking operation produced both 200s and 4xx: the generated cases got past
    the parser into routing, guards, the cache and the simulators, and also got refused."""
    if not OUTCOMES:
        pytest.skip("run with test_every_operation")
    for path in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/api/v1/classify/intent",
        "/api/v1/classify/pii",
        "/api/v1/classify/security",
        "/api/v1/classify/batch",
        "/api/v1/route",
    ):
        statuses = {s for (op, s), _ in OUTCOMES.items() if op == f"POST {path}"}
        assert 200 in statuses, (path, statuses)
        assert any(400 <= s < 500 for s in statuses), (path, statuses)
