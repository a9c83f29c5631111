"""Logging set-up: human lines, JSON lines, or journald-friendly lines; never a secret.

- ``text`` (default): ``2026-11-30 03:02:23,123 INFO    bezant_trio.daemon: serving on ...``.
- ``json``: one object per line (``ts``, ``level``, ``logger``, ``message``,
  ``exc``) for log shippers.
- Under journald (``$JOURNAL_STREAM`` set, and ``text``) lines carry a
  ``<N>`` syslog priority prefix and no timestamp: the journal adds its own.

Every line goes through a redaction filter: the configured secrets (the API
token, webhook secrets, credential-like sink options: :func:`add_secrets`)
and anything shaped like a bearer token, a gateway session cookie or a
``whsec_`` secret are replaced by ``***`` before any handler sees them.

With a log file (``--log-file``) :func:`reopen_log_files` reopens it, which
SIGHUP does after ``logrotate`` moved it away.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable

import orjson

from bezant_trio.errors import StartupError
from bezant_trio.model import format_ts
from bezant_trio.util import describe

__all__ = [
    "MASK",
    "LogFileError",
    "add_secrets",
    "redact",
    "reopen_log_files",
    "setup_logging",
]

MASK = "***"

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

# Shapes of secrets that may reach a message without being configured: a
# bearer token echoed from a header, the gateway's `api={"session": ...}`
# cookie (raw or URL-encoded), a Standard-Webhooks secret.
_PATTERNS = re.compile(
    r"(?i)(?P<bearer>\bbearer\s+)[A-Za-z0-9._~+/=-]+"
    r"|(?P<cookie>\bapi=)[^\s;,]+"
    r"|(?P<session>[\"']session[\"']\s*:\s*[\"'])[^\"']+"
    r"|\bwhsec_[A-Za-z0-9+/=]+"
)

_secrets: set[str] = set()
_secrets_re: re.Pattern[str] | None = None
_secrets_lock = threading.Lock()


def add_secrets(values: Iterable[str]) -> None:
    """Never let these values appear in a log line (idempotent, thread-safe)."""
    global _secrets_re
    # Very short values would mask ordinary words; config validation keeps
    # real secrets longer than this.
    fresh = {v for v in values if isinstance(v, str) and len(v) >= 4} - _secrets
    if not fresh:
        return
    with _secrets_lock:
        _secrets.update(fresh)
        ordered = sorted(_secrets, key=len, reverse=True)
        _secrets_re = re.compile("|".join(re.escape(v) for v in ordered))


def redact(text: str) -> str:
    """``text`` with every known secret and secret-shaped value masked."""
    pattern = _secrets_re
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _PATTERNS.sub(_mask_match, text)


def _mask_match(match: re.Match[str]) -> str:
    prefix = match.group("bearer") or match.group("cookie") or match.group("session") or ""
    return prefix + MASK


class _RedactingFilter(logging.Filter):
    """Renders the message once, redacted, so no formatter can leak an argument."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": format_ts(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info or record.exc_text:
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return orjson.dumps(entry).decode()


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = f"<{priority}>{record.name}: {record.getMessage()}"
        if record.exc_text:
            # One journal entry per line: keep the traceback's priority too.
            text += "".join(f"\n<{priority}>{line}" for line in record.exc_text.splitlines())
        return text


class LogFileError(StartupError):
    """The ``--log-file`` cannot be opened for appending (a missing directory, no permission)."""


class _ReopenableFileHandler(logging.FileHandler):
    def reopen(self) -> None:
        # Open the new file before closing the old one: if it cannot be opened
        # (its directory went away), lines keep going to the old file.
        try:
            stream = self._open()
        except OSError as exc:
            logging.getLogger(__name__).error(
                "cannot reopen the log file %s, still writing to the old one: %s",
                self.baseFilename,
                describe(exc),
            )
            return
        with self.lock:  # type: ignore[union-attr]
            old, self.stream = self.stream, stream
        if old is not None:
            old.close()


def setup_logging(level: str = "INFO", fmt: str = "text", *, log_file: str | None = None) -> None:
    """Configure the root logger once for the daemon process.

    Lines go to stderr, or to ``log_file`` (appended; reopened on SIGHUP).
    Raises :class:`LogFileError` (one line) when ``log_file`` cannot be opened.
    """
    handler: logging.Handler
    if log_file:
        try:
            handler = _ReopenableFileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            reason = exc.strerror or describe(exc)
            raise LogFileError(f"--log-file: cannot append to {log_file}: {reason}") from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM") and not log_file:
        handler.setFormatter(_JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(_RedactingFilter())
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # Hypercorn logs every connection error at INFO; keep it quieter.
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def reopen_log_files() -> None:
    """Reopen every file the root logger writes to (after log rotation)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _ReopenableFileHandler):
            handler.reopen()
