"""``GET /openapi.json``: the gateway's own OpenAPI description.

The source of truth is ``openapi.yaml`` next to this module (shipped as package data, read
by the schemathesis suite in tests/test_fuzz_schemathesis.py); it is converted to JSON once
per process, on first request, so startup does not pay for it.
"""

from __future__ import annotations

import functools
from importlib import resources

import orjson
import yaml
from aiohttp import web


@functools.cache
def openapi_json() -> bytes:
    text = resources.files("mixroute.api").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return orjson.dumps(yaml.safe_load(text))


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=openapi_json(), content_type="application/json")
