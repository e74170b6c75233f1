"""Render an Envoy bootstrap that puts the mixroute processor in front of a model pool.

One listener with one ``http_connection_manager``. Before anything else, an early header
mutation strips ``x-selected-model`` and ``x-gateway-destination-endpoint`` from the
client's request, so only the processor can steer the route match (also when
``failure_mode_allow`` lets a request through without it). Then two HTTP filters:

1. ``ext_proc`` calls the processor (request headers + buffered body, response headers;
   response body only when the processor asks for it with a mode override);
2. the router.

Routes: a request carrying ``x-gateway-destination-endpoint`` (when ``original_dst`` is on)
goes to that ``ip:port`` through an ORIGINAL_DST cluster; otherwise ``x-selected-model:
<model>`` picks the model's cluster (round robin over its replicas); anything else goes to
the default model's cluster, or gets a 404 when there is none.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

from mixroute import headers as h
from mixroute.config.schema import MixrouteConfig

PROCESSOR_CLUSTER = "mixroute_extproc"
ORIGINAL_DST_CLUSTER = "original_dst"
BODY_MODES = ("NONE", "STREAMED", "BUFFERED", "BUFFERED_PARTIAL")
_TYPES = "type.googleapis.com/envoy.extensions"


@dataclass(frozen=True)
class EnvoySettings:
    """Everything the bootstrap depends on; addresses are ``host:port`` strings."""

    listen_port: int
    admin_port: int
    clusters: Mapping[str, Sequence[str]]  # model -> its replicas
    processor: Sequence[str] = ()  # the processor's address(es); empty: no ext_proc (baseline)
    default_model: str | None = None
    listen_host: str = "127.0.0.1"
    admin_host: str = "127.0.0.1"
    failure_mode_allow: bool = False
    original_dst: bool = False
    response_body_mode: str = "NONE"
    message_timeout_s: float = 10.0  # per processor message; the first embedding can be slow
    buffer_limit_bytes: int = 16 * 1024 * 1024  # the buffered body (BUFFERED mode) fits in it
    # Envoy opens another HTTP/2 connection to the processor when one carries this many
    # streams; with several processor workers behind one SO_REUSEPORT port that is what
    # spreads the load (the kernel balances connections, not streams).
    processor_streams_per_connection: int = 16
    connect_timeout_s: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the ext_proc filter

    def __post_init__(self) -> None:
        if self.response_body_mode not in BODY_MODES:
            raise ValueError(f"response_body_mode must be one of {', '.join(BODY_MODES)}")
        if self.default_model is not None and self.default_model not in self.clusters:
            raise ValueError(f"default model {self.default_model!r} has no cluster")


def cluster_name(model: str) -> str:
    return "model_" + re.sub(r"[^A-Za-z0-9_.-]", "_", model)


def clusters_from_config(config: MixrouteConfig) -> dict[str, list[str]]:
    """Each model's replicas as ``host:port``, from the config's static endpoints."""
    out: dict[str, list[str]] = {}
    for endpoint in config.endpoints:
        out.setdefault(endpoint.model, []).append(host_port(endpoint.url))
    return out


def host_port(url: str) -> str:
    """``http://10.0.0.7:8000/x`` -> ``10.0.0.7:8000`` (Envoy's ORIGINAL_DST wants ip:port)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_bootstrap(settings: EnvoySettings) -> str:
    return yaml.safe_dump(bootstrap(settings), sort_keys=False)


def bootstrap(settings: EnvoySettings) -> dict[str, Any]:
    clusters = [
        _cluster(cluster_name(model), hosts, settings) for model, hosts in settings.clusters.items()
    ]
    if settings.processor:
        clusters.append(_processor_cluster(settings))
    if settings.original_dst:
        clusters.append(_original_dst_cluster(settings))
    return {
        "admin": {"address": _socket(settings.admin_host, settings.admin_port)},
        "static_resources": {
            "listeners": [_listener(settings)],
            "clusters": clusters,
        },
    }


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _load_assignment(name: str, hosts: Sequence[str]) -> dict[str, Any]:
    endpoints = [{"endpoint": {"address": _socket(*_split(a))}} for a in hosts]
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]}


def _cluster(name: str, hosts: Sequence[str], settings: EnvoySettings) -> dict[str, Any]:
    static = all(_is_ip(_split(a)[0]) for a in hosts)
    return {
        "name": name,
        "type": "STATIC" if static else "STRICT_DNS",
        "connect_timeout": f"{settings.connect_timeout_s}s",
        "lb_policy": "ROUND_ROBIN",
        "per_connection_buffer_limit_bytes": settings.buffer_limit_bytes,
        "load_assignment": _load_assignment(name, hosts),
    }


def _processor_cluster(settings: EnvoySettings) -> dict[str, Any]:
    cluster = _cluster(PROCESSOR_CLUSTER, settings.processor, settings)
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": f"{_TYPES}.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {
                "http2_protocol_options": {
                    "max_concurrent_streams": settings.processor_streams_per_connection
                }
            },
        }
    }
    return cluster


def _original_dst_cluster(settings: EnvoySettings) -> dict[str, Any]:
    return {
        "name": ORIGINAL_DST_CLUSTER,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": f"{settings.connect_timeout_s}s",
        "per_connection_buffer_limit_bytes": settings.buffer_limit_bytes,
        "original_dst_lb_config": {
            "use_http_header": True,
            "http_header_name": h.DESTINATION_ENDPOINT,
        },
    }


def _routes(settings: EnvoySettings) -> list[dict[str, Any]]:
    no_timeout = {"timeout": "0s"}  # answers stream for as long as the model writes
    routes: list[dict[str, Any]] = []
    if settings.original_dst:
        routes.append(
            {
                "match": {
                    "prefix": "/",
                    "headers": [{"name": h.DESTINATION_ENDPOINT, "present_match": True}],
                },
                "route": {"cluster": ORIGINAL_DST_CLUSTER, **no_timeout},
            }
        )
    for model in settings.clusters:
        match = {"name": h.SELECTED_MODEL, "string_match": {"exact": model}}
        routes.append(
            {
                "match": {"prefix": "/", "headers": [match]},
                "route": {"cluster": cluster_name(model), **no_timeout},
            }
        )
    fallback: dict[str, Any]
    if settings.default_model is not None:
        fallback = {"route": {"cluster": cluster_name(settings.default_model), **no_timeout}}
    else:
        body = '{"error": {"message": "no model was selected", "code": "no_route"}}'
        fallback = {"direct_response": {"status": 404, "body": {"inline_string": body}}}
    routes.append({"match": {"prefix": "/"}, **fallback})
    return routes


def _filters(settings: EnvoySettings) -> list[dict[str, Any]]:
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": f"{_TYPES}.filters.http.router.v3.Router"},
    }
    if not settings.processor:  # the baseline: Envoy routes on the client's header itself
        return [router]
    ext_proc = {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": f"{_TYPES}.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": PROCESSOR_CLUSTER},
                "timeout": "30s",
            },
            "failure_mode_allow": settings.failure_mode_allow,
            "allow_mode_override": True,
            "request_attributes": ["source.address"],  # per-address limits (anonymous)
            "message_timeout": f"{settings.message_timeout_s}s",
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "response_header_mode": "SEND",
                "response_body_mode": settings.response_body_mode,
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
            **settings.extra,
        },
    }
    return [ext_proc, router]


def _strip_routing_headers() -> dict[str, Any]:
    """Runs before the route is resolved (an HTTP filter would run after, and the cached route
    would still be the one the client's header chose when nothing clears it)."""
    return {
        "name": "strip-routing-headers",
        "typed_config": {
            "@type": f"{_TYPES}.http.early_header_mutation.header_mutation.v3.HeaderMutation",
            "mutations": [{"remove": h.SELECTED_MODEL}, {"remove": h.DESTINATION_ENDPOINT}],
        },
    }


def _listener(settings: EnvoySettings) -> dict[str, Any]:
    manager = {
        "@type": f"{_TYPES}.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "mixroute",
        "codec_type": "AUTO",
        "route_config": {
            "name": "models",
            "virtual_hosts": [{"name": "models", "domains": ["*"], "routes": _routes(settings)}],
        },
        "http_filters": _filters(settings),
    }
    if settings.processor:
        manager["early_header_mutation_extensions"] = [_strip_routing_headers()]
    return {
        "name": "mixroute",
        "address": _socket(settings.listen_host, settings.listen_port),
        "per_connection_buffer_limit_bytes": settings.buffer_limit_bytes,
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }
