"""A local webhook receiver for the sink benchmark, in a process of its own.

A command-line wrapper of :class:`bezant_trio.testing.WebhookReceiver`
(counting only, so that a long run holds nothing in memory). ``--mode fast``
answers every POST with 204 as soon as its body is read; ``--mode stall``
reads the request and never answers (a hung receiver: the sink waits for its
timeout, retries, waits again). Prints ``serving on http://127.0.0.1:PORT``;
the sink posts to that URL plus ``/hook``.
"""

from __future__ import annotations

import argparse
import sys

import trio

from bezant_trio.testing import WebhookReceiver


async def _main(mode: str) -> None:
    # batches=False: a benchmark has no time to parse what it takes in.
    receiver = WebhookReceiver(record="counts", batches=False)
    receiver.status = 204
    receiver.hang = mode == "stall"
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.run)
        print(f"serving on {receiver.base_url}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["fast", "stall"], default="fast")
    args = parser.parse_args()
    trio.run(_main, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
