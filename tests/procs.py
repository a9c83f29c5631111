"""Run the daemon as a real subprocess (for restart, SIGTERM and kill -9 tests)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio
import yaml

from helpers import wait_until

_SERVING = re.compile(r"serving on (http://\S+)")


class DaemonProcess:
    """``python -m bezant_trio run --config <tmp>/config.yaml`` with stderr in a file."""

    def __init__(
        self, workdir: Path, config: dict[str, Any], *, env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.config = config
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url: str | None = None
        self.runs = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"daemon-{self.runs}.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self, *, timeout: float = 20) -> str:
        """Start and wait until it serves; returns the base URL."""
        self._spawn()
        with trio.fail_after(timeout):
            await wait_until(
                lambda: bool(_SERVING.search(self.log_text())) or self.proc.poll() is not None
            )
        match = _SERVING.search(self.log_text())
        if match is None:
            raise AssertionError(f"daemon did not start:\n{self.log_text()}")
        self.url = match.group(1)
        return self.url

    def _spawn(self) -> None:
        self.runs += 1
        config_path = self.workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BEZANT_", "IBKR_", "NOTIFY_SOCKET", "WATCHDOG_"))
        }
        env.update(self.env)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bezant_trio", "run", "--config", str(config_path)],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def send_signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def stop(self, signum: int = signal.SIGTERM, *, timeout: float = 20) -> int:
        """Send ``signum`` and wait for the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signum)
        return await self.wait(timeout=timeout)

    async def wait(self, *, timeout: float = 20) -> int:
        assert self.proc is not None
        with trio.fail_after(timeout):
            await wait_until(lambda: self.proc.poll() is not None, poll=0.01)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bezant_trio ARGS`` to completion."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BEZANT_", "IBKR_", "NOTIFY_SOCKET", "WATCHDOG_"))
    }
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bezant_trio", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
