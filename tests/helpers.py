"""Small helpers shared by tests."""

from __future__ import annotations

import contextlib
import errno
import os
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

#: One TLS context for every test's httpx client: building one loads the CA bundle,
#: 56 ms of CPU per client (the daemons here speak plain HTTP anyway).
SSL_CONTEXT = ssl.create_default_context()


def examples(count: int) -> int:
    """``count`` Hypothesis examples under the ``ci`` profile, ten times more under ``dev``.

    (Scaled by the profile's ``max_examples``: 100 in ``ci``, 1,000 in ``dev``;
    tests/conftest.py loads the profile before any test module is imported.)
    """
    from hypothesis import settings

    return max(1, count * settings.default.max_examples // 100)


def capacity_of(default: int = 1000, **per_topic: int) -> Callable[[str], int]:
    """A capacity function like EventsConfig.capacity_for."""

    def capacity_for(topic: str) -> int:
        family = topic.split(":", 1)[0]
        return per_topic.get(topic.replace(":", "_"), per_topic.get(family, default))

    return capacity_for


async def wait_until(condition: Callable[[], bool], *, poll: float = 0.005) -> None:
    """Wait until ``condition()`` holds; callers bound it with ``trio.fail_after``.

    For states that raise no event of their own (a request parked in the hub,
    a subprocess's file appearing); everything with an event waits on it.
    """
    while not condition():  # noqa: ASYNC110 - no event exists for these conditions
        await trio.sleep(poll)


@contextlib.asynccontextmanager
async def wall_clock_bound(seconds: float) -> AsyncIterator[None]:
    """Fail the block with ``trio.TooSlowError`` after ``seconds`` of real time.

    For tests on a MockClock that moves only when told to
    (``autojump_threshold = math.inf``): there ``trio.fail_after`` counts
    virtual seconds, which never pass while the test waits for a worker
    thread. A worker thread times the real seconds instead (a timer, not a
    synchronisation); leaving the block ends it at once.
    """
    done = threading.Event()
    expired = False
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal expired
            if not await trio.to_thread.run_sync(done.wait, seconds):
                expired = True
                nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        try:
            yield
        finally:
            done.set()
    if expired:
        raise trio.TooSlowError(f"not done within {seconds} s of real time")


def seq_of(event: object) -> int:
    """The simulator's sequence number inside a captured event's payload."""
    payload = event.payload if hasattr(event, "payload") else event["payload"]  # type: ignore[index]
    if "seq" in payload:
        return int(payload["seq"])
    args = payload["args"]
    if isinstance(args, list):
        return int(args[0]["seq"])
    return int(next(iter(args.values()))["seq"])


async def serve_daemon(config: object, *, task_status: trio.TaskStatus[object]) -> None:
    """``await nursery.start(serve_daemon, config)``: a daemon serving until the test ends."""
    from bezant_trio.daemon import open_daemon

    async with open_daemon(config) as daemon:  # type: ignore[arg-type]
        task_status.started(daemon)
        await trio.sleep_forever()


# ------------------------------------------------------------------ a small disk


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` on ``path`` (a small disk to fill).

    Returns None once mounted, else why it could not be (not root, or what
    ``mount`` said): the caller says so out loud, never drops it quietly.
    """
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "mounting a small tmpfs (a real full disk) needs root"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if done.returncode != 0:
        return f"mount -t tmpfs failed ({done.returncode}): {done.stderr.strip() or done.stdout}"
    return None


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False, timeout=30)


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` on ``path`` for the block; unmounted after it.

    Without root the test is skipped with that reason; as root a failed mount
    fails the test (CI runs as root: a fault that cannot be staged there is a
    broken test, not a skip).
    """
    reason = mount_tmpfs(path, size)
    if reason is not None:
        if os.geteuid() != 0:
            pytest.skip(reason)
        pytest.fail(reason)
    try:
        yield path
    finally:
        umount(path)


def fill_disk(path: Path) -> None:
    """Write zeros into ``path`` until its filesystem is full (ENOSPC)."""
    chunk = b"\0" * (64 * 1024)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while os.write(fd, chunk) == len(chunk):
            pass
    except OSError as exc:
        if exc.errno != errno.ENOSPC:  # full is the point; anything else is a broken fault
            raise
    finally:
        os.close(fd)


async def allocated_blocks(client: Any, url: str, *, scrapes: int = 3) -> int:
    """The daemon's live Python allocator blocks (``bezant_python_allocated_blocks``
    in ``/metrics``), the least of ``scrapes`` scrapes: what it holds at rest,
    unlike RSS, which the allocator's free lists and the machine's load move."""
    least: int | None = None
    for _ in range(scrapes):
        response = await client.get(f"{url}/metrics")
        response.raise_for_status()
        for line in response.text.splitlines():
            if line.startswith("bezant_python_allocated_blocks "):
                value = int(float(line.split()[1]))
                least = value if least is None else min(least, value)
                break
        else:
            raise AssertionError("/metrics has no bezant_python_allocated_blocks")
        await trio.sleep(0.1)
    assert least is not None
    return least
