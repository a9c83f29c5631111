"""Command line of the simulator: ``bezant-trio simulate`` / ``python -m bezant_trio.simulator``.

Prints exactly one line to stdout once listening, the REST base URL, so a
parent process can read it to find a port chosen with ``--port 0``. Anything
else (the CA path under TLS) goes to stderr. ``--replay FILE.jsonl`` plays a
recorded session (``bezant-trio record``) into whoever connects instead of
simulating streams.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

from bezant_trio.simulator.gateway import STREAM_CHANNELS, GatewaySimulator
from bezant_trio.simulator.replay import ReplaySession, SessionFormatError

__all__ = ["build_parser", "parse_rate", "run_cli", "serve_simulator"]


def parse_rate(text: str) -> tuple[str, float]:
    """Parse ``channel=events_per_second``, e.g. ``orders=5``."""
    channel, sep, value = text.partition("=")
    channel = channel.strip()
    if not sep or channel not in STREAM_CHANNELS:
        raise argparse.ArgumentTypeError(
            f"expected CHANNEL=RATE with CHANNEL one of {', '.join(STREAM_CHANNELS)}; got {text!r}"
        )
    try:
        rate = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"rate must be a number: {text!r}") from None
    if rate < 0:
        raise argparse.ArgumentTypeError(f"rate must be >= 0: {text!r}")
    return channel, rate


def build_parser(prog: str = "bezant-trio simulate") -> argparse.ArgumentParser:
    """The argument parser (exposed so the main CLI can embed it as a subcommand)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a fake IBKR Client Portal gateway (REST + WebSocket + /sim controls).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=5000, help="bind port; 0 picks a free one (default 5000)"
    )
    parser.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve HTTPS/WSS with a fresh self-signed CA (default on, like the real gateway)",
    )
    parser.add_argument(
        "--rate",
        action="append",
        type=parse_rate,
        default=[],
        metavar="CHANNEL=RATE",
        help="background events/s, repeatable: orders=5 pnl=1 trades=1 marketdata=20 (per conid)",
    )
    parser.add_argument(
        "--heartbeat-interval", type=float, default=10.0, help="seconds between heartbeats"
    )
    parser.add_argument(
        "--ready-delay", type=float, default=0.05, help="seconds before the ready frame"
    )
    parser.add_argument(
        "--binary-frames", action="store_true", help="send JSON frames as binary messages"
    )
    parser.add_argument(
        "--ca-out", type=Path, default=None, help="write the CA certificate PEM here (TLS)"
    )
    parser.add_argument(
        "--marketdata-expiry",
        type=float,
        default=600.0,
        help="seconds after an smd that the gateway ends the stream; 0 never (default 600)",
    )
    parser.add_argument(
        "--replay",
        type=Path,
        default=None,
        metavar="FILE.jsonl",
        help="play this recorded session (bezant-trio record) into every WebSocket",
    )
    parser.add_argument(
        "--replay-speed", type=float, default=1.0, help="replay time factor (2: twice as fast)"
    )
    return parser


async def serve_simulator(
    host: str = "127.0.0.1",
    port: int = 5000,
    tls: bool = True,
    rates: Mapping[str, float] | None = None,
    *,
    heartbeat_interval: float = 10.0,
    ready_delay: float = 0.05,
    binary_frames: bool = False,
    ca_pem_path: Path | None = None,
    marketdata_expiry: float | None = 600.0,
    replay: ReplaySession | None = None,
    task_status: trio.TaskStatus[GatewaySimulator] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a simulator until cancelled, announcing its base URL on stdout."""
    sim = GatewaySimulator(
        host=host,
        port=port,
        tls=tls,
        rates=rates,
        heartbeat_interval=heartbeat_interval,
        ready_delay=ready_delay,
        binary_frames=binary_frames,
        ca_pem_path=ca_pem_path,
        marketdata_expiry=marketdata_expiry,
        replay=replay,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        print(sim.base_url, flush=True)
        if sim.ca_pem_path is not None:
            print(f"simulator CA certificate: {sim.ca_pem_path}", file=sys.stderr, flush=True)
        task_status.started(sim)


async def _serve_until_signal(args: argparse.Namespace, replay: ReplaySession | None) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            nursery.start_soon(
                lambda: serve_simulator(
                    args.host,
                    args.port,
                    args.tls,
                    dict(args.rate),
                    heartbeat_interval=args.heartbeat_interval,
                    ready_delay=args.ready_delay,
                    binary_frames=args.binary_frames,
                    ca_pem_path=args.ca_out,
                    marketdata_expiry=args.marketdata_expiry or None,
                    replay=replay,
                )
            )
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def _leaf_errors(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaf_errors(inner)]
    return [error]


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and serve until SIGINT/SIGTERM; the process exit status.

    0 after a signal, 1 if the port cannot be bound, 2 for bad arguments or
    a session file that cannot be replayed.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        # argparse exits after printing usage or --help; callers want a status.
        return exc.code if isinstance(exc.code, int) else 2
    replay = None
    if args.replay is not None:
        try:
            replay = ReplaySession.load(args.replay, speed=args.replay_speed)
        except (SessionFormatError, ValueError) as exc:
            print(f"bezant-trio simulate: --replay: {exc}", file=sys.stderr)
            return 2
    failures: list[BaseException] = []
    try:
        trio.run(_serve_until_signal, args, replay)
    except* OSError as group:
        # Nurseries wrap errors in (nested) groups; a bind failure is the one
        # expected here, reported as one line rather than a traceback.
        failures.extend(_leaf_errors(group))
    if failures:
        print(
            f"bezant-trio simulate: cannot listen on {args.host}:{args.port}: {failures[0]}",
            file=sys.stderr,
        )
        return 1
    return 0
