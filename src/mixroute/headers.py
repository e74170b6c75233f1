"""Every HTTP header name mixroute reads or writes, in one place.

Clients, Envoy configs and tests depend on these names; keeping them here means a rename
is one edit and a grep finds every use.
"""

# Response headers: the decision, explained.
MODEL = "x-mixroute-model"
CATEGORY = "x-mixroute-category"
ROUTE = "x-mixroute-route"
CONFIDENCE = "x-mixroute-confidence"
REASONING = "x-mixroute-reasoning"
CACHE = "x-mixroute-cache"
ENDPOINT = "x-mixroute-endpoint"
PREFILL_ENDPOINT = "x-mixroute-prefill-endpoint"  # disaggregated models: who did the prefill
BLOCKED = "x-mixroute-blocked"
FLAGGED = "x-mixroute-flagged"  # a guard matched but its action is flag: jailbreak
PII = "x-mixroute-pii"  # what was done and the PII types found (never values)
PII_OUTPUT = "x-mixroute-pii-output"  # PII types the model's answer contained: flagged/masked
ATTEMPTS = "x-mixroute-attempts"
FALLBACK = "x-mixroute-fallback"
REQUEST_ID = "x-request-id"
TOOLS = "x-mixroute-tools"  # kept/total tools after tool selection
WORKER = "x-mixroute-worker"  # debug only: the pid of the worker process that answered

# Debug response headers (only with x-mixroute-debug: 1).
DEBUG_CANDIDATES = "x-mixroute-candidates"
DEBUG_ROUTE_SCORE = "x-mixroute-route-score"
DEBUG_MATCHED = "x-mixroute-matched-routes"
DEBUG_DECISION_MS = "x-mixroute-decision-ms"
DEBUG_CACHE_SIMILARITY = "x-mixroute-cache-similarity"
DEBUG_JAILBREAK_SCORE = "x-mixroute-jailbreak-score"
DEBUG_BALANCER_SCORES = "x-mixroute-balancer-scores"

# Request headers understood by the gateway.
CACHE_CONTROL = "x-mixroute-cache-control"
DEBUG = "x-mixroute-debug"
TENANT = "x-mixroute-tenant"
ADMIN_KEY = "x-mixroute-admin-key"

# Envoy integration.
SELECTED_MODEL = "x-selected-model"
DESTINATION_ENDPOINT = "x-gateway-destination-endpoint"

# RFC 9110 section 7.6.1 hop-by-hop headers, plus the ones the proxy recomputes.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
