"""Command line of the simulator: ``python -m mixroute.sim`` or ``mixroute sim``.

``add_arguments`` and ``run`` are the contract with the project's main CLI. The process
prints one line ``mixroute-sim ready: http://HOST:PORT model=NAME replica=NAME`` on
stdout once it accepts connections (useful with ``--port 0``), followed by
`` kv_events=tcp://HOST:PORT`` (and `` kv_replay=tcp://HOST:PORT``) when KV events are
published, and exits 0 on SIGINT or SIGTERM after a short graceful shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable

from mixroute.sim.server import SimServer
from mixroute.sim.settings import HANG_MODES, KV_EVENT_ENCODINGS, SimSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every simulator option to ``parser``."""
    d = SimSettings(model="defaults")
    net = parser.add_argument_group("server")
    net.add_argument("--host", default=d.host, help="bind address (default: %(default)s)")
    net.add_argument("--port", type=int, required=True, help="bind port (0: pick a free one)")
    net.add_argument("--model", required=True, help="served model id (/v1/models, responses)")
    net.add_argument(
        "--replica-name",
        default=None,
        help="value of the x-sim-replica response header (default: HOST:PORT)",
    )
    net.add_argument("--seed", type=int, default=d.seed, help="seed of text, vectors, faults")

    eng = parser.add_argument_group("latency model")
    eng.add_argument(
        "--max-batch",
        type=int,
        default=d.max_batch,
        help="running batch bound (default: %(default)s)",
    )
    eng.add_argument(
        "--max-waiting",
        type=int,
        default=d.max_waiting,
        help="waiting queue bound; beyond it 503 (default: %(default)s)",
    )
    eng.add_argument(
        "--prefill-ms-per-token",
        type=float,
        default=d.prefill_ms_per_token,
        help="prefill time per uncached prompt token (default: %(default)s)",
    )
    eng.add_argument(
        "--decode-ms-per-token",
        type=float,
        default=d.decode_ms_per_token,
        help="decode time per output token at batch 1 (default: %(default)s)",
    )
    eng.add_argument(
        "--batch-slowdown",
        type=float,
        default=d.batch_slowdown,
        help="decode time added per extra running request, as a fraction (default: %(default)s)",
    )
    eng.add_argument(
        "--block-size",
        type=int,
        default=d.block_size,
        help="tokens per KV block (default: %(default)s)",
    )
    eng.add_argument(
        "--prefix-cache-blocks",
        type=int,
        default=d.prefix_cache_blocks,
        help="prefix cache capacity in blocks, LRU; 0 disables (default: %(default)s)",
    )
    eng.add_argument(
        "--kv-cache-blocks",
        type=int,
        default=d.kv_cache_blocks,
        help="KV cache capacity in blocks, for kv_cache_usage_perc (default: %(default)s)",
    )
    eng.add_argument(
        "--max-model-len",
        type=int,
        default=d.max_model_len,
        help="context length; longer requests get 400 (default: %(default)s)",
    )
    eng.add_argument(
        "--max-tokens-default",
        type=int,
        default=d.max_tokens_default,
        help="output tokens when the request sets none (default: %(default)s)",
    )
    eng.add_argument(
        "--embedding-dim",
        type=int,
        default=d.embedding_dim,
        help="embedding vector size (default: %(default)s)",
    )
    eng.add_argument(
        "--no-latency",
        action="store_true",
        help="zero prefill/decode time (gateway throughput benchmarks)",
    )
    eng.add_argument(
        "--role",
        choices=("both", "prefill", "decode"),
        default=d.role,
        help="disaggregated serving role (default: %(default)s)",
    )

    kv = parser.add_argument_group("KV events (vLLM's --kv-events-config, publisher zmq)")
    kv.add_argument(
        "--kv-events-port",
        type=int,
        default=None,
        help="publish KV-cache events on a ZMQ PUB socket on this port (0: a free one)",
    )
    kv.add_argument(
        "--kv-events-replay-port",
        type=int,
        default=None,
        help="serve missed batches on a ZMQ ROUTER socket on this port (0: a free one)",
    )
    kv.add_argument(
        "--kv-events-topic",
        default=None,
        help="topic frame of every message (default: kv@REPLICA@MODEL)",
    )
    kv.add_argument(
        "--kv-events-encoding",
        choices=KV_EVENT_ENCODINGS,
        default=d.kv_events_encoding,
        help="events as positional arrays (vLLM before PR #42892) or tagged maps "
        "(after it) (default: %(default)s)",
    )
    kv.add_argument(
        "--kv-events-buffer-steps",
        type=int,
        default=d.kv_events_buffer_steps,
        help="batches kept for replay (default: %(default)s)",
    )

    flt = parser.add_argument_group("fault injection")
    flt.add_argument(
        "--error-rate",
        type=float,
        default=d.error_rate,
        help="fraction of inference requests answered 500",
    )
    flt.add_argument("--hang", action="store_true", help="hang every inference request")
    flt.add_argument(
        "--hang-rate",
        type=float,
        default=None,
        help="fraction of inference requests that hang (--hang means 1.0)",
    )
    flt.add_argument(
        "--hang-mode",
        choices=HANG_MODES,
        default=d.hang_mode,
        help="hang before any response byte, or after headers and the first "
        "token (default: %(default)s)",
    )
    flt.add_argument(
        "--slow-start-s",
        type=float,
        default=d.slow_start_s,
        help="seconds after start during which everything but /metrics is 503",
    )
    flt.add_argument(
        "--crash-after",
        type=int,
        default=None,
        metavar="N",
        help="serve N inference requests, then os._exit(1) on request N+1 "
        "(mid-stream after its first token when streaming)",
    )
    flt.add_argument(
        "--stall-s",
        type=float,
        default=d.stall_s,
        help="every stream pauses this long after its first token, then goes on",
    )
    flt.add_argument(
        "--flap-up-s",
        type=float,
        default=d.flap_up_s,
        help="with --flap-down-s: seconds up in each up/down cycle",
    )
    flt.add_argument(
        "--flap-down-s",
        type=float,
        default=d.flap_down_s,
        help="seconds down (503 everywhere but /metrics) in each up/down cycle; 0: no flapping",
    )
    flt.add_argument(
        "--shutdown-timeout-s",
        type=float,
        default=d.shutdown_timeout_s,
        help="grace period for in-flight requests on SIGINT/SIGTERM",
    )


def settings_from_args(args: argparse.Namespace) -> SimSettings:
    """Turn parsed arguments into settings (raises ValueError on bad values)."""
    hang_rate = args.hang_rate if args.hang_rate is not None else (1.0 if args.hang else 0.0)
    return SimSettings(
        model=args.model,
        host=args.host,
        port=args.port,
        replica_name=args.replica_name,
        max_batch=args.max_batch,
        max_waiting=args.max_waiting,
        prefill_ms_per_token=args.prefill_ms_per_token,
        decode_ms_per_token=args.decode_ms_per_token,
        batch_slowdown=args.batch_slowdown,
        block_size=args.block_size,
        prefix_cache_blocks=args.prefix_cache_blocks,
        kv_cache_blocks=args.kv_cache_blocks,
        max_model_len=args.max_model_len,
        max_tokens_default=args.max_tokens_default,
        embedding_dim=args.embedding_dim,
        no_latency=args.no_latency,
        role=args.role,
        error_rate=args.error_rate,
        hang_rate=hang_rate,
        hang_mode=args.hang_mode,
        slow_start_s=args.slow_start_s,
        crash_after=args.crash_after,
        stall_s=args.stall_s,
        flap_up_s=args.flap_up_s,
        flap_down_s=args.flap_down_s,
        seed=args.seed,
        shutdown_timeout_s=args.shutdown_timeout_s,
        kv_events_port=args.kv_events_port,
        kv_events_replay_port=args.kv_events_replay_port,
        kv_events_topic=args.kv_events_topic,
        kv_events_encoding=args.kv_events_encoding,
        kv_events_buffer_steps=args.kv_events_buffer_steps,
    )


async def serve(settings: SimSettings) -> None:
    """Serve until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with SimServer(settings) as server:
            line = (
                f"mixroute-sim ready: {server.url} model={settings.model} "
                f"replica={server.replica_name}"
            )
            publisher = server.kv_events
            if publisher is not None:
                line += f" kv_events={publisher.pub_address}"
                if publisher.replay_address is not None:
                    line += f" kv_replay={publisher.replay_address}"
            print(line, flush=True)
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(args: argparse.Namespace) -> int:
    """Run the simulator described by ``args`` until SIGINT/SIGTERM; return the exit code."""
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"mixroute-sim: {exc}", flush=True)
        return 2
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        try:
            runner.run(serve(settings))
        except OSError as exc:  # e.g. address already in use
            print(f"mixroute-sim: cannot serve: {exc}", flush=True)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mixroute.sim",
        description="A fake vLLM: OpenAI-compatible server with vLLM-like latency and metrics.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
