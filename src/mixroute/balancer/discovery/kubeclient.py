"""The two calls discovery makes through ``kubernetes_asyncio``, typed in one place.

The client is imported lazily, and in a thread (importing it takes about 0.4 s), so a gateway
without Kubernetes discovery never loads it and one with it does not stall its event loop.
Errors the client raises are turned into ``ApiError`` so the watch loop can handle them
without importing the client.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncGenerator
from types import ModuleType
from typing import Any

import aiohttp
import orjson

CONNECT_TIMEOUT_S = 10.0
WATCH_SLACK_S = 10.0  # the client gives up this long after the server should have ended it
LIST_TIMEOUT_S = 60.0


class DiscoveryError(RuntimeError):
    """Discovery cannot run at all: client not installed, or no cluster configuration."""


class ApiError(Exception):
    """The API server answered with an error: an HTTP status, or an ERROR event's Status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


def _import_client() -> dict[str, ModuleType]:
    names = ("kubernetes_asyncio.client", "kubernetes_asyncio.config", "kubernetes_asyncio.watch")
    return {name.rsplit(".", 1)[1]: importlib.import_module(name) for name in names}


class PodApi:
    """List and watch pods of one namespace with the real client.

    Build with ``await PodApi.connect(api_server)``; ``close()`` when done.
    """

    def __init__(self, modules: dict[str, ModuleType], configuration: Any) -> None:
        client, watch = modules["client"], modules["watch"]
        self._api_exception: type[Exception] = client.ApiException
        self._api_client = client.ApiClient(configuration=configuration)
        self._core = client.CoreV1Api(self._api_client)
        # One Watch for the whole lifetime: each Watch builds an ApiClient (and an SSL
        # context, ~20 ms of blocking) that it uses only to decode events. ``return_type``
        # "object" keeps events as plain dicts instead of building V1Pod models.
        self._watch = watch.Watch(return_type="object")

    @classmethod
    async def connect(cls, api_server: str | None) -> PodApi:
        try:
            modules = await asyncio.to_thread(_import_client)
        except ImportError as exc:
            raise DiscoveryError(
                "Kubernetes discovery needs kubernetes_asyncio: pip install "
                "'kubernetes-asyncio==36.1.0' (or mixroute[kubernetes])"
            ) from exc
        client, config = modules["client"], modules["config"]
        configuration = client.Configuration()
        if api_server is not None:
            configuration.host = api_server
        else:
            await _load_cluster_config(config, configuration)
        return cls(modules, configuration)

    async def close(self) -> None:
        await self._watch.close()
        await self._api_client.close()

    async def list_pods(self, namespace: str, selector: str) -> dict[str, Any]:
        """One consistent list (no resourceVersion: read from etcd, never from a cache)."""
        response: aiohttp.ClientResponse = await self._core.list_namespaced_pod(
            namespace,
            label_selector=selector,
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(
                total=LIST_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S
            ),
        )
        try:
            body = await response.read()
        finally:
            response.release()
        if response.status != 200:
            raise ApiError(response.status, body[:200].decode("utf-8", "replace"))
        data = orjson.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise ApiError(response.status, "list answer without items")
        return data

    async def watch_pods(
        self, namespace: str, selector: str, resource_version: str, timeout_s: int
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Events after ``resource_version`` until the server ends the watch.

        Ends quietly when the server closes the stream at ``timeout_s``. Raises ``ApiError``
        for an HTTP error or an ERROR event (410 when the version is too old), and aiohttp
        or timeout errors when the connection breaks.
        """
        stream = self._watch.stream(
            self._core.list_namespaced_pod,
            namespace,
            label_selector=selector,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_s,
            _request_timeout=aiohttp.ClientTimeout(
                total=timeout_s + WATCH_SLACK_S, sock_connect=CONNECT_TIMEOUT_S
            ),
        )
        try:
            async for event in stream:
                if not isinstance(event, dict):
                    # Not JSON: an error page from the server or a proxy in front of it.
                    status = getattr(self._watch.resp, "status", 0)
                    raise ApiError(0 if status == 200 else status, str(event)[:200])
                yield event
        except self._api_exception as exc:
            status = getattr(exc, "status", None)
            raise ApiError(int(status or 0), str(getattr(exc, "reason", exc))) from exc
        finally:
            await self._watch.close()  # releases the connection when we stop early


async def _load_cluster_config(config: ModuleType, configuration: Any) -> None:
    """In-cluster service account first (refreshing its token), else the kubeconfig."""
    try:
        await asyncio.to_thread(config.load_incluster_config, client_configuration=configuration)
        return
    except config.ConfigException:
        pass
    try:
        await config.load_kube_config(client_configuration=configuration)
    except (config.ConfigException, OSError) as exc:
        raise DiscoveryError(
            f"no Kubernetes configuration: not in a cluster and no usable kubeconfig ({exc}); "
            "set discovery.kubernetes.api_server for kubectl proxy"
        ) from exc
