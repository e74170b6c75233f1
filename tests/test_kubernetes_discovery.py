"""Kubernetes discovery: the real kubernetes_asyncio client against tests/fake_kube.py.

The fake API server is the only stand-in; it speaks the real list/watch protocol
(resourceVersion, BOOKMARK, 410 inside a 200 stream, dropped connections).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fake_kube import FakeKubeApi
from mixroute.balancer.discovery import KubernetesDiscoveryConfig
from mixroute.balancer.discovery.kubernetes import KubernetesDiscovery
from mixroute.balancer.discovery.pods import PodView, ServedModels, parse_models, pod_endpoints
from mixroute.balancer.registry import EndpointRegistry
from mixroute.config.schema import CircuitBreakerConfig, EndpointConfig

pytestmark = pytest.mark.timeout(20)

NS = "ml"
SELECTOR = "app=vllm"
VLLM = {"app": "vllm", "model": "llama-8b"}


async def until(check: Callable[[], bool], within: float = 3.0, what: str = "") -> float:
    """Wait for ``check()``; return how long it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not check():
        if loop.time() - start > within:
            raise AssertionError(f"timed out after {within}s waiting for {what or check}")
        await asyncio.sleep(0.01)
    return loop.time() - start


class Harness:
    """A running discovery plus every list it reported."""

    def __init__(self, config: KubernetesDiscoveryConfig, session: aiohttp.ClientSession) -> None:
        self.reports: list[list[EndpointConfig]] = []
        self.discovery = KubernetesDiscovery(config, self.record, session)

    def record(self, configs: list[EndpointConfig]) -> None:
        self.reports.append(configs)

    def names(self) -> set[str]:
        return {c.name for c in self.discovery.current()}

    def by_name(self) -> dict[str, EndpointConfig]:
        return {c.name: c for c in self.discovery.current()}

    async def wait_names(self, names: Iterable[str], within: float = 3.0) -> float:
        wanted = set(names)
        return await until(lambda: self.names() == wanted, within, f"endpoints {wanted}")


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubeApi]:
    api = FakeKubeApi()
    await api.start()
    yield api
    await api.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def start_discovery(
    session: aiohttp.ClientSession,
) -> AsyncIterator[Callable[..., Any]]:
    running: list[KubernetesDiscovery] = []

    async def start(kube: FakeKubeApi, **settings: Any) -> Harness:
        fields: dict[str, Any] = {
            "namespace": NS,
            "label_selector": SELECTOR,
            "api_server": kube.url,
            "model_label": "model",
            "labels": ["model"],
        }
        fields.update(settings)
        harness = Harness(KubernetesDiscoveryConfig(**fields), session)
        discovery = harness.discovery
        await discovery.start()
        running.append(discovery)
        await asyncio.wait_for(discovery.synced.wait(), 3)
        await until(lambda: kube.watching > 0, what="a watch")
        return harness

    yield start
    for discovery in running:
        await discovery.stop()


async def test_ready_pods_become_endpoints_and_leave_when_not_ready(
    kube: FakeKubeApi, start_discovery: Callable[..., Any]
) -> None:
    kube.add_pod("a", "10.0.0.1", VLLM, namespace=NS)
    kube.add_pod("b", "10.0.0.2", VLLM, namespace=NS, ready=False)
    kube.add_pod("other-app", "10.0.0.3", {"app": "web", "model": "x"}, namespace=NS)
    kube.add_pod("elsewhere", "10.0.0.4", VLLM, namespace="default")
    kube.add_pod("pending", None, VLLM, namespace=NS, phase="Pending")
    h = await start_discovery(kube)
    assert h.names() == {"a"}
    a = h.by_name()["a"]
    # Only the configured label keys are copied (plus the pod name).
    assert (a.url, a.model, a.labels) == (
        "http://10.0.0.1:8000",
        "llama-8b",
        {"model": "llama-8b", "pod": "a"},
    )

    kube.set_ready("b", True, NS)  # readiness comes later: joins
    await h.wait_names({"a", "b"})
    kube.set_ready("a", False, NS)  # fails readiness: leaves at once
    await h.wait_names({"b"})
    kube.add_pod("c", "10.0.0.5", VLLM, namespace=NS)
    await h.wait_names({"b", "c"})
    kube.start_deletion("c", NS)  # terminating but still Ready: already out
    await h.wait_names({"b"})
    # A pod relabelled out of the selector arrives as DELETED (label-filtered watch).
    kube.modify_pod("b", lambda pod: pod["metadata"]["labels"].update(app="web"), NS)
    await h.wait_names(set())
    assert h.reports[-1] == []
    assert len(kube.lists()) == 1  # all of it from one list and one watch
    assert len(kube.watches()) == 1


async def test_delete_event_removes_pod_within_a_second(
    kube: FakeKubeApi, start_discovery: Callable[..., Any]
) -> None:
    kube.add_pod("a", "10.0.0.1", VLLM, namespace=NS)
    kube.add_pod("b", "10.0.0.2", VLLM, namespace=NS)
    h = await start_discovery(kube)
    assert h.names() == {"a", "b"}
    kube.delete_pod("a", NS)
    took = await h.wait_names({"b"}, within=1.0)
    assert took < 1.0


async def test_dropped_watch_resumes_from_last_resource_version(
    kube: FakeKubeApi, start_discovery: Callable[..., Any]
) -> None:
    kube.add_pod("a", "10.0.0.1", VLLM, namespace=NS)
    h = await start_discovery(kube)
    kube.add_pod("b", "10.0.0.2", VLLM, namespace=NS)
    await h.wait_names({"a", "b"})
    last_seen = h.discovery.resource_version
    assert last_seen == str(kube.rv)

    # Cut the stream, then change things before the client can reconnect.
    assert kube.drop_watches() == 1
    kube.add_pod("c", "10.0.0.3", VLLM, namespace=NS)
    kube.delete_pod("a", NS)
    await h.wait_names({"b", "c"})

    resumed = kube.watches()[-1]
    assert len(kube.watches()) == 2
    assert resumed.params["resourceVersion"] == last_seen
    assert resumed.outcome == "stream"
    assert len(kube.lists()) == 1  # resumed, not re-listed


@pytest.mark.parametrize("gone_as_http", [False, True], ids=["error-event-in-200", "http-410"])
async def test_expired_version_relists_and_drops_pod_whose_delete_was_missed(
    kube: FakeKubeApi, start_discovery: Callable[..., Any], gone_as_http: bool
) -> None:
    kube.gone_as_http = gone_as_http
    kube.add_pod("a", "10.0.0.1", VLLM, namespace=NS)
    kube.add_pod("b", "10.0.0.2", VLLM, namespace=NS)
    h = await start_discovery(kube)
    assert h.names() == {"a", "b"}

    # "a" is deleted while no watch is connected and the history is compacted: resuming
    # can never deliver its DELETE. Only a re-list can remove it.
    kube.delete_pod_unseen("a", NS)
    kube.add_pod("c", "10.0.0.3", VLLM, namespace=NS)
    await h.wait_names({"b", "c"})
    await until(lambda: len(kube.watches()) == 3 and kube.watching == 1, what="a new watch")

    outcomes = [w.outcome for w in kube.watches()]
    assert outcomes == ["stream", "gone-http" if gone_as_http else "gone-event", "stream"]
    assert (
        kube.watches()[1].params["resourceVersion"] == kube.watches()[0].params["resourceVersion"]
    )
    assert len(kube.lists()) == 2
    assert h.discovery.stats.gone == 1
    # After the re-list the watch continues from the new list's version.
    assert kube.watches()[2].params["resourceVersion"] == str(kube.rv)


async def test_bookmarks_advance_the_resource_version(
    start_discovery: Callable[..., Any],
) -> None:
    kube = FakeKubeApi(bookmark_interval_s=None)
    await kube.start()
    try:
        kube.add_pod("a", "10.0.0.1", VLLM, namespace=NS)
        h = await start_discovery(kube)
        assert kube.watches()[0].params["allowWatchBookmarks"].lower() == "true"
        seen = h.discovery.resource_version
        # Changes the watch does not show (other namespace, other labels) move the version.
        kube.add_pod("x", "10.0.1.1", VLLM, namespace="default")
        kube.add_pod("y", "10.0.1.2", {"app": "web"}, namespace=NS)
        await asyncio.sleep(0.05)
        assert h.discovery.resource_version == seen
        kube.send_bookmark()
        await until(lambda: h.discovery.resource_version == str(kube.rv), what="bookmark")
        assert h.names() == {"a"}

        kube.drop_watches()  # resuming starts from the bookmark's version
        await until(lambda: len(kube.watches()) == 2 and kube.watching == 1, what="resume")
        assert kube.watches()[1].params["resourceVersion"] == str(kube.rv)
        assert len(kube.lists()) == 1
    finally:
        await kube.close()


async def test_periodic_resync_heals_a_silently_lost_event(
    kube: FakeKubeApi, start_discovery: Callable[..., Any]
) -> None:
    kube.add_pod("a", "10.0.0.1", VLLM, namespace=NS)
    kube.add_pod("b", "10.0.0.2", VLLM, namespace=NS)
    h = await start_discovery(kube, resync_s=1.0)
    kube.delete_pod_silently("a", NS)  # no event, no 410: only the resync can see it
    await h.wait_names({"b"}, within=3.0)
    assert len(kube.lists()) >= 2


async def test_api_errors_back_off_and_recover(
    kube: FakeKubeApi, start_discovery: Callable[..., Any]
) -> None:
    kube.add_pod("a", "10.0.0.1", VLLM, namespace=NS)
    h = await start_discovery(kube)
    kube.fail_next_requests = 3  # the resumed watch fails three times with HTTP 500
    kube.drop_watches()
    kube.add_pod("b", "10.0.0.2", VLLM, namespace=NS)
    await h.wait_names({"a", "b"}, within=5.0)
    failed = [r for r in kube.requests if r.outcome == "failed"]
    assert len(failed) == 3
    assert h.discovery.stats.errors >= 3
    assert len(kube.lists()) == 1  # a 500 is not a reason to re-list


class FakeModelServer:
    """Answers GET /v1/models like vLLM; what it lists depends on the local IP dialled, so
    two "pods" (127.0.0.1 and 127.0.0.2) on one port can serve different adapters."""

    def __init__(self, models_by_ip: dict[str, list[dict[str, Any]]]) -> None:
        self.models_by_ip = models_by_ip
        self.calls: dict[str, int] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        first, *rest = self.models_by_ip
        await web.TCPSite(self._runner, first, port).start()
        self.port = self._runner.addresses[0][1]
        for ip in rest:
            await web.TCPSite(self._runner, ip, self.port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        assert request.transport is not None
        local_ip = request.transport.get_extra_info("sockname")[0]
        self.calls[local_ip] = self.calls.get(local_ip, 0) + 1
        data = [{"object": "model", "owned_by": "vllm", **m} for m in self.models_by_ip[local_ip]]
        return web.json_response({"object": "list", "data": data})


BASE = {"id": "llama-8b", "root": "/models/llama-8b", "parent": None}
SQL_LORA = {"id": "sql-lora", "root": "/adapters/sql", "parent": "llama-8b"}


async def test_model_from_v1_models_is_asked_once_per_pod(
    kube: FakeKubeApi, start_discovery: Callable[..., Any]
) -> None:
    server = FakeModelServer({"127.0.0.1": [BASE]})
    await server.start()
    try:
        kube.add_pod("a", "127.0.0.1", {"app": "vllm"}, namespace=NS)
        h = await start_discovery(kube, model_label=None, port=server.port)
        await h.wait_names({"a"})
        assert h.by_name()["a"].model == "llama-8b"
        assert h.by_name()["a"].url == f"http://127.0.0.1:{server.port}"
        # Further events for the same pod (same uid and IP) do not ask again.
        kube.modify_pod("a", lambda pod: pod["metadata"]["labels"].update(extra="1"), NS)
        kube.drop_watches()
        await until(lambda: len(kube.watches()) == 2 and kube.watching == 1, what="resume")
        assert server.calls == {"127.0.0.1": 1}
    finally:
        await server.close()


async def test_pod_not_answering_models_yet_joins_once_it_does(
    kube: FakeKubeApi, start_discovery: Callable[..., Any]
) -> None:
    server = FakeModelServer({"127.0.0.1": [BASE]})
    await server.start()
    port = server.port
    await server.close()  # Ready, but nothing answers on the port yet
    kube.add_pod("a", "127.0.0.1", {"app": "vllm"}, namespace=NS)
    h = await start_discovery(kube, model_label=None, port=port)
    await asyncio.sleep(0.3)
    assert h.names() == set()
    server = FakeModelServer({"127.0.0.1": [BASE]})
    await server.start(port)
    try:
        await h.wait_names({"a"}, within=5.0)
    finally:
        await server.close()


async def test_lora_adapters_get_endpoints_only_on_pods_that_load_them(
    kube: FakeKubeApi, start_discovery: Callable[..., Any]
) -> None:
    server = FakeModelServer({"127.0.0.1": [BASE, SQL_LORA], "127.0.0.2": [BASE]})
    await server.start()
    registry = EndpointRegistry()
    breaker = CircuitBreakerConfig()
    try:
        kube.add_pod("a", "127.0.0.1", {"app": "vllm"}, namespace=NS)
        kube.add_pod("b", "127.0.0.2", {"app": "vllm"}, namespace=NS)
        h = await start_discovery(kube, model_label=None, port=server.port, name_prefix="k8s-")
        await h.wait_names({"k8s-a", "k8s-a:sql-lora", "k8s-b"})
        registry.sync(h.discovery.current(), breaker, source="kubernetes")
        adapter = h.by_name()["k8s-a:sql-lora"]
        assert adapter.model == "sql-lora"
        assert adapter.url == h.by_name()["k8s-a"].url
        assert adapter.labels["base_model"] == "llama-8b"
        assert [e.name for e in registry.for_model("sql-lora")] == ["k8s-a:sql-lora"]
        assert sorted(e.name for e in registry.for_model("llama-8b")) == ["k8s-a", "k8s-b"]

        # The pod with the adapter goes away: the adapter leaves with it.
        kube.delete_pod("a", NS)
        await h.wait_names({"k8s-b"})
        registry.sync(h.discovery.current(), breaker, source="kubernetes")
        assert registry.for_model("sql-lora") == []
    finally:
        await server.close()


async def test_adapters_loaded_later_are_seen_on_refresh(
    kube: FakeKubeApi, start_discovery: Callable[..., Any]
) -> None:
    server = FakeModelServer({"127.0.0.1": [BASE]})
    await server.start()
    try:
        kube.add_pod("a", "127.0.0.1", {"app": "vllm"}, namespace=NS)
        h = await start_discovery(kube, model_label=None, port=server.port, models_refresh_s=0.2)
        await h.wait_names({"a"})
        server.models_by_ip["127.0.0.1"] = [BASE, SQL_LORA]
        await h.wait_names({"a", "a:sql-lora"})
        server.models_by_ip["127.0.0.1"] = [BASE]
        await h.wait_names({"a"})
    finally:
        await server.close()


async def test_stop_is_clean_and_prompt(
    kube: FakeKubeApi, start_discovery: Callable[..., Any], session: aiohttp.ClientSession
) -> None:
    kube.add_pod("a", "10.0.0.1", VLLM, namespace=NS)
    config = KubernetesDiscoveryConfig(
        namespace=NS, label_selector=SELECTOR, api_server=kube.url, model_label="model"
    )
    discovery = KubernetesDiscovery(config, lambda configs: None, session)
    await discovery.start()
    await until(lambda: kube.watching == 1, what="a watch")
    await asyncio.wait_for(discovery.stop(), 1.0)
    await until(lambda: kube.watching == 0, what="the watch to close")


def test_pod_rules_and_models_parsing() -> None:
    ready: dict[str, Any] = {
        "metadata": {"name": "p", "uid": "u", "labels": {"app": "vllm"}},
        "status": {
            "phase": "Running",
            "podIP": "fd00::5",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    assert PodView.parse(ready).serving
    for broken in (
        {**ready, "status": {**ready["status"], "phase": "Succeeded"}},
        {**ready, "status": {**ready["status"], "conditions": []}},
        {**ready, "metadata": {**ready["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}},
        {**ready, "status": {k: v for k, v in ready["status"].items() if k != "podIP"}},
    ):
        assert not PodView.parse(broken).serving
    served = parse_models(
        {"data": [{"id": "base", "parent": None}, {"id": "org/lora"}, SQL_LORA | {"id": "x/y"}]}
    )
    assert (served.base, served.adapters) == ("base", ("x/y",))
    with pytest.raises(ValueError):
        parse_models({"data": [SQL_LORA]})


def test_endpoint_names_and_urls() -> None:
    settings = KubernetesDiscoveryConfig(label_selector="app=vllm", name_prefix="k8s-", port=8001)
    pod = PodView("p-1", "u", "fd00::5", True, {"app": "vllm"})
    configs = pod_endpoints(pod, ServedModels("base", ("org/lora", "org_lora")), settings)
    assert [(c.name, c.url, c.model) for c in configs] == [
        ("k8s-p-1", "http://[fd00::5]:8001", "base"),
        ("k8s-p-1:org_lora", "http://[fd00::5]:8001", "org/lora"),
        (
            "k8s-p-1:org_lora-" + configs[2].name.rsplit("-", 1)[1],
            "http://[fd00::5]:8001",
            "org_lora",
        ),
    ]


def test_gateway_does_not_import_the_kubernetes_client() -> None:
    code = (
        "import sys, mixroute.gateway, mixroute.config.schema, "
        "mixroute.balancer.discovery.kubernetes; "
        "print(any(m.startswith('kubernetes_asyncio') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
