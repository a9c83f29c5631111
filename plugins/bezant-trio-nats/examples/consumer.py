"""Read bezant-trio events from NATS JetStream with a durable pull consumer.

Every event the daemon captured is one message in the stream (``BEZANT`` by
default) on subject ``bezant.<topic>`` (``bezant.orders``,
``bezant.marketdata.265598``, ...); its body is the event exactly as
``GET /events/{topic}`` returns it. This script prints each one as a JSON line
and then acknowledges it. The server remembers, per ``--durable`` name, what was
acknowledged: stop the script and start it again with the same name and it
resumes after the last acknowledged event. Give each application its own name
(``risk``, ``dashboard``, ...) and run as many as you like, on any machine that
reaches NATS; they do not slow the daemon or each other.

    python examples/consumer.py --durable risk --subject 'bezant.orders'
    python examples/consumer.py --durable ticks --subject 'bezant.marketdata.>' \\
        --servers nats://nats1:4222,nats://nats2:4222,nats://nats3:4222

Delivery is at least once (a crash between printing and acknowledging prints
the event again on the next run), so a consumer that must not act twice keeps
the last ``Bezant-Cursor`` it handled per ``Bezant-Topic`` and skips events at
or below it. Needs only nats-py (``pip install nats-py``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--servers",
        default="nats://127.0.0.1:4222",
        help="comma-separated NATS URLs (default nats://127.0.0.1:4222)",
    )
    parser.add_argument("--stream", default="BEZANT", help="the stream (default BEZANT)")
    parser.add_argument(
        "--durable", required=True, help="this consumer's name; the server keeps its position"
    )
    parser.add_argument(
        "--subject",
        default="bezant.>",
        help="which events: bezant.orders, 'bezant.marketdata.>', ... (default: all)",
    )
    parser.add_argument("--batch", type=int, default=100, help="messages per fetch")
    parser.add_argument(
        "--exit-when-idle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit once no event came for this long (default: run until Ctrl-C)",
    )
    parser.add_argument("--creds", default=None, help="a NATS .creds file")
    return parser.parse_args(argv)


async def consume(args: argparse.Namespace) -> int:
    options = {"servers": args.servers.split(","), "name": f"bezant consumer {args.durable}"}
    if args.creds:
        options["user_credentials"] = args.creds
    nc = await nats.connect(**options)
    js = nc.jetstream()
    try:
        # Created on the first run, found again on later ones (same name, same filter).
        subscription = await js.pull_subscribe(
            args.subject,
            durable=args.durable,
            stream=args.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,  # a new consumer starts at the oldest event
                max_ack_pending=10 * args.batch,
            ),
        )
    except NotFoundError:
        await nc.close()
        print(
            f"stream {args.stream} not found at {args.servers}: the daemon's nats sink creates"
            " it with its first event (is the daemon running, with events coming in?)",
            file=sys.stderr,
        )
        return 1
    handled = 0
    try:
        while True:
            try:
                messages = await subscription.fetch(args.batch, timeout=args.exit_when_idle or 5)
            except TimeoutError:  # nats-py raises its own subclass, or asyncio's
                if args.exit_when_idle is not None:
                    break
                continue
            for message in messages:
                handle(message)
                # Acknowledge only after handling: the server then never skips it.
                await message.ack()
                handled += 1
    finally:
        # flush() returns once the server has read everything sent before it,
        # the last acks included. (nats-py's drain() can hang after fetch timeouts.)
        await nc.flush()
        await nc.close()
    print(f"{handled} event(s) handled by {args.durable}", file=sys.stderr)
    return 0


def handle(message: Msg) -> None:
    """Your code goes here; this one prints the event JSON (the REST shape) as a line."""
    sys.stdout.buffer.write(message.data + b"\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    try:
        return asyncio.run(consume(parse_args(argv)))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
