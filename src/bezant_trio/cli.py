"""``bezant-trio run | demo | simulate | record | tail | check-config``.

Bad configuration or an impossible start-up prints one line on stderr and
exits 2; nothing here ever prints a traceback for bad input.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

import trio

from bezant_trio import __version__
from bezant_trio.config import Config, ConfigError, config_from_mapping, load_config

__all__ = ["main"]

log = logging.getLogger("bezant_trio")

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bezant-trio`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate"]:
        # The simulator has its own options (many start with "-"), parsed by it.
        from bezant_trio.simulator import run_cli

        return run_cli(argv[1:])
    if argv[:1] == ["record"]:
        from bezant_trio.cpapi.record import run_cli as run_record

        return run_record(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bezant-trio",
        description="Capture IBKR Client Portal WebSocket events into durable cursor logs.",
    )
    parser.add_argument("--version", action="version", version=f"bezant-trio {__version__}")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", help="YAML config (default ./config.yaml if present)")
    _add_log_args(run)
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser("demo", help="run the daemon against an embedded simulated gateway")
    demo.add_argument("--bind", default="127.0.0.1:8080", help="HTTP bind (default 127.0.0.1:8080)")
    demo.add_argument("--state-dir", default="./state", help="where the demo keeps its event log")
    demo.add_argument("--memory", action="store_true", help="no durable log")
    demo.add_argument(
        "--conid", type=int, action="append", default=None, help="conid to stream (repeatable)"
    )
    _add_log_args(demo)
    demo.set_defaults(func=_cmd_demo)

    simulate = sub.add_parser("simulate", help="run only the gateway simulator")
    simulate.add_argument("args", nargs=argparse.REMAINDER, help="simulator options (--help)")
    simulate.set_defaults(func=_cmd_simulate)

    # Parsed by cpapi/record.py (main() hands it the arguments); listed for --help.
    sub.add_parser("record", help="record a gateway session for simulate --replay", add_help=False)

    check = sub.add_parser("check-config", help="validate and print the effective config")
    check.add_argument("--config", help="YAML config (default ./config.yaml if present)")
    check.set_defaults(func=_cmd_check_config)

    tail = sub.add_parser(
        "tail",
        help="print a topic's events as JSON lines (long-poll)",
        description="Follow TOPIC with long-polls and print each event as one JSON line. "
        "Survives daemon restarts; a cursor the daemon no longer keeps (412) prints one "
        'synthetic line with "cursor": null and payload.reason "cursor_expired", then '
        "resumes at the head.",
    )
    tail.add_argument("topic", help="orders, pnl, gap, marketdata:265598, ...")
    tail.add_argument(
        "--since",
        type=int,
        default=None,
        help="print events after this cursor (0: everything kept; default: only new ones)",
    )
    tail.add_argument(
        "--url",
        default=os.environ.get("BEZANT_URL", "http://127.0.0.1:8080"),
        help="daemon base URL (default $BEZANT_URL or http://127.0.0.1:8080)",
    )
    tail.add_argument(
        "--token",
        default=os.environ.get("BEZANT_API_TOKEN"),
        help="bearer token (default $BEZANT_API_TOKEN; prefer the variable: argv is visible to ps)",
    )
    tail.add_argument("--wait", type=float, default=25.0, help="long-poll seconds (0-30)")
    tail.add_argument(
        "--state",
        action="store_true",
        help='first print the topic\'s latest state as one line {"state": ...} '
        "(orders, pnl, marketdata:<conid>), then the events after it",
    )
    tail.set_defaults(func=_cmd_tail)
    return parser


def _add_log_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default=os.environ.get("BEZANT_LOG_LEVEL", "INFO").upper(),
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=os.environ.get("BEZANT_LOG_FORMAT", "text"),
        help="text (journald-friendly under systemd) or json lines for log shippers",
    )
    parser.add_argument(
        "--log-file", default=None, help="append log lines to this file (reopened on SIGHUP)"
    )


def _config_error(exc: Exception) -> int:
    print(f"bezant-trio: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def _load(path: str | None) -> Config:
    return load_config(path)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from bezant_trio.sinks.manager import SinkConfigError, validate_sink_configs

    try:
        config = _load(args.config)
        # Sink entries are checked by their plugins, as `run` checks them.
        validate_sink_configs(config.sinks)
    except (ConfigError, SinkConfigError) as exc:
        return _config_error(exc)
    sys.stdout.write(config.to_json(mask_secrets=True) + "\n")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from bezant_trio.logs import LogFileError, setup_logging

    try:
        config = _load(args.config)
        setup_logging(args.log_level, args.log_format, log_file=args.log_file)
    except (ConfigError, LogFileError) as exc:
        return _config_error(exc)
    config_path = args.config or ("config.yaml" if os.path.exists("config.yaml") else None)
    return _run_daemon(config, config_path)


def _run_daemon(config: Config, config_path: str | None) -> int:
    from bezant_trio.daemon import serve_until_signalled

    return _trio_main(lambda: serve_until_signalled(config, config_path=config_path))


def _trio_main(main: Any) -> int:
    """``trio.run(main)``; a start-up or config error is one line on stderr and exit 2."""
    from bezant_trio.errors import StartupError

    try:
        trio.run(main)
    except BaseException as exc:  # unwrap nursery groups to find a start-up error
        startup = _find(exc, (StartupError, ConfigError))
        if startup is not None:
            return _config_error(startup)
        raise
    return 0


def _find(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    if isinstance(exc, types):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, types)
            if found is not None:
                return found
    return None


def _cmd_demo(args: argparse.Namespace) -> int:
    from bezant_trio.daemon import serve_until_signalled
    from bezant_trio.logs import LogFileError, setup_logging
    from bezant_trio.simulator import GatewaySimulator

    try:
        setup_logging(args.log_level, args.log_format, log_file=args.log_file)
    except LogFileError as exc:
        return _config_error(exc)
    conids = args.conid or [265598, 8314]
    store_path = None if args.memory else os.path.join(args.state_dir, "demo-events.db")

    async def demo() -> None:
        simulator = GatewaySimulator(
            tls=True, rates={"orders": 2.0, "pnl": 1.0, "trades": 0.5, "marketdata": 5.0}
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(simulator.run)
            config = config_from_mapping(
                {
                    "gateway": {"url": simulator.base_url, "verify_tls": False},
                    "http": {"bind": args.bind},
                    "events": {
                        "channels": ["orders", "pnl", "trades"],
                        "marketdata": {"idle_unsubscribe": 0},
                    },
                    "store": {"path": store_path},
                },
                env={},
            )
            async with trio.open_nursery() as serving:
                daemon = await serving.start(partial(serve_until_signalled, config))
                _announce_demo(daemon, simulator.base_url, conids)
            nursery.cancel_scope.cancel()

    return _trio_main(demo)


def _announce_demo(daemon: Any, gateway_url: str, conids: list[int]) -> None:
    """Once the demo daemon serves: want its conids and print what to try."""
    for conid in conids:
        daemon.wants.want(conid)
    base = daemon.http_url
    print(
        f"\nbezant-trio demo: simulated gateway at {gateway_url}\n"
        f"  console: open {base}/ in a browser\n"
        f"  daemon at {base}; try:\n"
        f"    curl -s '{base}/events/_status'\n"
        f"    curl -s '{base}/events/orders?since=0&limit=5'\n"
        f"    curl -s '{base}/events/pnl?since=0&wait=5'\n"
        f"    curl -s '{base}/events/marketdata?conid={conids[0]}&since=0'\n"
        f"    bezant-trio tail orders --url {base}\n"
        "  Ctrl-C stops.\n",
        flush=True,
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cmd_simulate(args: argparse.Namespace) -> int:
    from bezant_trio.simulator import run_cli

    return run_cli(list(args.args))


def _cmd_tail(args: argparse.Namespace) -> int:
    from bezant_trio.client import tail_forever

    # SIGTERM (a supervisor, `timeout`, a pipeline ending) stops tail as Ctrl-C does: exit 0.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return tail_forever(
            args.url,
            args.topic,
            since=args.since,
            token=args.token,
            wait=args.wait,
            state=args.state,
        )
    except KeyboardInterrupt:
        return 0
