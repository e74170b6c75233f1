"""A fake Kubernetes API server: the only stand-in in the discovery tests, named as such.

It serves just what discovery uses (list and watch of pods in a namespace), but speaks the
real protocol so the real, unmodified ``kubernetes_asyncio`` client can talk to it:

- ``GET /api/v1/namespaces/{ns}/pods?labelSelector=...`` answers a ``PodList`` whose
  ``metadata.resourceVersion`` is the current version (equality selectors: ``k=v``,
  ``k==v``, ``k!=v``, ``k``, ``!k``).
- The same path with ``watch=1|true`` streams one JSON event per line:
  ``{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR", "object": ...}``. It replays
  the history after ``resourceVersion`` (no version, or "0": synthetic ADDED events for the
  current pods), then streams live; ``allowWatchBookmarks`` enables BOOKMARK events;
  ``timeoutSeconds`` ends the stream cleanly. Like the real label-filtered watch cache, a pod
  whose labels stop (start) matching is sent as DELETED (ADDED).
- A version older than the retained history is "too old": the watch answers 200 and its only
  event is an ERROR carrying a ``Status`` with code 410 (or, with ``gone_as_http``, an HTTP
  410 with that Status as its body).

Test controls change pods, drop watch connections mid-stream (no terminating chunk), expire
history, delete a pod while no watch is connected (a missed DELETE), send bookmarks and make
requests fail. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Pod = dict[str, Any]
_TRUE = ("1", "true")


@dataclass
class RecordedRequest:
    kind: str  # "list" or "watch"
    namespace: str
    params: dict[str, str]
    outcome: str = ""  # for watches: "stream", "gone-event", "gone-http", "failed"


@dataclass
class _Event:
    rv: int
    type: str  # ADDED, MODIFIED or DELETED, as stored (before label filtering)
    namespace: str
    old: Pod | None
    new: Pod | None


_DROP = "drop"
_BOOKMARK = "bookmark"


@dataclass(eq=False)
class _Watcher:
    namespace: str
    bookmarks: bool
    queue: asyncio.Queue[_Event | str] = field(default_factory=asyncio.Queue)


class Selector:
    """Equality-based label selectors, as the API server parses them."""

    def __init__(self, text: str) -> None:
        self.terms: list[tuple[str, str, str | None]] = []
        for raw in filter(None, (t.strip() for t in text.split(","))):
            if "!=" in raw:
                key, value = raw.split("!=", 1)
                self.terms.append(("!=", key.strip(), value.strip()))
            elif "=" in raw:
                key, value = raw.split("==", 1) if "==" in raw else raw.split("=", 1)
                self.terms.append(("=", key.strip(), value.strip()))
            elif raw.startswith("!"):
                self.terms.append(("!exists", raw[1:].strip(), None))
            elif " " in raw or "(" in raw:
                raise ValueError(f"set-based selectors are not supported by the fake: {raw!r}")
            else:
                self.terms.append(("exists", raw, None))

    def matches(self, pod: Pod | None) -> bool:
        if pod is None:
            return False
        labels = pod["metadata"].get("labels") or {}
        for op, key, value in self.terms:
            if op == "=" and labels.get(key) != value:
                return False
            if op == "!=" and labels.get(key) == value:
                return False
            if op == "exists" and key not in labels:
                return False
            if op == "!exists" and key in labels:
                return False
        return True


class FakeKubeApi:
    """The fake API server and its test controls; ``await start()`` then use ``url``."""

    def __init__(
        self, *, bookmark_interval_s: float | None = None, gone_as_http: bool = False
    ) -> None:
        self.rv = 1000
        self.pods: dict[tuple[str, str], Pod] = {}
        self.history: list[_Event] = []
        self.oldest_rv = self.rv  # a watch from a version below this is "too old"
        self.requests: list[RecordedRequest] = []
        self.bookmark_interval_s = bookmark_interval_s
        self.gone_as_http = gone_as_http
        self.fail_next_requests = 0  # answer this many next requests with HTTP 500
        self._watchers: set[_Watcher] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # Server -------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{namespace}/pods", self._pods_handler)
        # Cancel a watch handler when its client goes away, as the API server ends a watch.
        self._runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _pods_handler(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        params = dict(request.query)
        watching = params.get("watch", "").lower() in _TRUE
        record = RecordedRequest("watch" if watching else "list", namespace, params)
        self.requests.append(record)
        if self.fail_next_requests > 0:
            self.fail_next_requests -= 1
            record.outcome = "failed"
            return web.json_response(_status(500, "InternalError", "injected failure"), status=500)
        try:
            selector = Selector(params.get("labelSelector", ""))
        except ValueError as exc:
            return web.json_response(_status(400, "BadRequest", str(exc)), status=400)
        if watching:
            return await self._watch(request, namespace, selector, params, record)
        items = [
            copy.deepcopy(pod)
            for (ns, _), pod in sorted(self.pods.items())
            if ns == namespace and selector.matches(pod)
        ]
        return web.json_response(
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.rv)},
                "items": items,
            }
        )

    async def _watch(
        self,
        request: web.Request,
        namespace: str,
        selector: Selector,
        params: dict[str, str],
        record: RecordedRequest,
    ) -> web.StreamResponse:
        since = params.get("resourceVersion", "")
        timeout_s = float(params.get("timeoutSeconds", "1800"))
        response = web.StreamResponse(status=200)
        response.content_type = "application/json"
        if since not in ("", "0") and int(since) < self.oldest_rv:
            gone = _status(410, "Expired", f"too old resource version: {since} ({self.oldest_rv})")
            if self.gone_as_http:
                record.outcome = "gone-http"
                return web.json_response(gone, status=410)
            record.outcome = "gone-event"
            await response.prepare(request)
            await response.write(_line({"type": "ERROR", "object": gone}))
            await response.write_eof()
            return response
        record.outcome = "stream"
        # The replay is computed and the watcher registered without an await in between, so
        # no event can fall in the gap.
        if since in ("", "0"):
            replay = [
                ("ADDED", copy.deepcopy(pod))
                for (ns, _), pod in sorted(self.pods.items())
                if ns == namespace and selector.matches(pod)
            ]
        else:
            replay = [
                seen
                for event in self.history
                if event.rv > int(since) and event.namespace == namespace
                for seen in [_as_seen(event, selector)]
                if seen is not None
            ]
        bookmarks = params.get("allowWatchBookmarks", "").lower() in _TRUE
        watcher = _Watcher(namespace, bookmarks)
        self._watchers.add(watcher)
        try:
            await response.prepare(request)
            for kind, obj in replay:
                await response.write(_line({"type": kind, "object": obj}))
            deadline = asyncio.get_running_loop().time() + timeout_s
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                wait = remaining
                if bookmarks and self.bookmark_interval_s is not None:
                    wait = min(wait, self.bookmark_interval_s)
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if bookmarks and self.bookmark_interval_s is not None:
                        await response.write(self._bookmark_line())
                    continue
                if item == _DROP:
                    # Cut the connection mid-stream: no terminating chunk, like a dying
                    # apiserver or a load balancer's idle cut.
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                if item == _BOOKMARK:
                    await response.write(self._bookmark_line())
                    continue
                assert isinstance(item, _Event)
                seen = _as_seen(item, selector)
                if seen is not None:
                    await response.write(_line({"type": seen[0], "object": seen[1]}))
        except ConnectionResetError:
            return response
        finally:
            self._watchers.discard(watcher)
        await response.write_eof()
        return response

    def _bookmark_line(self) -> bytes:
        return _line(
            {
                "type": "BOOKMARK",
                "object": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(self.rv)},
                },
            }
        )

    # Test controls ------------------------------------------------------------------

    def add_pod(
        self,
        name: str,
        ip: str | None = "10.0.0.1",
        labels: dict[str, str] | None = None,
        *,
        namespace: str = "default",
        ready: bool = True,
        phase: str = "Running",
    ) -> Pod:
        conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
        status: dict[str, Any] = {"phase": phase, "conditions": conditions}
        if ip is not None:
            status["podIP"] = ip
            status["podIPs"] = [{"ip": ip}]
        pod: Pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "labels": dict(labels or {}),
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": {"containers": [{"name": "server", "image": "vllm/vllm-openai"}]},
            "status": status,
        }
        self._record("ADDED", namespace, None, pod)
        return pod

    def modify_pod(
        self, name: str, change: Callable[[Pod], None], namespace: str = "default"
    ) -> Pod:
        old = self.pods[(namespace, name)]
        new = copy.deepcopy(old)
        change(new)
        self._record("MODIFIED", namespace, old, new)
        return new

    def set_ready(self, name: str, ready: bool, namespace: str = "default") -> Pod:
        def change(pod: Pod) -> None:
            pod["status"]["conditions"] = [
                {"type": "Ready", "status": "True" if ready else "False"}
            ]

        return self.modify_pod(name, change, namespace)

    def start_deletion(self, name: str, namespace: str = "default") -> Pod:
        """Graceful deletion's first step: deletionTimestamp set, the pod still Ready."""

        def change(pod: Pod) -> None:
            pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
            pod["metadata"]["deletionGracePeriodSeconds"] = 30

        return self.modify_pod(name, change, namespace)

    def delete_pod(self, name: str, namespace: str = "default") -> None:
        self._record("DELETED", namespace, self.pods[(namespace, name)], None)

    def delete_pod_unseen(self, name: str, namespace: str = "default") -> None:
        """A missed DELETE: cut every watch, delete the pod, and expire the history.

        No client can ever receive this DELETE: resuming from any earlier version gets 410.
        """
        self.drop_watches()
        self.pods.pop((namespace, name))
        self.rv += 1
        self.expire_history()

    def delete_pod_silently(self, name: str, namespace: str = "default") -> None:
        """The pod is gone but no event says so, and no 410 comes either (a lost event)."""
        self.pods.pop((namespace, name))
        self.rv += 1

    def expire_history(self) -> None:
        """Compact: a watch from any version older than the current one is now too old."""
        self.history.clear()
        self.oldest_rv = self.rv

    def drop_watches(self) -> int:
        for watcher in self._watchers:
            watcher.queue.put_nowait(_DROP)
        return len(self._watchers)

    def send_bookmark(self) -> None:
        for watcher in self._watchers:
            if watcher.bookmarks:
                watcher.queue.put_nowait(_BOOKMARK)

    @property
    def watching(self) -> int:
        return len(self._watchers)

    def lists(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.kind == "list"]

    def watches(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.kind == "watch"]

    def _record(self, kind: str, namespace: str, old: Pod | None, new: Pod | None) -> None:
        self.rv += 1
        name = (new or old or {})["metadata"]["name"]
        if new is not None:
            new["metadata"]["resourceVersion"] = str(self.rv)
            self.pods[(namespace, name)] = new
        else:
            self.pods.pop((namespace, name), None)
        event = _Event(self.rv, kind, namespace, copy.deepcopy(old), copy.deepcopy(new))
        self.history.append(event)
        for watcher in self._watchers:
            if watcher.namespace == namespace:
                watcher.queue.put_nowait(event)


def _as_seen(event: _Event, selector: Selector) -> tuple[str, Pod] | None:
    """The event as a watcher with ``selector`` sees it (the watch cache's filtering)."""
    was, now = selector.matches(event.old), selector.matches(event.new)
    if event.type == "DELETED" or (was and not now):
        if not was:
            return None
        gone = copy.deepcopy(event.old)
        assert gone is not None
        gone["metadata"]["resourceVersion"] = str(event.rv)
        return "DELETED", gone
    if not now:
        return None
    assert event.new is not None
    return ("MODIFIED" if was else "ADDED"), copy.deepcopy(event.new)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode() + b"\n"
