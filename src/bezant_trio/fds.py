"""The process's open-files limit (``RLIMIT_NOFILE``): raised at start, and what it leaves.

Every HTTP connection, log reader and sink socket is a file descriptor, and
the soft limit most shells and containers start a process with is 1,024.
The daemon raises its soft limit to the hard one when it starts (systemd's
unit sets the hard one with ``LimitNOFILE=``), and the HTTP layer caps its
connections below what the limit leaves (:func:`connections_within`), so
running out of descriptors is not something a client can cause. Touches
nothing but the limit; a leaf any part may use.
"""

from __future__ import annotations

import logging
import resource

__all__ = ["FD_HEADROOM", "connections_within", "open_files_limit", "raise_open_files_limit"]

log = logging.getLogger(__name__)

#: Descriptors kept for everything but HTTP connections: the log and its
#: readers, the gateway, sinks, the notify socket, worker threads' files.
FD_HEADROOM = 128
#: macOS refuses a soft limit above OPEN_MAX even when the hard one is unlimited.
_OPEN_MAX = 10240


def open_files_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` now (a large number when unlimited)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit to the hard one (as far as the OS allows); returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        targets = [_nr_open(), _OPEN_MAX]
    else:
        targets = [hard, min(hard, _OPEN_MAX)]
    for target in targets:
        if target is None or (soft != resource.RLIM_INFINITY and target <= soft):
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        return soft, target
    return soft, soft


def connections_within(max_connections: int, reserve: int) -> int:
    """``max_connections``, lowered if it and ``reserve`` would not fit in the open-files limit."""
    room = open_files_limit() - FD_HEADROOM - reserve
    fitted = max(1, min(max_connections, room))
    if fitted < max_connections:
        log.warning(
            "http.max_connections %d does not fit in the open-files limit %d: serving at most "
            "%d connections (raise LimitNOFILE= or `ulimit -Hn`)",
            max_connections,
            open_files_limit(),
            fitted,
        )
    return fitted


def _nr_open() -> int | None:
    # Linux: the most a process's limit may be when the hard limit is "unlimited".
    try:
        with open("/proc/sys/fs/nr_open") as nr_open:
            return int(nr_open.read())
    except (OSError, ValueError):
        return None
