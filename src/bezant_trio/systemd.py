"""systemd's notify protocol: READY / STATUS / WATCHDOG / RELOADING / STOPPING.

Speaks ``sd_notify`` over the unix datagram socket named by ``$NOTIFY_SOCKET``
(a path, or ``@name`` for an abstract socket) without libsystemd, and runs
the watchdog: ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC``, but only while
:class:`WriterHealth` (or whatever ``healthy`` callable the daemon gives) says
the daemon is doing its job, so a wedged log writer gets the service
restarted. Without ``$NOTIFY_SOCKET`` every method is a no-op.

Owns only the notify socket; reads the daemon's state through callables, so
it imports nothing else of the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping

import trio

__all__ = ["SystemdNotifier", "WriterHealth"]

log = logging.getLogger(__name__)

#: How often the STATUS= line is re-read (it is only sent when it changed).
STATUS_INTERVAL = 2.0


class SystemdNotifier:
    """Sends notify messages to systemd; built from the environment by :meth:`from_env`.

    ``clock`` and ``sleep`` drive the watchdog loop; they default to Trio's, so
    a test on ``autojump_clock`` sees the pings at their exact virtual times.
    """

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_interval: float | None = None,
        clock: Callable[[], float] = trio.current_time,
        sleep: Callable[[float], Awaitable[None]] = trio.sleep,
    ) -> None:
        self.address = address
        #: Seconds between WATCHDOG=1 pings (half of ``$WATCHDOG_USEC``), or None.
        self.watchdog_interval = watchdog_interval if address else None
        self._clock = clock
        self._sleep = sleep
        self._sock: socket.socket | None = None
        self._target: str | bytes | None = None
        self._warned = False
        self._last_status: str | None = None
        #: Set while the watchdog withholds pings (for status and tests).
        self.withholding = False
        if address:
            # "@name" is Linux's abstract namespace: a leading NUL byte on the wire.
            self._target = b"\0" + address[1:].encode() if address.startswith("@") else address

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **kwargs: object
    ) -> SystemdNotifier:
        """Read ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        interval = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process systemd expects pings from: a child we
        # started with our environment must not ping on our behalf.
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            interval = int(usec) / 2 / 1_000_000
        return cls(address, watchdog_interval=interval, **kwargs)  # type: ignore[arg-type]

    @property
    def enabled(self) -> bool:
        return self._target is not None

    # ------------------------------------------------------------ messages

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ...) as one datagram; True if it was sent.

        Never blocks and never raises: systemd being gone must not stop capture.
        """
        if self._target is None:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message, self._target)
        except OSError as exc:
            # Logged once: a vanished socket would otherwise log every ping.
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: the daemon serves (socket bound, log open, connector started)."""
        return self.notify("READY=1", *self._status_fields(status))

    def status(self, text: str) -> bool:
        """``STATUS=<text>``, only when it differs from the last one sent."""
        if text == self._last_status:
            return True
        return self.notify(*self._status_fields(text))

    def reloading(self) -> bool:
        """``RELOADING=1`` (SIGHUP began); send :meth:`ready` when done."""
        # MONOTONIC_USEC lets Type=notify-reload (systemd 253+) match the reply
        # to the reload it asked for; older versions ignore unknown fields.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """``STOPPING=1``: graceful shutdown began."""
        return self.notify("STOPPING=1", *self._status_fields("stopping"))

    def watchdog(self) -> bool:
        """One ``WATCHDOG=1`` ping."""
        return self.notify("WATCHDOG=1")

    def _status_fields(self, text: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        # One line: a newline would start a new (bogus) field.
        text = " ".join(text.split())
        self._last_status = text
        return (f"STATUS={text}",)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # --------------------------------------------------------------- tasks

    async def run_watchdog(
        self,
        healthy: Callable[[], bool],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Ping every :attr:`watchdog_interval` while ``healthy()``; forever.

        That this task runs at all shows the event loop is responsive (a loop
        blocked by a CPU-bound or blocking call runs no task), and ``healthy``
        adds what the loop alone cannot show, such as a wedged log writer.
        A missed ping is never made up: systemd restarts the service after
        ``WatchdogSec`` without one, which is the point.
        """
        task_status.started()
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            if healthy():
                if self.withholding:
                    log.warning("daemon healthy again; resuming systemd watchdog pings")
                self.withholding = False
                self.watchdog()
            elif not self.withholding:
                self.withholding = True
                log.error(
                    "daemon unhealthy (log writer stuck); withholding systemd watchdog pings "
                    "so systemd restarts the service"
                )
            await self._sleep(interval)

    async def run_status(
        self,
        status_line: Callable[[], str],
        *,
        interval: float = STATUS_INTERVAL,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Send ``STATUS=<status_line()>`` whenever it changes (checked every ``interval``)."""
        task_status.started()
        if not self.enabled:
            return
        while True:
            self.status(status_line())
            await self._sleep(interval)


class WriterHealth:
    """Whether the hub's log writer keeps up: the watchdog's health check.

    Healthy means: no event is waiting for the writer, or the writer has
    committed within the last ``period`` seconds, or the events waiting now
    have waited less than ``period`` (as far as the checks saw them). Unhealthy means events have been pending
    for longer than ``period`` without a single commit: the writer (or the
    disk under it) is wedged. A log that *fails* is not wedged: the hub then
    goes degraded and serves from memory, with nothing pending.

    ``pending()`` returns the number of events waiting to be committed;
    :meth:`observe_commit` is registered in ``hub.commit_observers``. The
    pending count is sampled at each check, so "pending since" is known to
    within one watchdog interval.
    """

    def __init__(
        self,
        pending: Callable[[], int],
        *,
        period: float,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._pending = pending
        self.period = period
        self._clock = clock
        self._last_commit = clock()
        self._pending_since: float | None = None

    def observe_commit(self, latency: float, count: int) -> None:
        """A ``hub.commit_observers`` callback."""
        self._last_commit = self._clock()

    def __call__(self) -> bool:
        now = self._clock()
        if self._pending() == 0:
            self._pending_since = None
            return True
        if self._pending_since is None:
            self._pending_since = now
        stalled_since = max(self._last_commit, self._pending_since)
        return now - stalled_since < self.period
