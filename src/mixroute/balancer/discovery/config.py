"""Settings of Kubernetes discovery (mounted as ``discovery.kubernetes`` in the main schema).

This module imports nothing from mixroute: the main schema imports it, so importing the
schema back from here would be circular.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENDPOINT_NAME_CHARS = r"A-Za-z0-9_.:-"


class KubernetesDiscoveryConfig(BaseModel):
    """Which pods are replicas, and how to reach them and learn their model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field(
        "default", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", description="Pods' namespace."
    )
    label_selector: str = Field(
        min_length=1,
        description="Which pods are replicas, e.g. 'app=vllm,tier=gpu' (any selector the API "
        "server accepts). Required: every pod of a namespace is never what you want.",
    )
    port: int = Field(8000, ge=1, le=65535, description="The pods' serving port.")
    scheme: Literal["http", "https"] = "http"
    model_label: str | None = Field(
        None,
        min_length=1,
        description="Read the public model name from this pod label. Unset: ask each pod's "
        "GET /v1/models (which also finds LoRA adapters).",
    )
    name_prefix: str = Field(
        "",
        pattern=rf"^[{ENDPOINT_NAME_CHARS}]*$",
        description="Endpoint names are <prefix><pod name> (adapters: <prefix><pod>:<adapter>).",
    )
    api_server: str | None = Field(
        None,
        description="API server URL without auth (kubectl proxy, tests). Unset: in-cluster "
        "service account, falling back to the kubeconfig.",
    )
    resync_s: float = Field(
        300.0,
        ge=1,
        description="Full re-list this often, as a safety net for events lost by any means.",
    )
    watch_timeout_s: float = Field(
        60.0,
        ge=1,
        le=3600,
        description="Server-side length of one watch; it is then resumed from the last "
        "resourceVersion. Also bounds how long a silently dead connection goes unnoticed.",
    )
    weight: float = Field(1.0, gt=0, description="Weight of every discovered endpoint.")
    labels: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Pod label keys copied into the endpoints' labels (values cut to 63 chars).",
    )
    models_timeout_s: float = Field(5.0, gt=0, description="Timeout of one GET /v1/models.")
    models_refresh_s: float = Field(
        60.0,
        ge=0,
        description="Ask serving pods' /v1/models again this often, so LoRA adapters loaded or "
        "unloaded at run time are seen (0: only once per pod).",
    )

    @field_validator("api_server")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected an http(s) URL like http://127.0.0.1:8001, got {url!r}")
        return url.rstrip("/")
