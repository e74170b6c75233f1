"""Write the configs of the one-machine stack (deploy/local/stack.sh) into a directory.

The Production Stack layout on loopback, with the demo's simulated pool:

    client -> Envoy :PORT -> ext_proc (mixroute extproc :EXTPROC_PORT)
                  '-> mixroute balancer :BALANCER_PORT -> simulators :SIM_BASE_PORT...

Files written:
    sims.tsv       model, replica name, port: one simulator per line
    gateway.yaml   the demo's config (routes, guards, cache) over the simulators: what
                   `mixroute extproc` (and `mixroute serve`, if you want the gateway too) reads
    balancer.yaml  a pure balancer over the same simulators (no routes)
    envoy.yaml     deploy/envoy/envoy-extproc-balancer.yaml with every address on 127.0.0.1

Every mixroute config is validated before it is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from mixroute.config.loader import validate_config
from mixroute.demo import DEMO_MODELS, REPLICAS_PER_MODEL, demo_config

ENVOY_SOURCE = Path(__file__).resolve().parents[1] / "envoy" / "envoy-extproc-balancer.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8080, help="Envoy's listener")
    parser.add_argument("--balancer-port", type=int, default=8081)
    parser.add_argument("--extproc-port", type=int, default=50051)
    parser.add_argument("--stats-port", type=int, default=9902)
    parser.add_argument("--admin-port", type=int, default=9901)
    parser.add_argument("--sim-base-port", type=int, default=18100)
    args = parser.parse_args()
    render(args.out, vars(args))


def render(out: Path, ports: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sims = [
        SimpleNamespace(
            model=model,
            name=f"{model}-{replica}",
            port=ports["sim_base_port"] + index * REPLICAS_PER_MODEL + replica,
        )
        for index, model in enumerate(DEMO_MODELS)
        for replica in range(REPLICAS_PER_MODEL)
    ]
    for sim in sims:
        sim.url = f"http://127.0.0.1:{sim.port}"
    (out / "sims.tsv").write_text("".join(f"{s.model}\t{s.name}\t{s.port}\n" for s in sims))

    gateway = demo_config(sims)  # type: ignore[arg-type]  # duck-typed simulators
    gateway["server"] = {"host": "127.0.0.1", "port": ports["balancer_port"] + 1}
    _write_config(out / "gateway.yaml", gateway)

    balancer = {
        "server": {"host": "127.0.0.1", "port": ports["balancer_port"]},
        "endpoints": [{"name": s.name, "url": s.url, "model": s.model} for s in sims],
        "balancer": {"policy": "round_robin", "health": {"interval_s": 2.0, "timeout_s": 1.0}},
    }
    _write_config(out / "balancer.yaml", balancer)

    (out / "envoy.yaml").write_text(yaml.safe_dump(localize_envoy(ports), sort_keys=False))


def _write_config(path: Path, raw: dict[str, Any]) -> None:
    validate_config(raw, source=str(path))
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def localize_envoy(ports: dict[str, Any]) -> dict[str, Any]:
    """The Kubernetes bootstrap with loopback addresses and the given ports."""
    bootstrap: dict[str, Any] = yaml.safe_load(ENVOY_SOURCE.read_text())
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = ports["admin_port"]
    listeners = {x["name"]: x for x in bootstrap["static_resources"]["listeners"]}
    listen = {"ingress_http": ports["port"], "envoy_stats": ports["stats_port"]}
    for name, port in listen.items():
        listeners[name]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
    upstream = {
        "mixroute_extproc": ports["extproc_port"],
        "mixroute_balancer": ports["balancer_port"],
        "envoy_admin": ports["admin_port"],
    }
    for cluster in bootstrap["static_resources"]["clusters"]:
        socket = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        socket["address"]["socket_address"] = {
            "address": "127.0.0.1",
            "port_value": upstream[cluster["name"]],
        }
    return bootstrap


if __name__ == "__main__":
    main()
