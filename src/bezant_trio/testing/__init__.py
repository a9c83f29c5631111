"""Test support shared by plugin authors and bezant-trio's own tests.

Import from here, never from the modules behind it::

    from bezant_trio.testing import DaemonProcess, Reply, WebhookReceiver

- :class:`DaemonProcess`: the daemon as a real child process (``python -m
  bezant_trio run``), started, signalled, killed and restarted on one
  working directory; :class:`ChildProcess` for any other program;
  :func:`run_cli` for a one-shot command. With :func:`fork_children` on, a
  ``python -m`` child forks from a process that imported the daemon once
  (:mod:`bezant_trio.testing.forkserver`) instead of starting an interpreter.
- :class:`LeanClient` (:mod:`bezant_trio.testing.http`): a keep-alive HTTP/1.1
  client for the loops that poll a daemon, a fifth of httpx's CPU per request.
- :class:`WebhookReceiver`: a real HTTP endpoint on 127.0.0.1 that records
  every request, answers as scripted (:class:`Reply`) and checks Standard
  Webhooks signatures (:func:`verify_signature`).
- The pytest fixtures (``bezant_daemon_factory``, ``bezant_sink_manager_factory``,
  ``bezant_webhook_receiver``, ...) live in :mod:`bezant_trio.testing.pytest_plugin`,
  which pytest loads through the package's ``pytest11`` entry point.

This package is imported by tests and benchmarks only; the daemon never imports it.
"""

from __future__ import annotations

from bezant_trio.testing.http import HTTPError, LeanClient, Response
from bezant_trio.testing.process import (
    ChildProcess,
    DaemonProcess,
    ProcessExited,
    child_env,
    fd_count,
    fork_children,
    forking,
    rss_kib,
    run_cli,
)
from bezant_trio.testing.webhook import Received, Reply, WebhookReceiver, verify_signature

__all__ = [
    "ChildProcess",
    "DaemonProcess",
    "HTTPError",
    "LeanClient",
    "ProcessExited",
    "Received",
    "Reply",
    "Response",
    "WebhookReceiver",
    "child_env",
    "fd_count",
    "fork_children",
    "forking",
    "rss_kib",
    "run_cli",
    "verify_signature",
]
