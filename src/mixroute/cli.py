"""The ``mixroute`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mixroute.config.loader import ConfigError, config_from_backends, load_config_file
from mixroute.offline_cli import add_commands as add_offline_commands


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixroute", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="YAML config file (watched and reloaded)")
    source.add_argument(
        "--backend",
        action="append",
        metavar="MODEL=URL",
        help="serve MODEL from URL without a config file; repeat a MODEL to add replicas",
    )
    serve.add_argument("--host", help="overrides server.host")
    serve.add_argument("--port", type=int, help="overrides server.port")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port")

    demo = commands.add_parser("demo", help="gateway + simulated model pool, one command")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument(
        "--envoy", action="store_true", help="real Envoy in front, mixroute as its ext_proc"
    )

    extproc = commands.add_parser(
        "extproc", help="serve routing decisions to Envoy (ext_proc v3 gRPC)"
    )
    from mixroute.extproc.server import add_arguments as add_extproc_arguments

    add_extproc_arguments(extproc)

    sim = commands.add_parser("sim", help="run the vLLM engine simulator (a stand-in for vLLM)")
    from mixroute.sim.cli import add_arguments

    add_arguments(sim)

    add_offline_commands(commands)

    bench = commands.add_parser("bench", help="built-in benchmarks")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    routing = bench_commands.add_parser("routing", help="replica selection on a chat workload")
    from mixroute.benchmark.routing import add_arguments as add_routing_arguments
    from mixroute.benchmark.routing import run as run_routing

    add_routing_arguments(routing)
    routing.set_defaults(handler=run_routing)

    config = commands.add_parser("config", help="config file tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate a config file")
    check.add_argument("file", type=Path)

    keys = commands.add_parser("keys", help="API keys for access control (docs/config.md)")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    keys_commands.add_parser("new", help="print a fresh key and the hash to put in the config")
    hash_key = keys_commands.add_parser("hash", help="print the hash of a key read from stdin")
    hash_key.add_argument("--key", help="the key (default: read one line from stdin)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "demo":
            if args.envoy:
                from mixroute.extproc.demo import main as envoy_demo_main

                return envoy_demo_main(args.host, args.port)
            from mixroute.demo import main as demo_main

            return demo_main(args.host, args.port)
        if args.command == "extproc":
            from mixroute.extproc.server import run as run_extproc

            return run_extproc(args)
        if args.command == "sim":
            from mixroute.sim.cli import run

            return run(args)
        if getattr(args, "handler", None) is not None:
            code: int = args.handler(args)
            return code
        if args.command == "keys":
            from mixroute.access.cli import run as run_keys

            return run_keys(args)
        if args.command == "config":
            config = load_config_file(args.file)
            print(
                f"{args.file}: ok ({len(config.endpoints)} endpoints, "
                f"models: {', '.join(sorted(config.served_models())) or 'none'})"
            )
            return 0
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 1


def _serve(args: argparse.Namespace) -> int:
    from mixroute.server import run_server

    if args.config is not None:
        config = load_config_file(args.config)
    else:
        config = config_from_backends(args.backend)
    if config.observability.logs.format == "json":
        from mixroute.observability.logs import use_json_logs

        use_json_logs()
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    return run_server(config, config_path=args.config, host=host, port=port, workers=args.workers)


if __name__ == "__main__":
    sys.exit(main())
