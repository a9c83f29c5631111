"""Real child processes for tests and benchmarks: the daemon, and any other program.

:class:`ChildProcess` is one run of one program, its stdout and stderr in a
log file (a pipe nobody reads would block it). :class:`DaemonProcess` is
``python -m bezant_trio run --config <workdir>/config.yaml`` on top of it:
started and restarted on the same working directory (one log file per run),
ready once it logs ``serving on <url>``, stopped by a signal with its exit
status returned. :func:`run_cli` runs a one-shot command to completion.

Every child gets this process's environment without the variables that would
reconfigure it behind the test's back (``BEZANT_*``, ``IBKR_*``,
``NOTIFY_SOCKET``, ``WATCHDOG_*``), plus what the caller passes.

A child is exec'd, unless :func:`fork_children` is on (the test suite turns
it on): then a ``python -m`` child forks from a process that imported the
daemon once (:mod:`bezant_trio.testing.forkserver`), which saves about a
second of CPU per daemon and a third of one per ``check-config``.

Every wait is bounded (``trio.fail_after``) and ends in an error that carries
the tail of the child's log. A child's exit is awaited on its pidfd (or the
fork server's status socket); only a
line appearing in a log file (no event crosses the process boundary for it)
is polled for.

Owns processes, their log files and their config files; knows nothing of
what the daemon does once it serves.
"""

from __future__ import annotations

import locale
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import trio
import yaml

from bezant_trio.testing.forkserver import ForkedChild, ForkServer, forkable, import_env
from bezant_trio.testing.http import LeanClient
from bezant_trio.util import plain

__all__ = [
    "SCRUBBED_PREFIXES",
    "ChildProcess",
    "DaemonProcess",
    "ProcessExited",
    "child_env",
    "fd_count",
    "fork_children",
    "forking",
    "rss_kib",
    "run_cli",
]

#: Environment variables a child never inherits (each name is a prefix).
SCRUBBED_PREFIXES = ("BEZANT_", "IBKR_", "NOTIFY_SOCKET", "WATCHDOG_")
#: How often a log file is re-read while waiting for a line in it.
LOG_POLL = 0.01
#: How much of a log an error message quotes.
LOG_TAIL = 3000
#: The line a daemon logs once its HTTP socket is bound and answering.
SERVING = re.compile(r"serving on (http://\S+)")
#: ``bezant-trio`` as a command line: this interpreter, the installed package.
DAEMON_COMMAND = (sys.executable, "-m", "bezant_trio")


class ProcessExited(RuntimeError):
    """A child exited while something still waited for it to do something."""


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment less :data:`SCRUBBED_PREFIXES`, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)}
    env.update(extra or {})
    return env


#: The fork server of this process, for its own (scrubbed) start-up
#: environment (:func:`fork_children`); None while children are exec'd.
_fork_server: ForkServer | None = None
#: Start the server at the first child that can fork (``fork_children(lazy=True)``).
_fork_lazily = False


def fork_children(enabled: bool = True, *, lazy: bool = False) -> None:
    """Fork ``python -m`` children from a fork server from now on (or stop doing so).

    The server for this process's own (scrubbed) environment starts at once,
    in the background, so it is ready by the first child; with ``lazy`` it
    starts at the first child (which then waits a second for it), for a
    process that may start none. A child whose command or start-up
    environment the server cannot give it is exec'd
    (:func:`~bezant_trio.testing.forkserver.forkable`); ``fork=False`` on a
    :class:`ChildProcess`, :class:`DaemonProcess` or :func:`run_cli` asks
    for exec. Disabling ends the server (and any children it still has).
    """
    global _fork_server, _fork_lazily
    _fork_lazily = enabled and lazy
    if not enabled:
        if _fork_server is not None:
            _fork_server.close()
        _fork_server = None
    elif not lazy and (_fork_server is None or not _fork_server.usable):
        _fork_server = ForkServer(child_env())


def forking() -> bool:
    """Whether ``python -m`` children fork from a fork server now (:func:`fork_children`)."""
    return _fork_lazily or _fork_server is not None


def _fork_server_for(argv: Sequence[str], env: Mapping[str, str]) -> ForkServer | None:
    """The server that can fork ``argv`` with ``env``, or None (exec it)."""
    global _fork_server
    if forkable(argv) is None:
        return None
    if _fork_server is None and _fork_lazily and import_env(env) == import_env(child_env()):
        _fork_server = ForkServer(child_env())
    server = _fork_server
    if server is None or not server.usable or import_env(env) != server.key:
        return None
    return server


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (from ``/proc``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    """How many file descriptors ``pid`` holds open (from ``/proc``)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def _tail(text: str) -> str:
    return text[-LOG_TAIL:]


class ChildProcess:
    """One run of ``argv``, started at once, stdout and stderr in ``log_path``.

    ``env`` is added to the scrubbed environment (:func:`child_env`); stdin is
    ``/dev/null``. ``append`` keeps what earlier runs wrote to the log.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        append: bool = False,
        fork: bool | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        full_env = child_env(env)
        server = _fork_server_for(self.argv, full_env) if fork is not False else None
        if fork and server is None:
            raise ValueError(f"cannot fork {self.argv[:3]}: see fork_children()")
        # The child holds its own descriptor of the log; ours closes at once.
        # Popen returns right after fork/exec: nothing here waits on the child.
        with open(log_path, "ab" if append else "wb") as log:
            self.popen: subprocess.Popen[bytes] | ForkedChild
            if server is not None:
                fd = log.fileno()
                self.popen = server.spawn(self.argv, env=full_env, cwd=cwd, stdout=fd, stderr=fd)
            else:
                self.popen = subprocess.Popen(
                    self.argv,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                )

    @property
    def forked(self) -> bool:
        """Forked from a :class:`~bezant_trio.testing.forkserver.ForkServer` (not exec'd)."""
        return isinstance(self.popen, ForkedChild)

    def __repr__(self) -> str:
        return f"<ChildProcess pid={self.pid} {self.argv[:4]} returncode={self.returncode}>"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while it runs."""
        return self.popen.poll()

    @property
    def running(self) -> bool:
        return self.returncode is None

    def log_text(self) -> str:
        """Everything the child wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def fd_count(self) -> int:
        return fd_count(self.pid)

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` if the child still runs (a signal to a reaped pid could hit another)."""
        if self.running:
            self.popen.send_signal(signum)

    async def wait_for(self, pattern: re.Pattern[str], *, timeout: float = 30) -> re.Match[str]:
        """The first match of ``pattern`` in the log; raises if the child exits first."""
        try:
            with trio.fail_after(timeout):
                while True:
                    match = pattern.search(self.log_text())
                    if match is not None:
                        return match
                    if not self.running:
                        raise ProcessExited(
                            f"{self.argv[:4]} exited ({self.returncode}) before logging "
                            f"{pattern.pattern!r}:\n{_tail(self.log_text())}"
                        )
                    # A line in a file raises no event in this process: poll for it.
                    await trio.sleep(LOG_POLL)
        except trio.TooSlowError:
            raise trio.TooSlowError(
                f"{self.argv[:4]} did not log {pattern.pattern!r} within {timeout} s:\n"
                f"{_tail(self.log_text())}"
            ) from None

    async def wait(self, *, timeout: float = 30) -> int:
        """Wait until the child exits; returns its exit status."""
        try:
            with trio.fail_after(timeout):
                await self._exited()
        except trio.TooSlowError:
            raise trio.TooSlowError(
                f"{self.argv[:4]} still runs after {timeout} s:\n{_tail(self.log_text())}"
            ) from None
        code = self.returncode
        assert code is not None
        return code

    async def _exited(self) -> None:
        if self.popen.returncode is not None:
            return
        if isinstance(self.popen, ForkedChild):
            # The fork server says how it exited on this socket, once reaped.
            await trio.lowlevel.wait_readable(self.popen.status)
            self.popen.wait()
            return
        # Opened before anything reaps the child, the pidfd stays valid and
        # turns readable when it exits (Linux 5.3+).
        pidfd = os.pidfd_open(self.pid)
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        self.popen.wait()  # reaps at once: the pidfd said it exited

    async def stop(self, signum: int = signal.SIGTERM, *, timeout: float = 30) -> int:
        """Send ``signum`` and wait for the exit status.

        A child still running after ``timeout`` is killed (nothing leaks) and
        :class:`trio.TooSlowError` raised: a test that stops a child expects it
        to stop.
        """
        self.send_signal(signum)
        try:
            return await self.wait(timeout=timeout)
        except trio.TooSlowError:
            self.kill()
            raise

    async def close(self, *, grace: float = 15) -> int | None:
        """Teardown: SIGTERM, then SIGKILL if it still runs after ``grace``; never raises."""
        if self.running:
            self.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                await self._exited()
        return self.kill()

    def kill(self) -> int | None:
        """``kill -9`` (if it still runs) and reap; returns the exit status.

        Synchronous, so that it works in a ``finally`` of a cancelled test.
        """
        if self.popen.returncode is None:
            self.popen.kill()
            try:
                # A killed process exits at once; the bound covers a stuck kernel.
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                return None
        return self.popen.returncode


class DaemonProcess:
    """``python -m bezant_trio run --config <config_path>`` as a child, restartable.

    ``config`` (a mapping) is written as YAML to ``config_path`` (default
    ``<workdir>/config.yaml``) at every start, so a test can change it between
    runs; with ``config=None`` the file at ``config_path`` is used as it is.
    Each run logs to ``<workdir>/<name>-<run>.log``; :attr:`runs` counts the
    starts. ``env`` is added to the scrubbed environment, ``args`` to the
    ``run`` command line; ``command`` replaces ``python -m bezant_trio`` (a
    launcher, another interpreter); ``fork`` is :class:`ChildProcess`'s (None:
    forked from the fork server when :func:`fork_children` is on).
    """

    def __init__(
        self,
        workdir: Path,
        config: Mapping[str, Any] | None = None,
        *,
        config_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        command: Sequence[str] = DAEMON_COMMAND,
        name: str = "daemon",
        fork: bool | None = None,
    ) -> None:
        if config is None and config_path is None:
            raise ValueError("DaemonProcess needs a config mapping or a config_path to use")
        self.workdir = workdir
        self.config = config
        self.config_path = config_path or workdir / "config.yaml"
        self.env = dict(env or {})
        self.args = list(args)
        self.command = list(command)
        self.name = name
        self.fork = fork
        #: How many times the daemon was started.
        self.runs = 0
        #: The current (or last) run; None before the first start.
        self.process: ChildProcess | None = None
        #: The base URL of the running daemon; None before it serves and once it is stopped.
        self.url: str | None = None
        #: status() without a client asks through this one (one per Trio run).
        self._client: LeanClient | None = None
        self._client_run: object = None

    def __repr__(self) -> str:
        return f"<DaemonProcess {self.name} run {self.runs} url={self.url} {self.process!r}>"

    # ------------------------------------------------------------------ state

    @property
    def log_path(self) -> Path:
        """The log file of the current (or last) run."""
        return self._log_path(self.runs)

    def _log_path(self, run: int) -> Path:
        return self.workdir / f"{self.name}-{run}.log"

    def log_text(self, *, all_runs: bool = False) -> str:
        """The current run's output, or every run's, oldest first."""
        runs = range(1, self.runs + 1) if all_runs else [self.runs]
        paths = [self._log_path(run) for run in runs]
        return "\n".join(p.read_text(errors="replace") for p in paths if p.exists())

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the daemon was never started")
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def fd_count(self) -> int:
        return fd_count(self.pid)

    # ------------------------------------------------------------------ start

    def spawn(self) -> ChildProcess:
        """Start a run without waiting for it to serve (see :meth:`wait_serving`)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.runs += 1
        self.url = None
        if self.config is not None:
            self.config_path.write_text(yaml.safe_dump(plain(self.config)))
        argv = [*self.command, "run", "--config", str(self.config_path), *self.args]
        self.process = ChildProcess(
            argv, self.log_path, env=self.env, cwd=self.workdir, fork=self.fork
        )
        return self.process

    async def wait_serving(self, *, timeout: float = 30) -> str:
        """Wait for the current run's ``serving on <url>``; returns the base URL."""
        if self.process is None:
            raise RuntimeError("the daemon was never started")
        match = await self.process.wait_for(SERVING, timeout=timeout)
        self.url = match.group(1)
        return self.url

    async def start(self, *, timeout: float = 30) -> str:
        """Start a run and wait until it serves; returns the base URL."""
        self.spawn()
        return await self.wait_serving(timeout=timeout)

    # ------------------------------------------------------------------ stop

    def send_signal(self, signum: int) -> None:
        if self.process is None:
            raise RuntimeError("the daemon was never started")
        self.process.send_signal(signum)

    async def wait(self, *, timeout: float = 30) -> int:
        """Wait until the current run exits; returns its exit status."""
        if self.process is None:
            raise RuntimeError("the daemon was never started")
        code = await self.process.wait(timeout=timeout)
        self.url = None
        return code

    async def stop(self, signum: int = signal.SIGTERM, *, timeout: float = 30) -> int:
        """Send ``signum`` (SIGTERM: a graceful stop) and wait for the exit status.

        Killed and :class:`trio.TooSlowError` raised if it has not exited
        after ``timeout``.
        """
        if self.process is None:
            raise RuntimeError("the daemon was never started")
        self._forget_connections()
        return await self.process.stop(signum, timeout=timeout)

    async def close(self, *, grace: float = 15) -> int | None:
        """Teardown: SIGTERM, SIGKILL after ``grace``; never raises."""
        self._forget_connections()
        return None if self.process is None else await self.process.close(grace=grace)

    def kill(self) -> int | None:
        """``kill -9`` and reap (synchronous: safe in any ``finally``); the exit status."""
        self._forget_connections()
        return None if self.process is None else self.process.kill()

    # ------------------------------------------------------------------ status

    def _headers(self) -> dict[str, str]:
        http = (self.config or {}).get("http") or {}
        token = http.get("token") if isinstance(http, Mapping) else None
        return {"authorization": f"Bearer {token}"} if token else {}

    def _forget_connections(self) -> None:
        self.url = None
        if self._client is not None:
            self._client.close_idle()

    def _own_client(self) -> LeanClient:
        # Sockets belong to one Trio run (a sync fixture runs each step in its own).
        run = trio.lowlevel.current_root_task()
        if self._client is None or self._client_run is not run:
            if self._client is not None:
                self._client.close_idle()
            self._client, self._client_run = LeanClient(timeout=10), run
        return self._client

    async def status(self, client: httpx.AsyncClient | LeanClient | None = None) -> dict[str, Any]:
        """``GET /events/_status`` of the running daemon (with its token, if configured)."""
        if self.url is None:
            raise RuntimeError(f"{self.name} is not serving")
        client = client or self._own_client()
        response = await client.get(f"{self.url}/events/_status", headers=self._headers())
        response.raise_for_status()
        return response.json()

    async def wait_status(
        self,
        predicate: Callable[[dict[str, Any]], Any],
        *,
        client: httpx.AsyncClient | LeanClient | None = None,
        timeout: float = 30,
        poll: float = 0.02,
    ) -> dict[str, Any]:
        """Poll ``/events/_status`` until ``predicate(status)`` holds; returns that status.

        State inside another process raises no event here, hence the poll.
        Raises :class:`ProcessExited` if the daemon exits meanwhile.
        """
        last: dict[str, Any] | None = None
        try:
            with trio.fail_after(timeout):
                while True:
                    if not self.running:
                        raise ProcessExited(
                            f"{self.name} exited ({self.returncode}):\n{_tail(self.log_text())}"
                        )
                    last = await self.status(client)
                    if predicate(last):
                        return last
                    await trio.sleep(poll)
        except trio.TooSlowError:
            raise trio.TooSlowError(
                f"{self.name}: the status did not reach the condition within {timeout} s;"
                f" last status: {last}"
            ) from None


def run_cli(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    fork: bool | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bezant_trio ARGS`` to completion; stdout and stderr captured as text.

    Forked from the fork server when :func:`fork_children` is on (and ``fork``
    is not False), else exec'd; the same :class:`subprocess.CompletedProcess`
    either way, with :class:`subprocess.TimeoutExpired` after ``timeout``.
    """
    argv = [*DAEMON_COMMAND, *args]
    full_env = child_env(env)
    server = _fork_server_for(argv, full_env) if fork is not False else None
    if server is None:
        return subprocess.run(
            argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
        )
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = server.spawn(argv, env=full_env, cwd=cwd, stdout=out.fileno(), stderr=err.fileno())
        try:
            returncode = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise
        texts = []
        for stream in (out, err):
            stream.seek(0)
            # What text=True decodes with: the locale's encoding, universal newlines.
            raw = stream.read().decode(locale.getpreferredencoding(False))
            texts.append(raw.replace("\r\n", "\n").replace("\r", "\n"))
    return subprocess.CompletedProcess(argv, returncode, texts[0], texts[1])
