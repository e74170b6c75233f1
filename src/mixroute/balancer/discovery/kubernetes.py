"""Kubernetes discovery: ready pods matching a label selector become endpoints.

The loop is the one every correct Kubernetes client runs (client-go's reflector):

1. **list** the pods and remember the list's ``resourceVersion``;
2. **watch** from that version with bookmarks, applying ADDED / MODIFIED / DELETED, and
   remembering the version of every event and BOOKMARK;
3. when a watch ends or its connection drops, **resume** from the last version seen: the
   server replays what happened meanwhile;
4. when the server says that version is gone (HTTP 410, or an ERROR event carrying a 410
   Status inside a 200 stream) or anything looks inconsistent, **re-list** and replace the
   whole set. This is what removes a pod whose DELETE event was never seen. A router that
   only re-watches after a reconnect (the Production Stack router's bug) keeps such pods in
   rotation until it restarts.

A full re-list also runs every ``resync_s`` as a safety net. API errors back off
exponentially (with jitter); nothing here blocks the event loop.

A pod is an endpoint while it is Running, Ready, not terminating and has an IP. Its model is
the pod label ``model_label``, or else what the pod's ``GET /v1/models`` reports (asked once
per pod and IP, cached, refreshed every ``models_refresh_s``). LoRA adapters in that answer
(entries with a ``parent``) become extra endpoints ``<pod>:<adapter>`` on the same URL whose
model is the adapter: requests for an adapter then go only to pods that have it loaded
(adapter affinity), and requests for the base model to every pod.

The source never touches the registry: it calls ``on_change`` with the full list of
endpoint configs whenever that list changes; the gateway passes it to
``EndpointRegistry.sync(..., source="kubernetes")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from mixroute.balancer.discovery.config import KubernetesDiscoveryConfig
from mixroute.balancer.discovery.kubeclient import ApiError, DiscoveryError, PodApi
from mixroute.balancer.discovery.pods import (
    MalformedObject,
    PodView,
    ServedModels,
    parse_models,
    pod_endpoints,
    pod_url,
    resource_version,
)
from mixroute.config.schema import EndpointConfig

__all__ = ["DiscoveryError", "KubernetesDiscovery", "KubernetesDiscoveryConfig"]

log = logging.getLogger(__name__)

GONE = 410
MODEL_CACHE_MAX = 4096
SHORT_WATCH_S = 1.0  # a watch that ends sooner with nothing in it counts as a failure


class Backoff:
    """Exponential back-off with jitter; the first retry after a success is immediate."""

    def __init__(self, base_s: float = 0.25, cap_s: float = 30.0) -> None:
        self._base = base_s
        self._cap = cap_s
        self._failures = 0
        self._random = random.Random()

    def reset(self) -> None:
        self._failures = 0

    def next(self) -> float:
        failures, self._failures = self._failures, self._failures + 1
        if failures == 0:
            return 0.0
        delay = min(self._cap, self._base * 2.0 ** (failures - 1))
        return delay * self._random.uniform(0.5, 1.0)


@dataclass(slots=True)
class DiscoveryStats:
    """Counters for logs, the admin API and tests."""

    lists: int = 0
    watches: int = 0
    gone: int = 0
    errors: int = 0
    changes: int = 0


class ModelCache:
    """What each pod serves, by pod uid and IP; bounded, oldest entries dropped first."""

    def __init__(self, max_entries: int = MODEL_CACHE_MAX) -> None:
        self._entries: OrderedDict[str, ServedModels] = OrderedDict()
        self._max = max_entries

    def get(self, key: str) -> ServedModels | None:
        return self._entries.get(key)

    def put(self, key: str, served: ServedModels) -> None:
        self._entries[key] = served
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def retain(self, keys: set[str]) -> None:
        for key in [k for k in self._entries if k not in keys]:
            del self._entries[key]


class KubernetesDiscovery:
    """Keeps ``current()`` equal to the serving pods' endpoints and reports every change."""

    def __init__(
        self,
        config: KubernetesDiscoveryConfig,
        on_change: Callable[[list[EndpointConfig]], None],
        session: aiohttp.ClientSession,
    ) -> None:
        self.config = config
        self._on_change = on_change
        self._session = session
        self._api: PodApi | None = None
        self._pods: dict[str, PodView] = {}
        self._models = ModelCache()
        self._fetches: dict[str, asyncio.Task[None]] = {}
        self._current: list[EndpointConfig] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._backoff = Backoff()
        self.resource_version: str | None = None
        self.stats = DiscoveryStats()
        self.synced = asyncio.Event()  # set after the first successful list

    def current(self) -> list[EndpointConfig]:
        return list(self._current)

    async def start(self) -> None:
        """Load the client and cluster config, then run in the background.

        Raises ``DiscoveryError`` when the client is not installed or no cluster
        configuration is found; API server outages later are retried, never raised.
        """
        if self._tasks:
            return
        self._api = await PodApi.connect(self.config.api_server)
        self._tasks.append(asyncio.create_task(self._run(), name="k8s-discovery"))
        if self.config.model_label is None and self.config.models_refresh_s > 0:
            self._tasks.append(asyncio.create_task(self._refresh_models(), name="k8s-models"))

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._fetches.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._api is not None:
            await self._api.close()
            self._api = None

    # The list/watch loop ---------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_resync = 0.0
        while True:
            delay = 0.0
            try:
                if self.resource_version is None or loop.time() >= next_resync:
                    await self._relist()
                    next_resync = loop.time() + self.config.resync_s
                remaining = min(self.config.watch_timeout_s, next_resync - loop.time())
                if await self._watch(max(1, int(remaining))):
                    self._backoff.reset()
                else:
                    delay = self._backoff.next()
            except ApiError as exc:
                self.stats.errors += 1
                if exc.status == GONE:
                    # The version we hold is compacted away: events are lost, re-list.
                    self.stats.gone += 1
                    self.resource_version = None
                    log.info("kubernetes watch: resourceVersion expired (410), re-listing")
                else:
                    log.warning("kubernetes API error: %s", exc)
                delay = self._backoff.next()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                # A dropped or unreachable connection: resume from the last version seen.
                self.stats.errors += 1
                delay = self._backoff.next()
                log.info("kubernetes watch connection lost (%r), resuming", exc)
            except Exception as exc:
                # Anything unexpected (a malformed event, an unknown event type) means our
                # view may be wrong: start over from a full list.
                self.stats.errors += 1
                self.resource_version = None
                delay = self._backoff.next()
                log.warning("kubernetes discovery: %r; re-listing", exc)
            if delay:
                await asyncio.sleep(delay)

    async def _relist(self) -> None:
        assert self._api is not None
        self.stats.lists += 1
        data = await self._api.list_pods(self.config.namespace, self.config.label_selector)
        pods = [PodView.parse(item) for item in data["items"]]
        version = resource_version(data)
        self._pods = {pod.name: pod for pod in pods}
        self.resource_version = version
        self._reconcile()
        self.synced.set()

    async def _watch(self, timeout_s: int) -> bool:
        """One watch until the server ends it; False if it ended at once with nothing in it."""
        assert self._api is not None and self.resource_version is not None
        self.stats.watches += 1
        started = asyncio.get_running_loop().time()
        events = 0
        stream = self._api.watch_pods(
            self.config.namespace, self.config.label_selector, self.resource_version, timeout_s
        )
        async with contextlib.aclosing(stream):
            async for event in stream:
                if events == 0:
                    self._backoff.reset()  # the server is answering again
                events += 1
                self._apply(event)
        return events > 0 or asyncio.get_running_loop().time() - started >= SHORT_WATCH_S

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("raw_object", event.get("object"))
        if not isinstance(obj, dict):
            raise MalformedObject(f"watch event without an object: {str(event)[:200]}")
        version = resource_version(obj)
        if kind == "BOOKMARK":
            self.resource_version = version
            return
        if kind in ("ADDED", "MODIFIED"):
            pod = PodView.parse(obj)
            self._pods[pod.name] = pod
        elif kind == "DELETED":
            self._pods.pop(PodView.parse(obj).name, None)
        else:
            raise MalformedObject(f"unexpected watch event type {kind!r}")
        self.resource_version = version
        self._reconcile()

    # From pods to endpoints -----------------------------------------------------------

    def _reconcile(self) -> None:
        configs: list[EndpointConfig] = []
        serving = {name: pod for name, pod in sorted(self._pods.items()) if pod.serving}
        for pod in serving.values():
            served = self._served_models(pod)
            if served is None:
                continue
            try:
                configs.extend(pod_endpoints(pod, served, self.config))
            except ValueError as exc:  # one odd pod must not stop discovery for the rest
                log.warning("pod %s cannot be an endpoint: %s", pod.name, exc)
        keys = {pod.key for pod in serving.values()}
        self._models.retain(keys)
        for key, task in list(self._fetches.items()):
            if key not in keys:
                task.cancel()
        if configs != self._current:
            self._current = configs
            self.stats.changes += 1
            try:
                self._on_change(list(configs))
            except Exception:
                log.exception("kubernetes discovery: on_change failed")

    def _served_models(self, pod: PodView) -> ServedModels | None:
        label = self.config.model_label
        if label is not None:
            model = pod.labels.get(label)
            if not model:
                log.debug("pod %s has no %r label; skipped", pod.name, label)
                return None
            return ServedModels(model)
        served = self._models.get(pod.key)
        if served is None:
            self._fetch_models(pod)
        return served

    # Asking pods what they serve ------------------------------------------------------

    def _fetch_models(self, pod: PodView) -> None:
        """Start asking ``pod`` for its models, unless that is already under way."""
        key = pod.key
        if key in self._fetches:
            return
        task = asyncio.create_task(self._ask_models(pod), name=f"k8s-models-{pod.name}")
        self._fetches[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._fetches.get(key) is done:
                del self._fetches[key]

        task.add_done_callback(forget)

    async def _ask_models(self, pod: PodView) -> None:
        """GET /v1/models until it answers, as long as the pod keeps serving."""
        assert pod.ip is not None
        url = f"{pod_url(pod.ip, self.config)}/v1/models"
        backoff = Backoff(base_s=0.5)
        while True:
            try:
                served = await self._get_models(url)
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                log.info("GET %s failed (%r); will retry", url, exc)
                await asyncio.sleep(backoff.next() or 0.5)
                current = self._pods.get(pod.name)
                if current is None or current.key != pod.key or not current.serving:
                    return
                continue
            if self._models.get(pod.key) != served:
                self._models.put(pod.key, served)
                self._reconcile()
            return

    async def _get_models(self, url: str) -> ServedModels:
        timeout = aiohttp.ClientTimeout(total=self.config.models_timeout_s)
        # The gateway's session does not decompress: ask for a plain body.
        headers = {"Accept-Encoding": "identity"}
        async with self._session.get(url, timeout=timeout, headers=headers) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            body = await response.read()
        return parse_models(orjson.loads(body))

    async def _refresh_models(self) -> None:
        """Ask serving pods again now and then: adapters are loaded and unloaded at run time."""
        while True:
            await asyncio.sleep(self.config.models_refresh_s)
            for pod in list(self._pods.values()):
                if pod.serving and self._models.get(pod.key) is not None:
                    self._fetch_models(pod)
