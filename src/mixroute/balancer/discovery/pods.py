"""Pure functions from Kubernetes pods and ``/v1/models`` answers to endpoint configs.

Kept apart from the watch loop so that the rules (which pod serves, which name an endpoint
gets, what counts as a LoRA adapter) can be read and tested without a network.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mixroute.balancer.discovery.config import ENDPOINT_NAME_CHARS, KubernetesDiscoveryConfig
from mixroute.config.schema import EndpointConfig

LABEL_VALUE_MAX = 63  # Kubernetes' own limit for label values; also bounds what we copy
_NOT_NAME_CHAR = re.compile(rf"[^{ENDPOINT_NAME_CHARS}]")


class MalformedObject(ValueError):
    """A pod or event without the fields every real one has: our view may be wrong."""


@dataclass(frozen=True, slots=True)
class PodView:
    """The few facts about a pod that decide whether and how it is an endpoint."""

    name: str
    uid: str
    ip: str | None
    serving: bool
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Model answers are cached per pod *and* IP: a pod IP is reused after the pod dies."""
        return f"{self.uid}@{self.ip}"

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> PodView:
        metadata = obj.get("metadata")
        if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
            raise MalformedObject(f"pod without metadata.name: {str(obj)[:200]}")
        status = obj.get("status") or {}
        ip = status.get("podIP") or None
        return cls(
            name=metadata["name"],
            uid=str(metadata.get("uid", "")),
            ip=ip if isinstance(ip, str) else None,
            serving=_is_serving(metadata, status),
            labels=dict(metadata.get("labels") or {}),
        )


def resource_version(obj: Mapping[str, Any]) -> str:
    """An object's resourceVersion: opaque, so it is only ever passed back, never compared."""
    metadata = obj.get("metadata")
    value = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    if not isinstance(value, str) or not value:
        raise MalformedObject(f"object without metadata.resourceVersion: {str(obj)[:200]}")
    return value


def _is_serving(metadata: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Running, Ready=True, not terminating, with an IP.

    A terminating pod can still report Ready for its whole grace period, but it is shutting
    down: new requests must stop going to it as soon as deletion starts.
    """
    if metadata.get("deletionTimestamp"):
        return False
    if status.get("phase") != "Running" or not status.get("podIP"):
        return False
    conditions = status.get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


@dataclass(frozen=True, slots=True)
class ServedModels:
    """What one pod serves: its base model and the LoRA adapters loaded on top of it."""

    base: str
    adapters: tuple[str, ...] = ()


def parse_models(payload: Any) -> ServedModels:
    """Read an OpenAI ``/v1/models`` answer; vLLM marks a LoRA adapter with ``parent``.

    The base model is the first entry without a parent (vLLM lists every served name of the
    base first); every entry with a parent is an adapter the pod has loaded.
    """
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise ValueError("not a /v1/models answer (no data list)")
    base: str | None = None
    adapters: list[str] = []
    for entry in data:
        model_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(model_id, str) or not model_id:
            continue
        if entry.get("parent"):
            adapters.append(model_id)
        elif base is None:
            base = model_id
    if base is None:
        raise ValueError("/v1/models lists no base model")
    return ServedModels(base, tuple(dict.fromkeys(adapters)))


def pod_url(ip: str, settings: KubernetesDiscoveryConfig) -> str:
    host = f"[{ip}]" if ":" in ip else ip  # IPv6 pod IPs
    return f"{settings.scheme}://{host}:{settings.port}"


def pod_endpoints(
    pod: PodView, served: ServedModels, settings: KubernetesDiscoveryConfig
) -> list[EndpointConfig]:
    """One endpoint for the base model, plus one per LoRA adapter on the same URL.

    The adapter endpoints are what gives adapter affinity: a request for an adapter looks up
    that adapter's endpoints and so only ever reaches pods that have it loaded.
    """
    assert pod.ip is not None, "only serving pods (which have an IP) become endpoints"
    url = pod_url(pod.ip, settings)
    labels = copied_labels(pod.labels, settings.labels)
    labels["pod"] = pod.name
    name = f"{settings.name_prefix}{pod.name}"
    configs = [
        EndpointConfig(name=name, url=url, model=served.base, weight=settings.weight, labels=labels)
    ]
    taken = {name}
    for adapter in served.adapters:
        adapter_name = _unique(f"{name}:{_NOT_NAME_CHAR.sub('_', adapter)}", adapter, taken)
        configs.append(
            EndpointConfig(
                name=adapter_name,
                url=url,
                model=adapter,
                weight=settings.weight,
                labels={**labels, "base_model": served.base[:LABEL_VALUE_MAX]},
            )
        )
    return configs


def copied_labels(pod_labels: Mapping[str, str], keys: Iterable[str]) -> dict[str, str]:
    return {k: str(pod_labels[k])[:LABEL_VALUE_MAX] for k in keys if k in pod_labels}


def _unique(name: str, adapter: str, taken: set[str]) -> str:
    """Adapter names are cleaned to endpoint-name characters; two may then collide."""
    if name in taken:
        name = f"{name}-{hashlib.blake2b(adapter.encode(), digest_size=4).hexdigest()}"
    taken.add(name)
    return name
